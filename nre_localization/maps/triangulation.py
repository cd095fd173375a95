"""3D points from posed images with no points: SIFT matching between covisible images, epipolar
verification against the known poses, tracks, multi-view triangulation with checks.

Pipeline (all poses world->camera ``T_cam_world``, pixels in OpenCV convention):
1. RootSIFT features per image (``cv2.SIFT``; at most ``max_features``).
2. Candidate pairs from poses alone: for each image the ``neighbours`` nearest camera centres
   whose optical axes differ by at most ``max_axis_angle_deg``.
3. Matching: mutual nearest neighbours with Lowe's ratio test (dot products on the CPU/GPU).
4. Epipolar check: Sampson distance to the essential matrix of the known relative pose, computed
   on undistorted normalised coordinates and converted to pixels with the focal length.
5. Tracks: union-find over verified matches; a track holding two keypoints of one image is dropped.
6. Triangulation: DLT over all observations, Gauss-Newton refinement, then repeated checks:
   positive depth, reprojection error <= ``max_reproj_px`` (bad observations dropped, point
   re-triangulated), triangulation angle >= ``min_angle_deg`` between some pair of rays.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from nre_localization.datasets.common import CameraSpec, Scene, Tracks
from nre_localization.datasets.poses import camera_center


@dataclass
class TriangulationConfig:
    max_features: int = 4000
    neighbours: int = 6
    max_axis_angle_deg: float = 75.0
    ratio: float = 0.85
    epipolar_px: float = 3.0
    max_reproj_px: float = 3.0
    min_angle_deg: float = 1.5
    min_track_length: int = 2
    device: str = "cpu"


@dataclass
class ImageFeatures:
    """Keypoints ``xy [M, 2]`` (OpenCV pixels), RootSIFT ``desc [M, 128] float32`` (unit norm),
    ``rgb [M, 3] uint8`` and, after triangulation, ``point_id [M]`` (-1: none)."""

    xy: np.ndarray
    desc: np.ndarray
    rgb: np.ndarray
    point_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    size: tuple[int, int] = (0, 0)  # (width, height) of the image


@dataclass
class TriangulationResult:
    tracks: Tracks
    features: list[ImageFeatures]
    pairs: list[tuple[int, int]]
    n_matches: int
    n_verified: int
    timings: dict[str, float]


def extract_sift(rgb: np.ndarray, max_features: int = 4000) -> ImageFeatures:
    """RootSIFT features of an RGB ``uint8 [H, W, 3]`` image."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    sift = cv2.SIFT_create(nfeatures=max_features)  # type: ignore[attr-defined]
    kps, desc = sift.detectAndCompute(gray, None)
    if desc is None or not kps:
        return ImageFeatures(
            np.zeros((0, 2)), np.zeros((0, 128), np.float32), np.zeros((0, 3), np.uint8)
        )
    xy = np.array([k.pt for k in kps], dtype=np.float64)
    d = desc.astype(np.float32)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-12)  # L1, then sqrt: RootSIFT (unit L2 norm)
    d = np.sqrt(d)
    ij = np.clip(np.round(xy).astype(int), 0, [rgb.shape[1] - 1, rgb.shape[0] - 1])
    return ImageFeatures(xy, d, rgb[ij[:, 1], ij[:, 0]].copy(), size=(rgb.shape[1], rgb.shape[0]))


def match_descriptors(
    d0: np.ndarray, d1: np.ndarray, ratio: float = 0.85, device: str = "cpu"
) -> np.ndarray:
    """Mutual nearest neighbours passing Lowe's ratio test on unit descriptors -> ``[K, 2]`` indices."""
    if len(d0) < 2 or len(d1) < 2:
        return np.zeros((0, 2), np.int64)
    a = torch.from_numpy(d0).to(device)
    b = torch.from_numpy(d1).to(device)
    sim = a @ b.T
    top, idx = sim.topk(2, dim=1)
    dist = torch.sqrt(torch.clamp(2.0 - 2.0 * top, min=0.0))
    ok = dist[:, 0] <= ratio * dist[:, 1]
    back = sim.argmax(dim=0)
    i0 = torch.arange(len(d0), device=device)
    ok &= back[idx[:, 0]] == i0
    return torch.stack([i0[ok], idx[ok, 0]], dim=1).cpu().numpy()


