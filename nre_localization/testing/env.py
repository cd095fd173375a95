"""Environment for ROS 2 processes started by tests and the demo.

The ROS 2 PyPI wheels need no sourced setup file: a ``.pth`` hook (``ros_wheels_bootstrapper``)
re-executes the interpreter once with ``LD_LIBRARY_PATH`` pointing into the virtualenv and sets
``_ROS_WHEELS_BOOTSTRAP_COMPLETE=1``. A child started with *this* interpreter and *this* environment
therefore starts directly; a child started with another interpreter must bootstrap itself, so
:func:`ros_env` removes the guard and this virtualenv's library paths in that case.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from nre_localization.errors import ConfigError

_PROFILE_ENV = "NRE_FASTDDS_PROFILE"
_BOOTSTRAP_GUARD = "_ROS_WHEELS_BOOTSTRAP_COMPLETE"


def repo_root() -> Path:
    """The source checkout this module lives in (``nre_localization/testing/env.py`` -> root)."""
    return Path(__file__).resolve().parents[2]


def fastdds_profile_path() -> Path:
    """Absolute path of the Fast DDS profile: ``$NRE_FASTDDS_PROFILE``, else ``config/fastdds.xml``
    of the checkout, else the installed ``share/nre_localization/config/fastdds.xml``."""
    override = os.environ.get(_PROFILE_ENV)
    candidates = [Path(override)] if override else []
    candidates.append(repo_root() / "config" / "fastdds.xml")
    candidates.append(Path(sys.prefix) / "share" / "nre_localization" / "config" / "fastdds.xml")
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory("nre_localization"))
        candidates.append(share / "config" / "fastdds.xml")
    except Exception:  # ament_index absent or package not installed: fall through
        pass
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"Fast DDS profile not found (tried {', '.join(map(str, candidates))})")


def _prepend_path(value: str | None, entry: str) -> str:
    parts = [p for p in (value or "").split(os.pathsep) if p]
    if entry in parts:
        return os.pathsep.join(parts)
    return os.pathsep.join([entry, *parts])


def ros_env(
    domain_id: int,
    base: Mapping[str, str] | None = None,
    *,
    python: str | None = None,
    log_dir: Path | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for an isolated ROS 2 process on ``domain_id`` (0..232).

    Starts from ``base`` (default ``os.environ``) and sets: ``ROS_DOMAIN_ID``,
    ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (removing the deprecated ``ROS_LOCALHOST_ONLY``),
    ``RMW_IMPLEMENTATION=rmw_fastrtps_cpp``, both Fast DDS profile variables, ``AMENT_PREFIX_PATH``
    (this virtualenv first when it holds an ament index), ``PYTHONPATH`` (the checkout first),
    unbuffered output and ``ROS_LOG_DIR`` (``log_dir`` or a folder under the temp dir).
    ``python``: the interpreter the child will run, when it is not ``sys.executable``.
    """
    if not 0 <= domain_id <= 232:
        raise ConfigError(f"ROS domain id {domain_id} out of range 0..232")
    env = dict(os.environ if base is None else base)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_LOCALHOST_ONLY", None)
    env.pop("ROS_STATIC_PEERS", None)
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    profile = str(fastdds_profile_path())
    env["FASTRTPS_DEFAULT_PROFILES_FILE"] = profile
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = profile
    env.pop("RMW_FASTRTPS_USE_QOS_FROM_XML", None)
    if (Path(sys.prefix) / "share" / "ament_index").is_dir():
        env["AMENT_PREFIX_PATH"] = _prepend_path(env.get("AMENT_PREFIX_PATH"), sys.prefix)
    env["PYTHONPATH"] = _prepend_path(env.get("PYTHONPATH"), str(repo_root()))
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
    logs = log_dir if log_dir is not None else Path(tempfile.gettempdir()) / "nre_ros_logs"
    env["ROS_LOG_DIR"] = str(logs)
    if python is not None and Path(python).resolve() != Path(sys.executable).resolve():
        # Let the other interpreter's bootstrapper compute its own library path.
        env.pop(_BOOTSTRAP_GUARD, None)
        own = str(Path(sys.prefix).resolve())
        kept = [
            p
            for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep)
            if p and not str(Path(p).resolve()).startswith(own)
        ]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(kept)
    if extra:
        env.update(extra)
    return env
