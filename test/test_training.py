"""NRE training: loss (eq. 10) against a hand computation, windowed loss, exact homographic pairs,
card and room scenes (exact correspondences, occlusions excluded), the fast rendering path against
the legacy one, a few optimisation steps, the time-budgeted loop with checkpoint + resume, and the
same loop under torchrun with two CPU processes (DDP over gloo)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from nre_localization.geometry.cells import bilinear_sample, cells_inside, pixel_to_cell
from nre_localization.model.network import DescriptorNet, ModelConfig, load_model, save_weights
from nre_localization.training.loop import (
    PairStream,
    TrainConfig,
    _lr_factor,
    legacy_pairs,
    make_val_set,
    train,
)
from nre_localization.training.loss import dense_nre_loss, window_nre_loss, window_origins
from nre_localization.training.pairs import PairConfig, Photo, _warp, make_pair, photometric
from nre_localization.training.scenes import make_room_pair, make_scene_pair
from nre_localization.training.step import (
    LossConfig,
    batch_losses,
    batch_to_device,
    collate_pairs,
    pairs_to_tensors,
)

torch.set_num_threads(2)
SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"
STAIRS = SHARED / "7scenes_stairs_sample"
ROOT = Path(__file__).parents[1]
SMALL = ModelConfig(coarse_dim=32, coarse_hidden=64, fine_widths=(8, 16, 32, 64), fine_dim=32)


def _real_photos() -> list[np.ndarray]:
    files = sorted(STAIRS.glob("seq-*/frame-*.color.*"))
    if not files:
        pytest.skip(f"real frames not found under {STAIRS}")
    out = []
    for f in files[:4]:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return out


def test_dense_loss_matches_hand_computation() -> None:
    torch.manual_seed(0)
    target = torch.randn(8, 3, 4)  # D=8, Hm=3, Wm=4
    desc = torch.randn(2, 8)
    cells = torch.tensor([[1.25, 0.5], [3.0, 2.0]])  # (x, y); the second sits on the last cell
    st = dense_nre_loss(desc, target, cells)
    logp = torch.log_softmax(desc @ target.reshape(8, 12), dim=1)
    l0 = -(
        0.75 * 0.5 * logp[0, 0 * 4 + 1]
        + 0.25 * 0.5 * logp[0, 0 * 4 + 2]
        + 0.75 * 0.5 * logp[0, 1 * 4 + 1]
        + 0.25 * 0.5 * logp[0, 1 * 4 + 2]
    )
    l1 = -logp[1, 2 * 4 + 3]
    assert float(st.loss_sum) == pytest.approx(float(l0 + l1), rel=1e-5)
    assert st.n == 2


def test_argmax_metric_and_planted_peaks() -> None:
    torch.manual_seed(1)
    target = torch.nn.functional.normalize(torch.randn(16, 6, 7), dim=0)
    true = torch.tensor([[2.0, 3.0], [5.0, 1.0], [0.0, 0.0]])
    desc = 30.0 * torch.stack([target[:, int(y), int(x)] for x, y in true.tolist()])
    good = dense_nre_loss(desc, target, true)
    assert good.n_correct == 3
    assert float(good.loss) < 0.5
    bad = dense_nre_loss(desc, target, true + torch.tensor([3.0, 0.0]).clamp(max=6))
    assert bad.n_correct < 3 and float(bad.loss) > float(good.loss) + 5


def test_window_loss_equals_dense_loss_on_a_full_window() -> None:
    torch.manual_seed(2)
    target = torch.randn(8, 5, 5)
    desc = torch.randn(3, 8)
    cells = torch.tensor([[0.3, 4.0], [2.5, 2.5], [4.0, 0.1]])
    origins = torch.zeros(3, 2, dtype=torch.long)
    a = dense_nre_loss(desc, target, cells)
    b = window_nre_loss(desc, target, cells, origins, size=5)
    assert float(a.loss_sum) == pytest.approx(float(b.loss_sum), rel=1e-5)
    assert a.n_correct == b.n_correct


def test_window_origins_contain_the_truth() -> None:
    gen = torch.Generator().manual_seed(0)
    cells = torch.rand(500, 2) * torch.tensor([99.0, 79.0])
    o = window_origins(cells, 32, 80, 100, 8, gen)
    local = cells - o.float()
    assert bool(((local >= 0) & (local <= 31)).all())
    assert bool((o[:, 0] <= 100 - 32).all() and (o[:, 1] <= 80 - 32).all() and (o >= 0).all())


def test_homographic_pairs_have_exact_correspondences() -> None:
    photo = _real_photos()[0]
    cfg = PairConfig(height=96, width=128, n_points=400, photometric=False)
    rng = np.random.default_rng(0)
    pair = make_pair(photo, rng, cfg)
    v = pair["valid"]
    assert v.mean() > 0.3
    a = pair["image_a"].astype(np.float32)
    b = pair["image_b"].astype(np.float32)
    pa, pb = pair["pts_a"][v], pair["pts_b"][v]
    va = np.stack([cv2.getRectSubPix(a, (1, 1), tuple(map(float, p)))[0, 0] for p in pa])
    vb = np.stack([cv2.getRectSubPix(b, (1, 1), tuple(map(float, p)))[0, 0] for p in pb])
    err = np.abs(va - vb).mean()
    shuffled = np.abs(va - np.roll(vb, 7, axis=0)).mean()
    assert err < 0.35 * shuffled
    # determinism: the same seed gives the same pair
    again = make_pair(photo, np.random.default_rng(0), cfg)
    assert np.array_equal(again["image_b"], pair["image_b"])


@pytest.mark.parametrize("fast", [True, False])
def test_scene_pairs_have_exact_correspondences_and_exclude_occlusions(fast: bool) -> None:
    photos = _real_photos()
    cfg = PairConfig(height=96, width=128, n_points=600, photometric=False, fast=fast)
    rng = np.random.default_rng(4)
    pairs = [p for p in (make_scene_pair(photos, rng, cfg, n_cards=3) for _ in range(6)) if p]
    assert len(pairs) >= 3
    for pair in pairs:
        err, shuffled = _sample_error(pair)
        assert err < 0.35 * shuffled
    # with a translating camera the cards move relative to the background: some points are
    # occluded (invisible in B although they project inside it) and were excluded
    inside = [((p["pts_b"] >= 0) & (p["pts_b"] <= [127, 95])).all(1) & ~p["valid"] for p in pairs]
    assert sum(int(x.sum()) for x in inside) > 0


def test_photometric_degradation_changes_images_but_keeps_shape() -> None:
    photo = _real_photos()[1][:96, :128].copy()
    out = photometric(photo, np.random.default_rng(3), PairConfig())
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - photo.astype(int)).mean() > 1.0


def _sample_error(pair: dict) -> tuple[float, float]:
    """Mean colour difference at the valid correspondences, and the same with shuffled partners."""
    v = pair["valid"]
    a = pair["image_a"].astype(np.float32)
    b = pair["image_b"].astype(np.float32)
    va = np.stack(
        [cv2.getRectSubPix(a, (1, 1), tuple(map(float, p)))[0, 0] for p in pair["pts_a"][v]]
    )
    vb = np.stack(
        [cv2.getRectSubPix(b, (1, 1), tuple(map(float, p)))[0, 0] for p in pair["pts_b"][v]]
    )
    return float(np.abs(va - vb).mean()), float(np.abs(va - np.roll(vb, 7, axis=0)).mean())


def test_room_pairs_have_exact_correspondences_parallax_and_occlusion() -> None:
    photos = _real_photos()
    textures = [p[:200, :240].copy() for p in photos]  # stand-in material textures
    cfg = PairConfig(height=96, width=128, n_points=600, photometric=False)
    rng = np.random.default_rng(7)
    pairs = [make_room_pair(photos, textures, rng, cfg, n_boxes=2, n_panels=2) for _ in range(8)]
    pairs = [p for p in pairs if p is not None and p["valid"].mean() > 0.1]
    assert len(pairs) >= 4
    for pair in pairs:
        err, shuffled = _sample_error(pair)
        assert err < 0.35 * shuffled
    # several planes at different depths: the A -> B motion is not one homography (parallax)
    resid = []
    for pair in pairs:
        v = pair["valid"]
        h, _ = cv2.findHomography(pair["pts_a"][v], pair["pts_b"][v], 0)
        proj = cv2.perspectiveTransform(pair["pts_a"][v][None].astype(np.float64), h)[0]
        resid.append(float(np.median(np.linalg.norm(proj - pair["pts_b"][v], axis=1))))
    assert max(resid) > 1.0
    # some points project inside B but are hidden there (occluded): excluded
    inside = [((p["pts_b"] >= 0) & (p["pts_b"] <= [127, 95])).all(1) & ~p["valid"] for p in pairs]
    assert sum(int(x.sum()) for x in inside) > 0


def test_fast_rendering_path_matches_the_legacy_path() -> None:
    """Pyramid warps render what the legacy exact resize renders (up to filtering), and the
    LUT/noise-field photometrics keep the legacy statistics."""
    photo = _real_photos()[0]
    pyr = Photo(photo)
    assert pyr.levels[0] is photo and len(pyr.levels) > 2
    assert pyr.level_for(1.2) == 0 and pyr.level_for(2.0) == 1 and pyr.level_for(3.5) == 2
    cfg = PairConfig(height=96, width=128)
    for zoom in (0.8, 2.5, 5.0):  # output pixel -> photo pixel scale
        hmat = np.array([[zoom, 0.1, 20.0], [-0.05, zoom, 10.0], [0, 0, 1]])
        fast = _warp(pyr, hmat, cfg).astype(np.float32)
        slow = _warp(photo, hmat, replace(cfg, fast=False)).astype(np.float32)
        assert np.abs(fast - slow).mean() < 6.0
    img = cv2.resize(photo, (128, 96))
    f = [photometric(img, np.random.default_rng(i), cfg).mean() for i in range(40)]
    s = [
        photometric(img, np.random.default_rng(i), replace(cfg, fast=False)).mean()
        for i in range(40)
    ]
    assert abs(np.mean(f) - np.mean(s)) < 0.15 * np.mean(s)
    # the legacy path stays available and deterministic
    leg = legacy_pairs(cfg)
    assert not leg.fast and leg.min_src_per_px == 0.0
    a = make_pair(photo, np.random.default_rng(1), leg)
    b = make_pair(photo, np.random.default_rng(1), leg)
    assert np.array_equal(a["image_a"], b["image_a"])


def test_validation_sets_use_the_legacy_path(tmp_path: Path) -> None:
    data = _tiny_data(tmp_path / "data")
    cfg = PairConfig(height=64, width=96, n_points=64)
    val = make_val_set(data, cfg, 3)
    photo = cv2.cvtColor(cv2.imread(str(data / "photos" / "val" / "3.jpg")), cv2.COLOR_BGR2RGB)
    ref = make_pair(photo, np.random.default_rng(1234), legacy_pairs(cfg))
    assert np.array_equal(val[0]["image_b"], ref["image_b"])
    assert len(make_val_set(data, cfg, 2, kind="scenes")) == 2
    assert len(make_val_set(data, cfg, 2, kind="room")) == 2


def test_pair_streams_differ_per_rank_and_collate_to_tensors() -> None:
    photos = _real_photos()
    root = Path(__file__).parents[1] / "build" / "test_streams"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    files = []
    for i, p in enumerate(photos[:2]):
        files.append(root / f"{i}.jpg")
        cv2.imwrite(str(files[-1]), cv2.cvtColor(p, cv2.COLOR_RGB2BGR))
    cfg = PairConfig(height=64, width=96, n_points=32)
    first = [next(iter(PairStream(files, cfg, [0, rank, 0]))) for rank in (0, 1, 0)]
    assert not np.array_equal(first[0]["image_a"], first[1]["image_a"])
    assert np.array_equal(first[0]["image_a"], first[2]["image_a"])
    batch = collate_pairs(first[:2])
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (4, 64, 96, 3)
    assert batch["gen_ms"].shape == (2,)
    images, pa, pb, v = batch_to_device(batch, torch.device("cpu"))
    ref = pairs_to_tensors(first[:2], torch.device("cpu"))
    for x, y in zip((images, pa, pb, v), ref, strict=True):
        assert torch.equal(x, y)
    shutil.rmtree(root, ignore_errors=True)


def test_lr_schedule_restarts_at_the_resumed_step() -> None:
    cfg = TrainConfig(plan_minutes=10.0, warmup_steps=200, restart_warmup_steps=50)
    assert _lr_factor(0.0, 500, cfg, False) == pytest.approx(1.0)
    assert _lr_factor(600.0, 500, cfg, False) == pytest.approx(0.05)
    # continuing a finished cumulative schedule: the floor; a restart: full cosine again
    assert _lr_factor(1200.0, 500, cfg, False) == pytest.approx(0.05)
    assert _lr_factor(1200.0, 500, cfg, False, origin_s=1200.0) == pytest.approx(1.0)
    assert _lr_factor(1200.0, 0, cfg, False, origin_s=1200.0) == pytest.approx(1.0 / 50)


def _batch(n_pairs: int = 2) -> list[dict]:
    photos = _real_photos()
    cfg = PairConfig(height=64, width=96, n_points=96)
    rng = np.random.default_rng(5)
    return [make_pair(photos[i % len(photos)], rng, cfg) for i in range(n_pairs)]


def test_batched_step_equals_the_per_point_reference() -> None:
    """batch_losses (all pairs and both directions at once) == dense/window losses point by point."""
    torch.manual_seed(0)
    net = DescriptorNet(SMALL).eval()
    images, pa, pb, v = pairs_to_tensors(_batch(), torch.device("cpu"))
    with torch.no_grad():
        out = net(images)
    cfg = LossConfig(fine_window=16, fine_max_offset=0)  # deterministic (centred) windows
    st = batch_losses(out, pa, pb, v, 16, 2, cfg, torch.Generator().manual_seed(0))
    b = pa.shape[0]
    for level, stride in (("coarse", 16), ("fine", 2)):
        total, n, hits = 0.0, 0, 0
        for i in range(b):
            for src, dst, sp, dp in (
                (out[level][i], out[level][b + i], pa[i], pb[i]),
                (out[level][b + i], out[level][i], pb[i], pa[i]),
            ):
                sc, dc = pixel_to_cell(sp[v[i]], stride), pixel_to_cell(dp[v[i]], stride)
                keep = cells_inside(dc, *dst.shape[1:]) & cells_inside(sc, *src.shape[1:])
                desc = bilinear_sample(src, sc[keep])
                if level == "coarse":
                    ref = dense_nre_loss(desc, dst, dc[keep])
                else:
                    gen = torch.Generator().manual_seed(0)
                    o = window_origins(dc[keep], 16, *dst.shape[1:], 0, gen)
                    ref = window_nre_loss(desc, dst, dc[keep], o, 16)
                total += float(ref.loss_sum)
                n += ref.n
                hits += ref.n_correct
        assert st[level].n == n > 0
        assert st[level].n_correct == hits
        assert float(st[level].loss_sum) == pytest.approx(total, rel=1e-4)


def test_a_few_steps_decrease_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    net = DescriptorNet(SMALL).train()
    images, pa, pb, v = pairs_to_tensors(_batch(), torch.device("cpu"))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    cfg = LossConfig(fine_window=16, fine_max_offset=2)
    losses = []
    for _ in range(4):
        gen = torch.Generator().manual_seed(0)
        st = batch_losses(net(images), pa, pb, v, 16, 2, cfg, gen)
        loss = st["coarse"].loss + st["fine"].loss
        assert torch.isfinite(loss) and st["coarse"].n > 0 and st["fine"].n > 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def _tiny_data(root: Path) -> Path:
    photos = _real_photos()
    for split, idx in (("train", [0, 1, 2]), ("val", [3])):
        d = root / "photos" / split
        d.mkdir(parents=True)
        for i in idx:
            cv2.imwrite(str(d / f"{i}.jpg"), cv2.cvtColor(photos[i], cv2.COLOR_RGB2BGR))
    return root


def test_train_loop_checkpoints_and_resumes(tmp_path: Path) -> None:
    data = _tiny_data(tmp_path / "data")
    torch.manual_seed(0)
    init = tmp_path / "init.safetensors"
    save_weights(DescriptorNet(SMALL), init)
    cfg = TrainConfig(
        data=str(data),
        out=str(tmp_path / "run"),
        init=str(init),
        max_steps=2,
        batch=1,
        workers=0,
        val_pairs=2,
        log_every=1,
        val_every=100,
        ckpt_every=1,
        pair=PairConfig(height=64, width=96, n_points=64),
        loss=LossConfig(fine_window=16, fine_max_offset=2),
    )
    s1 = train(cfg)
    run = tmp_path / "run"
    assert s1["step"] == 2 and np.isfinite(s1["val_loss_coarse"])
    assert (run / "ckpt_last.safetensors").is_file() and (run / "ckpt_last_optim.pt").is_file()
    size = sum(p.stat().st_size for p in run.glob("ckpt_last*"))
    assert size < 16e6
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert len(rows) == 2 and all(np.isfinite(float(r["loss_c"])) for r in rows)
    # resume from a copy (as the lead does between GPU chunks): the step count continues
    ck = tmp_path / "ck"
    shutil.copytree(run, ck)
    export = tmp_path / "final.safetensors"
    s2 = train(replace(cfg, resume=str(ck / "ckpt_last.safetensors")), export=str(export))
    assert s2["step"] == 4
    assert json.loads((run / "summary.json").read_text())["step"] == 4
    assert (
        load_model(export).fingerprint() == load_model(run / "ckpt_last.safetensors").fingerprint()
    )


def test_train_loop_under_torchrun_with_two_cpu_processes(tmp_path: Path) -> None:
    """DDP end to end (gloo): both ranks train, only rank 0 validates and writes, and a second
    torchrun run resumes from the first one's checkpoint."""
    data = _tiny_data(tmp_path / "data")
    torch.manual_seed(0)
    init = tmp_path / "init.safetensors"
    save_weights(DescriptorNet(SMALL), init)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(ROOT / "tools" / "train.py"), "--data", str(data), "--init", str(init)]
    cmd += ["--max-steps", "2", "--batch", "1", "--workers", "1", "--height", "64", "--width", "96"]
    cmd += ["--points", "64", "--val-pairs", "2", "--val-room-pairs", "1", "--log-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    runs = []
    for name, extra in (
        ("run1", []),
        ("run2", ["--resume", "CKPT", "--restart-schedule", "--no-shm"]),
    ):
        extra = [
            str(tmp_path / "run1" / "ckpt_last.safetensors") if x == "CKPT" else x for x in extra
        ]
        res = subprocess.run(
            [*cmd, "--out", str(tmp_path / name), *extra],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=ROOT,
        )
        log = res.stdout + res.stderr
        assert res.returncode == 0, log[-4000:]
        assert "rank 0/2 (local 0): cpu cpu, gloo" in log and "rank 1/2 (local 1)" in log
        assert log.count("VAL step") == 2  # rank 0 only: before and after training
        runs.append(json.loads((tmp_path / name / "summary.json").read_text()))
        rows = list(csv.DictReader((tmp_path / name / "log.csv").open()))
        assert len(rows) == 2  # one writer
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == [
            "ckpt_last.safetensors",
            "ckpt_last_optim.pt",
            "log.csv",
            "log.jsonl",
            "summary.json",
            "val.csv",
        ]
    assert runs[0]["step"] == 2 and runs[1]["step"] == 4
    assert np.isfinite(runs[1]["valroom_loss_fine"])
