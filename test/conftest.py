"""Shared pytest setup: the ROS test harness fixtures (``ros_domain``, ``ros_env``,
``ros_children``) and the session-start cleanup of stale Fast DDS shared memory."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Tests run against the checkout even when the package is not installed into the interpreter.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

pytest_plugins = ["nre_localization.testing.pytest_plugin"]


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one CPU thread for the test (the 2-core CI machine is shared, and OpenMP barriers
    degrade badly under load); modules use it with ``pytest.mark.usefixtures``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
