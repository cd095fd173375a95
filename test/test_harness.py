"""The ROS test harness itself (nre_localization.testing): domain leases, environment, child
process stop/escalation, bounded waits, stale shared-memory cleanup. No DDS traffic here."""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

import pytest

from nre_localization.errors import ConfigError
from nre_localization.testing import (
    ChildProcessGroup,
    WaitTimeout,
    claim_domain_id,
    clean_stale_fastdds_shm,
    fastdds_profile_path,
    ros_env,
    wait_until,
)

HANDLES_SIGINT = """
import signal, sys, time
print("up", flush=True)
try:
    time.sleep(60)
except KeyboardInterrupt:
    print("got SIGINT, exiting cleanly", flush=True)
    sys.exit(0)
"""

IGNORES_SIGINT = """
import signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
time.sleep(60)
"""


def test_domain_leases_are_exclusive_and_released(tmp_path: Path) -> None:
    with (
        claim_domain_id(40, 41, lock_dir=tmp_path) as a,
        claim_domain_id(40, 41, lock_dir=tmp_path) as b,
    ):
        assert {a.domain_id, b.domain_id} == {40, 41}
        with pytest.raises(ConfigError, match="in use"):
            claim_domain_id(40, 41, lock_dir=tmp_path)
    with claim_domain_id(40, 40, lock_dir=tmp_path) as again:  # released on exit
        assert again.domain_id == 40


def test_ros_env_isolates_and_points_at_the_profile() -> None:
    env = ros_env(17, base={"ROS_LOCALHOST_ONLY": "1", "PATH": "/usr/bin"})
    assert env["ROS_DOMAIN_ID"] == "17"
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert "ROS_LOCALHOST_ONLY" not in env
    assert env["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
    profile = fastdds_profile_path()
    assert env["FASTRTPS_DEFAULT_PROFILES_FILE"] == env["FASTDDS_DEFAULT_PROFILES_FILE"]
    assert Path(env["FASTRTPS_DEFAULT_PROFILES_FILE"]) == profile
    text = profile.read_text()
    assert "<segment_size>16777216</segment_size>" in text
    assert "<useBuiltinTransports>false</useBuiltinTransports>" in text
    assert "<address>127.0.0.1</address>" in text
    with pytest.raises(ConfigError, match="out of range"):
        ros_env(233)


def test_child_stopped_with_sigint_exits_cleanly(tmp_path: Path) -> None:
    with ChildProcessGroup(os.environ, tmp_path) as group:
        child = group.start([sys.executable, "-c", HANDLES_SIGINT], name="polite")
        child.wait_for_output("up", timeout=20)
        assert child.stop(grace=10) == 0
        assert "got SIGINT" in child.output()


def test_child_ignoring_signals_is_killed_and_reaped(tmp_path: Path) -> None:
    with ChildProcessGroup(os.environ, tmp_path) as group:
        child = group.start([sys.executable, "-c", IGNORES_SIGINT], name="stubborn")
        child.wait_for_output("up", timeout=20)
        start = time.monotonic()
        assert child.stop(grace=0.5) == -9
        assert time.monotonic() - start < 10
        assert not child.running()
        with pytest.raises(ProcessLookupError):
            os.kill(child.pid, 0)  # reaped: no zombie left behind


def test_waits_are_bounded(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(WaitTimeout, match="never"):
        wait_until(lambda: False, timeout=0.3, what="never")
    assert time.monotonic() - start < 2
    with ChildProcessGroup(os.environ, tmp_path) as group:
        child = group.start([sys.executable, "-c", "print('bye')"], name="quick")
        with pytest.raises(WaitTimeout, match="exited"):
            child.wait_for_output("never printed", timeout=20)


def _touch(path: Path, age_s: float) -> Path:
    path.write_bytes(b"x")
    old = time.time() - age_s
    os.utime(path, (old, old))
    return path


def test_stale_shm_cleanup(tmp_path: Path) -> None:
    live = [_touch(tmp_path / f"fastrtps_{'a' * 16}{s}", 600) for s in ("", "_el")]
    dead = [_touch(tmp_path / f"fastrtps_{'b' * 16}{s}", 600) for s in ("", "_el")]
    port = [
        _touch(tmp_path / name, 600)
        for name in ("fastrtps_port7411", "fastrtps_port7411_el", "sem.fastrtps_port7411_mutex")
    ]
    young = [_touch(tmp_path / f"fastrtps_{'c' * 16}{s}", 0) for s in ("", "_el")]
    other = _touch(tmp_path / "unrelated_segment", 600)
    with open(live[1], "ab") as holder:
        fcntl.flock(holder, fcntl.LOCK_SH)  # a live owner holds its lock file
        removed = set(clean_stale_fastdds_shm(tmp_path, others_running=True))
    assert removed == set(dead + port)
    assert all(p.exists() for p in live + young + [other])
    # With no Fast DDS process alive, every Fast DDS file goes (and nothing else).
    removed = set(clean_stale_fastdds_shm(tmp_path, others_running=False))
    assert removed == set(live + young)
    assert other.exists()
