#!/usr/bin/env python3
"""Regenerate ``demo_data/tum_fr2_desk/`` from ``../shared/data/tum_fr2_desk`` (maintainers only).

The committed demo data is a CC BY 4.0 subset of the TUM RGB-D benchmark (freiburg2_desk, Sturm et
al., IROS 2012): the 20 colour frames re-encoded as JPEG (quality 92, about 1.3 MB in all instead of
10 MB of PNG), the ground truth trimmed to the frames' span +-0.5 s, the calibration, and
``map_frames.txt`` / ``query_frames.txt`` (even frames build the map, odd frames are replayed as
queries). Deterministic: same input, same bytes.

    .venv/bin/python tools/make_demo_data.py [--src ../shared/data/tum_fr2_desk]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "demo_data" / "tum_fr2_desk"
ATTRIBUTION = """\
# Attribution

The files in this folder are a subset of the TUM RGB-D benchmark sequence
`rgbd_dataset_freiburg2_desk`, licensed under the Creative Commons Attribution 4.0 International
licence (CC BY 4.0, https://creativecommons.org/licenses/by/4.0/).

    J. Sturm, N. Engelhard, F. Endres, W. Burgard and D. Cremers,
    "A Benchmark for the Evaluation of RGB-D SLAM Systems", IROS 2012.
    https://cvg.cit.tum.de/data/datasets/rgbd-dataset

Changes made here: 20 consecutive colour frames only, re-encoded from PNG to JPEG (quality 92);
the ground-truth trajectory trimmed to the frames' time span +-0.5 s; the camera calibration
written as `camera.yaml`; the split files `map_frames.txt` and `query_frames.txt` added.
Regenerate with `tools/make_demo_data.py`.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, default=ROOT / ".." / "shared" / "data" / "tum_fr2_desk")
    ap.add_argument("--quality", type=int, default=92)
    a = ap.parse_args(argv)
    src: Path = a.src
    if not (src / "rgb.txt").is_file():
        print(f"make_demo_data: {src}/rgb.txt not found", file=sys.stderr)
        return 2
    if DEST.exists():
        shutil.rmtree(DEST)
    (DEST / "rgb").mkdir(parents=True)
    entries = []
    for line in (src / "rgb.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            stamp, name = line.split()[:2]
            entries.append((stamp, name))
    lines = ["# color images (JPEG re-encoding of the TUM PNGs)", "# timestamp filename"]
    map_frames, query_frames = [], []
    for k, (stamp, name) in enumerate(entries):
        img = cv2.imread(str(src / name), cv2.IMREAD_COLOR)
        out = f"rgb/{Path(name).stem}.jpg"
        ok = cv2.imwrite(str(DEST / out), img, [cv2.IMWRITE_JPEG_QUALITY, a.quality])
        if not ok:
            print(f"make_demo_data: cannot write {out}", file=sys.stderr)
            return 2
        lines.append(f"{stamp} {out}")
        (map_frames if k % 2 == 0 else query_frames).append(out)
    (DEST / "rgb.txt").write_text("\n".join(lines) + "\n")
    t0, t1 = float(entries[0][0]) - 0.5, float(entries[-1][0]) + 0.5
    gt = []
    for line in (src / "groundtruth.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip() or t0 <= float(line.split()[0]) <= t1:
            gt.append(line)
    (DEST / "groundtruth.txt").write_text("\n".join(gt) + "\n")
    shutil.copyfile(src / "camera.yaml", DEST / "camera.yaml")
    (DEST / "map_frames.txt").write_text("\n".join(map_frames) + "\n")
    (DEST / "query_frames.txt").write_text("\n".join(query_frames) + "\n")
    (DEST / "ATTRIBUTION.md").write_text(ATTRIBUTION)
    size = sum(p.stat().st_size for p in DEST.rglob("*") if p.is_file())
    print(f"wrote {DEST} ({len(entries)} frames, {size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
