#!/usr/bin/env python3
"""Build the NRE training data (``.traindata/`` by default), reproducibly and offline-ready.

Everything comes from registry packages fetched with their ordinary clients at pinned versions, and
every archive's SHA-256 is checked against the pin below (a changed archive stops the build):

* real photographs: Debian wallpaper packages and Stellarium's photographic landscapes
  (``apt-get download`` + ``dpkg-deb -x``, no install) and scikit-image's bundled sample images
  (``pip download --no-deps`` of one fixed wheel, read from the wheel);
* material textures (photographed wood, stone, fabric, carpet, paper, tiles...) for the surfaces of
  the 3D training scenes (training/scenes.py): the furniture libraries of Debian's
  ``sweethome3d-furniture`` (zip archives; CC0 and CC-BY 3.0 parts), the paper scans of
  ``mypaint-data-extras`` (CC0) and ground textures of ``stellarium-data``.

A fixed list of files is kept (photographs and photographed materials only, no illustrations or
renders). Outputs: ``<out>/photos/{train,val}/*.jpg`` and ``<out>/textures/{train,val}/*.jpg``
(photos at most ``--max-side`` px, JPEG q92 as in the first data set, so those files are byte for
byte the earlier ones; new files JPEG q90), and ``<out>/MANIFEST.json`` (every package with its
version and SHA-256, every output file with its source, licence and SHA-256). Held-out files
(``VAL``, ``VAL_TEXTURES``) are never trained on. The evaluation sets (../shared/data/strecha,
tum_fr2_desk) are never used. About 18 MB in all.

    .venv/bin/python tools/make_training_data.py --out .traindata
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
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
# Photographic landscapes (several tiles of one panorama are joined side by side; transparent
# sky is filled with a plain sky colour).
STELLARIUM = "stellarium-data=0.22.2-1"
STELLARIUM_LICENCE = (
    "GPL-2+ (stellarium-data copyright, Files: *; landscape photographs by Fabien Chereau "
    "(garching) and Johan Meuris / Robert Spearman (hurricane))"
)
_LS = "usr/share/stellarium/landscapes"
STELLARIUM_PHOTOS = {
    **{f"garching{i}": [f"{_LS}/garching/garching-gl{i}.png"] for i in range(1, 5)},
    "hurricane_a": [f"{_LS}/hurricane/hurricane{i}.png" for i in range(1, 5)],
    "hurricane_b": [f"{_LS}/hurricane/hurricane{i}.png" for i in range(5, 9)],
}
STELLARIUM_TEXTURES = {
    "stellarium_garching_ground": f"{_LS}/garching/garching-ground3.png",
    "stellarium_guereins_ground": f"{_LS}/guereins/guereinsb.png",
}

# Material textures. sweethome3d-furniture: zip libraries (.sh3f) of furniture models; only
# photographed material maps are taken (no UV atlases, labels or drawings).
SH3D = "sweethome3d-furniture=1.8-1"
_SH3D_DIR = "usr/share/sweethome3d/furniture"
SH3D_LIBS = {
    # archive: (output prefix, licence)
    "BlendSwap-CC-0.sh3f": ("bs0", "CC0 (sweethome3d-furniture copyright, BlendSwap-CC-0/*)"),
    "BlendSwap-CC-BY.sh3f": (
        "bsby",
        "CC-BY-3.0, The BlendSwap contributors (sweethome3d-furniture copyright)",
    ),
    "Scopia.sh3f": (
        "scopia",
        "CC-BY-3.0, Scopia Visual Interfaces Systems, s.l. (sweethome3d-furniture copyright)",
    ),
}
SH3D_TEXTURES = {
    "BlendSwap-CC-0.sh3f": [
        f"blendswap-cc-0/{n}"
        for n in (
            "rock2/rock02.jpg",
            "upperCabinet/american_oak.jpg",
            "oakChair/oak.jpg",
            "wardrobeWithSlidingDoors/wood12.jpg",
            "antiqueChair/cherry.jpg",
            "lowerCabinet/marble_14.jpg",
            "teddyBear/teddy.jpg",
            "tableWithTablecloth/red_checked.jpg",
            "bedWithTexture/wood10.jpg",
            "bookcase/wood11.jpg",
            "chair/wood.jpg",
            "chair/tecido.jpg",
            "table/Wood_013_COLOR.jpg",
            "couch2/Fabric_011_COLOR.jpg",
            "plantie/ground.jpg",
            "littlePlant/mutt.jpg",
            "rangeHood/Metal009_2K_Color.jpg",
            "televisionCabinet/wood9.jpg",
            "rock3/rock03.jpg",
            "stoneLantern/1K-cave_rock_1-diffuse.jpg",
            "chair2/NY_Chaise_Red.jpg",
            "cupcake/sponge-cake-out-of-oven-8n-10.jpg",
            "tatami/tatami.jpg",
            "couch/Plain001.jpg",
            "chairWithCushion/Denim_001_COLOR.jpg",
            "rock1/rock01.jpg",
        )
    ],
    "BlendSwap-CC-BY.sh3f": [
        f"blendswap-cc-by/{n}"
        for n in (
            "chair_deck/wood5.jpg",
            "chest/wood.jpg",
            "wheelchair/Leather0056_2_S.jpg",
            "sofa3/dark-brown_leather.jpg",
            "fountain/swimming-pool-top-cyan.jpg",
            "fountain/white-marble.jpg",
            "tvStand/wood.jpg",
            "kitchenChair/Wood_plancks_003_COLOR.jpg",
            "plaidChair/cloth-texture-19.jpg",
            "plaidChair/pine.jpg",
            "cornerSofa/Fabric_04.jpg",
            "yuccaPlant/wood.jpg",
        )
    ],
    "Scopia.sh3f": [
        f"scopia/{n}"
        for n in (
            "ext_table/tipical.jpg",
            "children_chair/pine.jpg",
            "dog-house/dog-house-texture.jpg",
            "table-on-trestles/texture-bois.jpg",
            "burlap_sofa/bump_sofa.jpg",
            "chair/wood_bump.jpg",
            "rattanArmchair/textureRattan.jpg",
            "bathroom3/madera_jabonera.jpg",
            "round-table/oaktexture.jpg",
            "bowlWithSalad/textureWoodBowl.jpg",
            "double_vanity/dark_wood.jpg",
            "doormat/texturedoormat.jpeg",
            "garden-hut/gardenHutTexture.jpg",
            "puerta/tilewood.jpg",
            "hedgeTextured/hedge-displacement-texture.jpg",
            "saloon_lamp/woodred_little.jpg",
            "saloon_lamp/pulido2.jpg",
            "kids_wooden_desk/rojiza_tileable.jpg",
            "ryokanChair/woodTexture.jpg",
            "cypress/cypressTrunk.jpg",
            "cypress/cypressLeaves.jpg",
            "captains-bed/woodtexture.jpg",
            "box_room/mohogany_light.jpg",
            "bar_table/wood_table_chairs.jpg",
            "bathroom_vanity/marble_public_dom_clair.jpg",
            "curtain/beige_pattern.jpg",
            "wooden_office_alder_table/alder_tileable.jpg",
            "aquarium/pebbles.jpg",
            "coffee-table2/fustapija_tileable.jpg",
            "coffee-table2/little_stones.jpg",
            "littlebank/madera_pino.jpg",
            "swimming-pool/tile-ext-border.jpg",
            "swimming-pool/swimming-pool-tiles.jpg",
            "child_swing/pine-wood.jpg",
            "contemp_living_room/big_brown_wood_tile.jpg",
            "garage-door2/textureDoor.jpg",
            "hammock/fabricTexture.jpg",
            "crib/littlebrown.jpg",
            "birthday_cake/cake_chocolat_texture.jpg",
            "birthday_cake/cake_texture.jpg",
            "futon/wallpaper-chiyogami.jpg",
            "futon/wallpaper-japanese-pink-flowers.jpg",
            "living_lamp/tela_lamp_tile.jpg",
            "living_lamp/little_wood.jpg",
            "dining_room/butcherblock_tileable.jpg",
            "sandpit/wood-and-sand.jpg",
            "step-ladder-wood/wood-texture.jpg",
            "saloon_table/rojiza.jpg",
            "living_room_table/beige_tileable.jpg",
            "turn-window/wood.jpg",
        )
    ],
}
MYPAINT = "mypaint-data-extras=2.0.1-9"
MYPAINT_LICENCE = (
    "CC0-1.0 (mypaint-data-extras copyright, backgrounds/ramon/*, backgrounds/mrmamurk/*)"
)
MYPAINT_TEXTURES = [
    f"usr/share/mypaint/backgrounds/{n}.png"
    for n in (
        "ramon/HR_Canvas 01",
        "ramon/HR_Canvas 02",
        "ramon/HR_Cork",
        "ramon/HR_RoughPaper",
        "ramon/HR_WaterColor",
        "ramon/HR_PastelPaper 01",
        "mrmamurk/mamurk_a_1",
        "mrmamurk/mamurk_b_1",
        "mrmamurk/mamurk_f_1",
    )
]

# SHA-256 of every archive at its pinned version (checked after download).
SHA256 = {
    "lomiri-wallpapers-16.04=20.04.0-2": (
        "a99ff6a3bfe451e4cc0682ecb3cc82e71740626d59e4845ae34a0a0e45421eab"
    ),
    "lomiri-wallpapers-20.04=20.04.0-2": (
        "d44e89b8473aafe64a5b678f014862dc31335aaaf18665c544d985d854f1a709"
    ),
    "mate-backgrounds=1.26.0-1": "7bf4c2209f34b4f61ba6d24c8b58c28b361e82e4b943aae6d42c030169af9e04",
    "plasma-workspace-wallpapers=4:5.27.5-2": (
        "32cd18b71c8c938a18b3b351f217c02ac590e323caa3cf322fbb875ce8892f8b"
    ),
    STELLARIUM: "45aaebf39a814acbd6dcccea058c2f5651bcb5635599da03a215feeb51f4d5a5",
    SH3D: "3ccb90c63f9525e887a767b9cd5c8b6933b8b6b2973a615a5359ee68a2118668",
    MYPAINT: "9d5971baa5eb411309940ea2cfe11aa7f6ec2c39e7f9ecd2bbef81fc6404b1d1",
    "scikit-image==0.26.0": "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
}
SKY_BGR = (235, 215, 200)  # fill of transparent sky in landscape tiles

SKIMAGE = ("scikit-image==0.26.0", "BSD-3-Clause / CC0 (skimage/data/README)")
# the one wheel whose SHA-256 is pinned (any Python can fetch it: pip download --python-version)
SKIMAGE_WHEEL = ["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64"]
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
# Held out for validation (never trained on); names are output stems. VAL is the photo set of the
# first runs (its pairs define the homographic and card-scene validation curves: keep it as is).
VAL = {"Bridge_by_Sander_Klootwijk", "Garden", "coffee", "EveningGlow"}
VAL_TEXTURES = {
    "bs0_rock1_rock01",
    "bsby_cornerSofa_Fabric_04",
    "scopia_coffee-table2_little_stones",
}
VAL_TEXTURES |= {"mypaint_ramon_HR_Cork"}


def _run(cmd: list[str], cwd: Path) -> None:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr.strip()[-2000:]}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checked(spec: str, path: Path, manifest: dict) -> Path:
    sha = _sha256(path)
    if SHA256.get(spec) not in (None, sha):
        sys.exit(f"{path.name}: SHA-256 {sha} differs from the pinned {SHA256[spec]} ({spec})")
    manifest["packages"][spec] = {"archive": path.name, "sha256": sha}
    return path


def _deb(spec: str, cache: Path, manifest: dict) -> Path:
    """Download (once) and unpack (once) a pinned Debian package; returns the unpacked root."""
    name = spec.split("=")[0]
    debs = sorted(cache.glob(f"{name}_*.deb"))
    if not debs:
        _run(["apt-get", "download", spec], cache)
        debs = sorted(cache.glob(f"{name}_*.deb"))
    deb = _checked(spec, debs[-1], manifest)
    root = cache / name
    if not root.is_dir():
        _run(["dpkg-deb", "-x", str(deb.resolve()), str(root.resolve())], cache)
    return root


def _stem(rel: str) -> str:
    p = Path(rel)
    return p.parts[3] if "wallpapers" in p.parts and "contents" in p.parts else p.stem


def _decode(data: bytes, what: str) -> np.ndarray:
    """BGR uint8; an alpha channel is composited over a plain sky colour."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        sys.exit(f"cannot decode {what}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        a = img[..., 3:4].astype(np.float32) / 255.0
        sky = np.array(SKY_BGR, np.float32)
        img = (img[..., :3].astype(np.float32) * a + sky * (1 - a) + 0.5).astype(np.uint8)
    return img


