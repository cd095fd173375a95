"""TUM RGB-D style data: trajectories, image lists, camera YAML files, stamp association.

TUM trajectories are ``timestamp tx ty tz qx qy qz qw``: camera->world (``T_world_cam``), scalar-last
quaternion. This module returns ``T_world_cam`` where it says so and world->camera
``T_cam_world`` in Scenes (the project-wide convention).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from nre_localization.datasets.common import CameraSpec, PosedImage, Scene
from nre_localization.datasets.poses import (
    interpolate_poses,
    invert_pose,
    pose_from_qt,
    qt_from_pose,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_wxyz,
)
from nre_localization.errors import DatasetError, InputError

DEFAULT_MAX_DT = 0.02  # seconds; TUM's associate.py default


@dataclass
class Trajectory:
    """Stamped camera->world poses: ``stamps [N]`` (seconds, increasing), ``T_world_cam [N, 4, 4]``."""

    stamps: np.ndarray
    T_world_cam: np.ndarray
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.stamps)


def read_trajectory(path: Path) -> Trajectory:
    """Read a TUM trajectory file (sorted by stamp on return)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: trajectory file not found")
    stamps, rows = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for ln, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            el = s.replace(",", " ").split()
            try:
                v = [float(x) for x in el]
            except ValueError:
                raise InputError(
                    f"{path}:{ln}: malformed line (expected t tx ty tz qx qy qz qw)"
                ) from None
            if len(v) != 8 or not np.isfinite(v).all():
                raise InputError(f"{path}:{ln}: malformed line (expected t tx ty tz qx qy qz qw)")
            if abs(np.linalg.norm(v[4:8]) - 1.0) > 1e-2:
                raise InputError(
                    f"{path}:{ln}: quaternion norm {np.linalg.norm(v[4:8]):.4f} is not 1"
                )
            stamps.append(v[0])
            rows.append(v[1:])
    if not rows:
        raise InputError(f"{path}: trajectory has no poses")
    arr = np.array(rows)
    st = np.array(stamps)
    order = np.argsort(st, kind="stable")
    poses = pose_from_qt(quat_xyzw_to_wxyz(arr[:, 3:7]), arr[:, :3])
    return Trajectory(st[order], poses[order], path)


def write_trajectory(path: Path, stamps: np.ndarray, T_world_cam: np.ndarray) -> None:
    """Write ``t tx ty tz qx qy qz qw`` lines (camera->world), atomically."""
    path = Path(path)
    q, t = qt_from_pose(np.asarray(T_world_cam).reshape(-1, 4, 4))
    qx = quat_wxyz_to_xyzw(q)
    lines = ["# timestamp tx ty tz qx qy qz qw (camera -> world)"]
    for s, tt, qq in zip(np.asarray(stamps, dtype=np.float64), t, qx, strict=True):
        lines.append(f"{s:.6f} " + " ".join(f"{v:.9f}" for v in (*tt, *qq)))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def read_image_list(path: Path) -> list[tuple[float, str]]:
    """TUM ``rgb.txt``: ``timestamp filename`` lines -> [(stamp, relative path)]."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image list not found")
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for ln, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            el = s.split()
            try:
                out.append((float(el[0]), el[1]))
            except (ValueError, IndexError):
                raise InputError(
                    f"{path}:{ln}: malformed line (expected timestamp filename)"
                ) from None
    return out


def associate(
    traj: Trajectory,
    stamps: np.ndarray,
    max_dt: float = DEFAULT_MAX_DT,
    what: str | list[str] = "",
) -> np.ndarray:
    """Camera->world poses ``[M, 4, 4]`` at ``stamps [M]``.

    A stamp bracketed by two trajectory samples each within ``max_dt`` is interpolated (linear
    translation, slerp); otherwise the nearest sample within ``max_dt`` is used; otherwise
    DatasetError names the trajectory file and the stamp.
    """
    stamps = np.asarray(stamps, dtype=np.float64)
    ts = traj.stamps
    idx = np.searchsorted(ts, stamps)
    lo = np.clip(idx - 1, 0, len(ts) - 1)
    hi = np.clip(idx, 0, len(ts) - 1)
    d_lo = np.abs(stamps - ts[lo])
    d_hi = np.abs(ts[hi] - stamps)
    out = np.zeros((len(stamps), 4, 4))
    src = str(traj.path) if traj.path is not None else "trajectory"
    for k, s in enumerate(stamps):
        if d_lo[k] <= max_dt and d_hi[k] <= max_dt and ts[lo[k]] <= s <= ts[hi[k]]:
            out[k] = interpolate_poses(
                ts[[lo[k], hi[k]]], traj.T_world_cam[[lo[k], hi[k]]], s[None]
            )[0]
        elif min(d_lo[k], d_hi[k]) <= max_dt:
            j = lo[k] if d_lo[k] <= d_hi[k] else hi[k]
            out[k] = traj.T_world_cam[j]
        else:
            gap = min(d_lo[k], d_hi[k])
            label = f" ({what[k] if isinstance(what, list) else what})" if what else ""
            raise DatasetError(
                f"{src}: no pose within {max_dt:g} s of stamp {s:.6f}{label} (nearest {gap:.3f} s away)"
            )
    return out


def _camera_from_values(
    path: Path, w: int, h: int, k: list[float], model: str, d: list[float]
) -> CameraSpec:
    fx, fy, cx, cy = k
    d = [float(v) for v in d]
    model = (model or "plumb_bob").lower()
    if model in ("equidistant", "fisheye", "kannala_brandt"):
        return CameraSpec("OPENCV_FISHEYE", w, h, (fx, fy, cx, cy, *(d + [0.0] * 4)[:4]))
    if model not in ("plumb_bob", "rational_polynomial", "radtan", "none", ""):
        raise InputError(f"{path}: unsupported distortion model {model!r}")
    if not any(d):
        return CameraSpec("PINHOLE", w, h, (fx, fy, cx, cy))
    d8 = (d + [0.0] * 8)[:8]
    if len(d) > 8:
        raise InputError(f"{path}: {len(d)} distortion coefficients (at most 8 supported)")
    if not any(d8[4:]):
        return CameraSpec("OPENCV", w, h, (fx, fy, cx, cy, *d8[:4]))
    return CameraSpec("FULL_OPENCV", w, h, (fx, fy, cx, cy, *d8))


def read_camera_yaml(path: Path) -> CameraSpec:
    """A calibration YAML -> CameraSpec (OpenCV pixel convention, as these files use).

    Accepted forms: flat keys (``width height fx fy cx cy distortion_model D``, as the TUM sample);
    ROS ``camera_info`` YAML (``image_width``, ``camera_matrix.data``, ``distortion_coefficients``);
    OpenCV FileStorage (``%YAML:1.0`` with ``camera_matrix`` / ``distortion_coefficients``
    ``!!opencv-matrix``, ``image_width``). plumb_bob with a non-zero ``k3`` becomes FULL_OPENCV.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: camera file not found")
    text = path.read_text(errors="replace")
    if text.lstrip().startswith("%YAML:1") or "!!opencv-matrix" in text:
        return _read_opencv_yaml(path)
    try:
        import yaml
    except ImportError:  # GPU hosts with only torch / NumPy / OpenCV: flat files still work
        data = _flat_yaml(path, text)
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a YAML mapping of calibration values")
    try:
        if "camera_matrix" in data:
            k = [float(v) for v in data["camera_matrix"]["data"]]
            dist = data.get("distortion_coefficients", {}) or {}
            d = dist.get("data", []) if isinstance(dist, dict) else dist
            return _camera_from_values(
                path,
                int(data["image_width"]),
                int(data["image_height"]),
                [k[0], k[4], k[2], k[5]],
                str(data.get("distortion_model", "plumb_bob")),
                list(d or []),
            )
        return _camera_from_values(
            path,
            int(data["width"]),
            int(data["height"]),
            [float(data[c]) for c in ("fx", "fy", "cx", "cy")],
            str(data.get("distortion_model", "plumb_bob")),
            list(data.get("D", data.get("d", [])) or []),
        )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise InputError(f"{path}: missing or malformed calibration value ({e})") from None


