"""Per-test ROS domain ids, unique across concurrent test sessions on one machine.

A domain id is claimed by holding an exclusive ``flock`` on ``<tmp>/nre_ros_domains/<id>.lock``;
the kernel drops the lock when the holder exits, however it exits, so ids never leak. Ids come from
1..101 (0 is everyone's default domain; above 101 the RTPS ports of many participants reach the
ephemeral port range).
"""

from __future__ import annotations

import fcntl
import os
import random
import tempfile
from pathlib import Path
from types import TracebackType

from nre_localization.errors import ConfigError

DOMAIN_MIN = 1
DOMAIN_MAX = 101


def _lock_dir(path: Path | None = None) -> Path:
    path = path or Path(tempfile.gettempdir()) / "nre_ros_domains"
    path.mkdir(mode=0o777, parents=True, exist_ok=True)
    return path


class DomainLease:
    """An exclusively held ROS domain id; release with :meth:`release` or ``with``."""

    def __init__(self, domain_id: int, fd: int, path: Path) -> None:
        self.domain_id = domain_id
        self._fd: int | None = fd
        self._path = path

    def release(self) -> None:
        """Give the id back (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DomainLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"DomainLease(domain_id={self.domain_id}, held={self._fd is not None})"


def claim_domain_id(
    lo: int = DOMAIN_MIN,
    hi: int = DOMAIN_MAX,
    rng: random.Random | None = None,
    lock_dir: Path | None = None,
) -> DomainLease:
    """Claim a free domain id in ``[lo, hi]``, trying them from a random start.

    ``lock_dir``: where the lock files live (default ``<tmp>/nre_ros_domains``, shared by every
    session on the machine). Raises :class:`ConfigError` when every id in the range is held.
    """
    if not 0 <= lo <= hi <= 232:
        raise ConfigError(f"bad ROS domain range {lo}..{hi} (must lie in 0..232)")
    ids = list(range(lo, hi + 1))
    start = (rng or random.Random()).randrange(len(ids))
    lock_dir = _lock_dir(lock_dir)
    for domain_id in ids[start:] + ids[:start]:
        path = lock_dir / f"{domain_id}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return DomainLease(domain_id, fd, path)
    raise ConfigError(f"all ROS domain ids {lo}..{hi} are in use (locks in {lock_dir})")
