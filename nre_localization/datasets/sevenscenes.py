"""Microsoft 7-Scenes layout: ``seq-NN/frame-XXXXXX.{color.png|color.jpg,depth.png,pose.txt}``.

Poses are 4x4 camera->world text matrices; depth is 16-bit millimetres with 65535 (and 0) invalid.
Split files list ``sequenceN`` lines. Intrinsics (not in the files): the depth camera has
f = 585, c = (320, 240); the colour camera is usually taken as f = 525, c = (320, 240), and the
depth is treated as registered to the colour frame's pose (the 7-Scenes convention).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from nre_localization.datasets.common import CameraSpec, PosedImage, Scene
from nre_localization.datasets.poses import invert_pose
from nre_localization.errors import DatasetError, InputError

COLOR_CAMERA = CameraSpec("PINHOLE", 640, 480, (525.0, 525.0, 320.0, 240.0))
DEPTH_CAMERA = CameraSpec("PINHOLE", 640, 480, (585.0, 585.0, 320.0, 240.0))


def is_7scenes_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and any(path.glob("seq-*/frame-*.pose.txt"))


def read_pose(path: Path) -> np.ndarray:
    """``frame-*.pose.txt`` -> camera->world ``[4, 4]`` (rotation re-orthonormalised)."""
    path = Path(path)
    try:
        T = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: malformed pose file ({str(e).splitlines()[0]})") from None
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise InputError(f"{path}: expected a finite 4x4 matrix, got shape {T.shape}")
    r = T[:3, :3]
    if np.abs(r.T @ r - np.eye(3)).max() > 1e-3 or np.abs(T[3] - [0, 0, 0, 1]).max() > 1e-6:
        raise InputError(f"{path}: not a rigid transform")
    # The files hold 8 significant digits: snap the rotation to the nearest proper rotation.
    u, _, vt = np.linalg.svd(r)
    T = T.copy()
    T[:3, :3] = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    return T


def read_depth(path: Path, scale: float = 1e-3) -> np.ndarray:
    """16-bit depth PNG -> metres ``float32 [H, W]``; invalid (0 or 65535) -> 0."""
    path = Path(path)
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None:
        raise InputError(f"{path}: cannot read depth image")
    if d.ndim != 2:
        raise InputError(f"{path}: depth image must be single-channel")
    out = d.astype(np.float32) * scale
    out[(d == 0) | (d == 65535)] = 0.0
    return out


def _split_sequences(root: Path, split: str) -> list[str] | None:
    if split == "all":
        return None
    f = root / ("TrainSplit.txt" if split == "train" else "TestSplit.txt")
    if split not in ("train", "test"):
        raise InputError(f"unknown 7-Scenes split {split!r} (train, test or all)")
    if not f.is_file():
        raise DatasetError(f"{f}: split file not found")
    seqs = []
    for line in f.read_text().splitlines():
        m = re.search(r"(\d+)", line)
        if m:
            seqs.append(f"seq-{int(m.group(1)):02d}")
    return seqs


def load_7scenes_scene(
    path: Path,
    split: str = "train",
    color_camera: CameraSpec = COLOR_CAMERA,
    depth_camera: CameraSpec = DEPTH_CAMERA,
) -> Scene:
    """A 7-Scenes scene folder as a Scene with depth (``split``: train, test or all)."""
    root = Path(path)
    if not is_7scenes_folder(root):
        raise DatasetError(f"{root}: not a 7-Scenes folder (no seq-*/frame-*.pose.txt)")
    seqs = _split_sequences(root, split)
    seq_dirs = sorted(p for p in root.glob("seq-*") if p.is_dir())
    if seqs is not None:
        seq_dirs = [p for p in seq_dirs if p.name in seqs]
    images = []
    for sd in seq_dirs:
        for pose_file in sorted(sd.glob("frame-*.pose.txt")):
            stem = pose_file.name[: -len(".pose.txt")]
            color = next(
                (
                    sd / f"{stem}.color.{e}"
                    for e in ("png", "jpg")
                    if (sd / f"{stem}.color.{e}").is_file()
                ),
                None,
            )
            if color is None:
                raise InputError(f"{sd / (stem + '.color.png')}: colour image not found")
            depth = sd / f"{stem}.depth.png"
            images.append(
                PosedImage(
                    name=f"{sd.name}/{color.name}",
                    camera_id=1,
                    T_cam_world=invert_pose(read_pose(pose_file)),
                    path=color,
                    depth_path=depth if depth.is_file() else None,
                )
            )
    if not images:
        raise DatasetError(f"{root}: no frames in split {split!r}")
    return Scene(
        cameras={1: color_camera},
        images=images,
        source=f"7scenes:{root}",
        depth_camera=depth_camera,
        depth_scale=1e-3,
    )
