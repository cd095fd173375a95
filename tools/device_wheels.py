#!/usr/bin/env python3
"""Helpers of ``tools/device_wheels.sh``: the ROS 2 wheel set for a GPU host without ROS.

The GPU host installs carried wheels with ``pip install --no-deps --target DIR``. The ROS 2 PyPI
wheels do not survive that as they are: they put their Python packages and shared libraries in the
wheel's ``.data/data/lib/`` tree (``<prefix>/lib/python3.X/site-packages``, ``<prefix>/lib``), and
``pip --target`` silently drops a ``lib/`` data folder (it only keeps the pure/platlib part of it).
So each wheel is rewritten ("repacked"), keeping name, version and tags:

- ``X.data/data/lib/python3.Y/site-packages/*`` -> the wheel root (importable from ``DIR``);
- every other ``X.data/data/*`` (``lib/*.so``, ``share/`` with the ament index) ->
  ``ros2_prefix/*`` in the wheel root, i.e. ``DIR/ros2_prefix`` once installed: the
  ``AMENT_PREFIX_PATH``, and ``DIR/ros2_prefix/lib`` goes on ``LD_LIBRARY_PATH`` together with the
  ``DIR/ros_*.libs`` folders of the bundled third-party libraries;
- dropped, as a runtime never reads them: C/C++ headers (``include/``), CMake config files
  (``share/*/cmake``), ``__pycache__``, and the duplicate copies of versioned shared libraries that
  a zip cannot store as symbolic links (``libfastrtps.so`` + ``.so.2.14`` + ``.so.2.14.5``: only the
  SONAME file is kept, ~10 MB of the ~44 MB);
- the ``RECORD`` is rewritten with the new paths and hashes.

Subcommands (stdlib only; ``closure`` runs inside the build virtualenv, whose metadata it reads):

    closure REQ... [--exclude NAME...]      name==version of the installed dependency closure
    repack WHEEL OUTDIR                     the rewrite above
    pack-prefix --manifest F --prefix P --name N --version V --tag cp312 OUTDIR
                                            a wheel of what a CMake install put into P (tf2_msgs)
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PREFIX_DIR = "ros2_prefix"
_SITE = re.compile(r"^lib/python3\.\d+t?/(site|dist)-packages/")


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------------- closure
def closure(reqs: list[str], exclude: set[str]) -> list[str]:
    """Installed distributions reachable from ``reqs`` (with extras), as ``name==version``."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip's vendored copy
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

    dists = {canon(d.metadata["Name"]): d for d in metadata.distributions()}
    seen: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = []
    for r in reqs:
        q = Requirement(r)
        todo.append((canon(q.name), frozenset(q.extras)))
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        key = todo.pop()
        if key in done:
            continue
        done.add(key)
        name, extras = key
        if name in exclude:
            continue
        d = dists.get(name)
        if d is None:
            raise SystemExit(f"closure: {name} is required but not installed in {sys.prefix}")
        seen[name] = f"{d.metadata['Name']}=={d.version}"
        for spec in d.requires or []:
            q = Requirement(spec)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if q.marker is not None and not any(q.marker.evaluate(e) for e in envs):
                continue
            todo.append((canon(q.name), frozenset(q.extras)))
    return sorted(seen.values(), key=str.lower)


# -------------------------------------------------------------------------------------- wheels
def _hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def _soname(data: bytes) -> str | None:
    """DT_SONAME of an ELF shared library (readelf from binutils), None if unknown."""
    if not data.startswith(b"\x7fELF") or shutil.which("readelf") is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".so") as f:
        f.write(data)
        f.flush()
        out = subprocess.run(["readelf", "-d", f.name], capture_output=True, text=True).stdout
    m = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", out)
    return m.group(1) if m else None