def select_pairs(
    T_cam_world: np.ndarray, neighbours: int, max_axis_angle_deg: float
) -> list[tuple[int, int]]:
    """Candidate covisible pairs ``(i, j)``, ``i < j``, from poses ``[K, 4, 4]`` alone."""
    c = camera_center(T_cam_world)
    axis = T_cam_world[:, 2, :3]  # optical axis in world = third row of R
    n = len(c)
    cos = axis @ axis.T
    dist = np.linalg.norm(c[:, None] - c[None], axis=-1)
    ok = cos >= np.cos(np.radians(max_axis_angle_deg))
    pairs = set()
    for i in range(n):
        cand = [j for j in np.argsort(dist[i]) if j != i and ok[i, j]]
        for j in cand[:neighbours]:
            pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def _skew(t: np.ndarray) -> np.ndarray:
    return np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])


def sampson_px(
    x0: np.ndarray, x1: np.ndarray, T0: np.ndarray, T1: np.ndarray, focal: float
) -> np.ndarray:
    """Sampson distance (pixels, via ``focal``) of normalised correspondences ``[K, 2]`` to the
    epipolar geometry of world->camera poses ``T0``, ``T1``."""
    T10 = T1 @ np.linalg.inv(T0)
    e = _skew(T10[:3, 3]) @ T10[:3, :3]
    h0 = np.c_[x0, np.ones(len(x0))]
    h1 = np.c_[x1, np.ones(len(x1))]
    ex0 = h0 @ e.T
    etx1 = h1 @ e
    num = np.sum(h1 * ex0, axis=1) ** 2
    den = ex0[:, 0] ** 2 + ex0[:, 1] ** 2 + etx1[:, 0] ** 2 + etx1[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-30)) * focal


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def triangulate_dlt(rays: list[np.ndarray], poses: list[np.ndarray]) -> np.ndarray:
    """Batched DLT. ``rays[l] [P, 2]`` normalised coordinates of observation ``l`` of ``P``
    points; ``poses[l] [P, 3, 4]`` their world->camera ``[R | t]`` -> points ``[P, 3]``."""
    rows = []
    for x, p in zip(rays, poses, strict=True):
        rows.append(x[:, 0:1] * p[:, 2] - p[:, 0])
        rows.append(x[:, 1:2] * p[:, 2] - p[:, 1])
    a = np.stack(rows, axis=1)  # [P, 2L, 4]
    _, _, vt = np.linalg.svd(a)
    h = vt[:, -1]
    w = h[:, 3:4]
    w = np.where(np.abs(w) < 1e-12, 1e-12, w)
    return h[:, :3] / w


def refine_points(
    X: np.ndarray, rays: list[np.ndarray], poses: list[np.ndarray], iters: int = 5
) -> np.ndarray:
    """Gauss-Newton on the normalised-plane reprojection error of points ``[P, 3]``."""
    X = X.copy()
    for _ in range(iters):
        H = np.zeros((len(X), 3, 3))
        g = np.zeros((len(X), 3))
        for x, p in zip(rays, poses, strict=True):
            Xc = np.einsum("pij,pj->pi", p[:, :, :3], X) + p[:, :, 3]
            z = np.where(np.abs(Xc[:, 2]) < 1e-9, 1e-9, Xc[:, 2])
            r = Xc[:, :2] / z[:, None] - x
            # d(proj)/d(Xc) [P, 2, 3], then chain with R
            j = np.zeros((len(X), 2, 3))
            j[:, 0, 0] = 1 / z
            j[:, 1, 1] = 1 / z
            j[:, 0, 2] = -Xc[:, 0] / z**2
            j[:, 1, 2] = -Xc[:, 1] / z**2
            J = j @ p[:, :, :3]
            H += np.swapaxes(J, 1, 2) @ J
            g += np.einsum("pki,pk->pi", J, r)
        H += 1e-9 * np.eye(3)
        X -= np.linalg.solve(H, g[:, :, None])[:, :, 0]
    return X


