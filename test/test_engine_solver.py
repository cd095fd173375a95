"""The NRE solver on planted-map scenes: accuracy, bias, covariance, baselines, paths, devices."""

from __future__ import annotations

import math

import pytest
import torch

from nre_localization.engine import gnc as G
from nre_localization.engine import loss_maps as lm
from nre_localization.engine.msac import _sample_triplets, msac_p3p
from nre_localization.engine.solver import (
    _consensus,
    _pad_points,
    solve,
    solve_pnp_ransac,
    solve_re,
)
from nre_localization.engine.synthetic import PlantedScene, make_planted_scene
from nre_localization.engine.types import MapPoints, PoseResult, SolverConfig
from nre_localization.errors import ConfigError, InputError
from nre_localization.geometry import se3
from nre_localization.geometry.cameras import Camera

PINHOLE = Camera.pinhole(250.0, 250.0, 159.5, 119.5, 320, 240)
OPENCV = Camera("OPENCV", 320, 240, (250.0, 255.0, 161.0, 118.0, -0.15, 0.03, 0.001, -0.001))
FISHEYE = Camera("OPENCV_FISHEYE", 320, 240, (180.0, 180.0, 160.0, 119.0, 0.02, -0.01, 0.003, 0.0))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reproj(scene: PlantedScene, T: torch.Tensor) -> torch.Tensor:
    """Reprojection offsets ``[N, 2]`` (fine cells) of the estimate w.r.t. the truth."""
    p, _ = scene.camera.project_world(scene.points.xyz.double(), T)
    return (p - scene.true_pixels) / scene.query.fine_stride


def _rms(scene: PlantedScene, T: torch.Tensor) -> float:
    return float(_reproj(scene, T).pow(2).sum(-1).mean().sqrt())


@pytest.mark.parametrize("cam", [PINHOLE, OPENCV, FISHEYE], ids=lambda c: c.model)
def test_global_solve_recovers_pose(cam: Camera) -> None:
    scene = make_planted_scene(cam, 300, seed=11, noise_px=0.2, outlier_fraction=0.5)
    res = solve(scene.query, scene.points, cam)
    assert res.path == "global" and res.method == "nre"
    assert _rms(scene, res.T_cam_world) < 0.1  # fine cells
    assert res.reliable, res.reasons
    assert res.n_points == 300
    assert 100 < res.n_informative <= 200  # the inliers, not the outliers
    assert res.T_cam_world.dtype == torch.float64 and res.covariance.shape == (6, 6)
    assert torch.allclose(res.covariance, res.covariance.T)
    assert torch.linalg.eigvalsh(res.covariance).min() > 0
    assert {"coarse_maps", "msac", "coarse_gnc", "fine_maps", "fine_gnc", "total"} <= set(
        res.timings
    )


def test_no_systematic_bias_over_100_seeds() -> None:
    """Mean signed reprojection offset over 100 seeds ~ 0 (a half-window or half-cell shift fails)."""
    offsets = []
    for seed in range(100):
        scene = make_planted_scene(PINHOLE, 80, seed=500 + seed, noise_px=0.5, outlier_fraction=0.5)
        res = solve(scene.query, scene.points, PINHOLE)
        offsets.append(_reproj(scene, res.T_cam_world)[scene.inlier].mean(0))
    off = torch.stack(offsets)
    mean, se = off.mean(0), off.std(0) / math.sqrt(off.shape[0])
    assert se.max() < 0.01  # the test can see a 0.04-cell bias
    assert mean.abs().max() < 0.03, (mean, se)
    assert off.norm(dim=-1).max() < 0.3


def test_covariance_is_consistent_nees() -> None:
    """NEES over seeds with planted noise equal to the maps' own spread: mean within [0.5, 2] x 6."""
    nees = []
    for seed in range(40):
        # Fine maps are Gaussians of std 0.5 fine cells = 1 px; plant the same noise.
        scene = make_planted_scene(PINHOLE, 150, seed=1000 + seed, noise_px=1.0, std_fine=0.5)
        # the raw Laplace estimate (no real-data calibration factor): all noise is modelled here
        res = solve(scene.query, scene.points, PINHOLE, config=SolverConfig(covariance_scale=1.0))
        e = se3.se3_log(res.T_cam_world @ se3.se3_inverse(scene.T_cam_world))
        nees.append(float(e @ torch.linalg.solve(res.covariance, e)))
    mean = sum(nees) / len(nees)
    assert 3.0 <= mean <= 12.0, mean