def _write_wheel(out: Path, files: list[tuple[str, bytes, int]], dist_info: str) -> None:
    """Write ``files`` (arcname, data, unix mode) + a fresh RECORD as the wheel ``out``."""
    tmp = out.with_suffix(".tmp")
    record = io.StringIO()
    w = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for name, data, mode in sorted(files, key=lambda f: (f[0].startswith(dist_info), f[0])):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = ((mode or 0o644) & 0xFFFF) << 16
            z.writestr(info, data)
            w.writerow([name, _hash(data), len(data)])
        rec = f"{dist_info}/RECORD"
        w.writerow([rec, "", ""])
        info = zipfile.ZipInfo(rec, date_time=(2020, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        z.writestr(info, record.getvalue())
    os.replace(tmp, out)


def _map_data_path(rest: str) -> str | None:
    """Where a file of ``<prefix>/rest`` goes in a repacked wheel (None: dropped)."""
    if "__pycache__/" in rest or rest.endswith((".pyc", ".pyo")):
        return None
    m = _SITE.match(rest)
    if m:
        return rest[m.end() :]
    if rest.startswith("include/") or re.match(r"^share/[^/]+/cmake/", rest):
        return None
    return f"{PREFIX_DIR}/{rest}"


def repack(src: Path, outdir: Path) -> Path:
    """The --target-friendly, slimmed copy of wheel ``src`` in ``outdir`` (same file name)."""
    outdir.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, bytes, int]] = []
    dist_info = ""
    with zipfile.ZipFile(src) as z:
        for info in z.infolist():
            name = info.filename
            if name.endswith("/"):
                continue
            top, _, rest = name.partition("/")
            mode = info.external_attr >> 16
            if top.endswith(".dist-info"):
                dist_info = top
                if rest == "RECORD":
                    continue
                files.append((name, z.read(info), mode))
                continue
            if top.endswith(".data"):
                kind, _, sub = rest.partition("/")
                if kind in ("purelib", "platlib"):
                    target: str | None = sub
                elif kind == "data":
                    target = _map_data_path(sub)
                elif kind == "headers":
                    target = None
                else:  # scripts: keep as they are
                    target = name
            elif "__pycache__/" in name:
                target = None
            else:
                target = name
            if target is not None:
                files.append((target, z.read(info), mode))
    if not dist_info:
        raise SystemExit(f"repack: {src} has no .dist-info")
    # Versioned shared libraries stored as full copies: keep the one named like its SONAME.
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (name, _data, _) in enumerate(files):
        base = name.rsplit("/", 1)[-1]
        if re.match(r"^lib.+\.so(\.\d+)*$", base):
            stem = re.sub(r"\.so(\.\d+)*$", "", base)
            groups.setdefault((name.rsplit("/", 1)[0], stem), []).append(i)
    drop: set[int] = set()
    for idx in groups.values():
        if len(idx) < 2 or len({hashlib.sha256(files[i][1]).digest() for i in idx}) != 1:
            continue
        soname = _soname(files[idx[0]][1])
        keep = [i for i in idx if files[i][0].rsplit("/", 1)[-1] == soname]
        if keep:
            drop.update(i for i in idx if i != keep[0])
    files = [f for i, f in enumerate(files) if i not in drop]
    names = [f[0] for f in files]
    if len(names) != len(set(names)):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise SystemExit(f"repack: {src.name}: two files map to {dup[:3]}")
    out = outdir / src.name
    _write_wheel(out, files, dist_info)
    return out


def pack_prefix(
    manifest: Path, prefix: Path, name: str, version: str, tag: str, outdir: Path
) -> Path:
    """A wheel of the files a CMake install listed in ``manifest`` under ``prefix``, laid out
    like a repacked ROS wheel."""
    prefix = prefix.resolve()
    files: list[tuple[str, bytes, int]] = []
    lines = dict.fromkeys(x.strip() for x in manifest.read_text().splitlines())  # listed twice
    for line in lines:
        p = Path(line)
        if not line or not p.is_file():
            continue
        rest = p.resolve().relative_to(prefix).as_posix() if p.is_absolute() else str(p)
        target = _map_data_path(rest)
        if target is not None:
            files.append((target, p.read_bytes(), p.stat().st_mode))
    if not any(f[0].endswith(".py") for f in files):
        raise SystemExit(f"pack-prefix: no Python files in {manifest}")
    dist = re.sub(r"[-.]+", "_", name)
    dist_info = f"{dist}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: generated ROS 2 interface package (tools/gen_interfaces.sh)\n"
    wheel = f"Wheel-Version: 1.0\nGenerator: nre_localization tools/device_wheels.py\nRoot-Is-Purelib: false\nTag: {tag}-{tag}-linux_x86_64\n"
    tops = sorted({f[0].split("/", 1)[0] for f in files if f[0].endswith(".py")})
    files += [
        (f"{dist_info}/METADATA", meta.encode(), 0o644),
        (f"{dist_info}/WHEEL", wheel.encode(), 0o644),
        (f"{dist_info}/top_level.txt", ("\n".join(tops) + "\n").encode(), 0o644),
    ]
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / f"{dist}-{version}-{tag}-{tag}-linux_x86_64.whl"
    _write_wheel(out, files, dist_info)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("closure")
    c.add_argument("reqs", nargs="+")
    c.add_argument("--exclude", nargs="*", default=[])
    r = sub.add_parser("repack")
    r.add_argument("wheel", type=Path)
    r.add_argument("outdir", type=Path)
    p = sub.add_parser("pack-prefix")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--prefix", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("outdir", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "closure":
        print("\n".join(closure(a.reqs, {canon(x) for x in a.exclude})))
    elif a.cmd == "repack":
        print(repack(a.wheel, a.outdir))
    else:
        print(pack_prefix(a.manifest, a.prefix, a.name, a.version, a.tag, a.outdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
