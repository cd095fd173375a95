"""MSAC-P3P initialisation (eq. 8), every hypothesis generated and scored in one batched pass.

1. Candidates: the ``msac_candidate_fraction`` most peaked coarse maps (lowest entropy; at least
   ``msac_min_candidates``), each weighted by ``ln|Omega'| - entropy`` (more peaked, more likely).
2. Triplets of *distinct* points drawn with those weights without replacement (the first three
   distinct of i.i.d. draws), from a counter-based RNG that gives the same triplets on CPU and CUDA.
3. Bearings from the (sub-cell refined) argmax of each coarse map; batched P3P -> up to 4 poses per
   triplet.
4. Every pose is scored with the truncated NRE sum (bilinear, ``ln|Omega'|`` outside the map or
   behind the camera, no inlier threshold) on ``msac_score_points`` points (0: all); the
   ``msac_refine_top`` best are re-scored on all points and the best is kept.
"""

from __future__ import annotations

import math

import torch

from nre_localization.engine.compiled import compiled
from nre_localization.engine.consts import cached, const
from nre_localization.engine.gnc import fusing
from nre_localization.engine.loss_maps import CoarseMaps, InfoMaps, argmax_cells, nre_cost
from nre_localization.engine.rng import hash_uniform
from nre_localization.engine.types import SolverConfig
from nre_localization.geometry.cameras import Camera
from nre_localization.geometry.cells import cell_to_pixel
from nre_localization.geometry.p3p import _mm, p3p
from nre_localization.geometry.se3 import make_pose

__all__ = ["candidate_count", "msac_p3p", "score_poses"]