def test_bimodal_maps_nre_beats_re_and_pnp_ransac() -> None:
    """40 % of points have their argmax on a wrong mode (repeated structure) and 20 % are outliers:
    NRE keeps the true mode's probability, the argmax-based baselines cannot."""
    errs: dict[str, list[float]] = {"nre": [], "re": [], "pnp": []}
    for seed in range(8):
        scene = make_planted_scene(
            PINHOLE,
            300,
            seed=200 + seed,
            bimodal_fraction=0.4,
            outlier_fraction=0.2,
            bimodal_distance_px=(6.0, 12.0),
        )
        assert scene.wrong_mode.float().mean() == pytest.approx(0.4, abs=0.01)
        for name, fn in (("nre", solve), ("re", solve_re), ("pnp", solve_pnp_ransac)):
            res = fn(scene.query, scene.points, PINHOLE)
            errs[name].append(_rms(scene, res.T_cam_world))
    mean = {k: sum(v) / len(v) for k, v in errs.items()}
    assert max(errs["nre"]) < 0.1, errs
    assert mean["nre"] < 0.6 * mean["re"], mean
    assert mean["nre"] < 0.6 * mean["pnp"], mean


def test_tracking_from_prior() -> None:
    scene = make_planted_scene(PINHOLE, 300, seed=21, noise_px=0.2)
    prior = se3.se3_exp(
        torch.tensor([0.02, -0.02, 0.03, 0.008, -0.006, 0.004], dtype=torch.float64)
    )
    prior = prior @ scene.T_cam_world
    assert 1.0 < _rms(scene, prior) < 6.0  # a few fine cells off
    res = solve(scene.query, scene.points, PINHOLE, prior=prior)
    assert res.path == "tracking" and res.reliable
    assert "msac" not in res.timings
    assert _rms(scene, res.T_cam_world) < 0.1


def test_bad_prior_falls_back_to_global() -> None:
    scene = make_planted_scene(PINHOLE, 300, seed=22, noise_px=0.2)
    prior = se3.se3_exp(torch.tensor([0.5, 0.3, -0.4, 0.3, 0.2, -0.2], dtype=torch.float64))
    prior = prior @ scene.T_cam_world
    res = solve(scene.query, scene.points, PINHOLE, prior=prior)
    assert res.path == "global" and res.reliable
    assert _rms(scene, res.T_cam_world) < 0.1
    no_fb = solve(
        scene.query,
        scene.points,
        PINHOLE,
        prior=prior,
        config=SolverConfig(tracking_fallback=False),
    )
    assert no_fb.path == "tracking" and not no_fb.reliable and no_fb.reasons


def test_unrelated_maps_are_declared_unreliable() -> None:
    scene = make_planted_scene(PINHOLE, 300, seed=23)
    g = torch.Generator().manual_seed(0)
    pts = MapPoints(
        scene.points.xyz,
        torch.randn(scene.points.desc_coarse.shape, generator=g),
        torch.randn(scene.points.desc_fine.shape, generator=g),
    )
    res = solve(scene.query, pts, PINHOLE)
    assert not res.reliable and res.reasons
    assert res.cost_ratio > 0.9


def test_triplet_sampler_distinct_and_weighted() -> None:
    w = torch.tensor([8.0, 4.0, 2.0, 1.0, 1.0, 0.0, 0.5])
    idx, ok = _sample_triplets(w, 20000, 3, torch.device("cpu"))
    assert ok.float().mean() > 0.999  # 32 draws; MSAC's candidate weights are far flatter
    idx = idx[ok]
    assert (idx[:, 0] != idx[:, 1]).all() and (idx[:, 0] != idx[:, 2]).all()
    assert (idx[:, 1] != idx[:, 2]).all()
    assert not (idx == 5).any()  # zero weight never drawn
    first = torch.bincount(idx[:, 0], minlength=7).float() / idx.shape[0]
    assert torch.allclose(first, w / w.sum(), atol=0.015)
    assert (torch.bincount(idx.view(-1), minlength=7) > 0).sum() == 6  # the lightest is drawn too


