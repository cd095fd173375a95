"""Per-frame localisation state machine tying map + model + engine (pure Python/torch, no ROS).

States (:class:`TrackingState`)::

    GLOBAL --reliable pose--> TRACKING --lost_after unreliable frames in a row--> LOST
      ^                          |  ^                                               |
      |  request_global()/reset()|  +------------------ reliable pose -------------+
      +--------------------------+

- GLOBAL: no belief (start, after :meth:`Localizer.request_global` or :meth:`Localizer.reset`).
  Every frame runs global relocalisation: retrieval of map keyframes, their points, the engine's
  global path (no prior).
- TRACKING: the last reliable pose, moved by the odometry delta ``T_odom_cam`` between that frame
  and this one when given, is the engine's prior; the candidate points are those that project
  into the image under the prior. An unreliable frame keeps TRACKING (from the same last pose)
  until ``lost_after`` in a row; without odometry a prior older than ``tracking_max_gap`` s is
  not trusted (global path instead).
- LOST: like GLOBAL (every frame relocalises globally) but reports that tracking was lost.

:meth:`Localizer.process` never returns a pose it does not believe: ``T_cam_world`` is ``None``
unless the engine calls the solve reliable AND the localiser's own checks pass (finite pose,
positive-definite covariance, a cost ratio (final cost over that of an uninformative solution)
under ``max_cost_ratio``, at least ``min_points`` informative points, position / rotation
standard deviations under their limits, and, when tracking, a jump from the prior within
``max_tracking_jump`` / ``max_tracking_jump_deg``; a global pose must also agree across
``global_consensus_seeds`` global solves, the engine's ambiguity check). ``reason`` says why a
frame was declined.

Poses are ``T_cam_world`` (world -> camera, 4x4 float64 NumPy); covariances the engine's 6x6
over the left perturbation ``xi = (v, w)`` (metres, radians). Stamps are seconds.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from nre_localization.errors import ConfigError, InputError


class TrackingState(enum.Enum):
    GLOBAL = "global"
    TRACKING = "tracking"
    LOST = "lost"


@dataclass(frozen=True)
class LocalizerConfig:
    """Knobs of the state machine and of the acceptance checks (units in the names/comments)."""

    lost_after: int = 3  # consecutive unreliable frames while tracking -> LOST
    tracking_max_gap: float = 2.0  # s; without odometry, an older last pose is not a prior
    min_points: int = 20  # informative points needed to accept a pose
    # final cost / cost of an uninformative solution (the engine's cost_ratio). Demo data: correct
    # poses 0.33-0.42; noise, blank images and other places 0.88-0.95 (which the engine's own
    # 0.95 limit lets through), so 0.75 separates them with margin on both sides.
    max_cost_ratio: float = 0.75
    max_position_std: float = 0.5  # m; largest position standard deviation accepted
    max_rotation_std_deg: float = 5.0  # deg; largest rotation standard deviation accepted
    max_tracking_jump: float = 1.0  # m; tracked pose vs prior
    max_tracking_jump_deg: float = 30.0  # deg; tracked pose vs prior
    retrieval_top_k: int = 5  # keyframes retrieved for the global path
    max_global_attempts: int = 2  # covisibility clusters (places) tried per global frame
    # A global (relocalisation) pose is accepted only when this many global solves from different
    # MSAC seeds agree (SolverConfig.consensus_seeds; 1: off). On held-out rendered rooms with
    # tiled textures it declined 33 of 80 wrong poses and 9 of 111 right ones
    # (benchmarks/RESULTS.md section 7); tracking frames are not affected. Set it to 1 to turn the
    # check off (a SolverConfig with consensus_seeds > 1 handed to the Localizer overrides it).
    global_consensus_seeds: int = 4
    max_map_points: int = 4000  # candidate points handed to the solver per frame
    max_image_width: int = 640  # px; wider images are resized (0 = never)
    image_margin: float = 0.1  # fraction of the image size: projection margin for candidates
    debug: bool = False  # compute ``debug_uv`` (reprojection of the candidates)
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "lost_after": self.lost_after >= 1,
            "tracking_max_gap": self.tracking_max_gap >= 0,
            "min_points": self.min_points >= 0,
            "max_cost_ratio": 0 < self.max_cost_ratio <= 1,
            "max_position_std": self.max_position_std > 0,
            "max_rotation_std_deg": self.max_rotation_std_deg > 0,
            "max_tracking_jump": self.max_tracking_jump > 0,
            "max_tracking_jump_deg": self.max_tracking_jump_deg > 0,
            "retrieval_top_k": self.retrieval_top_k >= 1,
            "max_global_attempts": self.max_global_attempts >= 1,
            "global_consensus_seeds": self.global_consensus_seeds >= 1,
            "max_map_points": self.max_map_points >= 4,
            "max_image_width": self.max_image_width >= 0,
            "image_margin": self.image_margin >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"localizer config: {bad[0]}={getattr(self, bad[0])!r} out of range")


@dataclass
class LocalizationResult:
    """Outcome of one frame. ``T_cam_world`` / ``covariance`` are None unless ``reliable``."""

    stamp: float
    state: TrackingState
    reliable: bool
    T_cam_world: np.ndarray | None
    covariance: np.ndarray | None
    path: str  # "global" | "tracking" (the engine path that ran)
    cost: float
    n_informative: int
    n_points: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    reason: str = ""  # why the frame was declined ("" when reliable)
    debug_uv: np.ndarray | None = None  # [M, 2] candidates reprojected under the result

    @property
    def T_world_cam(self) -> np.ndarray | None:
        return None if self.T_cam_world is None else _inv(self.T_cam_world)


def _inv(t: np.ndarray) -> np.ndarray:
    r = t[:3, :3]
    out = np.eye(4)
    out[:3, :3] = r.T
    out[:3, 3] = -r.T @ t[:3, 3]
    return out


def pose_difference(t_a: np.ndarray, t_b: np.ndarray) -> tuple[float, float]:
    """(camera-centre distance in metres, rotation angle in degrees) between two
    ``T_cam_world`` poses (:func:`evaluation.metrics.pose_errors`)."""
    from nre_localization.evaluation.metrics import pose_errors

    dt, dr = pose_errors(t_a, t_b)
    return float(dt), float(dr)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> cuda when available else cpu; anything else as given (checked)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} requested but CUDA is not available (use cpu or auto)")
    return dev


class Localizer:
    """Localise RGB frames against one map. Not thread-safe: call from one thread."""

    def __init__(
        self,
        nre_map: Any,
        model: torch.nn.Module,
        config: LocalizerConfig | None = None,
        device: str | torch.device | None = None,
        solver_config: Any = None,
    ) -> None:
        from nre_localization.engine.solver import SolverConfig

        self.config = config or LocalizerConfig()
        self.device = resolve_device(device)
        # A plain DescriptorNet is moved to the device; an inference wrapper (FastDescriptorNet)
        # already lives there.
        self.model = model.to(self.device).eval() if isinstance(model, torch.nn.Module) else model
        self.map = nre_map
        self.solver_config = solver_config if solver_config is not None else SolverConfig()
        if self.solver_config.consensus_seeds == 1 and self.config.global_consensus_seeds > 1:
            # (an explicit SolverConfig.consensus_seeds > 1 wins)
            self.solver_config = replace(
                self.solver_config, consensus_seeds=self.config.global_consensus_seeds
            )
        if not nre_map.has_descriptors():
            raise InputError("map has no descriptors: build it with the model (build-map)")
        dt = torch.float32
        self._xyz = torch.as_tensor(np.asarray(nre_map.points.xyz), dtype=torch.float64)
        self._xyz_dev = self._xyz.to(self.device)
        self._desc_c = torch.as_tensor(np.asarray(nre_map.desc_coarse)).to(self.device, dt)
        self._desc_f = torch.as_tensor(np.asarray(nre_map.desc_fine)).to(self.device, dt)
        self._rng = np.random.default_rng(self.config.seed)
        self.reset()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_files(
        cls,
        map_path: str | Path,
        weights: str | Path | None = None,
        device: str | torch.device | None = "auto",
        config: LocalizerConfig | None = None,
        solver_config: Any = None,
    ) -> Localizer:
        """Load the model (``weights`` or the shipped default) and a map built by that model;
        ``solver_config`` (:class:`~nre_localization.engine.types.SolverConfig`, default: the
        engine's defaults) is handed to the solver."""
        from nre_localization.maps.format import load_map
        from nre_localization.model.network import load_default_model, load_model

        dev = resolve_device(device)
        model: Any = load_model(weights, dev) if weights else load_default_model(dev)
        # Inference wrapper with the same fingerprint (benchmarks/bench_model.py checks it against
        # the plain fp32 network): BatchNorm folded and channels-last everywhere; on the GPU also
        # fp16 and replayed as a CUDA graph (1.3 ms on an H200); on the CPU fp32 (~115 vs ~190 ms).
        from nre_localization.model.inference import FastDescriptorNet

        if dev.type == "cuda":
            model = FastDescriptorNet(model, dtype=torch.float16, cuda_graph=True)
        else:
            model = FastDescriptorNet(model, dtype=torch.float32)
        nre_map = load_map(
            Path(map_path), expected_fingerprint=model.fingerprint(), require_descriptors=True
        )
        return cls(nre_map, model, config, dev, solver_config)

    # ------------------------------------------------------------------ state control
    def reset(self) -> None:
        """Forget everything (e.g. time jumped back): GLOBAL, no last pose."""
        self.state = TrackingState.GLOBAL
        self._last_T: np.ndarray | None = None
        self._last_stamp: float | None = None
        self._last_odom: np.ndarray | None = None
        self._unreliable = 0
        self._forced_prior: np.ndarray | None = None

    def request_global(self) -> None:
        """Next frame runs global relocalisation, whatever the current state."""
        self.reset()

    def set_prior(self, T_cam_world: np.ndarray) -> None:
        """Use ``T_cam_world`` (e.g. from ``/initialpose``) as the prior of the next frame."""
        t = np.asarray(T_cam_world, dtype=np.float64)
        if t.shape != (4, 4) or not np.all(np.isfinite(t)):
            raise InputError("prior pose must be a finite 4x4 matrix")
        self._forced_prior = t

    @property
    def n_map_points(self) -> int:
        return int(self._xyz.shape[0])

    def map_cloud(self, max_points: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Map points for display: ``xyz [M, 3]`` float64 and ``rgb [M, 3]`` uint8, M <= max."""
        xyz = np.asarray(self.map.points.xyz)
        rgb = getattr(self.map.points, "rgb", None)
        if xyz.shape[0] > max_points:
            idx = np.sort(np.random.default_rng(0).choice(xyz.shape[0], max_points, replace=False))
            xyz = xyz[idx]
            rgb = None if rgb is None else np.asarray(rgb)[idx]
        return xyz, (None if rgb is None else np.asarray(rgb))

    # ------------------------------------------------------------------ per frame
    def process(
        self,
        image: np.ndarray,
        camera: Any,
        stamp: float,
        prior: np.ndarray | None = None,
        T_odom_cam: np.ndarray | None = None,
    ) -> LocalizationResult:
        """Localise one frame.

        ``image``: RGB ``uint8 [H, W, 3]``; ``camera``: the engine's
        :class:`~nre_localization.geometry.cameras.Camera` (or anything with ``to_engine()``,
        e.g. a :class:`~nre_localization.datasets.common.CameraSpec`) of that image size;
        ``stamp``: seconds; ``prior``: an external ``T_cam_world`` guess for this frame (overrides
        tracking); ``T_odom_cam``: the camera pose in the odometry frame at this stamp.
        """
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        cam = camera.to_engine() if hasattr(camera, "to_engine") else camera
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InputError(f"image must be RGB uint8 [H, W, 3], got {img.dtype} {img.shape}")
        if (img.shape[1], img.shape[0]) != (cam.width, cam.height):
            raise InputError(
                f"image is {img.shape[1]}x{img.shape[0]} but the camera is {cam.width}x{cam.height}"
            )
        if T_odom_cam is not None and not np.all(np.isfinite(T_odom_cam)):
            T_odom_cam = None
        if prior is not None:
            self.set_prior(prior)

        # Resize wide images (network cost grows with pixels).
        mw = self.config.max_image_width
        if mw and img.shape[1] > mw:
            nh = max(1, round(img.shape[0] * mw / img.shape[1]))
            img = cv2.resize(img, (mw, nh), interpolation=cv2.INTER_AREA)
            cam = cam.scaled(mw, nh)
        t0 = time.perf_counter()
        timings["resize"] = t0 - t_start

        prior_T, mode = self._choose_prior(stamp, T_odom_cam)
        with torch.inference_mode():
            x = torch.from_numpy(img).to(self.device).permute(2, 0, 1)[None].float() / 255.0
            feats = self.model(x)
        self._sync()
        t1 = time.perf_counter()
        timings["network"] = t1 - t0

        idx = torch.zeros(0, dtype=torch.int64)
        if mode == "tracking" and prior_T is not None:
            idx = self._visible_points(cam, prior_T)
            if idx.numel() < max(4, self.config.min_points):
                mode, prior_T = "global", None
        candidates = [idx] if mode == "tracking" else self._global_candidates(feats)
        t2 = time.perf_counter()
        timings["select"] = t2 - t1

        # Global path: try the retrieved places in turn until one gives a reliable pose.
        for attempt, idx in enumerate(candidates):
            res = self._solve(feats, idx, cam, prior_T)
            T = np.asarray(res.T_cam_world.detach().cpu().numpy(), dtype=np.float64)
            cov = np.asarray(res.covariance.detach().cpu().numpy(), dtype=np.float64)
            ok, reason = self._accept(res, T, cov, prior_T if mode == "tracking" else None)
            if ok:
                break
            if attempt + 1 < len(candidates):
                reason = ""
        t3 = time.perf_counter()
        timings["solve"] = t3 - t2
        for k, v in (getattr(res, "timings", None) or {}).items():
            timings[f"solve.{k}"] = float(v)
        path = str(getattr(res, "path", mode))
        debug_uv = None
        if self.config.debug and idx.numel():
            uv, valid = cam.project_world(self._xyz[idx], torch.from_numpy(T))
            debug_uv = uv[valid].numpy()
        self._update_state(ok, stamp, T, T_odom_cam)
        timings["total"] = time.perf_counter() - t_start
        return LocalizationResult(
            stamp=stamp,
            state=self.state,
            reliable=ok,
            T_cam_world=T if ok else None,
            covariance=cov if ok else None,
            path=path,
            cost=float(res.cost),
            n_informative=int(res.n_informative),
            n_points=int(res.n_points),
            timings=timings,
            reason=reason,
            debug_uv=debug_uv,
        )

    # ------------------------------------------------------------------ internals
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _choose_prior(
        self, stamp: float, T_odom_cam: np.ndarray | None
    ) -> tuple[np.ndarray | None, str]:
        if self._forced_prior is not None:
            prior, self._forced_prior = self._forced_prior, None
            return prior, "tracking"
        if self.state != TrackingState.TRACKING or self._last_T is None:
            return None, "global"
        if T_odom_cam is not None and self._last_odom is not None:
            # T_cam_now_world = inv(T_odom_cam_now) @ T_odom_cam_last @ T_cam_last_world
            return _inv(T_odom_cam) @ self._last_odom @ self._last_T, "tracking"
        gap = abs(stamp - self._last_stamp) if self._last_stamp is not None else math.inf
        if gap <= self.config.tracking_max_gap:
            return self._last_T, "tracking"
        return None, "global"

    def _visible_points(self, cam: Any, T_cam_world: np.ndarray) -> torch.Tensor:
        """Indices of map points projecting into the image (with a margin) under a pose."""
        uv, valid = cam.project_world(self._xyz, torch.from_numpy(T_cam_world))
        m = self.config.image_margin
        w, h = cam.width, cam.height
        inside = (
            valid
            & (uv[:, 0] >= -m * w)
            & (uv[:, 0] <= (1 + m) * w - 1)
            & (uv[:, 1] >= -m * h)
            & (uv[:, 1] <= (1 + m) * h - 1)
        )
        idx = torch.nonzero(inside).flatten()
        return self._subsample(idx)

    def _subsample(self, idx: torch.Tensor) -> torch.Tensor:
        n = self.config.max_map_points
        if idx.numel() <= n:
            return idx
        pick = self._rng.choice(idx.numel(), n, replace=False)
        return idx[torch.from_numpy(np.sort(pick))]

    def _global_candidates(self, feats: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Candidate point sets for the global path, best first.

        Small maps: all points. Otherwise the top-k keyframes by global descriptor
        (:mod:`nre_localization.maps.retrieval`), split into covisibility clusters (places);
        each cluster's points are one candidate set (at most ``max_global_attempts`` sets).
        """
        n = self.n_map_points
        if n <= self.config.max_map_points:
            return [torch.arange(n)]
        gd = getattr(self.map, "global_desc", None)
        if gd is None or len(gd) == 0:
            return [self._subsample(torch.arange(n))]
        from nre_localization.maps import retrieval

        q = retrieval.global_descriptor(feats["coarse"][0])
        kfs, _ = retrieval.retrieve(np.asarray(gd), q, self.config.retrieval_top_k)
        clusters = retrieval.covisibility_clusters(self.map, kfs)
        out = []
        for kf in clusters[: self.config.max_global_attempts]:
            idx = retrieval.candidate_points(self.map, kf, self.config.max_map_points)
            if len(idx) >= 4:
                out.append(torch.as_tensor(idx, dtype=torch.int64))
        return out or [self._subsample(torch.arange(n))]

    def _solve(
        self,
        feats: dict[str, torch.Tensor],
        idx: torch.Tensor,
        cam: Any,
        prior_T: np.ndarray | None,
    ) -> Any:
        from nre_localization.engine.solver import MapPoints, QueryFeatures, solve

        query = QueryFeatures(
            coarse=feats["coarse"][0],
            fine=feats["fine"][0],
            coarse_stride=int(self.model.coarse_stride),  # type: ignore[arg-type]
            fine_stride=int(self.model.fine_stride),  # type: ignore[arg-type]
        )
        idx_dev = idx.to(self.device)
        points = MapPoints(
            xyz=self._xyz_dev[idx_dev],
            desc_coarse=self._desc_c[idx_dev],
            desc_fine=self._desc_f[idx_dev],
        )
        prior = None
        if prior_T is not None:
            prior = torch.as_tensor(prior_T, dtype=torch.float64, device=self.device)
        return solve(query, points, cam, prior, self.solver_config)

    def _accept(
        self, res: Any, T: np.ndarray, cov: np.ndarray, prior_T: np.ndarray | None
    ) -> tuple[bool, str]:
        c = self.config
        if not bool(res.reliable):
            why = "; ".join(getattr(res, "reasons", None) or []) or "unreliable solve"
            return False, f"engine: {why}"
        if not (np.all(np.isfinite(T)) and np.all(np.isfinite(cov))):
            return False, "non-finite pose or covariance"
        if not np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-6):
            return False, "pose rotation is not orthonormal"
        sym = 0.5 * (cov + cov.T)
        eig = np.linalg.eigvalsh(sym)
        if eig[0] <= 0:
            return False, "covariance is not positive definite"
        ratio = float(getattr(res, "cost_ratio", 0.0))
        if ratio > c.max_cost_ratio:
            return (
                False,
                f"cost ratio {ratio:.2f} > {c.max_cost_ratio} (image does not match the map)",
            )
        if int(res.n_informative) < c.min_points:
            return False, f"only {int(res.n_informative)} informative points (< {c.min_points})"
        # Camera-centre covariance: exp(xi) T moves the centre by -R^T v (first order).
        r = T[:3, :3]
        pos_cov = r.T @ sym[:3, :3] @ r
        pos_std = math.sqrt(max(np.linalg.eigvalsh(pos_cov)[-1], 0.0))
        rot_std = math.degrees(math.sqrt(max(np.linalg.eigvalsh(sym[3:, 3:])[-1], 0.0)))
        if pos_std > c.max_position_std:
            return False, f"position std {pos_std:.3f} m > {c.max_position_std} m"
        if rot_std > c.max_rotation_std_deg:
            return False, f"rotation std {rot_std:.2f} deg > {c.max_rotation_std_deg} deg"
        if prior_T is not None and str(getattr(res, "path", "tracking")) == "tracking":
            dt, dr = pose_difference(T, prior_T)
            if dt > c.max_tracking_jump or dr > c.max_tracking_jump_deg:
                return False, f"tracked pose jumped {dt:.2f} m / {dr:.1f} deg from the prior"
        return True, ""

    def _update_state(
        self, ok: bool, stamp: float, T: np.ndarray, T_odom_cam: np.ndarray | None
    ) -> None:
        if ok:
            self.state = TrackingState.TRACKING
            self._last_T, self._last_stamp, self._last_odom = T, stamp, T_odom_cam
            self._unreliable = 0
            return
        if self.state == TrackingState.TRACKING:
            self._unreliable += 1
            if self._unreliable >= self.config.lost_after:
                self.state = TrackingState.LOST
                self._last_T = self._last_odom = self._last_stamp = None
