"""The ``.nremap`` file: one safetensors file (tensors) whose header metadata holds a JSON document.

Why this layout: safetensors is a flat, pickle-free, memory-mappable tensor container readable from
Python, Rust and C++; its header has a string->string metadata slot, which holds one JSON document
(key ``nremap``) with everything that is not a tensor. One file is simpler to copy, version and
write atomically than a folder.

Tensors (``N`` points, ``M`` observations, ``K`` keyframes):
- ``points/xyz [N, 3] float64`` world (metres); ``points/rgb [N, 3] uint8``;
- ``points/desc_coarse [N, Dc]``, ``points/desc_fine [N, Df]`` (float16 or float32; absent in a
  geometry-only map): the descriptors the engine dots with query maps;
- ``obs/offsets [N + 1] int64``; ``obs/keyframe [M] int32``; ``obs/xy [M, 2] float32`` (OpenCV
  pixels in that keyframe): observations of point ``n`` are rows ``offsets[n]:offsets[n+1]``;
- ``keyframes/T_cam_world [K, 4, 4] float64``; ``keyframes/camera_id [K] int32``;
  ``keyframes/global_desc [K, G] float32`` (optional, L2-normalised, retrieval).

JSON metadata: ``format`` ("nremap"), ``version``, ``model_fingerprint`` ("none" for a
geometry-only map), ``model`` (strides, dims, name), ``cameras`` (COLMAP model, size, params in
OpenCV pixel convention), ``keyframe_names``, ``bounds`` (``min``/``max`` of points and camera
centres), ``descriptor_fusion``, ``source``, ``created`` and free ``info``.

Writers write ``.<name>.tmp<pid>`` next to the target, fsync and rename: a crash never leaves a
partial map under the target name. Readers check the format, version, tensor shapes and (when
asked) the model fingerprint, and raise :class:`MapError` with one line.
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nre_localization.datasets.common import CameraSpec, Tracks
from nre_localization.datasets.poses import camera_center
from nre_localization.errors import MapError

FORMAT = "nremap"
FORMAT_VERSION = 1
NO_MODEL = "none"
_MAX_HEADER = 256 * 1024 * 1024


@dataclass
class NreMap:
    """A localisation map in memory (see the module docstring for shapes and frames)."""

    cameras: dict[int, CameraSpec]
    keyframe_names: list[str]
    keyframe_T_cam_world: np.ndarray
    keyframe_camera_ids: np.ndarray
    points: Tracks
    desc_coarse: np.ndarray | None = None
    desc_fine: np.ndarray | None = None
    global_desc: np.ndarray | None = None
    model_fingerprint: str = NO_MODEL
    model: dict = field(default_factory=dict)
    descriptor_fusion: str = ""
    source: str = ""
    info: dict = field(default_factory=dict)
    created: str = ""

    @property
    def n_points(self) -> int:
        return self.points.n_points

    @property
    def n_keyframes(self) -> int:
        return len(self.keyframe_names)

    def bounds(self) -> np.ndarray:
        """``[2, 3]`` min / max over points and keyframe camera centres (world, metres)."""
        c = camera_center(self.keyframe_T_cam_world).reshape(-1, 3)
        allp = np.concatenate([self.points.xyz.reshape(-1, 3), c], axis=0)
        if len(allp) == 0:
            return np.zeros((2, 3))
        return np.stack([allp.min(axis=0), allp.max(axis=0)])

    def keyframe_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.keyframe_names)}

    def points_of_keyframes(self, keyframes: np.ndarray) -> np.ndarray:
        """Sorted unique indices of points observed in any of ``keyframes`` (indices ``[k]``)."""
        sel = np.isin(self.points.image_index, np.asarray(keyframes))
        return np.unique(self.points.point_of_observation()[sel])

    def has_descriptors(self) -> bool:
        return self.desc_coarse is not None and self.desc_fine is not None


def _meta(m: NreMap) -> dict:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_fingerprint": m.model_fingerprint,
        "model": m.model,
        "pixel_convention": "opencv (centre of the top-left pixel at (0, 0))",
        "pose_convention": "T_cam_world (world -> camera)",
        "cameras": {
            str(cid): {
                "model": c.model,
                "width": c.width,
                "height": c.height,
                "params": list(c.params),
            }
            for cid, c in m.cameras.items()
        },
        "keyframe_names": list(m.keyframe_names),
        "bounds": {"min": m.bounds()[0].tolist(), "max": m.bounds()[1].tolist()},
        "n_points": m.n_points,
        "n_observations": int(len(m.points.image_index)),
        "descriptor_fusion": m.descriptor_fusion,
        "source": m.source,
        "created": m.created or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "info": m.info,
    }


def map_to_bytes(m: NreMap) -> bytes:
    """Serialise a map to the bytes of a ``.nremap`` file."""
    from safetensors.numpy import save

    t = m.points
    tensors: dict[str, np.ndarray] = {
        "points/xyz": np.ascontiguousarray(t.xyz, dtype=np.float64).reshape(-1, 3),
        "points/rgb": np.ascontiguousarray(t.rgb, dtype=np.uint8).reshape(-1, 3),
        "obs/offsets": np.ascontiguousarray(t.offsets, dtype=np.int64),
        "obs/keyframe": np.ascontiguousarray(t.image_index, dtype=np.int32),
        "obs/xy": np.ascontiguousarray(t.xy, dtype=np.float32).reshape(-1, 2),
        "keyframes/T_cam_world": np.ascontiguousarray(
            m.keyframe_T_cam_world, dtype=np.float64
        ).reshape(-1, 4, 4),
        "keyframes/camera_id": np.ascontiguousarray(m.keyframe_camera_ids, dtype=np.int32),
    }
    for k, v in (("points/desc_coarse", m.desc_coarse), ("points/desc_fine", m.desc_fine)):
        if v is not None:
            tensors[k] = np.ascontiguousarray(v)
    if m.global_desc is not None:
        tensors["keyframes/global_desc"] = np.ascontiguousarray(m.global_desc, dtype=np.float32)
    _validate(m.cameras, m.keyframe_names, tensors, "map")
    return save(tensors, metadata={FORMAT: json.dumps(_meta(m))})


def save_map(m: NreMap, path: Path) -> Path:
    """Write ``m`` to ``path`` atomically (temporary name in the same folder, fsync, rename)."""
    path = Path(path)
    data = map_to_bytes(m)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_header(path: Path) -> dict:
    """The JSON metadata of a ``.nremap`` file without loading tensors (MapError if foreign)."""
    path = Path(path)
    if not path.is_file():
        raise MapError(f"{path}: map file not found")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise MapError(f"{path}: truncated or not an .nremap file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise MapError(f"{path}: truncated or not an .nremap file (bad header length)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        meta = json.loads(header["__metadata__"][FORMAT])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise MapError(f"{path}: not an .nremap file (no nremap metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MapError(f"{path}: not an .nremap file (format {meta.get('format')!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise MapError(
            f"{path}: map format version {meta.get('version')}, this build reads version "
            f"{FORMAT_VERSION}; rebuild the map with `nre-localization build-map`"
        )
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise MapError(f"{path}: truncated map file ({size} bytes, header promises {8 + n + end})")
    return meta


def _validate(cameras: dict, names: list[str], t: dict[str, np.ndarray], what: str) -> None:
    def bad(msg: str) -> MapError:
        return MapError(f"{what}: corrupt map ({msg})")

    need = [
        "points/xyz",
        "points/rgb",
        "obs/offsets",
        "obs/keyframe",
        "obs/xy",
        "keyframes/T_cam_world",
        "keyframes/camera_id",
    ]
    for k in need:
        if k not in t:
            raise bad(f"missing tensor {k}")
    n = t["points/xyz"].shape[0]
    k_ = t["keyframes/T_cam_world"].shape[0]
    off = t["obs/offsets"]
    m = t["obs/keyframe"].shape[0]
    if t["points/xyz"].shape != (n, 3) or t["points/rgb"].shape != (n, 3):
        raise bad("points/xyz or points/rgb shape")
    if off.shape != (n + 1,) or off[0] != 0 or off[-1] != m or (np.diff(off) < 0).any():
        raise bad("observation offsets")
    if t["obs/xy"].shape != (m, 2):
        raise bad("obs/xy shape")
    if m and (t["obs/keyframe"].min() < 0 or t["obs/keyframe"].max() >= k_):
        raise bad("observation keyframe index out of range")
    if len(names) != k_ or t["keyframes/camera_id"].shape != (k_,):
        raise bad("keyframe count")
    if t["keyframes/T_cam_world"].shape != (k_, 4, 4):
        raise bad("keyframe pose shape")
    for cid in t["keyframes/camera_id"].tolist():
        if cid not in cameras:
            raise bad(f"keyframe camera {cid} not defined")
    for k in ("points/desc_coarse", "points/desc_fine"):
        if k in t and (t[k].ndim != 2 or t[k].shape[0] != n):
            raise bad(f"{k} shape {t[k].shape}")
    if ("points/desc_coarse" in t) != ("points/desc_fine" in t):
        raise bad("only one descriptor level present")
    if "keyframes/global_desc" in t and t["keyframes/global_desc"].shape[0] != k_:
        raise bad("keyframes/global_desc shape")


def load_map(
    path: Path, expected_fingerprint: str | None = None, require_descriptors: bool = False
) -> NreMap:
    """Read and check a ``.nremap`` file.

    ``expected_fingerprint``: the loaded model's fingerprint; a map built by another model is
    refused (its descriptors would be meaningless to the engine).
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path)
    meta = read_header(path)
    try:
        t = load(path.read_bytes())
    except (SafetensorError, ValueError) as e:
        raise MapError(f"{path}: corrupt map file ({str(e).splitlines()[0]})") from None
    try:
        cams = {
            int(k): CameraSpec(
                v["model"], int(v["width"]), int(v["height"]), tuple(float(x) for x in v["params"])
            )
            for k, v in meta["cameras"].items()
        }
        names = list(meta["keyframe_names"])
    except (KeyError, TypeError, ValueError) as e:
        raise MapError(f"{path}: corrupt map metadata ({e})") from None
    except Exception as e:  # InputError from CameraSpec
        raise MapError(f"{path}: corrupt camera in map metadata ({e})") from None
    _validate(cams, names, t, str(path))
    fp = str(meta.get("model_fingerprint", NO_MODEL))
    if expected_fingerprint is not None and fp != expected_fingerprint:
        if fp == NO_MODEL:
            raise MapError(
                f"{path}: map has no descriptors (geometry only); rebuild it with the model"
            )
        raise MapError(
            f"{path}: map built with model {fp[:16]}, the loaded model is {expected_fingerprint[:16]}; "
            "rebuild the map with `nre-localization build-map`"
        )
    if require_descriptors and "points/desc_coarse" not in t:
        raise MapError(f"{path}: map has no descriptors (geometry only); rebuild it with the model")
    tracks = Tracks(
        xyz=t["points/xyz"],
        rgb=t["points/rgb"],
        offsets=t["obs/offsets"],
        image_index=t["obs/keyframe"],
        xy=t["obs/xy"],
    )
    return NreMap(
        cameras=cams,
        keyframe_names=names,
        keyframe_T_cam_world=t["keyframes/T_cam_world"],
        keyframe_camera_ids=t["keyframes/camera_id"],
        points=tracks,
        desc_coarse=t.get("points/desc_coarse"),
        desc_fine=t.get("points/desc_fine"),
        global_desc=t.get("keyframes/global_desc"),
        model_fingerprint=fp,
        model=dict(meta.get("model", {})),
        descriptor_fusion=str(meta.get("descriptor_fusion", "")),
        source=str(meta.get("source", "")),
        info=dict(meta.get("info", {})),
        created=str(meta.get("created", "")),
    )
