"""Loss maps: dense coarse maps, fine windows, truncation, bilinear cost, sparse storage."""

from __future__ import annotations

import math

import pytest
import torch

from nre_localization.engine import loss_maps as lm
from nre_localization.engine.rng import hash_uniform
from nre_localization.engine.synthetic import make_planted_scene
from nre_localization.engine.types import MapPoints, QueryFeatures, SolverConfig
from nre_localization.geometry.cameras import Camera
from nre_localization.geometry.cells import pixel_to_cell

CAM = Camera.pinhole(250.0, 250.0, 159.5, 119.5, 320, 240)


@pytest.fixture(scope="module")
def scene():  # noqa: ANN201
    return make_planted_scene(CAM, 120, seed=3)


def test_coarse_maps_are_chunked_log_softmax(scene) -> None:  # noqa: ANN001
    q, p = scene.query, scene.points
    cm = lm.build_coarse_maps(q, p, SolverConfig(point_chunk=7))
    scores = p.desc_coarse @ q.coarse.reshape(q.coarse.shape[0], -1)
    ref = torch.log_softmax(scores, -1)
    assert torch.allclose(cm.logp.view(len(p), -1), ref, atol=1e-4)
    assert cm.log_omega == pytest.approx(math.log(q.coarse.shape[1] * q.coarse.shape[2] + 1))
    pr = ref.exp()
    assert torch.allclose(cm.entropy, -(pr * ref).sum(-1), atol=1e-3)
    info = lm.coarse_info_maps(cm, pad=3)
    inner = info.data[:, 3:-3, 3:-3]
    # a = ln|Omega'| - min(ln|Omega'|, -log C) = max(0, ln|Omega'| + log C)
    loss = torch.minimum(torch.full_like(ref, cm.log_omega), -ref)
    assert torch.allclose(inner.reshape(len(p), -1), cm.log_omega - loss, atol=1e-4)
    assert (info.data[:, :3] == 0).all() and (info.data[:, :, -3:] == 0).all()


def test_bilinear_cost_and_out_of_map_rule() -> None:
    data = torch.zeros((1, 4 + 4, 5 + 4))
    grid = torch.arange(20, dtype=torch.float32).view(4, 5) / 10  # a(x, y) = (5 y + x) / 10
    data[0, 2:6, 2:7] = grid
    maps = lm.InfoMaps(data, torch.zeros((1, 2)), 2, 4, 5, 16, math.log(21))
    cells = torch.tensor(
        [
            [[1.25, 2.5]],
            [[0.0, 0.0]],
            [[4.0, 3.0]],
            [[-0.01, 1.0]],
            [[4.01, 1.0]],
            [[2.0, 3.2]],
            [[2.0, 1.0]],
        ]
    )
    valid = torch.tensor([[True], [True], [True], [True], [True], [True], [False]])
    a = lm.bilinear_info(maps, cells, valid)[:, 0]
    expect = torch.tensor([(5 * 2.5 + 1.25) / 10, 0.0, 1.9, 0.0, 0.0, 0.0, 0.0])
    assert torch.allclose(a, expect, atol=1e-6)
    cost = lm.nre_cost(maps, cells, valid)[:, 0]
    # Outside the map (beyond the first/last cell centres) or invalid: exactly ln|Omega'|.
    assert (cost[3:] == math.log(21)).all()


def test_argmax_cells_subcell_refinement(scene) -> None:  # noqa: ANN001
    cm = lm.build_coarse_maps(scene.query, scene.points, SolverConfig())
    truth = pixel_to_cell(scene.peak_pixels, scene.query.coarse_stride).float()
    plain = lm.argmax_cells(cm, refine=False)
    refined = lm.argmax_cells(cm, refine=True)
    inl = scene.inlier
    e_plain = (plain - truth)[inl].norm(dim=-1).median()
    e_ref = (refined - truth)[inl].norm(dim=-1).median()
    assert e_ref < e_plain


def _fine(scene, centres, config, onehot=False):  # noqa: ANN001, ANN202
    cm = lm.build_coarse_maps(scene.query, scene.points, config)
    valid = torch.ones(len(scene.points), dtype=torch.bool)
    return cm, lm.build_fine_maps(
        scene.query, scene.points, cm, centres, valid, 3, config, onehot=onehot
    )


