"""Metrics (errors, recalls, declines, ATE), result files, plots and the robot query protocol."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from nre_localization.datasets import colmap, tum
from nre_localization.datasets.common import CameraSpec, read_rgb
from nre_localization.datasets.poses import invert_pose, pose_from_qt
from nre_localization.evaluation import metrics, plots, protocols, report
from nre_localization.evaluation.metrics import QueryError

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
STRECHA = DATA / "strecha"
TUM = DATA / "tum_fr2_desk"


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    T = np.eye(4)
    T[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    return T


def test_pose_errors_use_camera_centres_and_geodesic_angle() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=4)
    T_gt = pose_from_qt(q / np.linalg.norm(q), [1.0, 2.0, 3.0])
    # same centre, rotated 3 degrees about the camera z axis: t changes, centre does not
    T_rot = _rot_z(3.0) @ T_gt
    dt, dr = metrics.pose_errors(T_rot, T_gt)
    assert dt == pytest.approx(0.0, abs=1e-9) and dr == pytest.approx(3.0, abs=1e-6)
    # centre moved 0.1 m along world x
    T_mv = T_gt.copy()
    T_mv[:3, 3] -= T_gt[:3, :3] @ np.array([0.1, 0, 0])
    dt, dr = metrics.pose_errors(T_mv, T_gt)
    assert dt == pytest.approx(0.1) and dr == pytest.approx(0.0, abs=1e-6)
    # comparing raw t vectors (a classic bug) would give a different number here
    assert np.linalg.norm(T_rot[:3, 3] - T_gt[:3, 3]) > 0.1


def test_recall_decline_and_medians() -> None:
    gt = {f"q{i}": np.eye(4) for i in range(6)}
    pred = {}
    offsets = {"q0": 0.01, "q1": 0.1, "q2": 0.3, "q3": 2.0}
    for k, d in offsets.items():
        T = np.eye(4)
        T[0, 3] = -d  # centre at +d
        pred[k] = T
    pred["q1"] = _rot_z(3.0) @ pred["q1"]  # 0.1 m but 3 deg: fails (0.25 m, 2 deg)
    summary, rows = metrics.evaluate_poses(pred, gt, declined=["q4"], queries=list(gt))
    assert summary["n_queries"] == 6 and summary["n_declined"] == 1 and summary["n_missing"] == 1
    assert summary["decline_rate"] == pytest.approx(1 / 6)
    rec = summary["recall"]
    assert rec["0.05m_5deg"] == pytest.approx(1 / 6)  # q0 only
    assert rec["0.25m_2deg"] == pytest.approx(1 / 6)  # q0 (q1 fails on rotation)
    assert rec["0.5m_5deg"] == pytest.approx(3 / 6)  # q0, q1, q2
    assert rec["5m_10deg"] == pytest.approx(4 / 6)
    # median over all 6 with two infinities: mean of 3rd and 4th of (0.01, 0.1, 0.3, 2, inf, inf)
    assert summary["median_translation_m"] == pytest.approx((0.3 + 2.0) / 2)
    assert summary["median_translation_m_localized"] == pytest.approx((0.1 + 0.3) / 2)
    statuses = {r.name: r.status for r in rows}
    assert statuses["q4"] == "declined" and statuses["q5"] == "missing"
    with pytest.raises(KeyError):
        metrics.evaluate_poses({"zz": np.eye(4)}, gt)


def test_median_is_null_when_most_queries_fail(tmp_path: Path) -> None:
    rows = [QueryError("a", 0.1, 0.1, "ok")] + [
        QueryError(f"d{i}", math.inf, math.inf, "declined") for i in range(3)
    ]
    s = metrics.summarize(rows)
    assert s["median_translation_m"] is None and s[
        "median_translation_m_localized"
    ] == pytest.approx(0.1)
    report.write_json(tmp_path / "o.json", s, rows)
    data = json.loads((tmp_path / "o.json").read_text())  # strict JSON (no Infinity)
    assert data["per_query"][1]["translation_m"] is None and data["recall"]["0.25m_2deg"] == 0.25


def test_ate_without_alignment_sees_a_global_offset() -> None:
    rng = np.random.default_rng(1)
    c = rng.normal(size=(20, 3))
    a = metrics.ate(c + [0.3, 0.0, 0.4], c)
    assert a["rmse"] == pytest.approx(0.5) and a["n"] == 20


def test_latency_percentiles() -> None:
    s = metrics.latency_stats([0.001 * i for i in range(1, 101)])
    assert s["p50_ms"] == pytest.approx(50.5) and s["p99_ms"] == pytest.approx(99.01)


@pytest.mark.skipif(not STRECHA.is_dir(), reason="../shared/data/strecha not present")
def test_evaluate_files_against_colmap_gt(tmp_path: Path) -> None:
    model = colmap.read_model(STRECHA / "fountain-P11" / "sparse")
    names = sorted(im.name for im in model.images.values())
    gt = {im.name: im.T_cam_world for im in model.images.values()}
    queries = [n for n in names if int(n[:4]) % 3 == 0]
    pred = {}
    for k, n in enumerate(queries[:-1]):
        T = gt[n].copy()
        T[:3, 3] += [0.01 * k, 0, 0]
        pred["images/" + n] = T  # prefixed names match by basename
    colmap.write_pose_list(tmp_path / "pred.txt", pred)
    (tmp_path / "pred.txt.declined").write_text(f"{queries[-1]}\n")
    summary, rows, _, _ = report.evaluate_files(
        tmp_path / "pred.txt", STRECHA / "fountain-P11" / "sparse"
    )
    assert summary["n_queries"] == len(queries) and summary["n_declined"] == 1
    assert summary["recall"]["0.05m_5deg"] == pytest.approx(
        sum(0.01 * k <= 0.05 for k in range(len(queries) - 1)) / len(queries)
    )
    report.write_csv(tmp_path / "o.csv", rows)
    lines = (tmp_path / "o.csv").read_text().splitlines()
    assert lines[0] == "name,translation_m,rotation_deg,status"
    assert sum(s.endswith(",inf,inf,declined") for s in lines) == 1


@pytest.mark.skipif(not TUM.is_dir(), reason="../shared/data/tum_fr2_desk not present")
def test_evaluate_tum_predictions_against_tum_gt(tmp_path: Path) -> None:
    scene = tum.load_tum_scene(TUM)
    stamps = np.array([im.stamp for im in scene.images])
    T_wc = invert_pose(np.stack([im.T_cam_world for im in scene.images]))
    T_wc[:, 2, 3] += 0.02
    tum.write_trajectory(tmp_path / "est.txt", stamps, T_wc)
    summary, rows, _, _ = report.evaluate_files(tmp_path / "est.txt", TUM / "groundtruth.txt")
    assert summary["n_queries"] == 20
    assert summary["ate_rmse_m"] == pytest.approx(0.02, abs=1e-3)
    assert summary["recall"]["0.05m_5deg"] == 1.0
    # hloc-format predictions named like the images, against the same trajectory
    colmap.write_pose_list(
        tmp_path / "est_hloc.txt", {im.name: im.T_cam_world for im in scene.images}
    )
    s2, _, _, _ = report.evaluate_files(tmp_path / "est_hloc.txt", TUM / "groundtruth.txt")
    assert s2["median_translation_m"] == pytest.approx(0.0, abs=1e-6)


def test_plots_write_pngs(tmp_path: Path) -> None:
    rows = [QueryError(f"q{i}", 0.01 * (i + 1), 0.1 * (i + 1), "ok") for i in range(8)]
    rows.append(QueryError("q8", math.inf, math.inf, "declined"))
    t = np.array([r.t_err for r in rows])
    r = np.array([r.r_err for r in rows])
    p1 = plots.plot_error_cdf({"a": (t, r), "b": (t * 2, r * 2)}, tmp_path / "cdf.png")
    p2 = plots.plot_per_query(rows, tmp_path / "bars.png")
    c = np.random.default_rng(0).normal(size=(9, 3))
    cp = c + 0.05
    cp[8] = np.nan
    p3 = plots.plot_trajectory(c, cp, tmp_path / "traj.png", sequence=True)
    for p in (p1, p2, p3):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


@pytest.mark.skipif(not STRECHA.is_dir(), reason="../shared/data/strecha not present")
def test_robot_protocol_is_deterministic_darker_blurrier() -> None:
    img = read_rgb(STRECHA / "Herz-Jesus-P8" / "images" / "0000.jpg")
    a = protocols.degrade_robot(img, 7)
    b = protocols.degrade_robot(img, 7)
    c = protocols.degrade_robot(img, 8)
    assert a.shape == (427, 640, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    import cv2

    ref = cv2.resize(img, (640, 427), interpolation=cv2.INTER_AREA)
    # exposure moves the mean brightness of every image
    degraded = [protocols.degrade_robot(img, s) for s in range(6)]
    assert all(abs(float(d.mean()) - float(ref.mean())) > 10 for d in degraded)
    # the blur kernel is a normalised line of the requested length and direction
    k = protocols.motion_kernel(8.0, 0.0)
    assert k.sum() == pytest.approx(1.0) and k.shape == (9, 9)
    assert np.count_nonzero(k.sum(axis=1)) == 1 and np.count_nonzero(k.sum(axis=0)) == 9
    kv = protocols.motion_kernel(8.0, np.pi / 2)
    assert np.allclose(kv, k.T, atol=1e-6)
    cam = CameraSpec("PINHOLE", 1152, 768, (1000.0, 1000.0, 575.5, 383.5))
    rc = protocols.robot_camera(cam)
    assert (rc.width, rc.height) == (640, 427)
    # the image centre stays the image centre
    assert rc.params[2] == pytest.approx((575.5 + 0.5) * 640 / 1152 - 0.5)
    assert "640 px" in protocols.describe()