def _flat_yaml(path: Path, text: str) -> dict:
    """``key: value`` / ``key: [a, b]`` lines (the flat calibration form) without PyYAML."""
    out: dict = {}
    for ln, line in enumerate(text.splitlines(), 1):
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        if ":" not in s:
            raise InputError(f"{path}:{ln}: expected 'key: value'")
        k, v = (x.strip() for x in s.split(":", 1))
        if v.startswith("[") and v.endswith("]"):
            out[k] = [float(x) for x in v[1:-1].split(",") if x.strip()]
        else:
            out[k] = v
    return out


def _read_opencv_yaml(path: Path) -> CameraSpec:
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    try:
        if not fs.isOpened():
            raise InputError(f"{path}: OpenCV cannot parse this YAML file")
        kn = fs.getNode("camera_matrix")
        if kn.empty():
            kn = fs.getNode("K")
        k = kn.mat()
        if k is None or k.size != 9:
            raise InputError(f"{path}: no 3x3 camera_matrix")
        dn = fs.getNode("distortion_coefficients")
        if dn.empty():
            dn = fs.getNode("D")
        d = [] if dn.empty() or dn.mat() is None else dn.mat().ravel().tolist()
        w = int(fs.getNode("image_width").real())
        h = int(fs.getNode("image_height").real())
        model = fs.getNode("distortion_model").string() or "plumb_bob"
    finally:
        fs.release()
    if w <= 0 or h <= 0:
        raise InputError(f"{path}: missing image_width / image_height")
    k = k.reshape(3, 3)
    return _camera_from_values(path, w, h, [k[0, 0], k[1, 1], k[0, 2], k[1, 2]], model, d)


def is_tum_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "rgb.txt").is_file() and (path / "groundtruth.txt").is_file()


def load_tum_scene(
    path: Path,
    camera: CameraSpec | Path | None = None,
    max_dt: float = DEFAULT_MAX_DT,
    image_list: str = "rgb.txt",
    trajectory: str = "groundtruth.txt",
) -> Scene:
    """A TUM-style folder (``rgb.txt``, ``groundtruth.txt``, ``camera.yaml``) as a Scene.

    Every listed image gets the pose associated at its stamp (see :func:`associate`); an image
    without a pose within ``max_dt`` is an error naming the trajectory and stamp.
    """
    path = Path(path)
    if camera is None:
        camera = path / "camera.yaml"
    cam = camera if isinstance(camera, CameraSpec) else read_camera_yaml(Path(camera))
    entries = read_image_list(path / image_list)
    if not entries:
        raise DatasetError(f"{path / image_list}: no images listed")
    traj = read_trajectory(path / trajectory)
    stamps = np.array([e[0] for e in entries])
    T_wc = associate(traj, stamps, max_dt, what=[e[1] for e in entries])
    T_cw = invert_pose(T_wc)
    images = [
        PosedImage(name=rel, camera_id=1, T_cam_world=T_cw[k], path=path / rel, stamp=float(st))
        for k, (st, rel) in enumerate(entries)
    ]
    return Scene(cameras={1: cam}, images=images, source=f"tum:{path}")
