"""The engine's entry points: :func:`solve` (NRE), :func:`solve_re` and :func:`solve_pnp_ransac`.

``solve(query, points, camera, prior, config) -> PoseResult`` (docs/architecture.md).

Global path (``prior is None``): coarse dense loss maps -> MSAC-P3P on their argmins -> GNC-IRLS on
the coarse maps (``config.coarse_refinement``: by default the whole coarse level - MSAC scoring and
GNC - runs on one-hot maps at the argmins, with ``"nre"`` on the NRE maps; on held-out rendered
scenes the broad coarse NRE maps often picked or drifted to a wrong basin where the NRE cost at the
truth was lower, benchmarks/RESULTS.md section 7) -> fine NRE maps in windows around the
coarse reprojections -> GNC-IRLS + Newton polish on the fine maps (optimised truncated at the
window's size, ``config.fine_truncation``, :func:`_fine_floor`) -> covariance and reliability
verdict. With ``config.consensus_seeds > 1`` the global path runs from that many MSAC seeds and a
disagreement makes the result unreliable (:func:`_consensus`).

Tracking path (``prior`` given): coarse maps (only their probabilities, for the fine maps'
coarse-mass renormalisation) -> fine maps around the prior's reprojections -> fine GNC-IRLS on the
shorter ``config.tracking_sigmas`` / ``tracking_iterations`` schedule, then
``tracking_polish_iterations`` Newton steps (the global path: ``polish_iterations``).
If the result is not reliable and ``config.tracking_fallback``, the global path runs (reusing the
coarse maps) and ``path`` says ``"global"``.

On CUDA (``config.cuda_graphs``) each path - coarse maps, MSAC (with the coarse information maps),
coarse GNC, fine maps, fine GNC and the device part of the finalisation - runs as ONE captured
CUDA graph (``config.single_graph``, :func:`_path_stage`; it also checks its inputs' finiteness,
so the solve synchronises once, to fetch the packed results), or with ``single_graph=False`` as one
graph per stage (per-stage timings; the solve synchronises to check its inputs, to fetch the
results and at the timer's stage boundaries when ``config.sync_timings``). Points are padded to a
power-of-two bucket so a graph serves every point count of its bucket
(:mod:`nre_localization.engine.graphs`). Stages take their constants from
:mod:`nre_localization.engine.consts` (built before capture) and never synchronise. ``test/test_engine_graphs.py`` checks on
the CPU that each stage is capture-safe (and counts its kernels). With ``config.compile_gnc`` /
``compile_msac`` / ``compile_maps`` the stages' work goes through ``torch.compile`` first
(:mod:`nre_localization.engine.compiled`; far fewer, fused kernels per replay).

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

import functools
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import replace

import numpy as np
import torch

from nre_localization.engine import graphs
from nre_localization.engine.compiled import compiled
from nre_localization.engine.consts import cached, const
from nre_localization.engine.gnc import (
    GncProblem,
    gnc_iterate,
    gnc_radius,
    gnc_start,
    newton_polish,
)
from nre_localization.engine.gnc import _Consts as GncConsts
from nre_localization.engine.gnc import _consts as gnc_consts
from nre_localization.engine.gnc import _eval as gnc_eval
from nre_localization.engine.gnc import _homogeneous as homogeneous
from nre_localization.engine.gnc import _jhj as jhj
from nre_localization.engine.gnc import _psd_point_hessians as psd_point_hessians
from nre_localization.engine.loss_maps import (
    CoarseMaps,
    InfoMaps,
    bilinear_info,
    build_coarse_maps,
    build_fine_maps,
    coarse_info_maps,
)
from nre_localization.engine.msac import candidate_count, msac_p3p
from nre_localization.engine.types import MapPoints, PoseResult, QueryFeatures, SolverConfig
from nre_localization.errors import InputError
from nre_localization.evaluation.metrics import pose_errors
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
    query: QueryFeatures,
    points: MapPoints,
    camera: Camera,
    prior: torch.Tensor | None,
    device_check: bool = True,
) -> None:
    """Shapes and devices on the host; finiteness (and the prior's orthonormality) in one device
    reduction, so the whole check costs a single host synchronisation (a prior on the CPU is
    checked there). ``device_check=False``: no device work (the single-graph path checks the
    device tensors inside its graph, :func:`_checked_inputs`)."""
    if query.coarse.dim() != 3 or query.fine.dim() != 3:
        query.validate()  # raises with the detailed message
    if not isinstance(camera, Camera):
        raise InputError(f"camera must be a geometry.cameras.Camera, got {type(camera).__name__}")
    n = points.xyz.shape[0]
    if (
        points.xyz.dim() != 2
        or points.xyz.shape[1] != 3
        or points.desc_coarse.shape != (n, query.coarse.shape[0])
        or points.desc_fine.shape != (n, query.fine.shape[0])
        or n < 3
        or query.coarse_stride <= 0
        or query.fine_stride <= 0
    ):
        points.validate(query)
        query.validate()
    dev = query.coarse.device
    tensors = [query.fine, points.xyz, points.desc_coarse, points.desc_fine]
    if any(t.device != dev for t in tensors):
        query.validate()
        points.validate(query)
    if prior is not None and prior.shape != (4, 4):
        raise InputError("prior must be a finite [4, 4] T_cam_world")
    if prior is not None and prior.device.type == "cpu":  # checked here: no device work
        pn = prior.detach().to(torch.float64).numpy()
        if not np.isfinite(pn.astype(np.float32)).all():  # (float32: as projected)
            raise InputError("prior must be a finite [4, 4] T_cam_world")
        if np.abs(pn[:3, :3].T @ pn[:3, :3] - np.eye(3)).max() > 1e-3:
            raise InputError("prior rotation is not orthonormal")
        prior = None
    if not device_check:
        return
    # One float32 sum per tensor (float16 ones accumulated in float32: a sum of finite float16
    # values can exceed 65504; float64 ones cast first: a value beyond float32's range would be
    # inf in the engine's float32 projections, and a NaN cell there an out-of-bounds read).
    sums = [t.sum(dtype=torch.float32) for t in (query.coarse, *tensors)]
    ortho = None
    if prior is not None:
        p = prior.to(device=dev, dtype=torch.float64)
        r = p[:3, :3]
        ortho = (r.T @ r - torch.eye(3, dtype=torch.float64, device=dev)).abs().max()
        sums.append(p.sum(dtype=torch.float32))
    flags = torch.isfinite(torch.stack(sums))
    if ortho is not None:
        flags = torch.cat([flags, (ortho <= 1e-3)[None]])
    if bool(flags.all()):  # the one host sync
        return
    _raise_input_error(query, points, prior)


def _checked_inputs(
    tensors: tuple[torch.Tensor, ...], prior: torch.Tensor | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None]:
    """In-graph input check: ``(ok [1] f64, tensors, prior)`` with ``ok = 1`` when every tensor is
    finite and ``prior`` (``[4, 4]`` f64, optional) has an orthonormal rotation (to 1e-3). When
    not, the returned tensors are zeros and the prior the identity: the graph then computes
    harmless garbage (finite inputs: no NaN reaches an index computation, where it would be an
    out-of-bounds read, i.e. a device-side assert) and the caller raises from ``ok``."""
    # Sums in float32: a float64 value beyond float32's range (the engine projects in float32)
    # becomes inf here, as it would in the projection.
    sums = [t.sum(dtype=torch.float32) for t in tensors]
    ok = torch.isfinite(torch.stack(sums)).all()
    if prior is not None:
        r = prior[:3, :3]
        eye = const([[float(i == j) for j in range(4)] for i in range(4)], prior.dtype, r.device)
        ortho = (r.T @ r - eye[:3, :3]).abs().max()
        ok = ok & torch.isfinite(prior.to(torch.float32)).all() & (ortho <= 1e-3)
        prior = torch.where(ok, prior, eye)
    safe = tuple(torch.where(ok, t, 0.0) for t in tensors)
    return ok.to(torch.float64).view(1), safe, prior


def _raise_input_error(query: QueryFeatures, points: MapPoints, prior: torch.Tensor | None) -> None:
    """Raise the detailed :class:`InputError` for inputs whose device check failed."""
    query.validate()
    points.validate(query)
    if prior is not None:
        p = prior.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(p.to(torch.float32)).all()):
            raise InputError("prior must be a finite [4, 4] T_cam_world")
        raise InputError("prior rotation is not orthonormal")
    raise InputError("non-finite input")  # not reached: one of the checks above raises


def _project_cells(
    xyz: torch.Tensor, T: torch.Tensor, camera: Camera, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """World points ``[N, 3]`` -> full-map cells ``[N, 2]`` at ``stride`` and validity ``[N]``."""
    return camera.cell_camera(stride).project_world(xyz, T)


def _pad_points(points: MapPoints, n: int) -> MapPoints:
    """Append zero points (they project nowhere and carry zero information) up to ``n``."""
    if n <= len(points):
        return points
    per_point = (points.xyz, points.desc_coarse, points.desc_fine)
    return MapPoints(*graphs.materialize(tuple(graphs.Padded(t, n) for t in per_point)))


Stage = Callable[..., tuple[torch.Tensor, ...]]


def _use_graphs(dev: torch.device, config: SolverConfig) -> bool:
    """Whether the stages run as CUDA graphs (then points are padded to a bucket size)."""
    return dev.type == "cuda" and config.cuda_graphs


def _run(
    key: tuple[Hashable, ...],
    fn: Stage,
    inputs: tuple[torch.Tensor | graphs.Padded, ...],
    config: SolverConfig,
    copy_outputs: bool = True,
) -> tuple[torch.Tensor, ...]:
    """``fn(*inputs)``, through a CUDA graph cached under ``key`` on CUDA when enabled (see
    :func:`graphs.call` for ``copy_outputs`` and padded inputs)."""
    first = inputs[0]
    dev = first.tensor.device if isinstance(first, graphs.Padded) else first.device
    if _use_graphs(dev, config):
        return graphs.call((*key, dev.index), fn, inputs, copy_outputs=copy_outputs)
    return fn(*graphs.materialize(inputs))


def _coarse_stage(
    query: QueryFeatures, config: SolverConfig
) -> tuple[Stage, tuple[Hashable, ...], Callable[[tuple[torch.Tensor, ...]], CoarseMaps]]:
    """Coarse dense maps as a stage ``(coarse [Dc,Hc,Wc], desc [N,Dc], alive [N] | None) ->
    (logp, entropy, argmax)`` and the function rebuilding :class:`CoarseMaps` from its outputs."""
    stride = query.coarse_stride
    hc, wc = int(query.coarse.shape[1]), int(query.coarse.shape[2])

    def run(c: torch.Tensor, desc: torch.Tensor, *alive: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q = QueryFeatures(c, c, stride, stride)  # only the coarse map is read
        pts = MapPoints(desc, desc, desc)  # only desc_coarse is read
        cm = build_coarse_maps(q, pts, config, alive[0] if alive else None)
        return cm.logp, cm.entropy, cm.argmax

    def wrap(out: tuple[torch.Tensor, ...]) -> CoarseMaps:
        return CoarseMaps(out[0], out[1], out[2], stride, math.log(hc * wc + 1))

    key = ("coarse_maps", tuple(query.coarse.shape), config.point_chunk, config.half_correlation)
    return run, key, wrap


def _gnc(
    xyz: torch.Tensor,
    maps: InfoMaps,
    camera: Camera,
    sigmas: tuple[float, ...],
    T0: torch.Tensor,
    iterations: int,
    config: SolverConfig,
    stage: str,
    floor: float = 0.0,
) -> torch.Tensor:
    """The fixed-schedule GNC loop (one CUDA graph when enabled); returns ``T`` (f64).
    ``floor``: see :class:`GncProblem`."""
    radius = gnc_radius(sigmas)
    meta = (maps.pad, maps.map_height, maps.map_width, maps.stride, maps.log_omega)

    def make_run(linear_solver: str) -> Stage:
        def run(
            x: torch.Tensor, data: torch.Tensor, origin: torch.Tensor, T: torch.Tensor
        ) -> tuple[torch.Tensor]:
            m = InfoMaps(data, origin, *meta)
            prob = GncProblem(x, m, camera.cell_camera(maps.stride), sigmas, radius, floor)
            st = gnc_iterate(
                prob,
                gnc_start(T, config.lambda_init),
                iterations,
                config.level_iterations,
                config.convergence_tol,
                config.lambda_init,
                early_exit=x.device.type == "cpu",
                linear_solver=linear_solver,
                compile_step=config.compile_gnc,
            )
            return (st.T,)

        return run

    inputs = (xyz, maps.data, maps.origin, T0.to(torch.float64))
    base = (
        stage,
        tuple(maps.data.shape),
        meta,
        camera,
        sigmas,
        iterations,
        config.level_iterations,
        config.convergence_tol,
        config.lambda_init,
        config.compile_gnc,
        floor,
    )
    return _run_pose_stage(base, make_run, inputs, config)


def _run_pose_stage(
    base: tuple[Hashable, ...],
    make_run: Callable[[str], Stage],
    inputs: tuple[torch.Tensor, ...],
    config: SolverConfig,
) -> torch.Tensor:
    """Run a pose-refinement stage (GNC, Newton polish) built by ``make_run(linear_solver)``;
    returns its pose ``T`` (f64). The 6x6 solver is ``config.linear_solver`` (compiled units
    always use the unrolled Cholesky, see :func:`gnc._solve6`); with CUDA graphs a Cholesky that
    cannot be captured falls back to the Gauss-Jordan solver (plain ops)."""
    dev = inputs[0].device
    solver = config.linear_solver
    if solver == "auto":
        solver = "gauss_jordan" if dev.type == "cuda" else "cholesky"
    if _use_graphs(dev, config):
        if solver == "cholesky" and graphs.failed((*base, solver, dev.index)):
            solver = "gauss_jordan"
        return _run((*base, solver), make_run(solver), inputs, config)[0]
    return make_run(solver)(*inputs)[0]


def _fine_gnc(
    xyz: torch.Tensor,
    maps: InfoMaps,
    camera: Camera,
    sigmas: tuple[float, ...],
    T0: torch.Tensor,
    iterations: int,
    config: SolverConfig,
    stage: str,
    polish_iterations: int,
) -> torch.Tensor:
    """Fine GNC schedule, then ``polish_iterations`` steps at its last sigma (tolerance
    ``config.polish_tol``) so that the result sits at the minimum of the final smoothed cost:
    damped Newton steps on the PSD-projected exact Hessian (``polish_mode="newton"``) or more
    majorise-minimise steps (``"majoriser"``). NRE maps are optimised truncated as
    ``config.fine_truncation`` says (:func:`_fine_floor`)."""
    floor = 0.0 if stage == "fine_re" else _fine_floor(maps, config)  # RE: one-hot maps
    T = _gnc(xyz, maps, camera, sigmas, T0, iterations, config, stage, floor)
    n = polish_iterations
    if n == 0:
        return T
    if config.polish_mode == "newton":
        return _newton(xyz, maps, camera, sigmas[-1], T, n + 1, config, "newton_" + stage, floor)
    pcfg = replace(config, level_iterations=n, convergence_tol=config.polish_tol)
    return _gnc(xyz, maps, camera, sigmas[-1:], T, n + 1, pcfg, "polish_" + stage, floor)


def _fine_floor(maps: InfoMaps, config: SolverConfig) -> float:
    """Information floor of the fine level (see :class:`GncProblem`): 0 for the paper's truncation
    at ``ln|Omega'_f|``; ``ln|Omega'_f| - ln(w^2 + 1)`` for ``fine_truncation="window"``, where a
    cell less likely than uniform over its ``w x w`` window carries no information. The fine
    maps are broad (a 17x17 window holds most of a point's probability only in part), and with
    the paper's level a point far from its mode still pulls with the slope of its log-probability
    tail; truncated at the window level it stops pulling, as RE's points do (RESULTS.md
    section 7: more accurate than RE and than the paper's level on held-out rendered scenes)."""
    if config.fine_truncation == "map":
        return 0.0
    return max(0.0, maps.log_omega - math.log(config.fine_window**2 + 1))


def _newton(
    xyz: torch.Tensor,
    maps: InfoMaps,
    camera: Camera,
    sigma: float,
    T0: torch.Tensor,
    iterations: int,
    config: SolverConfig,
    stage: str,
    floor: float = 0.0,
) -> torch.Tensor:
    """:func:`gnc.newton_polish` at ``sigma`` (one CUDA graph when enabled); returns ``T`` (f64).
    ``floor``: see :class:`GncProblem`."""
    radius = gnc_radius((sigma,))
    meta = (maps.pad, maps.map_height, maps.map_width, maps.stride, maps.log_omega)

    def make_run(linear_solver: str) -> Stage:
        def run(
            x: torch.Tensor, data: torch.Tensor, origin: torch.Tensor, T: torch.Tensor
        ) -> tuple[torch.Tensor]:
            m = InfoMaps(data, origin, *meta)
            prob = GncProblem(x, m, camera.cell_camera(maps.stride), (sigma,), radius, floor)
            early = x.device.type == "cpu"
            Tn = newton_polish(
                prob,
                T,
                iterations,
                config.polish_tol,
                config.lambda_init,
                early,
                linear_solver,
                compile_step=config.compile_gnc,
            )
            return (Tn,)

        return run

    inputs = (xyz, maps.data, maps.origin, T0.to(torch.float64))
    base = (
        stage,
        tuple(maps.data.shape),
        meta,
        camera,
        sigma,
        iterations,
        config.polish_tol,
        config.lambda_init,
        config.compile_gnc,
        floor,
    )
    return _run_pose_stage(base, make_run, inputs, config)


def _msac(
    coarse: CoarseMaps,
    cinfo: InfoMaps | None,
    xyz: torch.Tensor,
    camera: Camera,
    config: SolverConfig,
    n_alive: int,
    stage: str,
    alive: torch.Tensor | None = None,
    onehot: bool = False,
) -> torch.Tensor:
    """MSAC-P3P (one CUDA graph when enabled); returns ``T`` (f64). Without ``cinfo`` the stage
    also builds the coarse information maps (see :func:`_msac_stage`)."""
    return _msac_stage(coarse, cinfo, xyz, camera, config, n_alive, stage, alive, onehot)[0]


def _msac_stage(
    coarse: CoarseMaps,
    cinfo: InfoMaps | None,
    xyz: torch.Tensor,
    camera: Camera,
    config: SolverConfig,
    n_alive: int,
    stage: str,
    alive: torch.Tensor | None = None,
    onehot: bool = False,
) -> tuple[torch.Tensor, InfoMaps]:
    """MSAC-P3P on the coarse maps: ``(T [4, 4] f64, coarse information maps)``; the information
    maps are built inside the stage (same graph) unless ``cinfo`` is given."""
    dev = xyz.device
    cmeta = (coarse.stride, coarse.log_omega)
    pad = 2 * gnc_radius(config.coarse_sigmas) + 1
    hc, wc = coarse.height, coarse.width
    imeta = (pad, hc, wc, coarse.stride, coarse.log_omega)

    def run(
        logp: torch.Tensor,
        ent: torch.Tensor,
        am: torch.Tensor,
        x: torch.Tensor,
        n_t: torch.Tensor,
        k_t: torch.Tensor,
        *rest: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        cm = CoarseMaps(logp, ent, am, *cmeta)
        if cinfo is None:
            im = coarse_info_maps(cm, pad, alive=rest[0] if rest else None, onehot=onehot)
        else:
            im = InfoMaps(rest[0], rest[1], *imeta, dense=True)
        # Compiled: no host-synchronising compaction (the CPU's default) inside the traced graph.
        compact = False if config.compile_msac else None
        T, _ = msac_p3p(cm, im, x, camera, config, n_t, compact=compact, k_use=k_t)
        if cinfo is None:
            return T, im.data, im.origin
        return (T,)

    # Points alive and MSAC candidates: host values (fills, no host->device copy).
    n_t = torch.full((), n_alive, dtype=torch.int64, device=dev)
    k_t = torch.full((), candidate_count(n_alive, config), dtype=torch.int64, device=dev)
    inputs: tuple[torch.Tensor, ...] = (coarse.logp, coarse.entropy, coarse.argmax, xyz, n_t, k_t)
    if cinfo is not None:
        inputs = (*inputs, cinfo.data, cinfo.origin)
    elif alive is not None:
        inputs = (*inputs, alive)
    key = (
        stage,
        tuple(coarse.logp.shape),
        cmeta,
        camera,
        config,
        cinfo is None,
        alive is None,
        onehot,
    )
    fn = compiled(run, "msac") if config.compile_msac else run
    out = _run(key, fn, inputs, config)
    if cinfo is not None:  # the given maps: not copied through the graph's outputs
        return out[0], cinfo
    return out[0], InfoMaps(out[1], out[2], *imeta, dense=True)


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
    """Fine information windows around the reprojections under ``T`` (one CUDA graph when
    enabled)."""
    rf = gnc_radius(config.fine_sigmas + config.tracking_sigmas)  # pad for both schedules
    fs, cs = query.fine_stride, query.coarse_stride
    df, hf, wf = (int(s) for s in query.fine.shape)
    cmeta = None if coarse is None else (coarse.stride, coarse.log_omega)

    def run(
        fine: torch.Tensor,
        dfine: torch.Tensor,
        xyz: torch.Tensor,
        T_: torch.Tensor,
        *rest: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        q = QueryFeatures(fine, fine, cs, fs)
        pts = MapPoints(xyz, dfine, dfine)
        i = 0
        cm = None
        if cmeta is not None:
            cm = CoarseMaps(rest[0], rest[0], rest[0], *cmeta)  # only logp is read
            i = 1
        al = rest[i] if len(rest) > i else None
        centres, valid = _project_cells(xyz.to(torch.float32), T_, camera, fs)
        # Compiled: the fixed-shape gather path (no host-synchronising compaction) on any device.
        compact = False if config.compile_maps else None
        m = build_fine_maps(
            q, pts, cm, centres, valid, 2 * rf + 1, config, alive=al, onehot=onehot, compact=compact
        )
        return m.data, m.origin

    inputs: tuple[torch.Tensor, ...] = (query.fine, points.desc_fine, points.xyz, T)
    if coarse is not None:
        inputs = (*inputs, coarse.logp)
    if alive is not None:
        inputs = (*inputs, alive)
    key = (
        "fine_maps",
        tuple(query.fine.shape),
        tuple(points.desc_fine.shape),
        None if coarse is None else (tuple(coarse.logp.shape), cmeta),
        alive is None,
        camera,
        config.fine_window,
        config.fine_sigmas,
        config.tracking_sigmas,
        config.point_chunk,
        config.half_correlation,
        onehot,
    )
    fn = compiled(run, "fine_maps") if config.compile_maps else run
    data, origin = _run((*key, config.compile_maps), fn, inputs, config)
    return InfoMaps(data, origin, 2 * rf + 1, hf, wf, fs, math.log(hf * wf + 1))


def _finalize_device(
    xyz: torch.Tensor,
    maps: InfoMaps,
    camera: Camera,
    T: torch.Tensor,
    config: SolverConfig,
    alive: torch.Tensor | None,
) -> torch.Tensor:
    """Device part of the finalisation (capturable): ``[55]`` f64 = information matrix (36),
    ``T`` (16), summed information ``sum_n a_n`` (the cost is ``n ln|Omega'|`` minus it),
    informative count, median depth of the informative points
    (:func:`_finalize_terms`, through ``torch.compile`` with ``config.compile_gnc``)."""
    radius = gnc_radius(config.fine_sigmas)
    problem = GncProblem(xyz, maps, camera.cell_camera(maps.stride), config.fine_sigmas, radius)
    k = gnc_consts(problem)
    exact = config.covariance_mode == "hessian"
    fn = compiled(_finalize_terms, "finalize") if config.compile_gnc else _finalize_terms
    return fn(problem, k, T.to(torch.float64), config.fine_sigmas[-1], exact, alive)


def _finalize_terms(
    problem: GncProblem,
    k: GncConsts,
    T64: torch.Tensor,
    sg: float,
    exact: bool,
    alive: torch.Tensor | None,
) -> torch.Tensor:
    """See :func:`_finalize_device`. One GNC evaluation at the final sigma gives the reprojections
    (cells, depths), Jacobians and the window sums from which each point's ``2x2`` Hessian ``H_n``
    (exact and PSD-projected, or ``W_n I`` when not ``exact``) comes as one small GEMM; then
    ``sum_n J_n^T H_n J_n`` and the verdict's terms are a handful of batched ops (few kernels)."""
    f64 = torch.float64
    maps, xyz = problem.maps, problem.xyz
    ev = gnc_eval(problem, k, homogeneous(xyz), T64[None], (sg,), True, normal=False)
    valid = ev.valid[0]
    hpsd = psd_point_hessians(ev.sums[0], sg, xyz.device, exact)
    J = torch.where(valid[:, None, None], ev.J64[0], k.zero64)  # [N, 2, 6] f64
    info6 = jhj(J, hpsd)
    ok = valid if alive is None else valid & alive
    a = bilinear_info(maps, ev.cells[0], ok)
    informative = a > 0
    use = torch.where(informative.any(), informative, ok)
    # Lower median of z over `use` (as nanmedian), sync-free: sort with the rest at +inf.
    zs = torch.sort(torch.where(use, ev.z[0], math.inf)).values
    kmed = ((use.sum() - 1).clamp_min(0) // 2).view(1)
    zmed = zs.gather(0, kmed)
    # a = 0 wherever not ok (padding included): sum_alive (ln|Omega'| - a) = n ln|Omega'| - sum a.
    parts = [a.sum(dtype=f64).view(1), informative.sum(dtype=f64).view(1), zmed.to(f64)]
    return torch.cat([info6.reshape(-1), T64.reshape(-1), *parts])


def _finalize(
    xyz: torch.Tensor,
    maps: InfoMaps,
    camera: Camera,
    T: torch.Tensor,
    config: SolverConfig,
    n_alive: int,
    path: str,
    method: str,
    alive: torch.Tensor | None = None,
) -> PoseResult:
    """Cost, informative count, covariance and reliability at the final pose (the device part is
    one CUDA graph when enabled; then the single host sync of the solve)."""
    mmeta = (maps.pad, maps.map_height, maps.map_width, maps.stride, maps.log_omega)

    def run(
        x: torch.Tensor,
        data: torch.Tensor,
        origin: torch.Tensor,
        T_: torch.Tensor,
        *al: torch.Tensor,
    ) -> tuple[torch.Tensor]:
        m = InfoMaps(data, origin, *mmeta)
        return (_finalize_device(x, m, camera, T_, config, al[0] if al else None),)

    inputs: tuple[torch.Tensor, ...] = (xyz, maps.data, maps.origin, T.to(torch.float64))
    if alive is not None:
        inputs = (*inputs, alive)
    key = ("finalize", tuple(maps.data.shape), mmeta, camera, config, alive is None)
    packed = _run(key, run, inputs, config)[0].cpu()  # the single host sync of the solve
    return _finalize_host(packed, config, n_alive, maps.log_omega, path, method)


def _coarse_level(method: str, config: SolverConfig) -> tuple[bool, str]:
    """Whether the global path's coarse level (MSAC scoring + coarse GNC) runs on one-hot argmax
    maps (``config.coarse_refinement``; always for RE), and the stage suffix that names it."""
    coarse_re = method == "re" or config.coarse_refinement == "argmax"
    return coarse_re, "re" if coarse_re else method


def _fine_level(
    query: QueryFeatures,
    points: MapPoints,
    coarse: CoarseMaps,
    xyz: torch.Tensor,
    camera: Camera,
    T0: torch.Tensor,
    config: SolverConfig,
    alive: torch.Tensor | None,
    method: str,
    tracking: bool,
    lap: Callable[[str], None],
) -> tuple[InfoMaps, torch.Tensor]:
    """Fine maps around the reprojections under ``T0``, then fine GNC + polish on the tracking or
    the global schedule: ``(fine maps, T)``. ``lap(stage)`` after each of the two stages."""
    if tracking:
        sigmas, iters = config.tracking_sigmas, config.tracking_iterations
        polish = config.tracking_polish_iterations
    else:
        sigmas, iters, polish = config.fine_sigmas, config.fine_iterations, config.polish_iterations
    fine = _fine_maps(query, points, coarse, camera, T0, config, alive, method == "re")
    lap("fine_maps")
    T = _fine_gnc(xyz, fine, camera, sigmas, T0, iters, config, "fine_" + method, polish)
    lap("fine_gnc")
    return fine, T


def _no_lap(stage: str) -> None:
    """Stage boundary inside a single graph: nothing to time."""


@functools.lru_cache(maxsize=64)
def _path_stage(
    strides: tuple[int, int], camera: Camera, config: SolverConfig, method: str, tracking: bool
) -> Stage:
    """The whole tracking or global path as one stage (one CUDA graph with ``config.single_graph``):
    ``(coarse [Dc,Hc,Wc], fine [Df,Hf,Wf], desc_coarse [N,Dc], desc_fine [N,Df], xyz [N,3],
    n_alive (0-d int64)[, prior [4,4] f64]) -> (packed [56] f64,)``: :func:`_finalize_device`'s
    55 values and the input check's flag (:func:`_checked_inputs`). The first ``n_alive`` points
    are real, the rest padding. The stages are the ones of the per-stage path, run with
    ``cuda_graphs=False`` inside the caller's capture (so the same code, the same results).
    Cached: a replayed solve builds neither the closure nor its config again."""
    inner = replace(config, cuda_graphs=False)
    cs, fs = strides
    coarse_re, level = _coarse_level(method, config)
    cpad = 2 * gnc_radius(config.coarse_sigmas) + 1

    def msac_core(
        cm: CoarseMaps, xyz: torch.Tensor, alive: torch.Tensor, n_t: torch.Tensor
    ) -> tuple[torch.Tensor, InfoMaps]:
        cinfo = coarse_info_maps(cm, cpad, alive=alive, onehot=coarse_re)
        compact = False if config.compile_msac else None
        # (the candidate count comes from n_t on the device: msac_p3p's default for k_use)
        T, _ = msac_p3p(cm, cinfo, xyz, camera, inner, n_t, compact=compact)
        return T, cinfo

    msac = compiled(msac_core, "msac") if config.compile_msac else msac_core

    def run(
        cfeat: torch.Tensor,
        ffeat: torch.Tensor,
        desc_c: torch.Tensor,
        desc_f: torch.Tensor,
        xyz_in: torch.Tensor,
        n_t: torch.Tensor,
        *prior: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        dev = xyz_in.device
        nb = int(xyz_in.shape[0])
        ok, safe, p0 = _checked_inputs(
            (cfeat, ffeat, desc_c, desc_f, xyz_in), prior[0] if prior else None
        )
        cfeat, ffeat, desc_c, desc_f, xyz_in = safe
        alive = cached(("arange", nb), dev, lambda: torch.arange(nb, device=dev)) < n_t
        q = QueryFeatures(cfeat, ffeat, cs, fs)
        pts = MapPoints(xyz_in, desc_c, desc_f)
        cm = build_coarse_maps(q, pts, inner, alive)
        xyz = xyz_in.to(torch.float32)
        if tracking:
            assert p0 is not None
            T0 = p0
        else:
            Tm, cinfo = msac(cm, xyz, alive, n_t)
            T0 = _gnc(
                xyz,
                cinfo,
                camera,
                config.coarse_sigmas,
                Tm,
                config.coarse_iterations,
                inner,
                "coarse_" + level,
            )
        fine, T = _fine_level(q, pts, cm, xyz, camera, T0, inner, alive, method, tracking, _no_lap)
        return (torch.cat([_finalize_device(xyz, fine, camera, T, inner, alive), ok]),)

    return run


def _solve_single_graph(
    query: QueryFeatures,
    points: MapPoints,
    camera: Camera,
    prior: torch.Tensor | None,
    config: SolverConfig,
    method: str,
    n_alive: int,
    timer: Timer,
) -> PoseResult:
    """Tracking (when ``prior`` is given) and, if needed, the global path, each as one graph
    (:func:`_path_stage`); the per-point inputs are padded to their bucket on their way into the
    graph's buffers. One host synchronisation per path: the packed results (with the input
    check's flag: bad inputs raise here, after the replay)."""
    dev = query.coarse.device
    n_t = torch.full((), n_alive, dtype=torch.int64, device=dev)
    nb = graphs.bucket_size(n_alive)
    per_point = (points.desc_coarse, points.desc_fine, points.xyz)
    inputs: tuple[torch.Tensor | graphs.Padded, ...] = (
        query.coarse,
        query.fine,
        *(graphs.Padded(t, nb) for t in per_point),
        n_t,
    )
    fine_log_omega = math.log(int(query.fine.shape[1]) * int(query.fine.shape[2]) + 1)
    strides = (query.coarse_stride, query.fine_stride)
    if prior is not None:
        fn = _path_stage(strides, camera, config, method, tracking=True)
        T0 = prior.to(device=dev, dtype=torch.float64)
        key = ("solve_tracking", method, strides, camera, config)
        packed = _run(key, fn, (*inputs, T0), config, copy_outputs=False)[0].cpu()
        timer.lap("solve_graph")
        if packed[55] != 1.0:
            _raise_input_error(query, points, prior)
        result = _finalize_host(packed, config, n_alive, fine_log_omega, "tracking", method)
        timer.lap("finalize")
        if result.reliable or not config.tracking_fallback:
            result.timings = dict(timer.times, total=timer.total())
            return result
    fn = _path_stage(strides, camera, config, method, tracking=False)
    key = ("solve_global", method, strides, camera, config)
    packed = _run(key, fn, inputs, config, copy_outputs=False)[0].cpu()
    timer.lap("solve_graph")
    if packed[55] != 1.0:
        _raise_input_error(query, points, None)
    result = _finalize_host(packed, config, n_alive, fine_log_omega, "global", method)
    timer.lap("finalize")
    result.timings = dict(timer.times, total=timer.total())
    return result


def _finalize_host(
    packed: torch.Tensor,
    config: SolverConfig,
    n_alive: int,
    log_omega: float,
    path: str,
    method: str,
) -> PoseResult:
    """Covariance and reliability verdict from the packed device results (CPU, float64)."""
    vals = packed.numpy()  # host math in NumPy: a few us instead of ~50 through torch ops
    info6 = vals[:36].reshape(6, 6)
    T_cpu = packed[36:52].view(4, 4).clone()
    cost_f = n_alive * log_omega - float(vals[52])
    n_inf, med_depth = int(vals[53]), float(vals[54])
    if not math.isfinite(med_depth):
        med_depth = 1.0

    ridge = 1e-12 * float(np.trace(info6)) + 1e-300
    with np.errstate(all="ignore"):
        try:
            c = np.linalg.inv(info6 + ridge * np.eye(6))
        except np.linalg.LinAlgError:
            c = np.full((6, 6), np.nan)
    if not np.isfinite(c).all():
        c = np.eye(6) * 1e6
    c = 0.5 * (c + c.T) * config.covariance_scale
    cov = torch.from_numpy(c)
    ratio = cost_f / (n_alive * log_omega)
    reasons = []
    if ratio > config.max_cost_ratio:
        reasons.append(f"cost ratio {ratio:.3f} > {config.max_cost_ratio}")
    if n_inf < config.min_informative:
        reasons.append(f"{n_inf} informative points < {config.min_informative}")
    rot_std = math.degrees(math.sqrt(max(float(np.linalg.eigvalsh(c[3:, 3:]).max()), 0.0)))
    pos_std = math.sqrt(max(float(np.linalg.eigvalsh(c[:3, :3]).max()), 0.0))
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
        log_omega=log_omega,
        method=method,
        reasons=reasons,
        median_depth=med_depth,
    )


def _solve(
    query: QueryFeatures,
    points: MapPoints,
    camera: Camera,
    prior: torch.Tensor | None,
    config: SolverConfig,
    method: str,
) -> PoseResult:
    """One solve, then (global path, ``config.consensus_seeds > 1``) the ambiguity check."""
    res = _solve_once(query, points, camera, prior, config, method)
    if res.path != "global" or config.consensus_seeds <= 1:
        return res
    runs = [res]
    for i in range(1, config.consensus_seeds):
        cfg_i = replace(config, seed=config.seed + i)
        runs.append(_solve_once(query, points, camera, None, cfg_i, method))
    return _consensus(runs, config)


def _consensus(runs: list[PoseResult], config: SolverConfig) -> PoseResult:
    """The lowest-cost run, unreliable when another *reliable* run disagrees with it (see
    ``SolverConfig.consensus_seeds``; a run the engine itself declines - a failed MSAC, a pose
    that explains nothing - is no competing explanation and is ignored)."""
    best = min(runs, key=lambda r: r.cost if math.isfinite(r.cost) else math.inf)
    depth = max(best.median_depth, 1e-9)
    spread_t, spread_r = 0.0, 0.0
    for r in runs:
        if r is best or not r.reliable:
            continue
        gap_t, gap_r = pose_errors(r.T_cam_world.numpy(), best.T_cam_world.numpy())
        dt, dr = float(gap_t), float(gap_r)
        if not (math.isfinite(dt) and math.isfinite(dr)):  # (best itself non-finite)
            dt, dr = math.inf, math.inf
        spread_t, spread_r = max(spread_t, dt / depth), max(spread_r, dr)
    best.consensus_spread = (spread_t, spread_r)
    if spread_t > config.consensus_max_translation or spread_r > config.consensus_max_rotation_deg:
        best.reliable = False
        best.reasons = [
            *best.reasons,
            f"ambiguous: {len(runs)} global solves (MSAC seeds) disagree by "
            f"{spread_t:.1%} of the depth / {spread_r:.2f} deg",
        ]
    timings: dict[str, float] = {}
    for r in runs:
        for k, v in r.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    best.timings = timings
    return best


def _solve_once(
    query: QueryFeatures,
    points: MapPoints,
    camera: Camera,
    prior: torch.Tensor | None,
    config: SolverConfig,
    method: str,
) -> PoseResult:
    dev = query.coarse.device
    single = _use_graphs(dev, config) and config.single_graph
    # Finiteness before any device work (a NaN reaching an index computation would be an
    # out-of-bounds read, i.e. a device-side assert that ends the CUDA context); the single graph
    # checks (and neutralises) its inputs itself.
    _check_inputs(query, points, camera, prior, device_check=not single)
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    n_alive = len(points)
    if single:
        graphs.new_epoch()
        # No timer synchronisations: the one host sync (the packed results) ends the device part.
        timer = Timer(dev, False)
        with torch.no_grad():
            return _solve_single_graph(query, points, camera, prior, config, method, n_alive, timer)
    alive: torch.Tensor | None = None
    if _use_graphs(dev, config):
        graphs.new_epoch()  # stages of this solve share their static input copies
        nb = graphs.bucket_size(n_alive)
        points = _pad_points(points, nb)
        alive = torch.arange(nb, device=dev) < n_alive
    timer = Timer(dev, config.sync_timings)
    with torch.no_grad():
        run, key, wrap = _coarse_stage(query, config)
        cin = (query.coarse, points.desc_coarse) + (() if alive is None else (alive,))
        coarse = wrap(_run((*key, alive is None), run, cin, config))
        xyz = points.xyz.to(torch.float32)
        timer.lap("coarse_maps")
        if prior is not None:
            T0 = prior.to(device=dev, dtype=torch.float64)
            fine, T = _fine_level(
                query, points, coarse, xyz, camera, T0, config, alive, method, True, timer.lap
            )
            result = _finalize(xyz, fine, camera, T, config, n_alive, "tracking", method, alive)
            timer.lap("finalize")
            if result.reliable or not config.tracking_fallback:
                result.timings = dict(timer.times, total=timer.total())
                return result
        # The coarse level (MSAC scoring + coarse GNC) on argmax maps unless coarse_refinement="nre".
        coarse_re, level = _coarse_level(method, config)
        T0, cinfo = _msac_stage(
            coarse, None, xyz, camera, config, n_alive, "msac_" + level, alive, coarse_re
        )
        timer.lap("msac")
        coarse_stage = "coarse_" + level
        T1 = _gnc(
            xyz,
            cinfo,
            camera,
            config.coarse_sigmas,
            T0,
            config.coarse_iterations,
            config,
            coarse_stage,
        )
        timer.lap("coarse_gnc")
        fine, T = _fine_level(
            query, points, coarse, xyz, camera, T1, config, alive, method, False, timer.lap
        )
        result = _finalize(xyz, fine, camera, T, config, n_alive, "global", method, alive)
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