def _sample_triplets(
    weight: torch.Tensor, n_hyp: int, seed: int, device: torch.device, draws: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_hyp`` triplets of distinct indices into ``weight [K]`` (>= 0), without replacement.

    Draws ``draws`` i.i.d. indices per triplet from the weights (inverse CDF) and keeps the first
    three distinct ones: exactly successive sampling without replacement. Returns ``(idx [B, 3],
    ok [B])``; ``ok`` is False in the (negligible) case of fewer than 3 distinct draws.
    """
    cdf = torch.cumsum(weight.to(torch.float64), 0)
    u = hash_uniform((n_hyp, draws), seed, 1, device, torch.float64) * cdf[-1]
    s = torch.searchsorted(cdf, u.contiguous(), right=True).clamp_max(weight.shape[0] - 1)
    earlier = cached(  # j < i (a cached constant: no kernels in a captured graph)
        ("tril", draws),
        device,
        lambda: torch.ones(draws, draws, dtype=torch.bool, device=device).tril(-1),
    )
    new = ~((s[:, :, None] == s[:, None, :]) & earlier).any(-1)  # not a repeat of an earlier draw
    rank = torch.cumsum(new.to(torch.int64), 1)  # 1-based rank among distinct draws
    first = new & (rank <= 3)
    pos = torch.where(first, rank - 1, const(3, rank.dtype, device))
    out = torch.zeros((n_hyp, 4), dtype=s.dtype, device=device).scatter_(1, pos, s)[:, :3]
    return out, rank[:, -1] >= 3


def _projections(R: torch.Tensor, t: torch.Tensor, camera: Camera) -> torch.Tensor:
    """``K [R | t]`` ``[H, 3, 4]`` float32 of poses ``R [H, 3, 3]``, ``t [H, 3]`` (PINHOLE cell
    camera): one batched GEMM then gives homogeneous cell coordinates."""
    k = const(
        [[camera.fx, 0.0, camera.cx], [0.0, camera.fy, camera.cy], [0.0, 0.0, 1.0]],
        R.dtype,
        R.device,
    )
    return _mm(k, torch.cat([R, t[:, :, None]], 2)).to(torch.float32)


def _score_projected(
    P: torch.Tensor, xyz: torch.Tensor, maps: InfoMaps, index: torch.Tensor | None = None
) -> torch.Tensor:
    """Total NRE ``[H]`` of the projections ``P [H, 3, 4]`` (see :func:`_projections`)."""
    h, m = P.shape[0], xyz.shape[0]
    if fusing():  # elementwise (fused into the scoring by Inductor)
        uvw = P[:, :, 3:] + _mm(P[:, :, :3], xyz.t()[None])
    else:
        # One [3H, 3] x [3, M] GEMM (a batched GEMM of H tiny 3x3 products wasted its tiles).
        uvw = torch.addmm(P[:, :, 3].reshape(3 * h, 1), P[:, :, :3].reshape(3 * h, 3), xyz.t())
        uvw = uvw.view(h, 3, m)  # [H, 3, M]
    z = uvw[:, 2]
    valid = z > 1e-6
    inv = torch.where(valid, z.reciprocal(), const(0.0, z.dtype, z.device))
    cells = (uvw[:, :2] * inv[:, None]).transpose(1, 2)  # [H, M, 2]
    del uvw, z, inv  # free before the scoring's temporaries (peak memory)
    return nre_cost(maps, cells, valid, index).sum(-1)


def score_poses(
    R: torch.Tensor,
    t: torch.Tensor,
    xyz: torch.Tensor,
    maps: InfoMaps,
    camera: Camera,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Total NRE ``[H]`` of poses ``R [H, 3, 3]``, ``t [H, 3]`` over points ``xyz [M, 3]``.

    ``camera`` is the cell camera of the maps' stride; ``index [M]`` selects the maps of the points
    (default: ``M`` = all maps in order).
    """
    if camera.model == "PINHOLE":
        return _score_projected(_projections(R, t, camera), xyz, maps, index)
    Rf, tf = R.to(torch.float32), t.to(torch.float32)
    h, m = Rf.shape[0], xyz.shape[0]
    Xc = (Rf.reshape(-1, 3) @ xyz.t()).view(h, 3, m) + tf[:, :, None]  # one GEMM
    cells, valid = camera.project(Xc.transpose(1, 2))
    return nre_cost(maps, cells, valid, index).sum(-1)


def msac_p3p(
    coarse: CoarseMaps,
    info: InfoMaps,
    xyz: torch.Tensor,
    camera: Camera,
    config: SolverConfig,
    n_alive: torch.Tensor,
    n_hypotheses: int | None = None,
    cells: torch.Tensor | None = None,
    compact: bool | None = None,
    k_use: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best pose ``T_cam_world [4, 4]`` (f64) and its NRE summed over all ``N`` maps (0-d f64).

    ``xyz [N, 3]`` float32; ``camera`` is the query camera (pixels). ``n_alive`` (0-d int64
    tensor): the first ``n_alive`` points are real, the rest padding (never sampled, constant
    cost), so one fixed-shape computation serves every point count of a padding bucket and gives
    the same triplets and scores as the unpadded one. ``k_use`` (0-d int64, optional: computed
    from ``n_alive`` otherwise; :func:`candidate_count` on the host) is the number of candidates.
    ``cells [N, 2]`` overrides the correspondences (default: sub-cell refined coarse argmax).
    ``compact`` (default: on the CPU) drops invalid P3P solutions before scoring (a host sync).
    """
    dev = xyz.device
    n = int(xyz.shape[0])
    n_hyp = config.msac_hypotheses if n_hypotheses is None else n_hypotheses
    if cells is None:
        cells = argmax_cells(coarse, refine=True)
    # 8 Newton steps: far below a coarse cell's error, and few kernels in the captured graph.
    bear = camera.bearings(cell_to_pixel(cells.to(torch.float64), coarse.stride), iterations=8)
    ccam = camera.cell_camera(info.stride)

    frac, kmin = config.msac_candidate_fraction, config.msac_min_candidates
    k_max = candidate_count(n, config)
    if k_use is None:
        k_use = torch.minimum(
            n_alive, torch.ceil(n_alive.to(torch.float64) * frac).long().clamp_min(kmin)
        )
    ent = coarse.entropy
    cand = torch.topk(ent, k_max, largest=False).indices  # lowest entropy first; padding: +inf
    rank = _arange(k_max, dev)
    weight = (const(coarse.log_omega, torch.float64, dev) - ent[cand]).clamp_min(1e-3)  # f64
    weight = torch.where(rank < k_use, weight, const(0.0, weight.dtype, dev))
    trip, tok = _sample_triplets(weight, n_hyp, config.seed, dev)
    trip = cand[trip]  # [B, 3] distinct points
    # One Newton polish step: the closed-form depths are already accurate (GNC refines anyway).
    R, t, ok = p3p(bear[trip], xyz[trip].to(torch.float64), refine_steps=1)
    ok = ok & tok[:, None]
    R, t, ok = R.reshape(-1, 3, 3), t.reshape(-1, 3), ok.reshape(-1)
    if compact if compact is not None else dev.type == "cpu":  # a sync: only where it is free
        keep = torch.nonzero(ok)[:, 0]
        if keep.numel() == 0:
            keep = torch.zeros(1, dtype=torch.long)
        R, t, ok = R[keep], t[keep], ok[keep]

    m = config.msac_score_points
    m = n if m <= 0 else min(m, n)
    pkey = hash_uniform((n,), config.seed, 2, dev, torch.float32)
    pkey = torch.where(_arange(n, dev) < n_alive, pkey, const(2.0, pkey.dtype, dev))
    sub = torch.argsort(pkey)[:m]
    xs = xyz[sub]
    chunk = max(1, config.msac_hypothesis_chunk)
    if dev.type == "cpu":  # keep temporaries small: fresh large CPU buffers cost page faults
        chunk = min(chunk, max(1, (1 << 18) // max(1, m)))
    pinhole = ccam.model == "PINHOLE"
    P = _projections(R, t, ccam) if pinhole else None  # all poses at once (f32 K [R | t])
    score_p = _score_projected
    if config.compile_gnc and not torch.compiler.is_compiling():
        # Projection, bilinear reads and the sum over points fused by Inductor into one
        # reduction kernel per chunk (eagerly ~40 elementwise kernels over [chunk, M]).
        score_p = compiled(_score_projected, "msac_scoring")
    scores = []
    for s in range(0, R.shape[0], chunk):
        if P is not None:
            scores.append(score_p(P[s : s + chunk], xs, info, sub))
        else:
            scores.append(score_poses(R[s : s + chunk], t[s : s + chunk], xs, info, ccam, sub))
    score = scores[0] if len(scores) == 1 else torch.cat(scores)  # f32 sums
    score = torch.where(ok, score, const(math.inf, score.dtype, dev))
    top = torch.topk(score, min(config.msac_refine_top, score.shape[0]), largest=False).indices
    if P is not None:
        full = score_p(P[top], xyz, info)
    else:
        full = score_poses(R[top], t[top], xyz, info, ccam)
    full = torch.where(ok[top], full, const(math.inf, full.dtype, dev))
    best_cost, arg = torch.min(full, 0)
    best = top.gather(0, arg.view(1))  # [1], no host sync
    Rb = R.index_select(0, best)[0]
    # One polar Newton step re-orthonormalises (P3P keeps R within 1e-6: error -> ~1e-12).
    Rb = 1.5 * Rb - 0.5 * _mm(_mm(Rb, Rb.t()), Rb) if fusing() else _polar(Rb)
    return make_pose(Rb, t.index_select(0, best)[0]), best_cost.to(torch.float64)


def _polar(R: torch.Tensor) -> torch.Tensor:
    """One Newton step towards the closest rotation: ``1.5 R - 0.5 R R^T R`` (two GEMMs)."""
    return torch.addmm(R, R @ R.t(), R, beta=1.5, alpha=-0.5)


def candidate_count(n: int, config: SolverConfig) -> int:
    """Number of MSAC candidate points (most peaked maps) among ``n`` real points."""
    frac, kmin = config.msac_candidate_fraction, config.msac_min_candidates
    return min(n, max(kmin, math.ceil(frac * n)))


def _arange(n: int, device: torch.device) -> torch.Tensor:
    """``arange(n)`` int64 as a cached constant (no kernel in a captured graph)."""
    return cached(("arange", n), device, lambda: torch.arange(n, device=device))