def _store(img: np.ndarray, out: Path, max_side: int, quality: int = 92) -> str:
    h, w = img.shape[:2]
    f = min(1.0, max_side / max(h, w))
    if f < 1.0:
        img = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
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
    for kind in ("photos", "textures"):
        if (out / kind).is_dir():
            shutil.rmtree(out / kind)  # no stale files from an earlier selection
        for split in ("train", "val"):
            (out / kind / split).mkdir(parents=True, exist_ok=True)
    manifest: dict = {
        "generator": "tools/make_training_data.py",
        "packages": {},
        "files": [],
    }

    def add(kind: str, stem: str, img: np.ndarray, source: str, licence: str, q: int) -> None:
        held = VAL if kind == "photos" else VAL_TEXTURES
        dst = out / kind / ("val" if stem in held else "train") / f"{stem}.jpg"
        if dst.exists():
            sys.exit(f"duplicate output name {dst}")
        sha = _store(img, dst, args.max_side, q)
        entry = {"file": str(dst.relative_to(out)), "source": source, "licence": licence}
        manifest["files"].append({**entry, "sha256": sha})

    # real photographs
    for spec, (licence, files) in DEBIAN.items():
        root = _deb(spec, cache, manifest)
        for rel in files:
            if not (root / rel).is_file():
                sys.exit(f"missing {rel} in {spec}")
            img = _decode((root / rel).read_bytes(), rel)
            add("photos", _stem(rel), img, f"deb {spec}: {rel}", licence, 92)
    root = _deb(STELLARIUM, cache, manifest)
    for stem, rels in STELLARIUM_PHOTOS.items():
        tiles = [_decode((root / r).read_bytes(), r) for r in rels]
        img = np.concatenate(tiles, axis=1)
        src = f"deb {STELLARIUM}: " + " + ".join(rels) + " (joined side by side)"
        add("photos", stem, img, src, STELLARIUM_LICENCE, 90)

    wheels = sorted(cache.glob("scikit_image-0.26.0-cp311-*.whl"))
    if not wheels:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
            cmd += [*SKIMAGE_WHEEL, "-d", str(cache.resolve()), SKIMAGE[0]]
            _run(cmd, Path(tmp))
        wheels = sorted(cache.glob("scikit_image-0.26.0-cp311-*.whl"))
    with zipfile.ZipFile(_checked(SKIMAGE[0], wheels[-1], manifest)) as zf:
        for fname in SKIMAGE_FILES:
            img = _decode(zf.read(f"skimage/data/{fname}"), fname)
            src = f"pypi {SKIMAGE[0]}: skimage/data/{fname}"
            add("photos", Path(fname).stem, img, src, SKIMAGE[1], 92)

    # material textures (duplicates across libraries, byte-identical, are kept once)
    seen: set[str] = set()
    root = _deb(SH3D, cache, manifest)
    for lib, members in SH3D_TEXTURES.items():
        prefix, licence = SH3D_LIBS[lib]
        with zipfile.ZipFile(root / _SH3D_DIR / lib) as zf:
            for member in members:
                data = zf.read(member)
                digest = hashlib.sha256(data).hexdigest()
                if digest in seen:
                    continue
                seen.add(digest)
                parts = Path(member).parts
                stem = f"{prefix}_{parts[-2]}_{Path(parts[-1]).stem}"
                src = f"deb {SH3D}: {_SH3D_DIR}/{lib}: {member}"
                add("textures", stem, _decode(data, member), src, licence, 90)
    root = _deb(MYPAINT, cache, manifest)
    for rel in MYPAINT_TEXTURES:
        parts = Path(rel).parts
        stem = "mypaint_" + f"{parts[-2]}_{Path(parts[-1]).stem}".replace(" ", "")
        img = _decode((root / rel).read_bytes(), rel)
        add("textures", stem, img, f"deb {MYPAINT}: {rel}", MYPAINT_LICENCE, 90)
    root = cache / "stellarium-data"
    for stem, rel in STELLARIUM_TEXTURES.items():
        img = _decode((root / rel).read_bytes(), rel)
        add("textures", stem, img, f"deb {STELLARIUM}: {rel}", STELLARIUM_LICENCE, 90)

    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    files = manifest["files"]
    total = sum(p.stat().st_size for p in out.rglob("*.jpg"))
    for kind in ("photos", "textures"):
        n = sum(1 for m in files if m["file"].startswith(kind + "/"))
        n_val = sum(1 for m in files if m["file"].startswith(kind + "/val/"))
        print(f"{kind}: {n} ({n_val} held out for validation)")
    print(f"{total / 1e6:.1f} MB in {out}")


if __name__ == "__main__":
    main()
