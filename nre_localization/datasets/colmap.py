"""COLMAP models (text and binary), hloc query / pose lists.

COLMAP puts the centre of the top-left pixel at (0.5, 0.5); everything returned here uses OpenCV's
(0, 0): readers subtract 0.5 from principal points and keypoints, writers add it back.
Poses are world->camera, quaternion ``(qw, qx, qy, qz)``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nre_localization.datasets.common import (
    COLMAP_MODEL_BY_ID,
    COLMAP_MODELS,
    CameraSpec,
    PosedImage,
    Scene,
    Tracks,
)
from nre_localization.datasets.poses import pose_from_qt, qt_from_pose
from nre_localization.errors import DatasetError, InputError


@dataclass
class ColmapImage:
    """One registered image: world->camera ``qvec`` (w, x, y, z), ``tvec``; keypoints ``xys [M, 2]``
    in OpenCV pixels with ``point3d_ids [M]`` (-1: none)."""

    id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray
    point3d_ids: np.ndarray

    @property
    def T_cam_world(self) -> np.ndarray:
        return pose_from_qt(self.qvec, self.tvec)


@dataclass
class ColmapPoint:
    """A 3D point (world, metres) with its track of ``(image_id, point2d_idx)``."""

    id: int
    xyz: np.ndarray
    rgb: np.ndarray
    error: float
    image_ids: np.ndarray
    point2d_idxs: np.ndarray


@dataclass
class ColmapModel:
    cameras: dict[int, CameraSpec]
    images: dict[int, ColmapImage]
    points: dict[int, ColmapPoint]


# ---------------------------------------------------------------------------------------------
# text
def _data_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of non-comment lines; blank lines kept (images.txt needs them)."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            s = line.strip()
            if s.startswith("#"):
                continue
            out.append((i, s))
    return out


def _bad(path: Path, lineno: int, what: str) -> InputError:
    return InputError(f"{path}:{lineno}: malformed line ({what})")


def read_cameras_text(path: Path) -> dict[int, CameraSpec]:
    """``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]``."""
    path = Path(path)
    cams = {}
    for ln, s in _data_lines(path):
        if not s:
            continue
        el = s.split()
        try:
            cid, model, w, h = int(el[0]), el[1], int(el[2]), int(el[3])
            params = [float(v) for v in el[4:]]
        except (ValueError, IndexError):
            raise _bad(path, ln, "expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS...") from None
        if model not in COLMAP_MODELS:
            raise _bad(path, ln, f"unknown camera model {model}")
        if len(params) != COLMAP_MODELS[model][1]:
            raise _bad(
                path, ln, f"{model} needs {COLMAP_MODELS[model][1]} params, got {len(params)}"
            )
        try:
            cams[cid] = CameraSpec.from_colmap(model, w, h, params)
        except InputError as e:
            raise _bad(path, ln, str(e)) from None
    return cams


def _is_points_line(s: str) -> bool:
    el = s.split()
    if len(el) % 3:
        return False
    try:
        [float(v) for v in el]
    except ValueError:
        return False
    return True


def read_images_text(path: Path) -> dict[int, ColmapImage]:
    """``images.txt``: two lines per image (the keypoint line may be empty)."""
    path = Path(path)
    lines = _data_lines(path)
    images = {}
    k = 0
    while k < len(lines):
        ln, s = lines[k]
        k += 1
        if not s:
            continue
        el = s.split()
        try:
            iid = int(el[0])
            q = np.array([float(v) for v in el[1:5]])
            t = np.array([float(v) for v in el[5:8]])
            cid = int(el[8])
            name = " ".join(el[9:])
        except (ValueError, IndexError):
            raise _bad(path, ln, "expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME") from None
        if not name or len(q) != 4 or len(t) != 3 or not np.all(np.isfinite(np.r_[q, t])):
            raise _bad(path, ln, "expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        if abs(np.linalg.norm(q) - 1.0) > 1e-3:
            raise _bad(path, ln, f"quaternion norm {np.linalg.norm(q):.4f} is not 1")
        xys = np.zeros((0, 2))
        ids = np.zeros(0, dtype=np.int64)
        if k < len(lines) and (not lines[k][1] or _is_points_line(lines[k][1])):
            pl = lines[k][1].split()
            k += 1
            if pl:
                arr = np.array([float(v) for v in pl]).reshape(-1, 3)
                xys = arr[:, :2] - 0.5
                ids = arr[:, 2].astype(np.int64)
        images[iid] = ColmapImage(iid, q, t, cid, name, xys, ids)
    return images


def read_points_text(path: Path) -> dict[int, ColmapPoint]:
    """``points3D.txt``: ``POINT3D_ID X Y Z R G B ERROR TRACK[] as (IMAGE_ID, POINT2D_IDX)``."""
    path = Path(path)
    pts = {}
    for ln, s in _data_lines(path):
        if not s:
            continue
        el = s.split()
        try:
            pid = int(el[0])
            xyz = np.array([float(v) for v in el[1:4]])
            rgb = np.array([int(v) for v in el[4:7]], dtype=np.uint8)
            err = float(el[7])
            tr = np.array([int(v) for v in el[8:]], dtype=np.int64)
        except (ValueError, IndexError, OverflowError):
            raise _bad(path, ln, "expected POINT3D_ID X Y Z R G B ERROR TRACK...") from None
        if len(xyz) != 3 or len(rgb) != 3 or len(tr) % 2:
            raise _bad(path, ln, "expected POINT3D_ID X Y Z R G B ERROR TRACK...")
        tr = tr.reshape(-1, 2)
        pts[pid] = ColmapPoint(pid, xyz, rgb, err, tr[:, 0].copy(), tr[:, 1].copy())
    return pts


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_cameras_text(cams: dict[int, CameraSpec], path: Path) -> None:
    lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
    ]
    for cid in sorted(cams):
        c = cams[cid]
        params = " ".join(repr(float(v)) for v in c.colmap_params())
        lines.append(f"{cid} {c.model} {c.width} {c.height} {params}")
    _atomic_write_text(Path(path), "\n".join(lines) + "\n")


def write_images_text(images: dict[int, ColmapImage], path: Path) -> None:
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
    ]
    for iid in sorted(images):
        im = images[iid]
        vals = " ".join(repr(float(v)) for v in (*im.qvec, *im.tvec))
        lines.append(f"{iid} {vals} {im.camera_id} {im.name}")
        lines.append(
            " ".join(
                f"{float(x) + 0.5!r} {float(y) + 0.5!r} {int(p)}"
                for (x, y), p in zip(np.asarray(im.xys).tolist(), im.point3d_ids, strict=True)
            )
        )
    _atomic_write_text(Path(path), "\n".join(lines) + "\n")


def write_points_text(points: dict[int, ColmapPoint], path: Path) -> None:
    lines = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
    ]
    for pid in sorted(points):
        p = points[pid]
        track = " ".join(
            f"{int(a)} {int(b)}" for a, b in zip(p.image_ids, p.point2d_idxs, strict=True)
        )
        xyz = " ".join(repr(float(v)) for v in p.xyz)
        rgb = " ".join(str(int(v)) for v in p.rgb)
        lines.append(f"{pid} {xyz} {rgb} {float(p.error)!r} {track}".rstrip())
    _atomic_write_text(Path(path), "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# binary (little endian)
class _Buf:
    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise DatasetError(f"{path}: file not found")
        self.path = path
        self.data = path.read_bytes()
        self.pos = 0

    def read(self, fmt: str) -> tuple:
        n = struct.calcsize("<" + fmt)
        if self.pos + n > len(self.data):
            raise InputError(f"{self.path}: truncated binary file (at byte {self.pos})")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += n
        return out

    def array(self, dtype: np.dtype | type, count: int) -> np.ndarray:
        n = np.dtype(dtype).itemsize * count
        if count < 0 or self.pos + n > len(self.data):
            raise InputError(f"{self.path}: truncated binary file (at byte {self.pos})")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += n
        return out

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise InputError(f"{self.path}: truncated binary file (unterminated name)")
        s = self.data[self.pos : end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return s

    def done(self) -> None:
        if self.pos != len(self.data):
            raise InputError(
                f"{self.path}: {len(self.data) - self.pos} trailing bytes (not a COLMAP file?)"
            )


_MAX_COUNT = 1 << 31


def read_cameras_binary(path: Path) -> dict[int, CameraSpec]:
    b = _Buf(Path(path))
    (n,) = b.read("Q")
    if n > _MAX_COUNT:
        raise InputError(f"{path}: implausible camera count {n} (not a COLMAP file?)")
    cams = {}
    for _ in range(n):
        cid, mid, w, h = b.read("iiQQ")
        if mid not in COLMAP_MODEL_BY_ID:
            raise InputError(f"{path}: camera {cid} has unknown model id {mid}")
        model = COLMAP_MODEL_BY_ID[mid]
        params = b.array(np.float64, COLMAP_MODELS[model][1])
        try:
            cams[cid] = CameraSpec.from_colmap(model, w, h, params)
        except InputError as e:
            raise InputError(f"{path}: camera {cid}: {e}") from None
    b.done()
    return cams


def read_images_binary(path: Path) -> dict[int, ColmapImage]:
    b = _Buf(Path(path))
    (n,) = b.read("Q")
    if n > _MAX_COUNT:
        raise InputError(f"{path}: implausible image count {n} (not a COLMAP file?)")
    images = {}
    rec = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
    for _ in range(n):
        iid, qw, qx, qy, qz, tx, ty, tz, cid = b.read("idddddddi")
        name = b.cstring()
        (m,) = b.read("Q")
        if m > _MAX_COUNT:
            raise InputError(f"{path}: image {iid} has implausible keypoint count {m}")
        arr = b.array(rec, int(m))
        xys = np.stack([arr["x"], arr["y"]], axis=1) - 0.5 if m else np.zeros((0, 2))
        q = np.array([qw, qx, qy, qz])
        if not np.isfinite(q).all() or abs(np.linalg.norm(q) - 1.0) > 1e-3:
            raise InputError(f"{path}: image {iid} ({name}) has a non-unit quaternion")
        images[iid] = ColmapImage(
            iid, q, np.array([tx, ty, tz]), cid, name, xys, arr["id"].astype(np.int64)
        )
    b.done()
    return images


def read_points_binary(path: Path) -> dict[int, ColmapPoint]:
    b = _Buf(Path(path))
    (n,) = b.read("Q")
    if n > _MAX_COUNT:
        raise InputError(f"{path}: implausible point count {n} (not a COLMAP file?)")
    pts = {}
    for _ in range(n):
        pid, x, y, z, r, g, bb, err = b.read("QdddBBBd")
        (m,) = b.read("Q")
        if m > _MAX_COUNT:
            raise InputError(f"{path}: point {pid} has implausible track length {m}")
        tr = b.array(np.dtype("<i4"), 2 * int(m)).reshape(-1, 2).astype(np.int64)
        pts[pid] = ColmapPoint(
            pid, np.array([x, y, z]), np.array([r, g, bb], dtype=np.uint8), err, tr[:, 0], tr[:, 1]
        )
    b.done()
    return pts


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_cameras_binary(cams: dict[int, CameraSpec], path: Path) -> None:
    parts = [struct.pack("<Q", len(cams))]
    for cid in sorted(cams):
        c = cams[cid]
        parts.append(struct.pack("<iiQQ", cid, COLMAP_MODELS[c.model][0], c.width, c.height))
        parts.append(np.asarray(c.colmap_params(), dtype="<f8").tobytes())
    _atomic_write_bytes(Path(path), b"".join(parts))


def write_images_binary(images: dict[int, ColmapImage], path: Path) -> None:
    parts = [struct.pack("<Q", len(images))]
    rec = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
    for iid in sorted(images):
        im = images[iid]
        parts.append(struct.pack("<idddddddi", iid, *im.qvec, *im.tvec, im.camera_id))
        parts.append(im.name.encode("utf-8") + b"\x00")
        arr = np.zeros(len(im.xys), dtype=rec)
        if len(im.xys):
            arr["x"] = im.xys[:, 0] + 0.5
            arr["y"] = im.xys[:, 1] + 0.5
            arr["id"] = im.point3d_ids
        parts.append(struct.pack("<Q", len(arr)))
        parts.append(arr.tobytes())
    _atomic_write_bytes(Path(path), b"".join(parts))


def write_points_binary(points: dict[int, ColmapPoint], path: Path) -> None:
    parts = [struct.pack("<Q", len(points))]
    for pid in sorted(points):
        p = points[pid]
        parts.append(struct.pack("<QdddBBBd", pid, *p.xyz, *[int(v) for v in p.rgb], p.error))
        tr = np.stack([p.image_ids, p.point2d_idxs], axis=1).astype("<i4")
        parts.append(struct.pack("<Q", len(tr)))
        parts.append(tr.tobytes())
    _atomic_write_bytes(Path(path), b"".join(parts))


# ---------------------------------------------------------------------------------------------
# model folders
def find_model_dir(path: Path) -> tuple[Path, str] | None:
    """The folder holding ``cameras.{txt,bin}`` under ``path`` (itself, ``sparse/``, ``sparse/0``)
    and its extension, or None."""
    path = Path(path)
    for d in (path, path / "sparse", path / "sparse" / "0"):
        for ext in (".bin", ".txt"):
            if (d / f"cameras{ext}").is_file() and (d / f"images{ext}").is_file():
                return d, ext
    return None


def read_model(path: Path) -> ColmapModel:
    """Read a COLMAP model folder (binary preferred when both exist). ``points3D`` may be absent."""
    found = find_model_dir(Path(path))
    if found is None:
        raise DatasetError(f"{path}: no COLMAP model (cameras/images .txt or .bin) found")
    d, ext = found
    if ext == ".bin":
        cams = read_cameras_binary(d / "cameras.bin")
        ims = read_images_binary(d / "images.bin")
        pts = read_points_binary(d / "points3D.bin") if (d / "points3D.bin").is_file() else {}
    else:
        cams = read_cameras_text(d / "cameras.txt")
        ims = read_images_text(d / "images.txt")
        pts = read_points_text(d / "points3D.txt") if (d / "points3D.txt").is_file() else {}
    for im in ims.values():
        if im.camera_id not in cams:
            raise InputError(
                f"{d / ('images' + ext)}: image {im.name} uses unknown camera {im.camera_id}"
            )
    return ColmapModel(cams, ims, pts)


def write_model(model: ColmapModel, path: Path, ext: str = ".txt") -> None:
    """Write a model folder (``.txt`` or ``.bin``); each file is written atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if ext == ".bin":
        write_cameras_binary(model.cameras, path / "cameras.bin")
        write_images_binary(model.images, path / "images.bin")
        write_points_binary(model.points, path / "points3D.bin")
    elif ext == ".txt":
        write_cameras_text(model.cameras, path / "cameras.txt")
        write_images_text(model.images, path / "images.txt")
        write_points_text(model.points, path / "points3D.txt")
    else:
        raise InputError(f"unknown COLMAP extension {ext!r} (use .txt or .bin)")


