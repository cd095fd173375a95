"""Clean Fast DDS shared-memory files left in /dev/shm by killed processes.

Fast DDS keeps, per participant, a segment ``fastrtps_<16 hex>`` with a lock file ``..._el`` and,
per listening port, ``fastrtps_port<N>`` + ``..._el`` + ``sem.fastrtps_port<N>_mutex`` (newer
releases use a ``fastdds_`` prefix). A live owner holds a ``flock`` on the ``_el`` file. Killed
processes leave all of these behind; one test run was seen to hang while they were present.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")
_PREFIXES = ("fastrtps_", "fastdds_", "sem.fastrtps_", "sem.fastdds_")
_LOCK_SUFFIXES = ("_el", "_sl")
_DDS_LIBRARY = re.compile(r"lib(fastrtps|fastdds)[^/]*\.so|/dev/shm/(fastrtps|fastdds)_")


def fastdds_processes_running(exclude_self: bool = True) -> list[int]:
    """Pids of live processes that have the Fast DDS library mapped (read from /proc/*/maps)."""
    pids: list[int] = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if exclude_self and pid == me:
            continue
        try:
            maps = (entry / "maps").read_text(errors="replace")
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if _DDS_LIBRARY.search(maps):
            pids.append(pid)
    return pids


def _is_locked(path: Path) -> bool:
    try:
        with open(path, "ab") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except OSError:
        return True  # cannot tell: treat as in use


def _fastdds_files(shm_dir: Path) -> list[Path]:
    try:
        return [p for p in shm_dir.iterdir() if p.name.startswith(_PREFIXES)]
    except FileNotFoundError:
        return []


def _owner_stem(name: str) -> str:
    """The resource a file belongs to: segment/port name without lock or mutex decorations."""
    if name.startswith("sem."):
        name = name[len("sem.") :]
    for suffix in (*_LOCK_SUFFIXES, "_mutex"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def clean_stale_fastdds_shm(
    shm_dir: Path = SHM_DIR, min_age_s: float = 30.0, others_running: bool | None = None
) -> list[Path]:
    """Remove stale Fast DDS files from ``shm_dir``; return the removed paths.

    With no Fast DDS process alive (other than this one), every such file is stale and all are
    removed. Otherwise only resources whose ``_el``/``_sl`` lock nobody holds and whose files are
    older than ``min_age_s`` go (so another session's live processes are never touched).
    ``others_running``: skip the /proc scan and assume this answer (tests).
    """
    files = _fastdds_files(shm_dir)
    if not files:
        return []
    removed: list[Path] = []
    if others_running is None:
        others_running = bool(fastdds_processes_running())
    if not others_running:
        for path in files:
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
        return removed
    now = time.time()
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(_owner_stem(path.name), []).append(path)
    for members in groups.values():
        locks = [p for p in members if p.name.endswith(_LOCK_SUFFIXES)]
        if not locks or any(_is_locked(lock) for lock in locks):
            continue
        try:
            if any(now - p.stat().st_mtime < min_age_s for p in members):
                continue
        except OSError:
            continue
        for path in members:
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed
