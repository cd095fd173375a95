"""Build a ``.nremap`` from posed images: points (given, from depth, or triangulated), then
per-point descriptors from the network and per-keyframe global descriptors.

Sources (:func:`load_scene` detects them): a COLMAP model (text or binary; with ``points3D`` they are
used as they are, without them the builder triangulates), a TUM-style folder, a 7-Scenes folder
(points from depth) or a ROS bag (see :mod:`nre_localization.datasets.bags`).

Descriptor fusion (one descriptor per point and level, not one per observation). The model
outputs descriptors of norm ``s`` (L2-normalised, times the learned inverse temperature ``s``) and
the engine scores a point by the raw dot products ``h_n . H_Q(p)``. We store

    h_n = s_n * normalize(sum_i d_i / |d_i|),    s_n = mean_i |d_i|,

the mean direction of the observations' descriptors ``d_i`` (bilinearly sampled at the observed
pixel, geometry/cells.py convention) rescaled to their mean norm. Why:
- the engine builds one loss map per point (eq. 6 of the paper sums one NRE term per point);
  keeping every observation would multiply the map size and the engine's loss-map work by the track
  length (3-10x here) or force an arbitrary per-query choice of observation;
- among unit vectors, the normalised mean maximises the average cosine to the observations, so the
  fused descriptor is the best single template for views between the observed viewpoints, and
  averaging suppresses per-image noise (blur, JPEG, sampling phase);
- restoring the norm keeps the model's temperature, so the softmax the engine computes is as
  peaked as the model was trained to make it. A point whose observations disagree gets a shorter
  mean vector before renormalisation; its ``consistency`` (mean resultant length, in [0, 1]) is
  kept in the map info statistics.

Global descriptors (retrieval): the coarse map's unit descriptors are mean-pooled, signed-square-
rooted and L2-normalised (SPoC with power normalisation), see :mod:`maps.retrieval`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from nre_localization.datasets import bags, colmap, sevenscenes, tum
from nre_localization.datasets.common import CameraSpec, Scene, Tracks, read_name_list
from nre_localization.datasets.poses import invert_pose
from nre_localization.errors import DatasetError, InputError
from nre_localization.maps.format import NO_MODEL, NreMap
from nre_localization.maps.retrieval import global_descriptor
from nre_localization.maps.triangulation import TriangulationConfig, triangulate_scene

FUSION = "mean direction of unit observation descriptors, rescaled to their mean norm"


@dataclass
class BuildConfig:
    """Map-building knobs (defaults suit 640-1600 px images)."""

    triangulation: TriangulationConfig = field(default_factory=TriangulationConfig)
    # points from depth (7-Scenes): corners per image, merge voxel (m), depth agreement (relative)
    depth_points_per_image: int = 1500
    depth_voxel_m: float = 0.02
    depth_tolerance: float = 0.05
    # descriptors stored as float16 (half the size, dot products unchanged to ~1e-3 relative)
    descriptor_dtype: str = "float16"
    device: str = "auto"
    # keyframes wider than this are resized before the network (0: native resolution). The
    # localiser runs queries at <= 640 px by default: describing the map at the same scale keeps
    # map and query descriptors comparable (and is ~3x cheaper than 1152 px).
    max_image_width: int = 640


@dataclass
class BuildStats:
    n_images: int = 0
    n_points: int = 0
    n_observations: int = 0
    points_from: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    images_per_minute: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# sources
def detect_source(path: Path) -> str:
    """``bag``, ``colmap``, ``tum`` or ``7scenes`` (DatasetError otherwise)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: source not found")
    if bags.is_bag(path):
        return "bag"
    if colmap.find_model_dir(path) is not None:
        return "colmap"
    if tum.is_tum_folder(path):
        return "tum"
    if sevenscenes.is_7scenes_folder(path):
        return "7scenes"
    raise DatasetError(
        f"{path}: not a COLMAP model, TUM folder (rgb.txt + groundtruth.txt), 7-Scenes folder or bag"
    )


def load_scene(
    source: Path,
    images: Path | None = None,
    exclude: Path | list[str] | None = None,
    camera: Path | None = None,
    max_dt: float | None = None,
    split: str = "train",
    image_topic: str | None = None,
    camera_info_topic: str | None = None,
    pose_topic: str | None = None,
    world_frame: str | None = None,
    camera_frame: str | None = None,
    every: int = 1,
) -> Scene:
    """Read any supported source as a Scene and drop the ``exclude`` names (file or list)."""
    source = Path(source)
    kind = detect_source(source)
    cam_spec: CameraSpec | None = tum.read_camera_yaml(camera) if camera is not None else None
    if kind == "colmap":
        scene = colmap.load_colmap_scene(source, images)
        if cam_spec is not None:
            raise InputError("--camera is not used with a COLMAP model (its cameras.txt is)")
    elif kind == "tum":
        scene = tum.load_tum_scene(
            source, cam_spec, max_dt if max_dt is not None else tum.DEFAULT_MAX_DT
        )
        if images is not None:
            for im in scene.images:
                im.path = Path(images) / Path(im.name).name
    elif kind == "7scenes":
        scene = sevenscenes.load_7scenes_scene(source, split)
    else:
        if image_topic is None:
            topics = bags.list_topics(source)
            cands = [t for t, (m, _) in topics.items() if m in bags.IMAGE_TYPES]
            if len(cands) != 1:
                raise DatasetError(
                    f"{source}: name the image topic (--image-topic); candidates: {', '.join(cands) or 'none'}"
                )
            image_topic = cands[0]
        if camera_info_topic is None and cam_spec is None:
            topics = bags.list_topics(source)
            cands = [t for t, (m, _) in topics.items() if m == "sensor_msgs/msg/CameraInfo"]
            if len(cands) != 1:
                raise DatasetError(
                    f"{source}: name the CameraInfo topic (--camera-info-topic) or give --camera; "
                    f"candidates: {', '.join(cands) or 'none'}"
                )
            camera_info_topic = cands[0]
        scene = bags.load_bag_scene(
            source,
            image_topic,
            camera_info_topic,
            pose_topic,
            world_frame,
            camera_frame,
            camera=cam_spec,
            max_dt=max_dt if max_dt is not None else 0.05,
            every=every,
        )
    if exclude is not None:
        names = read_name_list(exclude) if isinstance(exclude, Path | str) else list(exclude)
        scene = scene.without(names)
    if not scene.images:
        raise DatasetError(f"{source}: no images left to build a map from")
    return scene


# ---------------------------------------------------------------------------------------------
# points from depth
def points_from_depth(scene: Scene, cfg: BuildConfig) -> Tracks:
    """Points at colour-image corners lifted with registered depth, merged on a voxel grid, then
    observed in every image whose depth agrees (``depth_tolerance``, relative)."""
    if scene.depth_camera is None:
        raise InputError("scene has no depth camera")
    dcam = scene.depth_camera
    dk, _, _ = dcam.opencv()
    xyz_all, rgb_all = [], []
    depths = []
    for im in scene.images:
        cam = scene.camera_of(im)
        rgb = im.load_rgb(cam)
        if im.depth_path is None:
            raise InputError(f"{im.name}: no depth image")
        d = sevenscenes.read_depth(im.depth_path, scene.depth_scale)
        depths.append(d)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        c = cv2.goodFeaturesToTrack(gray, cfg.depth_points_per_image, 0.005, 6)
        if c is None:
            continue
        uv = c.reshape(-1, 2).astype(np.float64)
        xn = cam.unproject(uv)
        du = np.round(xn * [dk[0, 0], dk[1, 1]] + dk[:2, 2]).astype(int)
        ok = (du[:, 0] >= 0) & (du[:, 1] >= 0) & (du[:, 0] < d.shape[1]) & (du[:, 1] < d.shape[0])
        z = np.zeros(len(uv))
        z[ok] = d[du[ok, 1], du[ok, 0]]
        ok &= z > 0
        Xc = np.c_[xn[ok] * z[ok, None], z[ok]]
        T_wc = invert_pose(im.T_cam_world)
        xyz_all.append(Xc @ T_wc[:3, :3].T + T_wc[:3, 3])
        ij = np.round(uv[ok]).astype(int)
        rgb_all.append(rgb[ij[:, 1], ij[:, 0]])
    if not xyz_all:
        raise DatasetError("no valid depth at any image corner")
    xyz = np.concatenate(xyz_all)
    rgb = np.concatenate(rgb_all)
    keys = np.floor(xyz / cfg.depth_voxel_m).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    first = np.sort(first)
    xyz, rgb = xyz[first], rgb[first]
    obs: list[list[tuple[int, float, float]]] = [[] for _ in range(len(xyz))]
    for k, (im, d) in enumerate(zip(scene.images, depths, strict=True)):
        cam = scene.camera_of(im)
        Xc = xyz @ im.T_cam_world[:3, :3].T + im.T_cam_world[:3, 3]
        uv, front = cam.project(Xc)
        duv, _ = dcam.project(Xc)
        du = np.round(duv).astype(int)
        inside = (
            front
            & (uv[:, 0] >= -0.5)
            & (uv[:, 1] >= -0.5)
            & (uv[:, 0] <= cam.width - 0.5)
            & (uv[:, 1] <= cam.height - 0.5)
        )
        inside &= (
            (du[:, 0] >= 0) & (du[:, 1] >= 0) & (du[:, 0] < d.shape[1]) & (du[:, 1] < d.shape[0])
        )
        idx = np.flatnonzero(inside)
        dz = d[du[idx, 1], du[idx, 0]]
        agree = (dz > 0) & (np.abs(dz - Xc[idx, 2]) <= cfg.depth_tolerance * Xc[idx, 2])
        for p in idx[agree]:
            obs[p].append((k, float(uv[p, 0]), float(uv[p, 1])))
    keep = np.array([len(o) > 0 for o in obs], dtype=bool)
    t = Tracks.from_lists(xyz[keep], rgb[keep], [o for o, kk in zip(obs, keep, strict=True) if kk])
    return t


