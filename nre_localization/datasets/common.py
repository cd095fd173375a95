"""Source-independent records every reader returns: cameras, posed images, point tracks, scenes.

All pixel coordinates here follow OpenCV (centre of the top-left pixel at (0, 0)); the COLMAP reader
and writer convert at the file boundary. Poses are world->camera ``T_cam_world`` (4x4, float64).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from nre_localization.errors import InputError

# name -> (COLMAP model id, number of params, index of cx in params)
COLMAP_MODELS: dict[str, tuple[int, int, int]] = {
    "SIMPLE_PINHOLE": (0, 3, 1),
    "PINHOLE": (1, 4, 2),
    "SIMPLE_RADIAL": (2, 4, 1),
    "RADIAL": (3, 5, 1),
    "OPENCV": (4, 8, 2),
    "OPENCV_FISHEYE": (5, 8, 2),
    "FULL_OPENCV": (6, 12, 2),
    "FOV": (7, 5, 2),
    "SIMPLE_RADIAL_FISHEYE": (8, 4, 1),
    "RADIAL_FISHEYE": (9, 5, 1),
    "THIN_PRISM_FISHEYE": (10, 12, 2),
    "RAD_TAN_THIN_PRISM_FISHEYE": (11, 16, 2),
}
COLMAP_MODEL_BY_ID = {v[0]: k for k, v in COLMAP_MODELS.items()}
# Models the engine (geometry/cameras.py) projects natively.
ENGINE_MODELS = ("PINHOLE", "SIMPLE_RADIAL", "OPENCV", "OPENCV_FISHEYE")


@dataclass(frozen=True)
class CameraSpec:
    """A camera as files describe it: COLMAP model name, image size and params (OpenCV pixels).

    ``params`` follow COLMAP's order for ``model`` (e.g. PINHOLE: fx, fy, cx, cy) except that the
    principal point is in the OpenCV convention (COLMAP value minus 0.5).
    """

    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.model not in COLMAP_MODELS:
            raise InputError(f"unknown camera model {self.model!r}")
        n = COLMAP_MODELS[self.model][1]
        if len(self.params) != n:
            raise InputError(f"camera model {self.model} needs {n} params, got {len(self.params)}")
        if not all(np.isfinite(self.params)) or self.width <= 0 or self.height <= 0:
            raise InputError(f"camera {self.model} {self.width}x{self.height} has invalid values")

    # --- COLMAP pixel convention at the file boundary -------------------------------------------
    @classmethod
    def from_colmap(
        cls, model: str, width: int, height: int, params: Iterable[float]
    ) -> CameraSpec:
        """Build from COLMAP-convention params (principal point minus 0.5 here)."""
        p = [float(v) for v in params]
        if model in COLMAP_MODELS and len(p) == COLMAP_MODELS[model][1]:
            i = COLMAP_MODELS[model][2]
            p[i] -= 0.5
            p[i + 1] -= 0.5
        return cls(model, int(width), int(height), tuple(p))

    def colmap_params(self) -> list[float]:
        """Params in COLMAP's pixel convention (principal point plus 0.5)."""
        p = list(self.params)
        i = COLMAP_MODELS[self.model][2]
        p[i] += 0.5
        p[i + 1] += 0.5
        return p

    # --- OpenCV view ---------------------------------------------------------------------------
    def opencv(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """``(K [3,3], dist [k], is_fisheye)`` for cv2 / cv2.fisheye functions (OpenCV pixels)."""
        p = self.params
        m = self.model
        if COLMAP_MODELS[m][2] == 1:
            fx = fy = p[0]
            cx, cy = p[1], p[2]
            extra = list(p[3:])
        else:
            fx, fy, cx, cy = p[:4]
            extra = list(p[4:])
        k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        if m in ("SIMPLE_PINHOLE", "PINHOLE"):
            return k, np.zeros(4), False
        if m in ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV"):
            d = (extra + [0.0, 0.0, 0.0, 0.0])[: max(4, len(extra))]
            return k, np.array(d, dtype=np.float64), False
        if m in ("OPENCV_FISHEYE", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"):
            return k, np.array((extra + [0.0] * 4)[:4], dtype=np.float64), True
        raise InputError(f"camera model {m} is not supported here (use PINHOLE/OPENCV/FISHEYE)")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.width, self.height

    def focal(self) -> float:
        """Mean focal length in pixels."""
        k, _, _ = self.opencv()
        return float(0.5 * (k[0, 0] + k[1, 1]))

    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Camera-frame points ``[N, 3]`` -> (pixels ``[N, 2]``, ``z > 0`` mask ``[N]``)."""
        pts = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
        valid = pts[:, 2] > 1e-9
        k, d, fisheye = self.opencv()
        safe = pts.copy()
        safe[~valid] = (0.0, 0.0, 1.0)
        if fisheye:
            uv, _ = cv2.fisheye.projectPoints(
                safe.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), k, d.reshape(4, 1)
            )
        elif not d.any():
            xy = safe[:, :2] / safe[:, 2:]
            uv = xy @ k[:2, :2].T + k[:2, 2]
        else:
            uv, _ = cv2.projectPoints(safe, np.zeros(3), np.zeros(3), k, d)
        return np.asarray(uv, dtype=np.float64).reshape(-1, 2), valid

    def unproject(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels ``[N, 2]`` -> normalised image-plane coordinates ``[N, 2]`` (x/z, y/z)."""
        uv = np.asarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
        if len(uv) == 0:
            return np.zeros((0, 2))
        k, d, fisheye = self.opencv()
        if fisheye:
            out = cv2.fisheye.undistortPoints(uv, k, d.reshape(4, 1))
        elif not d.any():
            return (uv.reshape(-1, 2) - k[:2, 2]) / np.diag(k)[:2]
        else:
            out = cv2.undistortPoints(
                uv, k, d, criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-10)
            )
        return np.asarray(out, dtype=np.float64).reshape(-1, 2)

    def scaled(self, width: int, height: int) -> CameraSpec:
        """The camera of the image resized to ``width x height`` (pixel-centre aware).

        ``x' = (x + 0.5) * s - 0.5``: focal lengths scale by ``s``, principal points as pixels.
        Single-focal models become two-focal ones when the aspect ratio changes.
        """
        sx, sy = width / self.width, height / self.height
        p = list(self.params)
        m = self.model
        i = COLMAP_MODELS[m][2]
        if i == 1 and abs(sx - sy) > 1e-12:
            up = {
                "SIMPLE_PINHOLE": ("PINHOLE", []),
                "SIMPLE_RADIAL": ("OPENCV", [p[3], 0.0, 0.0, 0.0]),
                "RADIAL": ("OPENCV", [p[3], p[4], 0.0, 0.0]),
                "SIMPLE_RADIAL_FISHEYE": ("OPENCV_FISHEYE", [p[3], 0.0, 0.0, 0.0]),
                "RADIAL_FISHEYE": ("OPENCV_FISHEYE", [p[3], p[4], 0.0, 0.0]),
            }[m]
            m, p = up[0], [p[0], p[0], p[1], p[2]] + up[1]
            i = 2
        if i == 1:
            p[0] *= sx
        else:
            p[0] *= sx
            p[1] *= sy
        p[i] = (p[i] + 0.5) * sx - 0.5
        p[i + 1] = (p[i + 1] + 0.5) * sy - 0.5
        return CameraSpec(m, int(width), int(height), tuple(p))

    def to_line(self) -> str:
        """``MODEL WIDTH HEIGHT PARAMS...`` in COLMAP's pixel convention (queries file form)."""
        vals = " ".join(f"{v:.10g}" for v in self.colmap_params())
        return f"{self.model} {self.width} {self.height} {vals}"

    def to_engine(self):  # noqa: ANN201 - type lives in geometry.cameras, imported lazily
        """The engine's camera (``nre_localization.geometry.cameras``), built lazily."""
        from nre_localization.geometry import cameras

        if self.model not in ENGINE_MODELS:
            raise InputError(
                f"camera model {self.model} is not supported by the engine ({', '.join(ENGINE_MODELS)})"
            )
        return cameras.Camera.from_colmap(self.model, self.width, self.height, self.colmap_params())


def undistort_to_pinhole(img: np.ndarray, camera: CameraSpec) -> tuple[np.ndarray, CameraSpec]:
    """Resample an image of a non-fisheye distorted camera to a PINHOLE camera with the same
    focal lengths and principal point (for models the engine does not project, e.g. FULL_OPENCV
    with k3 from a plumb-bob calibration). Returns (image, PINHOLE camera)."""
    k, d, fisheye = camera.opencv()
    if fisheye:
        raise InputError(f"camera model {camera.model} cannot be undistorted to a pinhole here")
    out = cv2.undistort(img, k, d, None, k)
    pin = CameraSpec("PINHOLE", camera.width, camera.height, (k[0, 0], k[1, 1], k[0, 2], k[1, 2]))
    return out, pin


def read_rgb(path: Path, camera: CameraSpec | None = None) -> np.ndarray:
    """Read an image file as RGB ``uint8 [H, W, 3]``; check its size against ``camera``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image file not found")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{path}: cannot decode image")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    check_size(img, camera, str(path))
    return img


def check_size(img: np.ndarray, camera: CameraSpec | None, what: str) -> None:
    """Raise InputError when ``img`` ``[H, W, ...]`` disagrees with ``camera``'s size."""
    if camera is None:
        return
    h, w = img.shape[:2]
    if (w, h) != (camera.width, camera.height):
        raise InputError(
            f"{what}: image is {w}x{h} but its camera says {camera.width}x{camera.height}"
        )


@dataclass
class PosedImage:
    """One image with a known world->camera pose.

    ``name`` is the image's name relative to the image root (used in every output file);
    ``path`` the file to read, or ``loader`` a callable returning RGB ``uint8 [H, W, 3]`` (bags).
    ``xys [M, 2]`` / ``point3d_ids [M]`` are COLMAP keypoints (OpenCV pixels), when known.
    """

    name: str
    camera_id: int
    T_cam_world: np.ndarray
    path: Path | None = None
    stamp: float | None = None
    depth_path: Path | None = None
    loader: Callable[[], np.ndarray] | None = None
    xys: np.ndarray | None = None
    point3d_ids: np.ndarray | None = None

    def load_rgb(self, camera: CameraSpec | None = None) -> np.ndarray:
        """RGB ``uint8 [H, W, 3]``; raises InputError when missing or of the wrong size."""
        if self.loader is not None:
            img = self.loader()
            check_size(img, camera, self.name)
            return img
        if self.path is None:
            raise InputError(f"{self.name}: no image file or data for this image")
        return read_rgb(self.path, camera)


@dataclass
class Tracks:
    """3D points with their observations as ragged arrays.

    ``xyz [N, 3]`` world (metres); ``rgb [N, 3] uint8``; observations of point ``n`` are rows
    ``offsets[n]:offsets[n+1]`` of ``image_index [M]`` (index into the owning image list) and
    ``xy [M, 2]`` (OpenCV pixels in that image).
    """

    xyz: np.ndarray
    rgb: np.ndarray
    offsets: np.ndarray
    image_index: np.ndarray
    xy: np.ndarray
    error: np.ndarray | None = None

    @property
    def n_points(self) -> int:
        return int(self.xyz.shape[0])

    def track_lengths(self) -> np.ndarray:
        """``[N]`` number of observations per point."""
        return np.diff(self.offsets)

    def point_of_observation(self) -> np.ndarray:
        """``[M]`` index of the point each observation belongs to."""
        return np.repeat(np.arange(self.n_points), self.track_lengths())

    @staticmethod
    def from_lists(
        xyz: np.ndarray, rgb: np.ndarray, obs: list[list[tuple[int, float, float]]]
    ) -> Tracks:
        """Build from per-point lists of ``(image_index, x, y)``."""
        lens = np.array([len(o) for o in obs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        flat = [t for o in obs for t in o]
        arr = np.array(flat, dtype=np.float64).reshape(-1, 3)
        return Tracks(
            xyz=np.asarray(xyz, dtype=np.float64).reshape(-1, 3),
            rgb=np.asarray(rgb, dtype=np.uint8).reshape(-1, 3),
            offsets=offsets,
            image_index=arr[:, 0].astype(np.int32),
            xy=arr[:, 1:].astype(np.float32),
        )

    def select_points(self, keep: np.ndarray) -> Tracks:
        """Subset of points by boolean mask ``[N]`` (observations follow)."""
        keep = np.asarray(keep, dtype=bool)
        obs_keep = np.repeat(keep, self.track_lengths())
        lens = self.track_lengths()[keep]
        return Tracks(
            xyz=self.xyz[keep],
            rgb=self.rgb[keep],
            offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            image_index=self.image_index[obs_keep],
            xy=self.xy[obs_keep],
            error=None if self.error is None else self.error[keep],
        )

    def remap_images(self, new_index: np.ndarray) -> Tracks:
        """Renumber images with ``new_index [n_images_old]`` (-1 drops the observation); points
        left with fewer than one observation are dropped."""
        ni = new_index[self.image_index]
        keep_obs = ni >= 0
        pt = self.point_of_observation()[keep_obs]
        lens = np.bincount(pt, minlength=self.n_points)
        t = Tracks(
            xyz=self.xyz,
            rgb=self.rgb,
            offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            image_index=ni[keep_obs].astype(np.int32),
            xy=self.xy[keep_obs],
            error=self.error,
        )
        return t.select_points(lens > 0)


@dataclass
class Scene:
    """Posed images (and optionally points) from any source, ready for the map builder.

    ``depth_camera`` is set when ``images[i].depth_path`` holds depth registered to that camera
    (7-Scenes); ``depth_scale`` converts stored depth units to metres.
    """

    cameras: dict[int, CameraSpec]
    images: list[PosedImage]
    points: Tracks | None = None
    source: str = ""
    depth_camera: CameraSpec | None = None
    depth_scale: float = 1e-3
    extra: dict[str, object] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [im.name for im in self.images]

    def camera_of(self, image: PosedImage) -> CameraSpec:
        return self.cameras[image.camera_id]

    def without(self, names: Iterable[str]) -> Scene:
        """A copy without the named images (their observations are dropped from ``points``)."""
        drop = set(names)
        keep = [i for i, im in enumerate(self.images) if im.name not in drop]
        new_index = np.full(len(self.images), -1, dtype=np.int64)
        new_index[keep] = np.arange(len(keep))
        pts = None if self.points is None else self.points.remap_images(new_index)
        return replace(self, images=[self.images[i] for i in keep], points=pts)


def read_name_list(path: Path) -> list[str]:
    """One name per line (blank lines and ``#`` comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    out = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            out.append(s.split()[0])
    return out
