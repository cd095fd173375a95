"""pytest fixtures for ROS tests (enabled by ``pytest_plugins`` in ``test/conftest.py``).

- session start: stale Fast DDS shared-memory files are removed (all of them when no Fast DDS
  process runs on the machine, else only unlocked old ones: see :mod:`.shm`), and the session's
  own environment is put on a private, localhost-only domain (for tests without fixtures).
- ``ros_domain``: a domain id held exclusively for the test (``DomainLease``).
- ``ros_env``: the environment for the test's ROS processes (:func:`.env.ros_env`); the test
  process's own ``os.environ`` gets the same ROS variables for the duration of the test, so an
  in-process ``rclpy.init()`` joins the same isolated graph.
- ``ros_children``: a :class:`.processes.ChildProcessGroup` with that environment, logging to the
  test's ``tmp_path``; every child is stopped (SIGINT, then SIGTERM/SIGKILL) and reaped at teardown.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nre_localization.testing.domains import DomainLease, claim_domain_id
from nre_localization.testing.env import repo_root
from nre_localization.testing.env import ros_env as make_ros_env
from nre_localization.testing.processes import ChildProcessGroup
from nre_localization.testing.shm import clean_stale_fastdds_shm

_ROS_VARS = (
    "ROS_DOMAIN_ID",
    "ROS_AUTOMATIC_DISCOVERY_RANGE",
    "RMW_IMPLEMENTATION",
    "FASTRTPS_DEFAULT_PROFILES_FILE",
    "FASTDDS_DEFAULT_PROFILES_FILE",
    "AMENT_PREFIX_PATH",
    "ROS_LOG_DIR",
)


@pytest.fixture(scope="session", autouse=True)
def _clean_fastdds_shm() -> None:
    removed = clean_stale_fastdds_shm()
    if removed:
        print(f"\nremoved {len(removed)} stale Fast DDS shared-memory files from /dev/shm")


@pytest.fixture(scope="session", autouse=True)
def _session_ros_isolation(
    _clean_fastdds_shm: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """Isolate the whole session too: a test that calls ``rclpy.init()`` without the ``ros_env``
    fixture still lands on a private, localhost-only domain (never on the default domain 0)."""
    with claim_domain_id() as lease, pytest.MonkeyPatch.context() as patch:
        env = make_ros_env(lease.domain_id, log_dir=tmp_path_factory.mktemp("ros_log"))
        for name in _ROS_VARS:
            patch.setenv(name, env[name])
        patch.delenv("ROS_LOCALHOST_ONLY", raising=False)
        yield lease.domain_id


@pytest.fixture
def ros_domain(_session_ros_isolation: int) -> Iterator[DomainLease]:
    with claim_domain_id() as lease:
        yield lease


@pytest.fixture
def ros_env(
    ros_domain: DomainLease, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    env = make_ros_env(ros_domain.domain_id, log_dir=tmp_path / "ros_log")
    for name in _ROS_VARS:
        monkeypatch.setenv(name, env[name])
    monkeypatch.delenv("ROS_LOCALHOST_ONLY", raising=False)
    return env


@pytest.fixture
def ros_children(ros_env: dict[str, str], tmp_path: Path) -> Iterator[ChildProcessGroup]:
    group = ChildProcessGroup(ros_env, tmp_path / "children", cwd=repo_root())
    try:
        yield group
    finally:
        group.stop_all()


def pytest_report_header() -> str:
    return (
        f"nre_localization.testing: repo {repo_root()}, "
        f"AMENT_PREFIX_PATH={os.environ.get('AMENT_PREFIX_PATH', '')}"
    )