# ---------------------------------------------------------------------------------------------
# descriptors
def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def image_to_tensor(rgb: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """RGB ``uint8 [H, W, 3]`` -> ``float32 [1, 3, H, W]`` in [0, 1] (the model contract)."""
    return (
        torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float()
        / 255.0
    )


def sample_descriptors(fmap: torch.Tensor, xy: np.ndarray, stride: int) -> torch.Tensor:
    """Descriptors ``[M, D]`` of ``fmap [D, H, W]`` at pixels ``xy [M, 2]`` (cells convention;
    pixels within half a cell of the border take the border cell's value)."""
    from nre_localization.geometry.cells import bilinear_sample, pixel_to_cell

    cells = pixel_to_cell(torch.as_tensor(xy, dtype=torch.float32, device=fmap.device), stride)
    _, h, w = fmap.shape
    cells[:, 0] = cells[:, 0].clamp(0, w - 1)
    cells[:, 1] = cells[:, 1].clamp(0, h - 1)
    return bilinear_sample(fmap, cells)


def compute_descriptors(
    scene: Scene,
    tracks: Tracks,
    model: Any,
    device: str,
    progress: bool = False,
    max_image_width: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Fused point descriptors (module docstring) and keyframe global descriptors.

    Returns (desc_coarse ``[N, Dc]`` f32, desc_fine ``[N, Df]`` f32, global ``[K, G]`` f32,
    consistency ``[N]`` (mean resultant length of unit observation descriptors), network+sampling
    seconds)."""
    n = tracks.n_points
    sums = {
        lvl: torch.zeros(n, dim, dtype=torch.float64)
        for lvl, dim in (("coarse", model.coarse_dim), ("fine", model.fine_dim))
    }
    norms = {lvl: torch.zeros(n, dtype=torch.float64) for lvl in sums}
    count = torch.zeros(n, dtype=torch.float64)
    pt_of_obs = tracks.point_of_observation()
    globals_ = []
    strides = {"coarse": model.coarse_stride, "fine": model.fine_stride}
    it = list(enumerate(scene.images))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="descriptors", unit="img")
    t_net = 0.0
    for k, im in it:
        rgb = im.load_rgb(scene.camera_of(im))
        t0 = time.perf_counter()
        h, w = rgb.shape[:2]
        sx = sy = 1.0
        if max_image_width and w > max_image_width:
            nh = max(1, round(h * max_image_width / w))
            rgb = cv2.resize(rgb, (max_image_width, nh), interpolation=cv2.INTER_AREA)
            sx, sy = max_image_width / w, nh / h
        with torch.inference_mode():
            out = model(image_to_tensor(rgb, device))
            sel = np.flatnonzero(tracks.image_index == k)
            # observations follow the resize (pixel-centre aware: x' = (x + 0.5) s - 0.5)
            xy = (tracks.xy[sel] + 0.5) * np.array([sx, sy], dtype=np.float32) - 0.5
            pts = torch.from_numpy(pt_of_obs[sel])
            for lvl in sums:
                fmap = out[lvl][0]
                if len(sel):
                    d = sample_descriptors(fmap, xy, strides[lvl]).double().cpu()
                    nrm = d.norm(dim=1).clamp_min(1e-12)
                    sums[lvl].index_add_(0, pts, d / nrm[:, None])
                    norms[lvl].index_add_(0, pts, nrm)
            count.index_add_(0, pts, torch.ones(len(sel), dtype=torch.float64))
            globals_.append(global_descriptor(out["coarse"][0]))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t_net += time.perf_counter() - t0
    res = []
    cons = np.zeros(0)
    for lvl in ("coarse", "fine"):
        s = sums[lvl]
        length = s.norm(dim=1)
        mean_norm = norms[lvl] / count.clamp_min(1)
        res.append((s / length.clamp_min(1e-12)[:, None] * mean_norm[:, None]).float().numpy())
        if lvl == "fine":
            cons = (length / count.clamp_min(1)).numpy()
    return res[0], res[1], np.stack(globals_).astype(np.float32), cons, t_net


# ---------------------------------------------------------------------------------------------
def build_map(
    scene: Scene,
    model: Any | None = None,
    cfg: BuildConfig | None = None,
    progress: bool = False,
) -> tuple[NreMap, BuildStats]:
    """Points + (when ``model`` is given) descriptors for a Scene -> (NreMap, stats).

    Without a model the map holds geometry only (fingerprint ``none``): the engine refuses it,
    but it serves triangulation checks and the classical baselines.
    """
    cfg = cfg or BuildConfig()
    stats = BuildStats(n_images=len(scene.images))
    t0 = time.perf_counter()
    if scene.points is not None and scene.points.n_points > 0:
        tracks = scene.points
        stats.points_from = "model points3D"
    elif scene.depth_camera is not None and all(im.depth_path is not None for im in scene.images):
        tracks = points_from_depth(scene, cfg)
        stats.points_from = "depth"
    else:
        tri = triangulate_scene(scene, cfg.triangulation, progress)
        tracks = tri.tracks
        stats.points_from = "triangulation"
        stats.extra.update(
            pairs=len(tri.pairs),
            matches=tri.n_matches,
            verified=tri.n_verified,
            **{f"t_{k}": v for k, v in tri.timings.items()},
        )
    stats.timings["points"] = time.perf_counter() - t0
    if tracks.n_points == 0:
        raise DatasetError(f"{scene.source}: no 3D points could be made from these images")

    desc_c = desc_f = glob = None
    fingerprint = NO_MODEL
    model_info: dict[str, Any] = {}
    info: dict[str, Any] = {"points_from": stats.points_from}
    if model is not None:
        device = pick_device(cfg.device)
        stats.device = device
        model = model.to(device).eval()
        t0 = time.perf_counter()
        desc_c, desc_f, glob, cons, t_net = compute_descriptors(
            scene, tracks, model, device, progress, cfg.max_image_width
        )
        stats.timings["descriptors"] = time.perf_counter() - t0
        stats.images_per_minute = 60.0 * len(scene.images) / max(t_net, 1e-9)
        dt = np.float16 if cfg.descriptor_dtype == "float16" else np.float32
        desc_c, desc_f = desc_c.astype(dt), desc_f.astype(dt)
        fingerprint = model.fingerprint()
        model_info = {
            "name": type(model).__name__,
            "coarse_stride": int(model.coarse_stride),
            "fine_stride": int(model.fine_stride),
            "coarse_dim": int(model.coarse_dim),
            "fine_dim": int(model.fine_dim),
            "max_image_width": int(cfg.max_image_width),
        }
        info["descriptor_consistency_median"] = float(np.median(cons)) if len(cons) else None
        info["images_per_minute"] = stats.images_per_minute
        info["device"] = device
    stats.n_points = tracks.n_points
    stats.n_observations = int(len(tracks.image_index))
    info["timings"] = stats.timings
    info["build_config"] = _jsonable(asdict(cfg))
    info.update({k: v for k, v in stats.extra.items() if isinstance(v, int | float | str)})
    m = NreMap(
        cameras=dict(scene.cameras),
        keyframe_names=scene.names(),
        keyframe_T_cam_world=np.stack([im.T_cam_world for im in scene.images]),
        keyframe_camera_ids=np.array([im.camera_id for im in scene.images], dtype=np.int32),
        points=tracks,
        desc_coarse=desc_c,
        desc_fine=desc_f,
        global_desc=glob,
        model_fingerprint=fingerprint,
        model=model_info,
        descriptor_fusion=FUSION if model is not None else "",
        source=scene.source,
        info=info,
    )
    return m, stats


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, float | int | str | bool) or v is None:
        return v
    return str(v)