def triangulate_tracks(
    obs: list[list[tuple[int, int]]],
    features: list[ImageFeatures],
    cameras: list[CameraSpec],
    T_cam_world: np.ndarray,
    cfg: TriangulationConfig,
) -> tuple[np.ndarray, list[list[tuple[int, int]]], np.ndarray]:
    """Triangulate tracks ``obs[t] = [(image, keypoint), ...]`` with checks (module docstring).

    Returns (points ``[P, 3]``, kept observations per point, mean reprojection error px ``[P]``).
    """
    rays_img = [cam.unproject(f.xy) for cam, f in zip(cameras, features, strict=True)]
    focal = np.array([cam.focal() for cam in cameras])
    centres = camera_center(T_cam_world)
    cur = [list(o) for o in obs if len(o) >= cfg.min_track_length]
    out_X, out_obs, out_err = [], [], []
    for _ in range(3):
        if not cur:
            break
        by_len: dict[int, list[int]] = {}
        for t, o in enumerate(cur):
            by_len.setdefault(len(o), []).append(t)
        nxt = []
        for length, ts in by_len.items():
            o_arr = np.array([cur[t] for t in ts])  # [P, L, 2]
            img = o_arr[:, :, 0]
            kp = o_arr[:, :, 1]
            rays = [
                np.stack([rays_img[i][k] for i, k in zip(img[:, l_], kp[:, l_], strict=True)])
                for l_ in range(length)
            ]
            poses = [T_cam_world[img[:, l_], :3, :] for l_ in range(length)]
            X = triangulate_dlt(rays, poses)
            X = refine_points(X, rays, poses)
            err = np.zeros((len(ts), length))
            depth_ok = np.ones((len(ts), length), bool)
            for l_ in range(length):
                Xc = np.einsum("pij,pj->pi", poses[l_][:, :, :3], X) + poses[l_][:, :, 3]
                depth_ok[:, l_] = Xc[:, 2] > 1e-6
                uv = np.zeros((len(ts), 2))
                for i in np.unique(img[:, l_]):
                    sel = img[:, l_] == i
                    uv[sel], _ = cameras[i].project(Xc[sel])
                xy = np.stack(
                    [features[i].xy[k] for i, k in zip(img[:, l_], kp[:, l_], strict=True)]
                )
                err[:, l_] = np.linalg.norm(uv - xy, axis=1)
            good = depth_ok & (err <= cfg.max_reproj_px) & np.isfinite(err)
            # triangulation angle over kept observations
            d = X[:, None, :] - centres[img]  # [P, L, 3]
            d /= np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
            cosm = np.einsum("pli,pmi->plm", d, d)
            mask2 = good[:, :, None] & good[:, None, :]
            cos_min = np.where(mask2, cosm, 1.0).min(axis=(1, 2))
            angle_ok = cos_min <= np.cos(np.radians(cfg.min_angle_deg))
            for r, t in enumerate(ts):
                ng = int(good[r].sum())
                if ng == length and angle_ok[r]:
                    out_X.append(X[r])
                    out_obs.append(cur[t])
                    out_err.append(float(err[r].mean()))
                elif ng >= cfg.min_track_length and ng < length:
                    nxt.append([cur[t][l_] for l_ in range(length) if good[r, l_]])
        cur = nxt
    del focal
    X = np.array(out_X).reshape(-1, 3)
    return X, out_obs, np.array(out_err)