def test_fine_window_is_centred_and_peaks_at_truth(scene) -> None:  # noqa: ANN001
    """The window is centred on the given reprojection (no half-window shift) and its information
    peaks at the planted location; outliers' windows are (almost) fully truncated."""
    cfg = SolverConfig(fine_window=17)
    true_f = pixel_to_cell(scene.true_pixels, scene.query.fine_stride).float()
    _, fm = _fine(scene, true_f, cfg)
    assert torch.equal(fm.origin, torch.floor(true_f - 8 + 0.5))
    am, has = lm.window_argmax_cells(fm)
    peak_f = pixel_to_cell(scene.peak_pixels, scene.query.fine_stride).float()
    inl = scene.inlier
    assert has[inl].all()
    assert ((am - peak_f)[inl].abs() <= 0.5 + 1e-4).all()
    assert fm.data[inl].amax((1, 2)).min() > 0.5 * fm.log_omega
    assert fm.data[~inl].amax((1, 2)).median() < 0.1 * fm.log_omega
    # Even window sizes keep the centre within the two middle cells.
    _, fm16 = _fine(scene, true_f, SolverConfig(fine_window=16))
    mid = fm16.origin + 7.5
    assert ((mid - true_f).abs() <= 0.5 + 1e-6).all()


def test_fine_maps_reference_formula_and_cpu_path(scene) -> None:  # noqa: ANN001
    """Window info = max(0, ln|Omega'_f| + log M + log_softmax_window(scores)); the CPU tiled path
    equals a direct per-point computation."""
    cfg = SolverConfig(fine_window=9)
    g = torch.Generator().manual_seed(0)
    centres = pixel_to_cell(scene.true_pixels, 2).float() + torch.randn((120, 2), generator=g) * 3
    centres[:5] = torch.tensor([[-3.0, 5.0], [2.0, -2.0], [158.0, 60.0], [30.0, 119.5], [0.0, 0.0]])
    cm, fm = _fine(scene, centres, cfg)
    q, p = scene.query, scene.points
    df, hf, wf = q.fine.shape
    w = 9
    for n in range(0, 120, 7):
        ox, oy = int(fm.origin[n, 0]), int(fm.origin[n, 1])
        sc = torch.full((w, w), -math.inf)
        for i in range(w):
            for j in range(w):
                y, x = oy + i, ox + j
                if 0 <= y < hf and 0 <= x < wf:
                    sc[i, j] = q.fine[:, y, x] @ p.desc_fine[n]
        lsm = torch.log_softmax(sc.view(-1), 0).view(w, w)
        one = lm.CoarseMaps(
            cm.logp[n : n + 1], cm.entropy[n : n + 1], cm.argmax[n : n + 1], 16, 0.0
        )
        logm = lm._coarse_log_mass(one, fm.origin[n : n + 1], w, 2)[0]
        ref = (lsm + logm + fm.log_omega).clamp_min(0).nan_to_num(0.0)
        if logm + fm.log_omega <= 0:
            ref = torch.zeros_like(ref)
        assert torch.allclose(fm.data[n, 3 : 3 + w, 3 : 3 + w], ref, atol=1e-4), n


def test_coarse_mass_of_whole_image_is_one(scene) -> None:  # noqa: ANN001
    cm = lm.build_coarse_maps(scene.query, scene.points, SolverConfig())
    # A window covering the whole fine map (and more) holds all the coarse probability.
    origin = torch.full((len(scene.points), 2), -4.0)
    logm = lm._coarse_log_mass(cm, origin, 200, 2)
    assert torch.allclose(logm, torch.zeros_like(logm), atol=1e-4)
    # Half the image (left half) holds the mass of the coarse cells left of the middle.
    half = lm._coarse_log_mass(cm, torch.tensor([[0.0, 0.0]]).expand(len(scene.points), 2), 80, 2)
    # Window of 80 fine cells (160 px) x 80 rows (160 px) from the top-left: coarse cols 0-9, rows 0-9.
    ref = cm.logp[:, :10, :10].exp().sum((1, 2)).log()
    assert torch.allclose(half, ref, atol=1e-4)


def test_sparse_storage_round_trip(scene) -> None:  # noqa: ANN001
    cfg = SolverConfig()
    true_f = pixel_to_cell(scene.true_pixels, 2).float()
    _, fm = _fine(scene, true_f, cfg)
    idx, cells, vals = fm.to_sparse()
    assert idx.numel() == fm.nnz() and (vals > 0).all()
    # Re-reading the stored cells at their own coordinates gives their values back.
    back = lm.bilinear_info(fm, cells, torch.ones_like(vals, dtype=torch.bool), idx)
    assert torch.allclose(back, vals, atol=1e-5)
    # Sparse: far fewer cells than dense maps would hold.
    assert fm.nnz() < 0.001 * len(scene.points) * fm.map_height * fm.map_width


def test_onehot_maps_for_re_baseline(scene) -> None:  # noqa: ANN001
    cm = lm.build_coarse_maps(scene.query, scene.points, SolverConfig())
    oh = lm.coarse_info_maps(cm, 2, onehot=True)
    inner = oh.data[:, 2:-2, 2:-2].reshape(len(scene.points), -1)
    assert ((inner > 0).sum(1) == 1).all()
    assert torch.equal(inner.argmax(1), cm.argmax)
    assert torch.allclose(inner.max(1).values, torch.full((len(scene.points),), cm.log_omega))
    _, fo = _fine(scene, pixel_to_cell(scene.true_pixels, 2).float(), SolverConfig(), onehot=True)
    assert ((fo.data > 0).flatten(1).sum(1) <= 1).all()