def test_msac_and_gnc_are_padding_invariant() -> None:
    """The CUDA path pads points to a power-of-two bucket: same triplets, same pose."""
    scene = make_planted_scene(PINHOLE, 100, seed=24)
    cfg = SolverConfig(msac_score_points=64)
    outs = []
    for n_pad in (100, 128):
        pts = _pad_points(scene.points, n_pad)
        alive = torch.arange(n_pad) < 100
        cm = lm.build_coarse_maps(scene.query, pts, cfg, alive)
        ci = lm.coarse_info_maps(cm, 9, alive)
        T, _ = msac_p3p(cm, ci, pts.xyz, PINHOLE, cfg, torch.tensor(100))
        prob = G.GncProblem(
            pts.xyz, ci, PINHOLE.cell_camera(16), torch.tensor(cfg.coarse_sigmas), 4
        )
        st = G.gnc_iterate(prob, G.gnc_start(T, 1e-3), 12, 4, 1e-4, 1e-3)
        outs.append((T, st.T))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-6)


def test_gpu_style_paths_match_cpu_paths() -> None:
    """The fixed-shape (GPU) branches - every fine window gathered, invalid P3P slots scored as
    +inf - give the same maps and pose as the compacted CPU branches."""
    scene = make_planted_scene(PINHOLE, 150, seed=29)
    cfg = SolverConfig()
    cm = lm.build_coarse_maps(scene.query, scene.points, cfg)
    ci = lm.coarse_info_maps(cm, 9)
    cells, valid = PINHOLE.cell_camera(2).project_world(scene.points.xyz, scene.T_cam_world)
    cells = cells + 1.3
    for onehot in (False, True):
        a = lm.build_fine_maps(
            scene.query, scene.points, cm, cells, valid, 11, cfg, onehot=onehot, compact=True
        )
        b = lm.build_fine_maps(
            scene.query, scene.points, cm, cells, valid, 11, cfg, onehot=onehot, compact=False
        )
        assert torch.equal(a.origin, b.origin)
        assert torch.allclose(a.data, b.data, atol=1e-4)
    n = torch.tensor(150)
    Ta, ca = msac_p3p(cm, ci, scene.points.xyz, PINHOLE, cfg, n, compact=True)
    Tb, cb = msac_p3p(cm, ci, scene.points.xyz, PINHOLE, cfg, n, compact=False)
    assert torch.allclose(Ta, Tb, atol=1e-9) and torch.allclose(ca, cb)


def test_gnc_schedule_cap_and_freeze() -> None:
    scene = make_planted_scene(PINHOLE, 200, seed=25, noise_px=0.2)
    cfg = SolverConfig()
    cm = lm.build_coarse_maps(scene.query, scene.points, cfg)
    T0 = se3.se3_exp(torch.tensor([0.02, 0.01, -0.02, 0.01, -0.01, 0.005], dtype=torch.float64))
    T0 = T0 @ scene.T_cam_world
    cells, valid = PINHOLE.cell_camera(2).project_world(scene.points.xyz, T0)
    fm = lm.build_fine_maps(
        scene.query, scene.points, cm, cells, valid, 11, SolverConfig(fine_window=33)
    )
    sig = torch.tensor(cfg.fine_sigmas)
    prob = G.GncProblem(scene.points.xyz, fm, PINHOLE.cell_camera(2), sig, 5)
    st = G.gnc_iterate(prob, G.gnc_start(T0, 1e-3), 40, 4, 1e-4, 1e-3, early_exit=True)
    assert bool(st.done) and int(st.level) == len(cfg.fine_sigmas) - 1
    assert int(st.iterations) < 40
    more = G.gnc_iterate(prob, st, 10, 4, 1e-4, 1e-3)
    assert torch.equal(more.T, st.T)  # frozen once converged
    capped = G.gnc_iterate(prob, G.gnc_start(T0, 1e-3), 3, 4, 1e-4, 1e-3)
    assert int(capped.iterations) == 3 and not bool(capped.done)
    # The fixed-shape loop (converged levels masked, as on the GPU) gives the same pose as the CPU
    # early exit (converged levels skipped), and so does the unrolled linear solver.
    full = G.gnc_iterate(prob, G.gnc_start(T0, 1e-3), 40, 4, 1e-4, 1e-3, early_exit=False)
    gj = G.gnc_iterate(prob, G.gnc_start(T0, 1e-3), 40, 4, 1e-4, 1e-3, linear_solver="gauss_jordan")
    assert torch.allclose(full.T, st.T, atol=1e-12) and torch.allclose(gj.T, st.T, atol=1e-9)
    assert _rms(scene, st.T) < 0.1


