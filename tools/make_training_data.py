#!/usr/bin/env python3
"""Build the photo set for NRE training (``.traindata/`` by default), reproducibly and offline-ready.

Real photographs come from registry packages (fetched with their ordinary clients, pinned versions):
Debian wallpaper packages (``apt-get download`` + ``dpkg-deb -x``, no install) and scikit-image's
bundled sample images (``pip download --no-deps``, read from the wheel). A fixed list of files that are
photographs (not illustrations) is kept; each is resized to at most ``--max-side`` pixels and stored as
JPEG (quality 92) under ``<out>/photos/{train,val}/``; ``<out>/MANIFEST.json`` records sources,
licences and SHA-256 of every output. The evaluation sets (../shared/data/strecha, tum_fr2_desk) are
never used. Total size about 20 MB at the default max side.

The pair sampler (training/pairs.py) turns these photos into homographic pairs at training time.

    .venv/bin/python tools/make_training_data.py --out .traindata
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

DEBIAN = {
    # package=version: (licence, [paths inside the package])
    "lomiri-wallpapers-16.04=20.04.0-2": (
        "CC-BY-SA (Ubuntu wallpaper contest photographers; see the package's copyright file)",
        [
            f"usr/share/backgrounds/{n}.jpg"
            for n in (
                "Bridge_by_Sander_Klootwijk",
                "Dragonfly_by_Bolly",
                "Picture_0B_by_freespace",
                "Picture_1A_by_freespace",
                "Wine_by_Jakkub_Mede",
                "aitzgorri_by_Aitzol_Berasategi",
                "analogpattern_by_Peter_Nerlich",
                "free_by_Peter_Nerlich",
                "friends_by_Aitzol_Berasategi",
                "greentock_by_Peter_Nerlich",
                "life_by_Aitzol_Berasategi",
                "picosdeeuropa_by_Aitzol_Berasategi",
                "seeding_by_Clements_Engelhardt",
                "sunset_by_Aitzol_Berasategi",
            )
        ],
    ),
    "lomiri-wallpapers-20.04=20.04.0-2": (
        "CC-BY-SA (Ubuntu wallpaper contest photographers; see the package's copyright file)",
        ["usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"],
    ),
    "mate-backgrounds=1.26.0-1": (
        "GPL-2+/CC-BY-SA (see the package's copyright file)",
        [
            f"usr/share/backgrounds/mate/nature/{n}.jpg"
            for n in (
                "Aqua",
                "Blinds",
                "Dune",
                "FreshFlower",
                "Garden",
                "GreenMeadow",
                "LadyBird",
                "RainDrops",
                "Storm",
                "TwoWings",
                "Wood",
                "YellowFlower",
            )
        ],
    ),
    "plasma-workspace-wallpapers=4:5.27.5-2": (
        "LGPL-3 / CC-BY-SA (see the package's copyright file)",
        [
            "usr/share/wallpapers/BytheWater/contents/images/1920x1080.jpg",
            "usr/share/wallpapers/ColdRipple/contents/images/1920x1080.jpg",
            "usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg",
            "usr/share/wallpapers/EveningGlow/contents/images/1920x1080.jpg",
            "usr/share/wallpapers/FallenLeaf/contents/images/1920x1080.jpg",
            "usr/share/wallpapers/Grey/contents/images/1920x1080.jpg",
            "usr/share/wallpapers/OneStandsOut/contents/images/1920x1080.jpg",
            "usr/share/wallpapers/Path/contents/images/1920x1080.jpg",
        ],
    ),
}
SKIMAGE = ("scikit-image==0.26.0", "BSD-3-Clause / CC0 (skimage/data/README)")
SKIMAGE_FILES = [
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "motorcycle_left.png",
    "page.png",
    "rocket.jpg",
    "text.png",
]
# Held out for validation (never trained on); names are output stems.
VAL = {"Bridge_by_Sander_Klootwijk", "Garden", "coffee", "EveningGlow"}


def _run(cmd: list[str], cwd: Path) -> None:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr.strip()[-2000:]}")


def _stem(rel: str) -> str:
    p = Path(rel)
    return p.parts[3] if "wallpapers" in p.parts and "contents" in p.parts else p.stem


def _store(img: np.ndarray, out: Path, max_side: int) -> str:
    h, w = img.shape[:2]
    f = min(1.0, max_side / max(h, w))
    if f < 1.0:
        img = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        sys.exit(f"cannot encode {out}")
    out.write_bytes(buf.tobytes())
    return hashlib.sha256(buf.tobytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=".traindata", help="output folder (git-ignored)")
    ap.add_argument("--cache", default="build/traindata_src", help="download/extract cache")
    ap.add_argument("--max-side", type=int, default=1600)
    args = ap.parse_args()
    out, cache = Path(args.out), Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (out / "photos" / split).mkdir(parents=True, exist_ok=True)
    manifest: list[dict[str, str]] = []

    for spec, (licence, files) in DEBIAN.items():
        name = spec.split("=")[0]
        debs = sorted(cache.glob(f"{name}_*.deb"))
        if not debs:
            _run(["apt-get", "download", spec], cache)
            debs = sorted(cache.glob(f"{name}_*.deb"))
        root = cache / name
        if not root.is_dir():
            _run(["dpkg-deb", "-x", str(debs[-1].resolve()), str(root.resolve())], cache)
        for rel in files:
            img = cv2.imread(str(root / rel), cv2.IMREAD_COLOR)
            if img is None:
                sys.exit(f"missing {rel} in {spec}")
            stem = _stem(rel)
            dst = out / "photos" / ("val" if stem in VAL else "train") / f"{stem}.jpg"
            sha = _store(img, dst, args.max_side)
            manifest.append(
                {
                    "file": str(dst.relative_to(out)),
                    "source": f"deb {spec}: {rel}",
                    "licence": licence,
                    "sha256": sha,
                }
            )

    wheels = sorted(cache.glob("scikit_image-*.whl"))
    if not wheels:
        with tempfile.TemporaryDirectory() as tmp:
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "-d",
                    str(cache.resolve()),
                    SKIMAGE[0],
                ],
                Path(tmp),
            )
        wheels = sorted(cache.glob("scikit_image-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as zf:
        for fname in SKIMAGE_FILES:
            data = np.frombuffer(zf.read(f"skimage/data/{fname}"), np.uint8)
            img = cv2.imdecode(data, cv2.IMREAD_COLOR)
            stem = Path(fname).stem
            dst = out / "photos" / ("val" if stem in VAL else "train") / f"{stem}.jpg"
            sha = _store(img, dst, args.max_side)
            manifest.append(
                {
                    "file": str(dst.relative_to(out)),
                    "source": f"pypi {SKIMAGE[0]}: skimage/data/{fname}",
                    "licence": SKIMAGE[1],
                    "sha256": sha,
                }
            )

    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*.jpg"))
    n_val = sum(1 for m in manifest if "/val/" in m["file"])
    print(f"{len(manifest)} photos ({n_val} val), {total / 1e6:.1f} MB in {out}")


if __name__ == "__main__":
    main()
