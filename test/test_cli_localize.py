"""End to end with the shipped weights: build-map -> localize (another resolution) -> evaluate,
and localize-pair. Real images (Strecha Herz-Jesus-P8), real network, real engine."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from nre_localization import cli
from nre_localization.datasets import colmap
from nre_localization.datasets.poses import qt_from_pose

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / ".." / "shared" / "data" / "strecha" / "Herz-Jesus-P8"
WEIGHTS = ROOT / "weights" / "nre_default.safetensors"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SCENE.is_dir(), reason="../shared/data/strecha not present"),
    pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped weights not present"),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("loc")
    keep = {"0001.jpg", "0002.jpg", "0004.jpg", "0005.jpg"}
    names = sorted(p.name for p in (SCENE / "images").iterdir())
    (d / "exclude.txt").write_text("\n".join(n for n in names if n not in keep) + "\n")
    code = cli.main(
        ["--threads", "2", "build-map", str(SCENE), "--out", str(d / "m.nremap"), "--exclude",
         str(d / "exclude.txt"), "--max-features", "2000", "--quiet"]
    )  # fmt: skip
    assert code == 0
    return d


def test_localize_a_smaller_query_camera_and_evaluate(
    built: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = colmap.read_model(SCENE / "sparse")
    im = next(i for i in model.images.values() if i.name == "0003.jpg")
    cam = model.cameras[im.camera_id]
    img = cv2.imread(str(SCENE / "images" / "0003.jpg"))
    small = cv2.resize(img, (576, 384), interpolation=cv2.INTER_AREA)  # a different camera
    (built / "q").mkdir(exist_ok=True)
    cv2.imwrite(str(built / "q" / "0003.png"), small)
    colmap.write_queries_with_intrinsics(
        built / "queries.txt", [("0003.png", cam.scaled(576, 384))]
    )
    code = cli.main(
        ["localize", "--map", str(built / "m.nremap"), "--images", str(built / "q"), "--queries",
         str(built / "queries.txt"), "--out", str(built / "pred.txt"), "--device", "cpu", "--quiet"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    pred = colmap.read_pose_list(built / "pred.txt")
    assert (built / "pred.txt.declined").read_text() == ""
    # evaluate against the COLMAP ground truth under the original name
    colmap.write_pose_list(built / "pred_named.txt", {"0003.jpg": pred["0003.png"]})
    code = cli.main(
        ["evaluate", "--pred", str(built / "pred_named.txt"), "--gt", str(SCENE / "sparse"), "--json",
         str(built / "e.json")]
    )  # fmt: skip
    assert code == 0
    e = json.loads((built / "e.json").read_text())
    assert e["n_queries"] == 1 and e["recall"]["0.5m_5deg"] == 1.0, e
    assert e["median_translation_m"] < 0.25 and e["median_rotation_deg"] < 2.0


def test_localize_pair(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nre_localization.maps.format import load_map

    m = load_map(built / "m.nremap")
    k = m.keyframe_names.index("0002.jpg")
    pts = np.unique(m.points.point_of_observation()[m.points.image_index == k])
    np.savetxt(built / "pts.txt", m.points.xyz[pts])
    model = colmap.read_model(SCENE / "sparse")
    cam = model.cameras[1]
    q, t = qt_from_pose(m.keyframe_T_cam_world[k])
    capsys.readouterr()
    code = cli.main(
        ["localize-pair", "--query", str(SCENE / "images" / "0003.jpg"), "--query-camera", cam.to_line(),
         "--reference", str(SCENE / "images" / "0002.jpg"), "--reference-camera", cam.to_line(),
         "--reference-pose", " ".join(f"{v:.12f}" for v in (*q, *t)), "--points", str(built / "pts.txt"),
         "--device", "cpu"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    v = np.array([float(x) for x in out.split()])
    gt = next(i for i in model.images.values() if i.name == "0003.jpg")
    from nre_localization.datasets.poses import pose_from_qt
    from nre_localization.evaluation.metrics import pose_errors

    te, re_ = pose_errors(pose_from_qt(v[:4], v[4:]), gt.T_cam_world)
    assert te < 0.25 and re_ < 2.0
    code = cli.main(
        ["localize-pair", "--query", str(SCENE / "images" / "0003.jpg"), "--query-camera", "PINHOLE 100 100 1 1",
         "--reference", str(SCENE / "images" / "0002.jpg"), "--reference-camera", cam.to_line(),
         "--reference-pose", "1 0 0 0 0 0 0", "--points", str(built / "pts.txt")]
    )  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "--query-camera" in err
