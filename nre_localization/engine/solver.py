"""The engine's entry points: :func:`solve` (NRE), :func:`solve_re` and :func:`solve_pnp_ransac`.

``solve(query, points, camera, prior, config) -> PoseResult`` (docs/architecture.md).

Global path (``prior is None``): coarse dense loss maps -> MSAC-P3P on their argmins -> GNC-IRLS on
the coarse maps -> fine maps in windows around the coarse reprojections -> GNC-IRLS on the fine
maps -> covariance and reliability verdict.

Tracking path (``prior`` given): coarse maps (only their probabilities, for the fine maps'
coarse-mass renormalisation) -> fine maps around the prior's reprojections -> fine GNC-IRLS.
If the result is not reliable and ``config.tracking_fallback``, the global path runs (reusing the
coarse maps) and ``path`` says ``"global"``.

Covariance: ``config.covariance_scale * inv(sum_n J_n^T H_n J_n)`` at the final fine sigma, with
``H_n`` the exact ``2x2`` Hessian of the smoothed cost w.r.t. point ``n``'s reprojection projected to
PSD (``covariance_mode="hessian"``), or the IRLS weight ``W_n I`` (``"majoriser"``, optimistic).
The smoothing kernel is normalised, so for a locally quadratic loss map (a Gaussian correspondence
distribution) ``H_n`` is the loss map's curvature: the Laplace approximation of the posterior.

Reliability: ``cost / (N ln|Omega'|) <= max_cost_ratio``, at least ``min_informative`` points in
non-truncated cells, rotation std ``<= max_rotation_std_deg`` and position std / median depth
``<= max_relative_translation_std``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from nre_localization.engine import graphs
from nre_localization.engine.gnc import GncProblem, evaluate, gnc_iterate, gnc_radius, gnc_start
from nre_localization.engine.loss_maps import (
    CoarseMaps,
    InfoMaps,
    bilinear_info,
    build_coarse_maps,
    build_fine_maps,
    coarse_info_maps,
)
from nre_localization.engine.msac import msac_p3p
from nre_localization.engine.types import MapPoints, PoseResult, QueryFeatures, SolverConfig
from nre_localization.errors import InputError
from nre_localization.geometry.cameras import Camera

__all__ = [
    "MapPoints",
    "PoseResult",
    "QueryFeatures",
    "SolverConfig",
    "Timer",
    "solve",
    "solve_pnp_ransac",
    "solve_re",
]


class Timer:
    """Per-stage wall-clock timings (seconds); synchronises CUDA at stage boundaries if asked."""

    def __init__(self, device: torch.device, sync: bool) -> None:
        self.sync = sync and device.type == "cuda"
        self.device = device
        self.times: dict[str, float] = {}
        self._t = self._now()
        self._t0 = self._t

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, stage: str) -> None:
        now = self._now()
        self.times[stage] = self.times.get(stage, 0.0) + now - self._t
        self._t = now

    def total(self) -> float:
        return self._now() - self._t0


def _check_inputs(
    query: QueryFeatures, points: MapPoints, camera: Camera, prior: torch.Tensor | None
) -> None:
    query.validate()
    points.validate(query)
    if not isinstance(camera, Camera):
        raise InputError(f"camera must be a geometry.cameras.Camera, got {type(camera).__name__}")
    if prior is not None:
        if prior.shape != (4, 4) or not torch.isfinite(prior).all():
            raise InputError("prior must be a finite [4, 4] T_cam_world")
        r = prior[:3, :3].double().cpu()
        if (r.T @ r - torch.eye(3, dtype=torch.float64)).abs().max() > 1e-3:
            raise InputError("prior rotation is not orthonormal")


def _project_cells(
    xyz: torch.Tensor, T: torch.Tensor, camera: Camera, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """World points ``[N, 3]`` -> full-map cells ``[N, 2]`` at ``stride`` and validity ``[N]``."""
    return camera.cell_camera(stride).project_world(xyz, T)


def _pad_points(points: MapPoints, n: int) -> MapPoints:
    """Append zero points (they project nowhere and carry zero information) up to ``n``."""
    extra = n - len(points)
    if extra <= 0:
        return points

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros((extra, t.shape[1]))], 0)

    return MapPoints(pad(points.xyz), pad(points.desc_coarse), pad(points.desc_fine))


def _gnc(
    xyz: torch.Tensor,
    maps: InfoMaps,
    camera: Camera,
    sigmas: tuple[float, ...],
    T0: torch.Tensor,
    iterations: int,
    config: SolverConfig,
    stage: str,
) -> torch.Tensor:
    """The fixed-shape GNC loop (through a CUDA graph when enabled); returns ``T`` (f64)."""
    radius = gnc_radius(sigmas)
    dev = xyz.device
    meta = (maps.pad, maps.map_height, maps.map_width, maps.stride, maps.log_omega)

    def make_run(linear_solver: str) -> Callable[..., tuple[torch.Tensor]]:
        def run(
            x: torch.Tensor,
            data: torch.Tensor,
            origin: torch.Tensor,
            sig: torch.Tensor,
            T: torch.Tensor,
        ) -> tuple[torch.Tensor]:
            m = InfoMaps(data, origin, *meta)
            prob = GncProblem(x, m, camera.cell_camera(maps.stride), sig, radius)
            st = gnc_iterate(
                prob,
                gnc_start(T, config.lambda_init),
                iterations,
                config.level_iterations,
                config.convergence_tol,
                config.lambda_init,
                early_exit=dev.type == "cpu",
                linear_solver=linear_solver,
                compile_step=config.compile_gnc,
            )
            return (st.T,)

        return run

    sig_t = torch.tensor(sigmas, dtype=torch.float32, device=dev)
    inputs = (xyz, maps.data, maps.origin, sig_t, T0.to(torch.float64))
    if dev.type == "cuda" and config.cuda_graphs:
        base = (
            stage,
            dev.index,
            tuple(maps.data.shape),
            meta,
            camera,
            sigmas,
            iterations,
            config.level_iterations,
            config.convergence_tol,
            config.lambda_init,
            config.compile_gnc,
        )
        # cuSOLVER's Cholesky first; if it cannot be captured, the unrolled solver (plain ops).
        key = (*base, "cholesky")
        if graphs.failed(key):
            key = (*base, "gauss_jordan")
        return graphs.call(key, make_run(key[-1]), inputs)[0]
    return make_run("cholesky")(*inputs)[0]


def _msac(
    coarse: CoarseMaps,
    cinfo: InfoMaps,
    xyz: torch.Tensor,
    camera: Camera,
    config: SolverConfig,
    n_alive: int,
    stage: str,
) -> torch.Tensor:
    """MSAC-P3P (through a CUDA graph when enabled); returns ``T`` (f64)."""
    dev = xyz.device
    cmeta = (coarse.stride, coarse.log_omega)
    imeta = (cinfo.pad, cinfo.map_height, cinfo.map_width, cinfo.stride, cinfo.log_omega)

    def run(
        logp: torch.Tensor,
        ent: torch.Tensor,
        am: torch.Tensor,
        data: torch.Tensor,
        origin: torch.Tensor,
        x: torch.Tensor,
        alive: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cm = CoarseMaps(logp, ent, am, *cmeta)
        im = InfoMaps(data, origin, *imeta)
        return msac_p3p(cm, im, x, camera, config, alive)

    n_t = torch.full((), n_alive, dtype=torch.int64, device=dev)
    inputs = (coarse.logp, coarse.entropy, coarse.argmax, cinfo.data, cinfo.origin, xyz, n_t)
    if dev.type == "cuda" and config.cuda_graphs:
        key = (
            stage,
            dev.index,
            tuple(coarse.logp.shape),
            tuple(cinfo.data.shape),
            cmeta,
            imeta,
            camera,
            config,
        )
        return graphs.call(key, run, inputs)[0]
    return run(*inputs)[0]


def _fine_maps(
    query: QueryFeatures,
    points: MapPoints,
    coarse: CoarseMaps | None,
    camera: Camera,
    T: torch.Tensor,
    config: SolverConfig,
    alive: torch.Tensor | None,
    onehot: bool,
) -> InfoMaps:
    rf = gnc_radius(config.fine_sigmas)
    centres, valid = _project_cells(points.xyz.to(torch.float32), T, camera, query.fine_stride)
    return build_fine_maps(
        query, points, coarse, centres, valid, 2 * rf + 1, config, alive=alive, onehot=onehot
    )


def _finalize(
    xyz: torch.Tensor,
    maps: InfoMaps,
    camera: Camera,
    T: torch.Tensor,
    config: SolverConfig,
    n_alive: int,
    path: str,
    method: str,
) -> PoseResult:
    """Cost, informative count, covariance and reliability at the final pose (one host sync)."""
    dev = xyz.device
    radius = gnc_radius(config.fine_sigmas)
    sig = torch.tensor(config.fine_sigmas[-1:], dtype=torch.float32, device=dev)
    problem = GncProblem(xyz, maps, camera.cell_camera(maps.stride), sig, radius)
    ev = evaluate(problem, T, sig[0], hessian=True)
    cells, valid = _project_cells(xyz, T, camera, maps.stride)
    alive = torch.arange(xyz.shape[0], device=dev) < n_alive
    a = bilinear_info(maps, cells, valid & alive)
    J = ev.J.to(torch.float64)
    if config.covariance_mode == "hessian":
        assert ev.Hp is not None
        hp = ev.Hp.to(torch.float64)
        ha, hb, hc = hp[:, 0, 0], hp[:, 0, 1], hp[:, 1, 1]
        mean = 0.5 * (ha + hc)
        rad = torch.sqrt((0.5 * (ha - hc)) ** 2 + hb * hb)
        phi = 0.5 * torch.atan2(2 * hb, ha - hc)
        v1 = torch.stack([torch.cos(phi), torch.sin(phi)], -1)
        v2 = torch.stack([-torch.sin(phi), torch.cos(phi)], -1)
        l1, l2 = (mean + rad).clamp_min(0.0), (mean - rad).clamp_min(0.0)
        hpsd = (
            l1[:, None, None] * v1[:, :, None] * v1[:, None, :]
            + l2[:, None, None] * v2[:, :, None] * v2[:, None, :]
        )
    else:
        eye2 = torch.eye(2, dtype=torch.float64, device=dev)
        hpsd = ev.W.to(torch.float64)[:, None, None] * eye2
    info6 = torch.einsum("nki,nkl,nlj->ij", J, hpsd, J)
    Xc = xyz.to(torch.float64) @ T[:3, :3].T + T[:3, 3]
    informative = a > 0
    z = Xc[:, 2].abs()
    use = torch.where(informative.any(), informative, alive & valid)
    zmed = torch.where(use, z, torch.full_like(z, math.nan)).nanmedian()
    cost = (
        (maps.log_omega - a)[alive].sum() if n_alive < xyz.shape[0] else (maps.log_omega - a).sum()
    )
    packed = torch.cat(
        [
            info6.reshape(-1),
            T.reshape(-1).to(torch.float64),
            torch.stack(
                [
                    cost.to(torch.float64),
                    informative.sum().to(torch.float64),
                    zmed.to(torch.float64),
                ]
            ),
        ]
    ).cpu()  # the single host sync of the solve
    info6 = packed[:36].view(6, 6)
    T_cpu = packed[36:52].view(4, 4).clone()
    cost_f, n_inf, med_depth = float(packed[52]), int(packed[53]), float(packed[54])
    if not math.isfinite(med_depth):
        med_depth = 1.0

    ridge = 1e-12 * float(info6.diagonal().sum()) + 1e-300
    cov = torch.linalg.inv_ex(info6 + ridge * torch.eye(6, dtype=torch.float64))[0]
    if not torch.isfinite(cov).all():
        cov = torch.eye(6, dtype=torch.float64) * 1e6
    cov = 0.5 * (cov + cov.T) * config.covariance_scale
    ratio = cost_f / (n_alive * maps.log_omega)
    reasons = []
    if ratio > config.max_cost_ratio:
        reasons.append(f"cost ratio {ratio:.3f} > {config.max_cost_ratio}")
    if n_inf < config.min_informative:
        reasons.append(f"{n_inf} informative points < {config.min_informative}")
    rot_std = math.degrees(math.sqrt(max(float(torch.linalg.eigvalsh(cov[3:, 3:]).max()), 0.0)))
    pos_std = math.sqrt(max(float(torch.linalg.eigvalsh(cov[:3, :3]).max()), 0.0))
    if rot_std > config.max_rotation_std_deg:
        reasons.append(f"rotation std {rot_std:.2f} deg > {config.max_rotation_std_deg}")
    if pos_std > config.max_relative_translation_std * max(med_depth, 1e-9):
        reasons.append(
            f"position std {pos_std:.3g} m > {config.max_relative_translation_std} x depth "
            f"{med_depth:.3g} m"
        )
    if not torch.isfinite(T_cpu).all():
        reasons.append("non-finite pose")
    return PoseResult(
        T_cam_world=T_cpu,
        covariance=cov,
        cost=cost_f,
        n_informative=n_inf,
        n_points=n_alive,
        timings={},
        reliable=not reasons,
        path=path,
        cost_ratio=ratio,
        log_omega=maps.log_omega,
        method=method,
        reasons=reasons,
    )


def _solve(
    query: QueryFeatures,
    points: MapPoints,
    camera: Camera,
    prior: torch.Tensor | None,
    config: SolverConfig,
    method: str,
) -> PoseResult:
    _check_inputs(query, points, camera, prior)
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    dev = query.coarse.device
    onehot = method == "re"
    n_alive = len(points)
    alive: torch.Tensor | None = None
    if dev.type == "cuda" and config.cuda_graphs:
        nb = graphs.bucket_size(n_alive)
        points = _pad_points(points, nb)
        alive = torch.arange(nb, device=dev) < n_alive
    timer = Timer(dev, config.sync_timings)
    with torch.no_grad():
        coarse = build_coarse_maps(query, points, config, alive)
        xyz = points.xyz.to(torch.float32)
        timer.lap("coarse_maps")
        if prior is not None:
            T0 = prior.to(device=dev, dtype=torch.float64)
            fine = _fine_maps(query, points, coarse, camera, T0, config, alive, onehot)
            timer.lap("fine_maps")
            T = _gnc(
                xyz,
                fine,
                camera,
                config.fine_sigmas,
                T0,
                config.fine_iterations,
                config,
                "fine_" + method,
            )
            timer.lap("fine_gnc")
            result = _finalize(xyz, fine, camera, T, config, n_alive, "tracking", method)
            timer.lap("finalize")
            if result.reliable or not config.tracking_fallback:
                result.timings = dict(timer.times, total=timer.total())
                return result
        rc = gnc_radius(config.coarse_sigmas)
        cinfo = coarse_info_maps(coarse, 2 * rc + 1, alive=alive, onehot=onehot)
        timer.lap("coarse_maps")
        T0 = _msac(coarse, cinfo, xyz, camera, config, n_alive, "msac_" + method)
        timer.lap("msac")
        T1 = _gnc(
            xyz,
            cinfo,
            camera,
            config.coarse_sigmas,
            T0,
            config.coarse_iterations,
            config,
            "coarse_" + method,
        )
        timer.lap("coarse_gnc")
        fine = _fine_maps(query, points, coarse, camera, T1, config, alive, onehot)
        timer.lap("fine_maps")
        T = _gnc(
            xyz,
            fine,
            camera,
            config.fine_sigmas,
            T1,
            config.fine_iterations,
            config,
            "fine_" + method,
        )
        timer.lap("fine_gnc")
        result = _finalize(xyz, fine, camera, T, config, n_alive, "global", method)
        timer.lap("finalize")
        result.timings = dict(timer.times, total=timer.total())
        return result


def solve(
    query: QueryFeatures,
    points: MapPoints,
    camera: Camera,
    prior: torch.Tensor | None = None,
    config: SolverConfig | None = None,
) -> PoseResult:
    """Estimate ``T_cam_world`` by minimising the NRE (see the module docstring).

    Args:
        query: dense coarse/fine descriptors of the query image (device of the computation).
        points: candidate map points with descriptors (same device).
        camera: intrinsics of the query image (whose size the feature maps cover).
        prior: optional ``T_cam_world [4, 4]`` (tracking path).
        config: solver settings (default :class:`SolverConfig`).
    """
    return _solve(query, points, camera, prior, config or SolverConfig(), "nre")


def solve_re(
    query: QueryFeatures,
    points: MapPoints,
    camera: Camera,
    prior: torch.Tensor | None = None,
    config: SolverConfig | None = None,
) -> PoseResult:
    """RE baseline (eq. 11): the same solver on one-hot maps at each map's argmax."""
    return _solve(query, points, camera, prior, config or SolverConfig(), "re")


def solve_pnp_ransac(
    query: QueryFeatures,
    points: MapPoints,
    camera: Camera,
    prior: torch.Tensor | None = None,
    config: SolverConfig | None = None,
) -> PoseResult:
    """Classical baseline: OpenCV PnP-RANSAC on argmax correspondences (coarse, then fine)."""
    from nre_localization.engine.baselines import pnp_ransac

    return pnp_ransac(query, points, camera, prior, config or SolverConfig())
