"""Child processes for ROS tests: started in their own session, logged to a file, stopped with
SIGINT (what Ctrl-C and ``ros2 launch`` send), escalated to SIGTERM/SIGKILL after a grace period,
and always reaped.

Output goes to a file, never to a pipe, so a chatty child can't block on a full pipe buffer.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from nre_localization.errors import ConfigError
from nre_localization.testing.waiting import WaitTimeout, wait_until

DEFAULT_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the forked child, before exec: get SIGINT when the parent (the test) dies, so a
    killed pytest never leaves DDS processes behind. Survives the rclpy bootstrap re-exec."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)


class ChildProcess:
    """One child process with its log file.

    ``returncode`` is ``None`` while it runs. Negative return codes are signals, as in
    :mod:`subprocess`.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
        name: str | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.argv = list(argv)
        self.name = name or Path(self.argv[0]).name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in reap()
        self._popen = subprocess.Popen(
            self.argv,
            env=dict(env),
            cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: signals reach its helpers too
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
        self.pid = self._popen.pid
        self.started_at = time.monotonic()

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def running(self) -> bool:
        return self._popen.poll() is None

    def output(self) -> str:
        """Everything the child wrote so far (stdout and stderr interleaved)."""
        if not self._log.closed:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the child to exit; return its code, or raise WaitTimeout."""
        try:
            return self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise WaitTimeout(
                f"{self.name} (pid {self.pid}) still running after {timeout} s"
            ) from err

    def wait_for_output(self, text: str, timeout: float) -> None:
        """Wait until ``text`` appears in the output; raise WaitTimeout (or if the child exits)."""

        def seen() -> bool:
            if text in self.output():
                return True
            if not self.running():
                raise WaitTimeout(
                    f"{self.name} exited with {self.returncode} before printing {text!r}"
                )
            return False

        wait_until(seen, timeout, what=f"{text!r} from {self.name}")

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def stop(self, grace: float = DEFAULT_GRACE_S) -> int:
        """SIGINT, wait ``grace`` s; then SIGTERM to the group, 2 s; then SIGKILL. Reaps and
        returns the exit code (the first signal that ended it, negated, if it died of one)."""
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(signal.SIGINT)
            try:
                self._popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGTERM)
                try:
                    self._popen.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self._popen.wait()
        self._reap()
        code = self._popen.returncode
        assert code is not None
        return code

    def _reap(self) -> None:
        # Anything the child left in its process group (its own children) goes too.
        self._signal_group(signal.SIGKILL)
        if not self._log.closed:
            self._log.close()

    def __repr__(self) -> str:
        return f"ChildProcess({self.name!r}, pid={self.pid}, returncode={self.returncode})"


class ChildProcessGroup:
    """Starts children and stops every one of them on :meth:`stop_all` / leaving ``with``."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, cwd: Path | None = None) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.cwd = cwd
        self.children: list[ChildProcess] = []

    def start(
        self, argv: Sequence[str], name: str, env: Mapping[str, str] | None = None
    ) -> ChildProcess:
        """Start ``argv`` with the group's environment (updated by ``env``)."""
        if any(child.name == name for child in self.children):
            raise ConfigError(f"a child named {name!r} was already started")
        merged = {**self.env, **(env or {})}
        child = ChildProcess(argv, merged, self.log_dir / f"{name}.log", cwd=self.cwd, name=name)
        self.children.append(child)
        return child

    def start_module(
        self, module: str, *args: str, name: str, env: Mapping[str, str] | None = None
    ) -> ChildProcess:
        """``python -m module args...`` with this interpreter."""
        return self.start([sys.executable, "-u", "-m", module, *args], name=name, env=env)

    def start_script(
        self, script: Path, *args: str, name: str, env: Mapping[str, str] | None = None
    ) -> ChildProcess:
        """``python script args...`` with this interpreter."""
        return self.start([sys.executable, "-u", str(script), *args], name=name, env=env)

    def stop_all(self, grace: float = DEFAULT_GRACE_S) -> dict[str, int]:
        """Stop children in reverse start order; return ``{name: exit code}``."""
        codes: dict[str, int] = {}
        for child in reversed(self.children):
            codes[child.name] = child.stop(grace)
        return codes

    def outputs(self) -> str:
        """All children's output, each under a header (for assertion messages)."""
        parts = []
        for child in self.children:
            parts.append(f"----- {child.name} (pid {child.pid}, rc {child.returncode}) -----")
            parts.append(child.output())
        return "\n".join(parts)

    def __enter__(self) -> ChildProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