def model_to_scene(model: ColmapModel, image_dir: Path | None) -> Scene:
    """COLMAP model -> Scene (images sorted by name; points with tracks when present)."""
    order = sorted(model.images.values(), key=lambda im: im.name)
    images = [
        PosedImage(
            name=im.name,
            camera_id=im.camera_id,
            T_cam_world=im.T_cam_world,
            path=None if image_dir is None else Path(image_dir) / im.name,
            xys=im.xys,
            point3d_ids=im.point3d_ids,
        )
        for im in order
    ]
    tracks = None
    if model.points:
        index_of = {im.id: i for i, im in enumerate(order)}
        pids = sorted(model.points)
        xyz = np.array([model.points[p].xyz for p in pids], dtype=np.float64).reshape(-1, 3)
        rgb = np.array([model.points[p].rgb for p in pids], dtype=np.uint8).reshape(-1, 3)
        obs = []
        for p in pids:
            pt = model.points[p]
            o = []
            for iid, k in zip(pt.image_ids, pt.point2d_idxs, strict=True):
                im = model.images.get(int(iid))
                if im is None or k < 0 or k >= len(im.xys):
                    raise InputError(f"point {p} references missing image {iid} / keypoint {k}")
                o.append((index_of[int(iid)], float(im.xys[k, 0]), float(im.xys[k, 1])))
            obs.append(o)
        tracks = Tracks.from_lists(xyz, rgb, obs)
        tracks.error = np.array([model.points[p].error for p in pids])
    return Scene(cameras=dict(model.cameras), images=images, points=tracks, source="colmap")