def triangulate_scene(
    scene: Scene,
    cfg: TriangulationConfig | None = None,
    progress: bool = False,
    extract: Callable[[np.ndarray], ImageFeatures] | None = None,
    match: Callable[[ImageFeatures, ImageFeatures], np.ndarray] | None = None,
) -> TriangulationResult:
    """Triangulate a posed Scene without points (see the module docstring).

    ``extract`` (RGB -> features) and ``match`` (features, features -> ``[K, 2]`` indices) replace
    RootSIFT and mutual-NN + ratio matching (e.g. a learned detector and matcher for a baseline).
    """
    cfg = cfg or TriangulationConfig()
    if extract is None:

        def extract(rgb: np.ndarray) -> ImageFeatures:
            return extract_sift(rgb, cfg.max_features)

    if match is None:

        def match(a: ImageFeatures, b: ImageFeatures) -> np.ndarray:
            return match_descriptors(a.desc, b.desc, cfg.ratio, cfg.device)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    cams = [scene.camera_of(im) for im in scene.images]
    T = np.stack([im.T_cam_world for im in scene.images])
    it = scene.images
    if progress:
        from tqdm import tqdm

        it = tqdm(scene.images, desc="features", unit="img")
    feats = [extract(im.load_rgb(cam)) for im, cam in zip(it, cams, strict=False)]
    timings["features"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pairs = select_pairs(T, cfg.neighbours, cfg.max_axis_angle_deg)
    rays = [cam.unproject(f.xy) for cam, f in zip(cams, feats, strict=True)]
    offsets = np.concatenate([[0], np.cumsum([len(f.xy) for f in feats])]).astype(np.int64)
    uf = _UnionFind(int(offsets[-1]))
    n_matches = n_verified = 0
    pit = pairs
    if progress:
        from tqdm import tqdm

        pit = tqdm(pairs, desc="matching pairs", unit="pair")
    for i, j in pit:
        m = match(feats[i], feats[j])
        n_matches += len(m)
        if not len(m):
            continue
        f = 0.5 * (cams[i].focal() + cams[j].focal())
        d = sampson_px(rays[i][m[:, 0]], rays[j][m[:, 1]], T[i], T[j], f)
        m = m[d <= cfg.epipolar_px]
        n_verified += len(m)
        for a, b in m:
            uf.union(int(offsets[i] + a), int(offsets[j] + b))
    timings["matching"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    roots = np.array([uf.find(k) for k in range(int(offsets[-1]))], dtype=np.int64)
    img_of = np.repeat(np.arange(len(feats)), np.diff(offsets))
    kp_of = np.arange(int(offsets[-1])) - offsets[img_of]
    order = np.argsort(roots, kind="stable")
    r_sorted = roots[order]
    bounds = np.flatnonzero(np.diff(r_sorted)) + 1
    groups = np.split(order, bounds)
    obs = []
    for g in groups:
        if len(g) < cfg.min_track_length:
            continue
        ims = img_of[g]
        if len(np.unique(ims)) != len(ims):
            continue
        obs.append([(int(a), int(b)) for a, b in zip(ims, kp_of[g], strict=True)])
    X, kept, err = triangulate_tracks(obs, feats, cams, T, cfg)
    timings["triangulation"] = time.perf_counter() - t0

    for feat in feats:
        feat.point_id = np.full(len(feat.xy), -1, np.int64)
    lists = []
    rgb = np.zeros((len(X), 3), np.uint8)
    for p, o in enumerate(kept):
        lists.append([(i, float(feats[i].xy[k, 0]), float(feats[i].xy[k, 1])) for i, k in o])
        for i, k in o:
            feats[i].point_id[k] = p
        rgb[p] = feats[o[0][0]].rgb[o[0][1]]
    tracks = Tracks.from_lists(X, rgb, lists)
    tracks.error = err
    return TriangulationResult(tracks, feats, pairs, n_matches, n_verified, timings)
