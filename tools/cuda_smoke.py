#!/usr/bin/env python3
"""CUDA checks of the single-graph solve that the CPU test suite can only emulate.

Bad inputs must raise :class:`InputError` after the replay (the graph checks finiteness itself)
without a device-side assert (which would end the CUDA context), and the next good solve must still
match the CPU; the ambiguity check (``consensus_seeds``) must run on the graph path too. Needs only
torch + NumPy: ``python3 tools/cuda_smoke.py`` on a GPU host (``test/test_engine_graphs.py`` runs
it under pytest where CUDA exists). Exit status 0 when every check passes.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nre_localization.engine import solver as S  # noqa: E402
from nre_localization.engine.synthetic import make_planted_scene  # noqa: E402
from nre_localization.engine.types import MapPoints, QueryFeatures, SolverConfig  # noqa: E402
from nre_localization.errors import InputError  # noqa: E402
from nre_localization.geometry.cameras import Camera  # noqa: E402

CAM = Camera.pinhole(250.0, 250.0, 159.5, 119.5, 320, 240)


def _expect_error(what: str, fn, match: str) -> None:  # noqa: ANN001
    try:
        fn()
    except InputError as err:
        if match not in str(err):
            raise AssertionError(f"{what}: InputError without {match!r}: {err}") from err
        print(f"ok   {what}: {err}")
        return
    raise AssertionError(f"{what}: no InputError")


def run_checks(dev: torch.device) -> None:
    """Raise AssertionError on the first failing check."""
    scene = make_planted_scene(CAM, 300, seed=5, dim_fine=64)
    cfg = SolverConfig(msac_hypotheses=256)
    q = QueryFeatures(
        scene.query.coarse.to(dev), scene.query.fine.to(dev), scene.query.coarse_stride, 2
    )
    pts = MapPoints(*(t.to(dev) for t in (scene.points.xyz, scene.points.desc_coarse,
                                          scene.points.desc_fine)))  # fmt: skip
    ref = S.solve(scene.query, scene.points, CAM, None, cfg)  # CPU
    good = S.solve(q, pts, CAM, None, cfg)
    assert good.reliable, good.reasons
    assert float((good.T_cam_world - ref.T_cam_world).abs().max()) < 1e-4
    tracked = S.solve(q, pts, CAM, good.T_cam_world.to(dev), cfg)
    assert tracked.path == "tracking" and tracked.reliable, tracked.reasons
    print("ok   good global and tracking solves on", dev)

    bad_desc = pts.desc_fine.clone()
    bad_desc[7, 3] = math.nan
    _expect_error(
        "NaN map descriptor",
        lambda: S.solve(q, MapPoints(pts.xyz, pts.desc_coarse, bad_desc), CAM, None, cfg),
        "desc_fine",
    )
    bad_fine = q.fine.clone()
    bad_fine[0, 5, 5] = math.inf
    qb = QueryFeatures(q.coarse, bad_fine, q.coarse_stride, q.fine_stride)
    _expect_error(
        "Inf query feature (tracking)",
        lambda: S.solve(qb, pts, CAM, good.T_cam_world.to(dev), cfg),
        "NaN or Inf",
    )
    nan_prior = good.T_cam_world.clone().to(dev)
    nan_prior[0, 3] = math.nan
    _expect_error("NaN prior on the device", lambda: S.solve(q, pts, CAM, nan_prior, cfg), "finite")
    skew = good.T_cam_world.clone().to(dev)
    skew[0, 0] *= 1.1
    _expect_error(
        "non-orthonormal prior on the device",
        lambda: S.solve(q, pts, CAM, skew, cfg),
        "orthonormal",
    )
    again = S.solve(q, pts, CAM, good.T_cam_world.to(dev), cfg)
    assert torch.equal(again.T_cam_world, tracked.T_cam_world), "state changed by bad frames"
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)  # a device-side assert would surface here
    print("ok   the context survived the bad frames; results unchanged")

    with torch.inference_mode():  # as the Localizer's features: no version counter
        qi = QueryFeatures(q.coarse.clone(), q.fine.clone(), q.coarse_stride, q.fine_stride)
        gi = S.solve(qi, pts, CAM, None, cfg)
    assert torch.equal(gi.T_cam_world, good.T_cam_world), "inference-mode features differ"
    print("ok   inference-mode features through the graphs")

    cons = S.solve(q, pts, CAM, None, SolverConfig(msac_hypotheses=256, consensus_seeds=3))
    assert cons.reliable and cons.consensus_spread is not None, cons.reasons
    assert cons.consensus_spread[0] < 1e-3, cons.consensus_spread
    print("ok   consensus of 3 seeds on the graph path:", cons.consensus_spread)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    run_checks(torch.device("cuda"))
    print("CUDA SMOKE OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
