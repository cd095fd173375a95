"""Test harness for ROS 2 processes: isolation, child processes, bounded waits, SHM hygiene.

Importable without ``rclpy`` (ROS is imported lazily inside the functions that need it), so the
library core's tests and the GPU host can import it too. Used by ``test/`` (through the pytest
plugin :mod:`nre_localization.testing.pytest_plugin`), by the node tests and by the demo.

Typical use in a test::

    def test_something(ros_env, ros_children, tmp_path):
        sub = ros_children.start_module("nre_localization.testing.probes", "subscribe", ...)
        ...
        assert sub.wait(timeout=30) == 0, sub.output()

Isolation: every test gets its own ``ROS_DOMAIN_ID`` (claimed with a file lock, so concurrent pytest
sessions on one machine never share one) and ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``; all
processes use ``config/fastdds.xml`` (shared memory for large messages, UDP on loopback only).
"""

from __future__ import annotations

from nre_localization.testing.domains import DomainLease, claim_domain_id
from nre_localization.testing.env import (
    fastdds_profile_path,
    repo_root,
    ros_env,
)
from nre_localization.testing.processes import ChildProcess, ChildProcessGroup
from nre_localization.testing.shm import clean_stale_fastdds_shm, fastdds_processes_running
from nre_localization.testing.waiting import WaitTimeout, wait_for_topics, wait_until

__all__ = [
    "ChildProcess",
    "ChildProcessGroup",
    "DomainLease",
    "WaitTimeout",
    "claim_domain_id",
    "clean_stale_fastdds_shm",
    "fastdds_processes_running",
    "fastdds_profile_path",
    "repo_root",
    "ros_env",
    "wait_for_topics",
    "wait_until",
]
