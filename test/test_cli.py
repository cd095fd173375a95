"""The ``nre-localization`` command line: help, contract, bad input -> one line + exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nre_localization import cli
from nre_localization.datasets import colmap, tum
from nre_localization.datasets.poses import invert_pose

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
STRECHA = DATA / "strecha"
TUM = DATA / "tum_fr2_desk"
STAIRS = DATA / "7scenes_stairs_sample"
needs_strecha = pytest.mark.skipif(
    not STRECHA.is_dir(), reason="../shared/data/strecha not present"
)
needs_tum = pytest.mark.skipif(not TUM.is_dir(), reason="../shared/data/tum_fr2_desk not present")
needs_stairs = pytest.mark.skipif(
    not STAIRS.is_dir(), reason="../shared/data/7scenes_stairs_sample not present"
)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nre-localization: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from nre_localization.model.network import DescriptorNet, ModelConfig, save_weights

    torch.manual_seed(0)
    net = DescriptorNet(ModelConfig(coarse_dim=32, fine_dim=16, fine_widths=(8, 16, 32, 64)))
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    save_weights(net, path)
    return path


def test_help_documents_every_command_and_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    for c in ("build-map", "localize", "localize-pair", "evaluate", "export"):
        assert c in top
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name, sp in subs.items():
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        text = capsys.readouterr().out
        for action in sp._actions:
            assert action.help, f"{name}: {action.dest} has no help"
            for opt in action.option_strings:
                assert opt in text


def test_contract_flags_exist() -> None:
    p = cli.build_parser()
    a = p.parse_args(["build-map", "SRC", "--out", "M", "--images", "D", "--exclude", "F"])
    assert (a.source, a.out, a.images, a.exclude) == (Path("SRC"), Path("M"), Path("D"), Path("F"))
    a = p.parse_args(["localize", "--map", "M", "--images", "D", "--queries", "Q", "--out", "P"])
    assert (a.map, a.images, a.queries, a.out) == (Path("M"), Path("D"), Path("Q"), Path("P"))
    a = p.parse_args(["evaluate", "--pred", "P", "--gt", "G", "--json", "O"])
    assert (a.pred, a.gt, a.json) == (Path("P"), Path("G"), Path("O"))


@needs_strecha
def test_evaluate_writes_contract_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = colmap.read_model(STRECHA / "entry-P10" / "sparse")
    gt = {im.name: im.T_cam_world for im in model.images.values()}
    q = sorted(n for n in gt if int(n[:4]) % 3 == 0)
    colmap.write_pose_list(tmp_path / "pred.txt", {n: gt[n] for n in q[1:]})
    (tmp_path / "pred.txt.declined").write_text(q[0] + "\n")
    code, out, err = run(
        capsys,
        "evaluate",
        "--pred",
        tmp_path / "pred.txt",
        "--gt",
        STRECHA / "entry-P10" / "sparse",
        "--json",
        tmp_path / "o.json",
        "--csv",
        tmp_path / "o.csv",
        "--plots",
        tmp_path / "plots",
    )
    assert code == 0, err
    data = json.loads((tmp_path / "o.json").read_text())
    assert data["n_queries"] == len(q) and data["n_declined"] == 1
    assert data["median_translation_m"] == pytest.approx(0.0, abs=1e-6)
    assert data["median_rotation_deg"] == pytest.approx(0.0, abs=1e-4)
    assert set(data["recall"]) == {"0.25m_2deg", "0.5m_5deg", "5m_10deg", "0.05m_5deg"}
    assert data["recall"]["0.25m_2deg"] == pytest.approx((len(q) - 1) / len(q))
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "error_cdf.png",
        "per_query.png",
        "trajectory.png",
    ]
    assert "recall" in out
    code, _, err = run(
        capsys,
        "evaluate",
        "--pred",
        tmp_path / "pred.txt",
        "--gt",
        tmp_path / "nope",
        "--json",
        tmp_path / "x.json",
    )
    assert_one_line_error(code, err, "nope", "ground truth not found")
    colmap.write_pose_list(tmp_path / "odd.txt", {"zzz.jpg": np.eye(4)})
    code, _, err = run(
        capsys,
        "evaluate",
        "--pred",
        tmp_path / "odd.txt",
        "--gt",
        STRECHA / "entry-P10" / "sparse",
        "--json",
        tmp_path / "x.json",
    )
    assert_one_line_error(code, err, "odd.txt", "'zzz.jpg' is not in the ground truth")
    assert not (tmp_path / "x.json").exists()


@needs_tum
def test_export_tum_hloc_roundtrip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene = tum.load_tum_scene(TUM)
    colmap.write_pose_list(tmp_path / "p.txt", {im.name: im.T_cam_world for im in scene.images})
    code, _, err = run(capsys, "export", tmp_path / "p.txt", "--tum", tmp_path / "t.txt")
    assert code == 0, err
    traj = tum.read_trajectory(tmp_path / "t.txt")
    assert np.allclose(traj.stamps, [im.stamp for im in scene.images], atol=1e-6)
    assert np.allclose(
        traj.T_world_cam, invert_pose(np.stack([im.T_cam_world for im in scene.images])), atol=1e-8
    )
    code, _, err = run(capsys, "export", tmp_path / "t.txt", "--hloc", tmp_path / "h.txt")
    assert code == 0, err
    back = colmap.read_pose_list(tmp_path / "h.txt")
    assert np.allclose(
        np.stack(list(back.values())), np.stack([im.T_cam_world for im in scene.images]), atol=1e-8
    )
    # names without stamps need --rate
    colmap.write_pose_list(tmp_path / "n.txt", {"frame_a.png": np.eye(4)})
    code, _, err = run(capsys, "export", tmp_path / "n.txt", "--tum", tmp_path / "t2.txt")
    assert_one_line_error(code, err, "n.txt", "--rate")
    code, _, err = run(
        capsys, "export", tmp_path / "n.txt", "--tum", tmp_path / "t2.txt", "--rate", "10"
    )
    assert code == 0


@needs_stairs
def test_build_map_export_colmap_and_exclude(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ex.txt").write_text("seq-02/frame-000000.color.jpg\n")
    code, out, err = run(
        capsys,
        "build-map",
        STAIRS,
        "--out",
        tmp_path / "m.nremap",
        "--no-descriptors",
        "--exclude",
        tmp_path / "ex.txt",
        "--quiet",
    )
    assert code == 0, err
    from nre_localization.maps.format import load_map

    m = load_map(tmp_path / "m.nremap")
    assert m.n_keyframes == 5 and "seq-02/frame-000000.color.jpg" not in m.keyframe_names
    code, _, err = run(
        capsys, "export", tmp_path / "m.nremap", "--colmap", tmp_path / "model", "--colmap-binary"
    )
    assert code == 0, err
    back = colmap.read_model(tmp_path / "model")
    assert len(back.images) == 5 and len(back.points) == m.n_points
    # a COLMAP model WITH points3D: the builder uses its points and tracks as they are
    args = ["build-map", tmp_path / "model", "--images", STAIRS, "--out", tmp_path / "c.nremap"]
    code, out, err = run(capsys, *args, "--no-descriptors", "--quiet")
    assert code == 0, err
    assert "(model points3D)" in out
    m2 = load_map(tmp_path / "c.nremap")
    assert m2.keyframe_names == m.keyframe_names
    assert np.allclose(m2.points.xyz, m.points.xyz) and np.allclose(
        m2.points.xy, m.points.xy, atol=1e-4
    )
    assert np.array_equal(m2.points.track_lengths(), m.points.track_lengths())


@needs_stairs
def test_build_map_with_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], small_weights: Path
) -> None:
    keep = ["seq-02/frame-000000.color.jpg", "seq-02/frame-000001.color.jpg"]
    drop = [f"seq-0{s}/frame-00000{k}.color.jpg" for s in (2, 3) for k in range(3)]
    (tmp_path / "ex.txt").write_text("\n".join(n for n in drop if n not in keep) + "\n")
    code, out, err = run(
        capsys,
        "build-map",
        STAIRS,
        "--out",
        tmp_path / "m.nremap",
        "--weights",
        small_weights,
        "--device",
        "cpu",
        "--quiet",
        "--exclude",
        tmp_path / "ex.txt",
    )
    assert code == 0, err
    assert "images/min on cpu" in out
    from nre_localization.maps.format import load_map
    from nre_localization.model.network import load_model

    m = load_map(
        tmp_path / "m.nremap", expected_fingerprint=load_model(small_weights).fingerprint()
    )
    assert m.has_descriptors() and m.global_desc.shape == (2, 32) and m.keyframe_names == keep


@needs_strecha
def test_build_map_bad_colmap_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = STRECHA / "Herz-Jesus-P8"
    # malformed line
    shutil.copytree(src / "sparse", tmp_path / "bad")
    lines = (tmp_path / "bad" / "images.txt").read_text().splitlines()
    i = next(k for k, s in enumerate(lines) if s and not s.startswith("#"))
    lines[i] = lines[i].replace(" 1 0000.jpg", " x 0000.jpg")
    (tmp_path / "bad" / "images.txt").write_text("\n".join(lines) + "\n")
    code, _, err = run(
        capsys,
        "build-map",
        tmp_path / "bad",
        "--out",
        tmp_path / "a.nremap",
        "--no-descriptors",
        "--quiet",
    )
    assert_one_line_error(code, err, "images.txt", f":{i + 1}:", "malformed line")
    # missing image
    (tmp_path / "imgs").mkdir()
    code, _, err = run(
        capsys,
        "build-map",
        src / "sparse",
        "--images",
        tmp_path / "imgs",
        "--out",
        tmp_path / "a.nremap",
        "--no-descriptors",
        "--quiet",
    )
    assert_one_line_error(code, err, "0000.jpg", "image file not found")
    # image size vs camera
    import cv2

    for n in sorted(p.name for p in (src / "images").iterdir()):
        (tmp_path / "imgs" / n).symlink_to(src / "images" / n)
    (tmp_path / "imgs" / "0003.jpg").unlink()
    cv2.imwrite(
        str(tmp_path / "imgs" / "0003.jpg"), cv2.imread(str(src / "images" / "0003.jpg"))[:, :1000]
    )
    code, _, err = run(
        capsys,
        "build-map",
        src / "sparse",
        "--images",
        tmp_path / "imgs",
        "--out",
        tmp_path / "a.nremap",
        "--no-descriptors",
        "--quiet",
    )
    assert_one_line_error(code, err, "0003.jpg", "image is 1000x768 but its camera says 1152x768")
    assert not list(tmp_path.glob("*.nremap")) and not list(tmp_path.glob(".*"))


@needs_tum
def test_build_map_tum_gap_and_bag_topic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t").mkdir()
    for n in ("rgb.txt", "camera.yaml"):
        shutil.copy(TUM / n, tmp_path / "t" / n)
    (tmp_path / "t" / "rgb").symlink_to(TUM / "rgb")
    gt = (TUM / "groundtruth.txt").read_text().splitlines()
    (tmp_path / "t" / "groundtruth.txt").write_text("\n".join(gt[:-500]) + "\n")
    code, _, err = run(
        capsys,
        "build-map",
        tmp_path / "t",
        "--out",
        tmp_path / "a.nremap",
        "--no-descriptors",
        "--quiet",
    )
    assert_one_line_error(code, err, "groundtruth.txt", "no pose within 0.02 s of stamp")
    from nre_localization.datasets import bags

    scene = tum.load_tum_scene(TUM)
    scene.images = scene.images[:9:4]  # 0.4 s apart: enough parallax to triangulate
    bag = bags.write_scene_bag(scene, tmp_path / "b.bag", "rosbag1")
    code, _, err = run(
        capsys,
        "build-map",
        bag,
        "--out",
        tmp_path / "a.nremap",
        "--image-topic",
        "/cam/missing",
        "--no-descriptors",
        "--quiet",
    )
    assert_one_line_error(code, err, "b.bag", "no image topic '/cam/missing'")
    code, _, err = run(
        capsys,
        "build-map",
        bag,
        "--out",
        tmp_path / "a.nremap",
        "--pose-topic",
        "/gt",
        "--no-descriptors",
        "--quiet",
    )
    assert_one_line_error(code, err, "b.bag", "no pose topic '/gt'")
    assert not (tmp_path / "a.nremap").exists()
    # the same bag builds (poses from TF; topics found automatically)
    args = ["build-map", bag, "--out", tmp_path / "a.nremap", "--no-descriptors", "--quiet"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    from nre_localization.maps.format import load_map

    m = load_map(tmp_path / "a.nremap")
    assert m.n_keyframes == 3 and m.n_points > 100
    assert m.keyframe_names[0].startswith("1311868169.16")


def test_localize_refuses_truncated_and_foreign_maps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], small_weights: Path
) -> None:
    img = tmp_path / "q.png"
    import cv2

    cv2.imwrite(str(img), np.zeros((48, 64, 3), np.uint8))
    (tmp_path / "q.txt").write_text("q.png PINHOLE 64 48 50 50 32 24\n")
    (tmp_path / "foreign.nremap").write_bytes(b"GIF89a" + bytes(300))
    args = [
        "localize",
        "--images",
        tmp_path,
        "--queries",
        tmp_path / "q.txt",
        "--out",
        tmp_path / "p.txt",
        "--weights",
        small_weights,
        "--device",
        "cpu",
    ]
    code, _, err = run(capsys, *args, "--map", tmp_path / "foreign.nremap")
    assert_one_line_error(code, err, "foreign.nremap", "not an .nremap file")
    from test_maps_format import _map  # a valid map, then cut short

    from nre_localization.maps.format import save_map

    p = save_map(_map(), tmp_path / "t.nremap")
    p.write_bytes(p.read_bytes()[:-100])
    code, _, err = run(capsys, *args, "--map", p)
    assert_one_line_error(code, err, "t.nremap", "truncated")
    (tmp_path / "q.txt").write_text("missing.png PINHOLE 64 48 50 50 32 24\n")
    code, _, err = run(capsys, *args, "--map", p)
    assert_one_line_error(code, err, "missing.png", "query image not found")
    assert not (tmp_path / "p.txt").exists()


def test_console_script_exit_code_and_single_line(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "nre-localization"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "nre_localization.cli"]
    r = subprocess.run(
        [*cmd, "build-map", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.nremap")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "nothing: source not found" in r.stderr