def scene_to_model(scene: Scene) -> ColmapModel:
    """Scene -> COLMAP model (image ids 1..K in scene order; keypoints are the point observations)."""
    images: dict[int, ColmapImage] = {}
    kp: list[list[tuple[float, float, int]]] = [[] for _ in scene.images]
    points: dict[int, ColmapPoint] = {}
    if scene.points is not None:
        t = scene.points
        for n in range(t.n_points):
            sl = slice(t.offsets[n], t.offsets[n + 1])
            iids, idxs = [], []
            for ii, (x, y) in zip(t.image_index[sl], t.xy[sl], strict=True):
                iids.append(int(ii) + 1)
                idxs.append(len(kp[ii]))
                kp[ii].append((float(x), float(y), n + 1))
            err = 0.0 if t.error is None else float(t.error[n])
            points[n + 1] = ColmapPoint(
                n + 1, t.xyz[n], t.rgb[n], err, np.array(iids), np.array(idxs)
            )
    for i, im in enumerate(scene.images):
        q, tv = qt_from_pose(im.T_cam_world)
        arr = np.array(kp[i], dtype=np.float64).reshape(-1, 3)
        images[i + 1] = ColmapImage(
            i + 1, q, tv, im.camera_id, im.name, arr[:, :2], arr[:, 2].astype(np.int64)
        )
    return ColmapModel(dict(scene.cameras), images, points)


