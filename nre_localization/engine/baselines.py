"""Classical baseline: OpenCV PnP-RANSAC on argmax correspondences of the same loss maps.

Coarse stage: the sub-cell refined argmax of every coarse map -> ``cv2.solvePnPRansac`` (AP3P
minimal solver, Levenberg-Marquardt refinement on the inliers). Fine stage: windows around the coarse
pose's reprojections, the argmax of each window -> ``cv2.solvePnPRansac`` again from the coarse
pose, then ``cv2.solvePnPRefineLM`` on the inliers. Distortion is removed first (bearings in
normalised coordinates, ``K = I``), so every camera model works; thresholds are in pixels.

The RE baseline (one-hot maps, same solver as NRE) is :func:`nre_localization.engine.solver.solve_re`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from nre_localization.engine.loss_maps import (
    argmax_cells,
    build_coarse_maps,
    build_fine_maps,
    window_argmax_cells,
)
from nre_localization.engine.solver import Timer, _check_inputs, _project_cells
from nre_localization.engine.types import MapPoints, PoseResult, QueryFeatures, SolverConfig
from nre_localization.geometry.cameras import Camera
from nre_localization.geometry.cells import cell_to_pixel

__all__ = ["pnp_ransac"]


def _ransac(
    xyz: np.ndarray,
    norm: np.ndarray,
    thr_px: float,
    focal: float,
    guess: tuple[np.ndarray, np.ndarray] | None,
    iterations: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """RANSAC PnP in normalised coordinates; returns ``(rvec, tvec, inlier indices)`` or None."""
    if xyz.shape[0] < 4:
        return None
    cv2.setRNGSeed(seed)
    kmat = np.eye(3)
    rvec0 = None if guess is None else guess[0].copy()
    tvec0 = None if guess is None else guess[1].copy()
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        xyz.astype(np.float64),
        norm.astype(np.float64),
        kmat,
        None,
        rvec=rvec0,
        tvec=tvec0,
        useExtrinsicGuess=guess is not None,
        iterationsCount=iterations,
        reprojectionError=thr_px / focal,
        confidence=0.9999,
        flags=cv2.SOLVEPNP_AP3P if guess is None else cv2.SOLVEPNP_ITERATIVE,
    )
    if not ok or inl is None or len(inl) < 4:
        return None
    inl = inl[:, 0]
    rvec, tvec = cv2.solvePnPRefineLM(
        xyz[inl].astype(np.float64), norm[inl].astype(np.float64), kmat, None, rvec, tvec
    )
    return rvec, tvec, inl


def pnp_ransac(
    query: QueryFeatures,
    points: MapPoints,
    camera: Camera,
    prior: torch.Tensor | None,
    config: SolverConfig,
    coarse_threshold_cells: float = 1.0,
    fine_threshold_cells: float = 1.5,
    iterations: int = 1000,
) -> PoseResult:
    """PnP-RANSAC baseline (see the module docstring); thresholds in cells of each level.

    With a ``prior`` the coarse stage is skipped (tracking). The covariance is the Gauss-Newton
    ``s^2 inv(J^T J)`` over the fine inliers, ``s`` their RMS reprojection error (pixels).
    """
    _check_inputs(query, points, camera, prior)
    dev = query.coarse.device
    timer = Timer(dev, config.sync_timings)
    n = len(points)
    xyz = points.xyz.to(torch.float64).cpu().numpy()
    focal = 0.5 * (camera.fx + camera.fy)
    with torch.no_grad():
        coarse = build_coarse_maps(query, points, config)
        timer.lap("coarse_maps")
        if prior is None:
            cells = argmax_cells(coarse, refine=True)
            pix = cell_to_pixel(cells.to(torch.float64), coarse.stride)
            norm = camera.unproject(pix)[:, :2].cpu().numpy()
            res = _ransac(
                xyz,
                norm,
                coarse_threshold_cells * coarse.stride,
                focal,
                None,
                iterations,
                config.seed,
            )
            timer.lap("ransac_coarse")
            if res is None:
                return _failed(n, timer, "coarse PnP-RANSAC found no pose")
            T1 = _to_T(res[0], res[1])
            path = "global"
        else:
            T1 = prior.to(torch.float64).cpu()
            path = "tracking"
        rf = 1
        centres, valid = _project_cells(
            points.xyz.to(torch.float32), T1.to(dev), camera, query.fine_stride
        )
        fine = build_fine_maps(query, points, None, centres, valid, rf, config, onehot=True)
        fcells, has = window_argmax_cells(fine)
        timer.lap("fine_maps")
        keep = has.cpu().numpy()
        fpix = cell_to_pixel(fcells.to(torch.float64), query.fine_stride)
        fnorm = camera.unproject(fpix)[:, :2].cpu().numpy()
        r0, _ = cv2.Rodrigues(T1[:3, :3].numpy())
        guess = (r0, T1[:3, 3].numpy().reshape(3, 1))
        idx = np.nonzero(keep)[0]
        res = _ransac(
            xyz[idx],
            fnorm[idx],
            fine_threshold_cells * query.fine_stride,
            focal,
            guess,
            iterations,
            config.seed,
        )
        timer.lap("ransac_fine")
        if res is None:
            return _failed(n, timer, "fine PnP-RANSAC found no pose")
        T = _to_T(res[0], res[1])
        inl = idx[res[2]]
        # Covariance from the inliers' pixel residuals.
        Xc = torch.from_numpy(xyz[inl]) @ T[:3, :3].T + T[:3, 3]
        proj, J, ok = camera.project_jacobian(Xc)
        r = proj - fpix.cpu()[inl]
        s2 = float((r * r).sum() / max(1, 2 * len(inl) - 6))
        jtj = torch.einsum("nki,nkj->ij", J, J)
        cov = torch.linalg.inv_ex(jtj + 1e-12 * torch.eye(6, dtype=torch.float64))[0] * s2
        if not torch.isfinite(cov).all():
            cov = torch.eye(6, dtype=torch.float64) * 1e6
        timer.lap("covariance")
    n_inl = int(len(inl))
    reasons = (
        [] if n_inl >= config.min_informative else [f"{n_inl} inliers < {config.min_informative}"]
    )
    return PoseResult(
        T_cam_world=T,
        covariance=0.5 * (cov + cov.T),
        cost=float(n - n_inl),
        n_informative=n_inl,
        n_points=n,
        timings=dict(timer.times, total=timer.total()),
        reliable=not reasons and bool(torch.isfinite(T).all()),
        path=path,
        cost_ratio=(n - n_inl) / max(n, 1),
        log_omega=math.log(fine.map_height * fine.map_width + 1),
        method="pnp_ransac",
        reasons=reasons,
    )


def _to_T(rvec: np.ndarray, tvec: np.ndarray) -> torch.Tensor:
    R, _ = cv2.Rodrigues(rvec)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(tvec).reshape(3)
    return torch.from_numpy(T)


def _failed(n: int, timer: Timer, why: str) -> PoseResult:
    return PoseResult(
        T_cam_world=torch.eye(4, dtype=torch.float64),
        covariance=torch.eye(6, dtype=torch.float64) * 1e6,
        cost=float(n),
        n_informative=0,
        n_points=n,
        timings=dict(timer.times, total=timer.total()),
        reliable=False,
        path="global",
        cost_ratio=1.0,
        method="pnp_ransac",
        reasons=[why],
    )
