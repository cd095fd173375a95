"""Engine inputs, configuration and outputs (the contract of docs/architecture.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from nre_localization.errors import ConfigError, InputError

__all__ = ["MapPoints", "PoseResult", "QueryFeatures", "SolverConfig"]


@dataclass
class QueryFeatures:
    """Dense descriptors of one query image.

    ``coarse [Dc, Hc, Wc]`` and ``fine [Df, Hf, Wf]`` (float, same device), with their strides in
    pixels: cell ``(i, j)`` of a stride-``s`` map is centred on pixel ``((j + .5) s - .5, (i + .5) s - .5)``.
    """

    coarse: torch.Tensor
    fine: torch.Tensor
    coarse_stride: int
    fine_stride: int

    def validate(self) -> None:
        """Raise :class:`InputError` on wrong ranks, strides or non-finite values."""
        if self.coarse.dim() != 3 or self.fine.dim() != 3:
            raise InputError(
                f"query features must be [D, H, W]; got coarse {tuple(self.coarse.shape)}, "
                f"fine {tuple(self.fine.shape)}"
            )
        if self.coarse_stride <= 0 or self.fine_stride <= 0:
            raise InputError(
                f"strides must be positive, got {self.coarse_stride}, {self.fine_stride}"
            )
        if self.coarse.device != self.fine.device:
            raise InputError("coarse and fine query features are on different devices")
        # A sum is non-finite iff some element is (short of overflow): one cheap pass each.
        f32 = torch.float32  # (the engine computes in float32: larger values overflow there)
        if not (
            torch.isfinite(self.coarse.sum(dtype=f32)) and torch.isfinite(self.fine.sum(dtype=f32))
        ):
            raise InputError("query features contain NaN or Inf (or values beyond float32's range)")


@dataclass
class MapPoints:
    """Candidate map points: ``xyz [N, 3]`` (world frame, metres), ``desc_coarse [N, Dc]``,
    ``desc_fine [N, Df]`` (sampled where the point is observed in its source image)."""

    xyz: torch.Tensor
    desc_coarse: torch.Tensor
    desc_fine: torch.Tensor

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    def validate(self, query: QueryFeatures) -> None:
        """Raise :class:`InputError` on inconsistent shapes, devices or non-finite values."""
        n = self.xyz.shape[0]
        if self.xyz.dim() != 2 or self.xyz.shape[1] != 3:
            raise InputError(f"map points xyz must be [N, 3], got {tuple(self.xyz.shape)}")
        if self.desc_coarse.shape != (n, query.coarse.shape[0]):
            raise InputError(
                f"desc_coarse must be [N, Dc] = [{n}, {query.coarse.shape[0]}], "
                f"got {tuple(self.desc_coarse.shape)}"
            )
        if self.desc_fine.shape != (n, query.fine.shape[0]):
            raise InputError(
                f"desc_fine must be [N, Df] = [{n}, {query.fine.shape[0]}], "
                f"got {tuple(self.desc_fine.shape)}"
            )
        if n < 3:
            raise InputError(f"need at least 3 map points, got {n}")
        for name in ("xyz", "desc_coarse", "desc_fine"):
            t = getattr(self, name)
            if t.device != query.coarse.device:
                raise InputError(
                    f"map points {name} on {t.device}, query features on {query.coarse.device}"
                )
            if not torch.isfinite(t.sum(dtype=torch.float32)):
                raise InputError(
                    f"map points {name} contain NaN or Inf (or values beyond float32's range)"
                )


@dataclass(frozen=True)
class SolverConfig:
    """Solver knobs. Units: map cells unless stated; defaults are scene-independent."""

    # --- loss maps
    point_chunk: int = 4096  # points per chunk when building coarse maps (bounds memory)
    half_correlation: bool = True  # fp16 descriptor dot products on CUDA (ignored on CPU)
    fine_window: int = 17  # fine window side in fine cells (odd recommended, <= 64)
    # Fine information truncation: "map" (ln|Omega'_fine|, the paper's) or "window" (ln(w^2 + 1):
    # a cell less likely than uniform over its window carries no information; see loss_maps.py)
    fine_truncation: str = "window"
    # --- MSAC-P3P initialisation
    msac_hypotheses: int = 1024  # P3P triplets (each gives up to 4 poses)
    msac_candidate_fraction: float = 0.25  # sample from this fraction of most peaked maps ...
    msac_min_candidates: int = 24  # ... but at least this many points
    msac_score_points: int = 256  # points scoring every hypothesis (0: all)
    msac_refine_top: int = 16  # best hypotheses re-scored with all points
    msac_hypothesis_chunk: int = 8192  # P3P poses (4 per triplet) scored per pass (memory)
    seed: int = 0
    # --- GNC-IRLS (majorise-minimise + Levenberg-Marquardt damping + sigma schedule)
    coarse_sigmas: tuple[float, ...] = (1.5, 1.0, 0.6)
    fine_sigmas: tuple[float, ...] = (2.0, 1.0, 0.6)
    # Static schedule (engine/gnc.py): 1 initial evaluation + level_iterations steps per sigma,
    # capped at *_iterations evaluations (always run on CUDA, converged levels masked).
    coarse_iterations: int = 10
    fine_iterations: int = 10
    level_iterations: int = 3  # steps per sigma level
    convergence_tol: float = 1e-4  # relative cost decrease below which a level is converged
    lambda_init: float = 1e-3
    # Polish at the last fine sigma (global and tracking paths): majorise-minimise converges
    # slowly on broad fine maps (the majoriser's curvature W_n >> the map's curvature), so the
    # 3 steps of the last level stop well short of the minimum. Extra steps at that sigma, with
    # their own (much smaller) relative-decrease tolerance; 0 disables.
    # "newton" (default): damped Newton steps on the PSD-projected exact Hessian of the smoothed
    # cost (converges in a few steps and to a lower cost); "majoriser": more IRLS steps.
    polish_iterations: int = 10
    polish_tol: float = 1e-7
    polish_mode: str = "newton"
    # Global path, coarse level (MSAC hypothesis scoring and coarse GNC): "nre" (the coarse NRE
    # maps, the paper's coarse level) or "argmax" (one-hot maps at each coarse map's argmax, eq. 11;
    # the fine level stays NRE). See benchmarks/RESULTS.md (rendered held-out scenes, section 7).
    coarse_refinement: str = "argmax"
    # Ambiguity check of the global path: it runs consensus_seeds times (MSAC seeds seed,
    # seed + 1, ...), keeps the lowest-cost pose, and declares the result unreliable when another
    # run ends more than consensus_max_translation x median point depth (camera centres) or
    # consensus_max_rotation_deg away: on repeated structure the runs fall into different copies.
    # 1 disables it (one global solve). Costs consensus_seeds global solves per global frame
    # (the tracking path is unaffected); the Localizer turns it on for relocalisation. On CUDA
    # every seed is a graph of its own (the seed is baked into MSAC's sampling tables): the first
    # global frame of each point bucket captures consensus_seeds graphs.
    consensus_seeds: int = 1
    consensus_max_translation: float = 0.02
    consensus_max_rotation_deg: float = 2.0
    # --- tracking (prior given)
    tracking_fallback: bool = True  # run the global path when the tracked pose is not reliable
    # Fine GNC schedule of the tracking path (the prior is already within a few fine cells, so a
    # shorter schedule suffices: fewer evaluations per solve). Same units and rules as fine_sigmas.
    tracking_sigmas: tuple[float, ...] = (2.0, 0.6)
    # 5 slots: the first evaluation, 3 steps at 2.0 (the last also evaluates 0.6), 1 step at 0.6;
    # then tracking_polish_iterations Newton steps. Against (7, 10) on the 42 real queries of
    # benchmarks/bench_localization.py (Strecha, TUM; clean and robot; prior as bench_engine's):
    # poses within 0.0008 deg / 0.24 mm (median 0.00006 deg), 10x below the global/tracking
    # difference on the same queries, and ~260 fewer kernels per solve (engine/graphs.py).
    tracking_iterations: int = 5
    tracking_polish_iterations: int = 6
    # --- covariance and reliability
    covariance_mode: str = (
        "hessian"  # "hessian": exact Hessian of the smoothed cost, PSD-projected;
    )
    # "majoriser": the IRLS normal matrix (optimistic)
    # Calibration factor of the covariance (variances are multiplied by it). 1.0 is the raw Laplace
    # estimate, consistent on planted maps where all noise is modelled (NEES 5.5); on real data it is
    # over-confident (map points and descriptors carry unmodelled error). 8.0 comes from
    # benchmarks/bench_covariance.py: median-NEES fit on the Strecha scenes, leave-one-scene-out
    # 3.7-7.8 (held-out median NEES 1.9-16.7); see benchmarks/RESULTS.md.
    covariance_scale: float = 8.0
    max_cost_ratio: float = 0.95  # final cost / (N ln|Omega'|) must stay below
    min_informative: int = 12  # points in non-truncated fine cells
    max_rotation_std_deg: float = 5.0
    max_relative_translation_std: float = 0.05  # position std / median point depth
    # --- runtime
    cuda_graphs: bool = True  # capture the fixed-shape loops on CUDA (falls back to eager)
    # With cuda_graphs: each path (tracking, global) is ONE graph from the query features to the
    # packed results (no host work between stages; timings then give the whole device part as
    # "solve_graph"). False: one graph per stage, with per-stage timings (benchmark breakdowns).
    single_graph: bool = True
    # torch.compile (Inductor; opt-in, needs a C++ compiler on the CPU or Triton on CUDA): GNC slots,
    # Newton steps, the finalisation's evaluation and MSAC's hypothesis scoring (compile_gnc);
    # the whole MSAC-P3P stage
    # (compile_msac); the fine maps (compile_maps). Compiled once per shape, before any CUDA-graph
    # capture (engine/compiled.py); a unit that fails to compile runs eagerly.
    compile_gnc: bool = False
    compile_msac: bool = False
    compile_maps: bool = False
    # 6x6 damped normal equations of the GNC / Newton steps when not compiled: "cholesky"
    # (LAPACK / cuSOLVER: ~2 ops, but cuSOLVER's potrf is one slow kernel on the GPU) or
    # "gauss_jordan" (19 tiny elementwise kernels, no library call) or "auto" (Gauss-Jordan on
    # CUDA, where it replays 0.3-0.5 ms faster per solve on an H100, Cholesky on the CPU, where it
    # is fewer ops). Compiled units always use the unrolled Cholesky (fused into one kernel).
    linear_solver: str = "auto"
    num_threads: int = 0  # torch CPU threads (0: leave as is)
    sync_timings: bool = True  # torch.cuda.synchronize at stage boundaries for honest timings

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"SolverConfig.{name}={getattr(self, name)!r}: {why}")

        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise bad(f.name, "must be finite")
        if not 1 <= self.fine_window <= 64:
            raise bad("fine_window", "must be in [1, 64]")
        for name in ("point_chunk", "msac_hypotheses", "msac_hypothesis_chunk", "level_iterations"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        for name in (
            "coarse_iterations",
            "fine_iterations",
            "tracking_iterations",
            "polish_iterations",
            "tracking_polish_iterations",
            "msac_score_points",
            "num_threads",
        ):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.consensus_seeds < 1:
            raise bad("consensus_seeds", "must be >= 1")
        for name in ("consensus_max_translation", "consensus_max_rotation_deg"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be > 0")
        if self.msac_min_candidates < 3:
            raise bad("msac_min_candidates", "must be >= 3")
        if self.msac_refine_top < 1:
            raise bad("msac_refine_top", "must be >= 1")
        if not 0 < self.msac_candidate_fraction <= 1:
            raise bad("msac_candidate_fraction", "must be in (0, 1]")
        for name in ("coarse_sigmas", "fine_sigmas", "tracking_sigmas"):
            s = getattr(self, name)
            if len(s) == 0 or any(not (math.isfinite(x) and x > 0) for x in s):
                raise bad(name, "must be a non-empty tuple of positive numbers")
            if any(b > a for a, b in zip(s, s[1:], strict=False)):
                raise bad(name, "must be non-increasing")
        if self.fine_truncation not in ("map", "window"):
            raise bad("fine_truncation", "must be 'map' or 'window'")
        if self.coarse_refinement not in ("nre", "argmax"):
            raise bad("coarse_refinement", "must be 'nre' or 'argmax'")
        if self.polish_mode not in ("newton", "majoriser"):
            raise bad("polish_mode", "must be 'newton' or 'majoriser'")
        if self.linear_solver not in ("auto", "cholesky", "gauss_jordan"):
            raise bad("linear_solver", "must be 'auto', 'cholesky' or 'gauss_jordan'")
        if self.covariance_mode not in ("hessian", "majoriser"):
            raise bad("covariance_mode", "must be 'hessian' or 'majoriser'")
        for name in ("covariance_scale", "lambda_init", "convergence_tol", "polish_tol"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be > 0")
        if not 0 < self.max_cost_ratio <= 1:
            raise bad("max_cost_ratio", "must be in (0, 1]")


@dataclass
class PoseResult:
    """Solver output. Tensors are on the CPU, float64.

    ``T_cam_world [4, 4]`` (world -> camera); ``covariance [6, 6]`` over the left perturbation
    ``xi = (v, w)`` of ``T_cam_world`` (metres, radians); ``cost`` is the NRE at the final pose on
    the finest maps used; ``timings`` in seconds per stage; ``path`` is ``"global"`` or
    ``"tracking"``; ``reasons`` says why ``reliable`` is False.
    """

    T_cam_world: torch.Tensor
    covariance: torch.Tensor
    cost: float
    n_informative: int
    n_points: int
    timings: dict[str, float]
    reliable: bool
    path: str
    cost_ratio: float = 1.0
    log_omega: float = 0.0
    method: str = "nre"
    reasons: list[str] = field(default_factory=list)
    median_depth: float = 1.0  # m: median camera-frame depth of the informative points
    # consensus check (SolverConfig.consensus_seeds > 1): the largest disagreement of another
    # global run with the kept pose, as (camera-centre distance / median depth, rotation deg)
    consensus_spread: tuple[float, float] | None = None