def load_colmap_scene(path: Path, image_dir: Path | None = None) -> Scene:
    """A COLMAP model folder as a Scene; images default to ``<model>/../images`` or ``<path>/images``."""
    path = Path(path)
    model = read_model(path)
    if image_dir is None:
        found = find_model_dir(path)
        assert found is not None
        for cand in (
            path / "images",
            found[0].parent / "images",
            found[0].parent.parent / "images",
        ):
            if cand.is_dir():
                image_dir = cand
                break
    scene = model_to_scene(model, image_dir)
    scene.source = f"colmap:{path}"
    return scene


# ---------------------------------------------------------------------------------------------
# hloc lists
def read_queries_with_intrinsics(path: Path) -> list[tuple[str, CameraSpec]]:
    """hloc ``queries_with_intrinsics``: ``name MODEL WIDTH HEIGHT PARAMS...`` (COLMAP pixels)."""
    path = Path(path)
    out = []
    for ln, s in _data_lines(path):
        if not s:
            continue
        el = s.split()
        try:
            name, model, w, h = el[0], el[1], int(el[2]), int(el[3])
            params = [float(v) for v in el[4:]]
        except (ValueError, IndexError):
            raise _bad(path, ln, "expected NAME MODEL WIDTH HEIGHT PARAMS...") from None
        if model not in COLMAP_MODELS or len(params) != COLMAP_MODELS[model][1]:
            raise _bad(path, ln, f"bad camera model {model} or parameter count {len(params)}")
        try:
            out.append((name, CameraSpec.from_colmap(model, w, h, params)))
        except InputError as e:
            raise _bad(path, ln, str(e)) from None
    return out