def test_rng_is_device_and_width_independent() -> None:
    a = hash_uniform((1000,), 5, 2, "cpu", torch.float32)
    b = hash_uniform((1000,), 5, 2, "cpu", torch.float32)
    c = hash_uniform((1000,), 6, 2, "cpu", torch.float32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) > 0 and float(a.max()) < 1
    assert abs(float(a.mean()) - 0.5) < 0.03


def test_maps_pass_through_without_autograd_side_effects(scene) -> None:  # noqa: ANN001
    """Pitfall 8: importing or running the engine neither disables autograd nor mutates inputs."""
    assert torch.is_grad_enabled()
    before = [t.clone() for t in (scene.query.coarse, scene.query.fine, scene.points.desc_fine)]
    _fine(scene, pixel_to_cell(scene.true_pixels, 2).float(), SolverConfig())
    assert torch.is_grad_enabled()
    for b, t in zip(
        before, (scene.query.coarse, scene.query.fine, scene.points.desc_fine), strict=True
    ):
        assert torch.equal(b, t)


def test_query_validation() -> None:
    from nre_localization.errors import InputError

    q = QueryFeatures(torch.zeros(4, 3, 3), torch.zeros(4, 6, 6), 16, 2)
    p = MapPoints(torch.zeros(5, 3), torch.zeros(5, 4), torch.zeros(5, 4))
    q.validate()
    p.validate(q)
    bad = QueryFeatures(torch.full((4, 3, 3), math.nan), torch.zeros(4, 6, 6), 16, 2)
    with pytest.raises(InputError):
        bad.validate()
    with pytest.raises(InputError):
        MapPoints(torch.zeros(5, 3), torch.zeros(5, 3), torch.zeros(5, 4)).validate(q)


def test_reprojection_outside_its_own_window_costs_exactly_log_omega() -> None:
    """Fine windows are local: a point whose reprojection leaves its own window must not read the
    neighbouring point's window (stored next to it), but cost exactly ln|Omega'|."""
    from nre_localization.engine.loss_maps import InfoMaps, bilinear_info, nre_cost

    w, pad, log_omega = 5, 1, 9.0
    data = torch.zeros(2, w + 2 * pad, w + 2 * pad)
    data[0, pad : pad + w, pad : pad + w] = 1.0  # point 0: informative everywhere in its window
    data[1, pad : pad + w, pad : pad + w] = 3.0  # point 1: a different value in its window
    origin = torch.tensor([[0.0, 0.0], [w, 0.0]])  # windows side by side in the full map
    maps = InfoMaps(data, origin, pad, map_height=20, map_width=20, stride=2, log_omega=log_omega)
    valid = torch.ones(2, dtype=torch.bool)
    inside = torch.tensor([[2.0, 2.0], [w + 2.0, 2.0]])  # each point in its own window
    assert torch.allclose(bilinear_info(maps, inside, valid), torch.tensor([1.0, 3.0]))
    # point 0 reprojects into point 1's window region, point 1 far outside its window
    outside = torch.tensor([[w + 2.0, 2.0], [15.0, 15.0]])
    assert torch.equal(bilinear_info(maps, outside, valid), torch.zeros(2))
    assert torch.equal(nre_cost(maps, outside, valid), torch.full((2,), log_omega))


def test_dense_and_gathered_window_scores_agree() -> None:
    """The fine windows' scores from the dense correlation map equal the gathered ones (float32:
    up to summation order), windows partly outside the map included."""
    from nre_localization.engine.loss_maps import (
        _flat_hwc_scaled,
        _scaled,
        _window_scores_dense,
        _window_scores_gather,
    )

    g = torch.Generator().manual_seed(3)
    fine = torch.randn(16, 30, 40, generator=g)
    desc = torch.randn(50, 16, generator=g)
    origin = torch.randint(-8, 38, (50, 2), generator=g)
    raw, scale = _window_scores_dense(fine, desc, origin, 9, torch.float32)
    table, st = _flat_hwc_scaled(fine, torch.float32)
    d, sd = _scaled(desc, torch.float32)
    ref = _window_scores_gather(table, d, origin, 9, 30, 40, 17) * (st * sd)
    assert torch.allclose(raw * scale, ref, atol=1e-4, rtol=1e-5)
    # float16 (the GPU's correlation dtype): inputs scaled by their max, scores rescaled.
    raw16, scale16 = _window_scores_dense(fine * 40.0, desc * 3.0, origin, 9, torch.float16)
    assert float(scale16) > 1.0 and raw16.dtype == torch.float32
    assert torch.allclose(raw16 * scale16, ref * 120.0, atol=0.005 * float(ref.abs().max()) * 120)