def test_cuda_path_stages_never_synchronise() -> None:
    """On the 'meta' device any host sync or data-dependent shape raises: the captured stages
    (MSAC, GNC) and the GPU map builders must run there."""
    scene = make_planted_scene(PINHOLE, 60, seed=26)
    cfg = SolverConfig()

    def meta(t: torch.Tensor) -> torch.Tensor:
        return t.to("meta")

    pts = _pad_points(scene.points, 64)
    q = type(scene.query)(meta(scene.query.coarse), meta(scene.query.fine), 16, 2)
    p = MapPoints(meta(pts.xyz), meta(pts.desc_coarse), meta(pts.desc_fine))
    alive = meta(torch.arange(64) < 60)
    cm = lm.build_coarse_maps(q, p, cfg, alive)
    ci = lm.coarse_info_maps(cm, 9, alive)
    T, _ = msac_p3p(cm, ci, p.xyz, FISHEYE, cfg, meta(torch.tensor(60)))
    for solver in ("cholesky", "gauss_jordan"):
        prob = G.GncProblem(p.xyz, ci, FISHEYE.cell_camera(16), (1.5, 1.0), 4)
        G.gnc_iterate(prob, G.gnc_start(T, 1e-3), 3, 4, 1e-4, 1e-3, linear_solver=solver)
    fm = lm.build_fine_maps(q, p, cm, meta(torch.zeros(64, 2)), alive, 11, cfg, alive)
    assert fm.data.device.type == "meta"