def write_queries_with_intrinsics(path: Path, queries: list[tuple[str, CameraSpec]]) -> None:
    _atomic_write_text(Path(path), "".join(f"{n} {c.to_line()}\n" for n, c in queries))


def read_pose_list(path: Path) -> dict[str, np.ndarray]:
    """hloc / COLMAP pose list ``name qw qx qy qz tx ty tz`` -> {name: T_cam_world [4, 4]}."""
    path = Path(path)
    out = {}
    for ln, s in _data_lines(path):
        if not s:
            continue
        el = s.split()
        if len(el) != 8:
            raise _bad(path, ln, "expected NAME QW QX QY QZ TX TY TZ")
        try:
            v = np.array([float(x) for x in el[1:]])
        except ValueError:
            raise _bad(path, ln, "expected NAME QW QX QY QZ TX TY TZ") from None
        if not np.isfinite(v).all() or abs(np.linalg.norm(v[:4]) - 1.0) > 1e-3:
            raise _bad(path, ln, "non-finite values or non-unit quaternion")
        out[el[0]] = pose_from_qt(v[:4], v[4:])
    return out


def write_pose_list(path: Path, poses: dict[str, np.ndarray]) -> None:
    """Write ``name qw qx qy qz tx ty tz`` (world->camera) lines, atomically."""
    lines = []
    for name, T in poses.items():
        q, t = qt_from_pose(T)
        lines.append(name + " " + " ".join(f"{v:.10f}" for v in (*q, *t)))
    _atomic_write_text(Path(path), "".join(s + "\n" for s in lines))
