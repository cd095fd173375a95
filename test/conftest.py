"""Shared pytest setup: the ROS test harness fixtures (``ros_domain``, ``ros_env``,
``ros_children``) and the session-start cleanup of stale Fast DDS shared memory."""

from __future__ import annotations

import sys
from pathlib import Path

# Tests run against the checkout even when the package is not installed into the interpreter.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

pytest_plugins = ["nre_localization.testing.pytest_plugin"]