def test_input_and_config_errors() -> None:
    scene = make_planted_scene(PINHOLE, 30, seed=27)
    with pytest.raises(InputError):
        solve(scene.query, scene.points, PINHOLE, prior=torch.eye(3))
    bad = torch.eye(4, dtype=torch.float64)
    bad[0, 0] = 2.0
    with pytest.raises(InputError):
        solve(scene.query, scene.points, PINHOLE, prior=bad)
    with pytest.raises(InputError):
        solve(
            scene.query,
            MapPoints(
                scene.points.xyz[:2], scene.points.desc_coarse[:2], scene.points.desc_fine[:2]
            ),
            PINHOLE,
        )
    for kwargs in (
        {"fine_window": 65},
        {"coarse_sigmas": (1.0, 2.0)},
        {"covariance_mode": "x"},
        {"msac_hypotheses": 0},
        {"covariance_scale": 0.0},
        {"polish_mode": "x"},
        {"polish_iterations": -1},
    ):
        with pytest.raises(ConfigError):
            SolverConfig(**kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_give_the_same_pose() -> None:
    scene = make_planted_scene(PINHOLE, 300, seed=28, noise_px=0.3)
    cfg = SolverConfig(half_correlation=False)
    cpu = solve(scene.query, scene.points, PINHOLE, config=cfg)
    gscene = make_planted_scene(PINHOLE, 300, seed=28, noise_px=0.3, device="cuda")
    for graphs_on in (False, True):
        gcfg = SolverConfig(half_correlation=False, cuda_graphs=graphs_on)
        for _ in range(2):  # second call replays the captured graphs
            gpu = solve(gscene.query, gscene.points, PINHOLE, config=gcfg)
            assert (gpu.T_cam_world - cpu.T_cam_world).abs().max() < 1e-4
            assert gpu.reliable and gpu.n_informative == pytest.approx(cpu.n_informative, abs=2)
    half = solve(gscene.query, gscene.points, PINHOLE)  # fp16 correlation
    assert _rms(scene, half.T_cam_world) < 0.1
    tr = solve(gscene.query, gscene.points, PINHOLE, prior=cpu.T_cam_world)
    assert tr.path == "tracking" and (tr.T_cam_world - cpu.T_cam_world).abs().max() < 1e-3


def test_coarse_refinement_modes_both_recover_the_pose() -> None:
    """The global path's coarse refinement on NRE maps or on argmax maps (the default) recovers
    the planted pose (50 % outliers); an unknown mode is a configuration error."""
    scene = make_planted_scene(PINHOLE, 400, seed=21, noise_px=0.2, outlier_fraction=0.5)
    for mode in ("nre", "argmax"):
        res = solve(scene.query, scene.points, PINHOLE, None, SolverConfig(coarse_refinement=mode))
        assert res.reliable and res.path == "global"
        assert _rms(scene, res.T_cam_world) < 0.1, mode
    with pytest.raises(ConfigError):
        SolverConfig(coarse_refinement="mode")


def _result(T: torch.Tensor, cost: float, depth: float = 4.0) -> PoseResult:
    return PoseResult(
        T_cam_world=T,
        covariance=torch.eye(6, dtype=torch.float64) * 1e-6,
        cost=cost,
        n_informative=100,
        n_points=200,
        timings={"total": 0.01},
        reliable=True,
        path="global",
        median_depth=depth,
    )


def test_consensus_keeps_the_cheapest_and_flags_disagreement() -> None:
    """The ambiguity check: the lowest-cost run is kept; another run whose camera centre is more
    than consensus_max_translation x depth (or consensus_max_rotation_deg) away makes it
    unreliable; agreeing runs leave it reliable; timings add up."""
    cfg = SolverConfig(consensus_seeds=3)
    T0 = se3.se3_exp(torch.tensor([0.1, 0.2, 0.3, 0.01, 0.02, 0.03], dtype=torch.float64))
    near = se3.se3_exp(torch.tensor([0.01, 0, 0, 0, 0, 0], dtype=torch.float64)) @ T0
    shifted = se3.se3_exp(torch.tensor([0.5, 0, 0, 0, 0, 0], dtype=torch.float64)) @ T0
    turned = se3.se3_exp(torch.tensor([0, 0, 0, 0, 0.1, 0], dtype=torch.float64)) @ T0
    ok = _consensus([_result(near, 5.0), _result(T0, 4.0), _result(T0.clone(), 4.5)], cfg)
    assert ok.reliable and torch.equal(ok.T_cam_world, T0) and ok.cost == 4.0
    assert ok.consensus_spread is not None and ok.consensus_spread[0] == pytest.approx(0.01 / 4)
    assert ok.timings["total"] == pytest.approx(0.03)
    for other in (shifted, turned):
        bad = _consensus([_result(T0, 4.0), _result(other, 4.2)], cfg)
        assert not bad.reliable and "ambiguous" in bad.reasons[-1], bad.reasons
    nan = torch.full((4, 4), math.nan, dtype=torch.float64)
    assert not _consensus([_result(nan, 4.0), _result(T0, 4.5)], cfg).reliable  # best non-finite
    # A run the engine declines is no competing explanation.
    declined = _result(shifted, 4.1)
    declined.reliable = False
    assert _consensus([_result(T0, 4.0), declined], cfg).reliable


def test_consensus_on_planted_scenes() -> None:
    """Seeds agree on a clean planted scene (reliable, same pose as one solve to GNC precision);
    on maps unrelated to the query they disagree, and the result says so."""
    scene = make_planted_scene(PINHOLE, 300, seed=11, noise_px=0.2, outlier_fraction=0.5)
    one = solve(scene.query, scene.points, PINHOLE, None, SolverConfig(msac_hypotheses=256))
    cfg = SolverConfig(msac_hypotheses=256, consensus_seeds=3)
    res = solve(scene.query, scene.points, PINHOLE, None, cfg)
    assert res.reliable, res.reasons
    assert res.consensus_spread is not None and res.consensus_spread[0] < 1e-3
    assert _rms(scene, res.T_cam_world) < 0.1 and _rms(scene, one.T_cam_world) < 0.1
    g = torch.Generator().manual_seed(0)
    pts = MapPoints(
        scene.points.xyz,
        torch.randn(scene.points.desc_coarse.shape, generator=g),
        torch.randn(scene.points.desc_fine.shape, generator=g),
    )
    bad = solve(scene.query, pts, PINHOLE, None, cfg)
    assert not bad.reliable and bad.reasons  # (the other seeds' runs are unreliable too)
    # The tracking path is not affected by the check.
    tr = solve(scene.query, scene.points, PINHOLE, one.T_cam_world, cfg)
    assert tr.path == "tracking" and tr.consensus_spread is None


def test_fine_floor_truncates_the_optimised_maps_at_the_window() -> None:
    """fine_truncation="window": the fine GNC evaluates max(0, a - floor) with floor =
    ln|Omega'_f| - ln(w^2 + 1) (exactly the maps truncated at the window's level), RE and
    fine_truncation="map" use no floor, and the finalisation reads the untruncated maps."""
    from nre_localization.engine.solver import _fine_floor

    scene = make_planted_scene(PINHOLE, 200, seed=25, noise_px=0.2, dim_fine=32)
    cfg = SolverConfig()
    cm = lm.build_coarse_maps(scene.query, scene.points, cfg)
    cells, valid = PINHOLE.cell_camera(2).project_world(scene.points.xyz, scene.T_cam_world)
    fm = lm.build_fine_maps(scene.query, scene.points, cm, cells, valid, 13, cfg)
    floor = _fine_floor(fm, cfg)
    assert floor == pytest.approx(fm.log_omega - math.log(cfg.fine_window**2 + 1))
    assert _fine_floor(fm, SolverConfig(fine_truncation="map")) == 0.0
    cam = PINHOLE.cell_camera(2)
    r = G.gnc_radius(cfg.fine_sigmas)
    T = se3.se3_exp(torch.tensor([0.01, 0, 0.01, 0, 0.003, 0], dtype=torch.float64))
    T = T @ scene.T_cam_world
    floored = G.GncProblem(scene.points.xyz.float(), fm, cam, cfg.fine_sigmas, r, floor)
    cut = lm.InfoMaps(
        (fm.data - floor).clamp_min(0.0), fm.origin, fm.pad, fm.map_height, fm.map_width,
        fm.stride, fm.log_omega,
    )  # fmt: skip
    manual = G.GncProblem(scene.points.xyz.float(), cut, cam, cfg.fine_sigmas, r)
    plain = G.GncProblem(scene.points.xyz.float(), fm, cam, cfg.fine_sigmas, r)
    ea, eb, ec = (G.evaluate(p, T, 0.6, hessian=True) for p in (floored, manual, plain))
    assert torch.allclose(ea.A, eb.A) and torch.allclose(ea.cost, eb.cost)
    assert not torch.allclose(ea.cost, ec.cost)  # the floor changes the optimised cost
    # Both truncations reach the planted pose; RE is untouched by the setting.
    for mode in ("window", "map"):
        res = solve(scene.query, scene.points, PINHOLE, None, SolverConfig(fine_truncation=mode))
        assert res.reliable and _rms(scene, res.T_cam_world) < 0.1, mode
    re_w = solve_re(scene.query, scene.points, PINHOLE, None, SolverConfig())
    re_m = solve_re(scene.query, scene.points, PINHOLE, None, SolverConfig(fine_truncation="map"))
    assert torch.equal(re_w.T_cam_world, re_m.T_cam_world)


def test_inputs_beyond_float32_range_are_rejected() -> None:
    """float64 map points or priors that overflow float32 (where the engine projects) are bad
    input, not a NaN index later."""
    scene = make_planted_scene(PINHOLE, 100, seed=3, dim_fine=32)
    xyz = scene.points.xyz.double().clone()
    xyz[5, 2] = 1e39
    pts = MapPoints(xyz, scene.points.desc_coarse, scene.points.desc_fine)
    with pytest.raises(InputError, match="xyz"):
        solve(scene.query, pts, PINHOLE)
    prior = scene.T_cam_world.clone().double()
    prior[2, 3] = 1e39
    with pytest.raises(InputError, match="finite"):
        solve(scene.query, scene.points, PINHOLE, prior)
