"""COLMAP text/binary readers and writers, the 0.5 pixel convention, hloc lists, bad input."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from nre_localization.datasets import colmap
from nre_localization.datasets.common import CameraSpec, PosedImage, Scene, Tracks
from nre_localization.datasets.poses import camera_center, pose_from_qt
from nre_localization.errors import DatasetError, InputError

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
STRECHA = DATA / "strecha"
needs_strecha = pytest.mark.skipif(
    not STRECHA.is_dir(), reason="../shared/data/strecha not present"
)


@needs_strecha
def test_strecha_text_model_reads_with_opencv_pixels() -> None:
    m = colmap.read_model(STRECHA / "Herz-Jesus-P25" / "sparse")
    assert len(m.images) == 25 and not m.points
    cam = m.cameras[1]
    assert cam.model == "PINHOLE" and (cam.width, cam.height) == (1152, 768)
    # cameras.txt says cx = 570.446250 (COLMAP convention); OpenCV is 0.5 less.
    assert cam.params[2] == pytest.approx(570.44625 - 0.5)
    assert cam.params[3] == pytest.approx(377.74125 - 0.5)
    assert cam.colmap_params()[2] == pytest.approx(570.44625)
    im = next(i for i in m.images.values() if i.name == "0000.jpg")
    assert np.allclose(im.qvec, [0.440977809, -0.508320835, -0.561956074, -0.480992589])
    R = im.T_cam_world[:3, :3]
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-8)
    scene = colmap.load_colmap_scene(STRECHA / "Herz-Jesus-P25")
    assert scene.images[0].path is not None and scene.images[0].path.is_file()
    assert scene.names() == sorted(scene.names())


def _synthetic_model(rng: np.random.Generator) -> colmap.ColmapModel:
    cams = {
        1: CameraSpec.from_colmap("PINHOLE", 640, 480, [500.0, 505.0, 320.0, 240.0]),
        2: CameraSpec.from_colmap(
            "OPENCV", 800, 600, [600.0, 601.0, 401.0, 299.5, 0.1, -0.05, 0.001, -0.002]
        ),
        3: CameraSpec.from_colmap("SIMPLE_RADIAL", 320, 240, [300.0, 160.0, 120.0, 0.01]),
    }
    images = {}
    n_pts = 30
    xyz = rng.normal(0, 1, (n_pts, 3)) + [0, 0, 6]
    for iid in (1, 2, 3):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        t = rng.normal(0, 0.2, 3)
        xys = rng.uniform(0, 300, (n_pts, 2))
        ids = np.arange(1, n_pts + 1, dtype=np.int64)
        ids[::4] = -1
        images[iid] = colmap.ColmapImage(iid, q, t, iid, f"sub dir/img_{iid}.png", xys, ids)
    points = {}
    for p in range(1, n_pts + 1):
        if (p - 1) % 4 == 0:
            continue
        points[p] = colmap.ColmapPoint(
            p,
            xyz[p - 1],
            np.array([p, 2 * p, 3 * p], np.uint8),
            0.5 * p,
            np.array([1, 2, 3]),
            np.array([p - 1] * 3),
        )
    return colmap.ColmapModel(cams, images, points)


def _assert_models_equal(a: colmap.ColmapModel, b: colmap.ColmapModel) -> None:
    assert a.cameras == b.cameras
    assert set(a.images) == set(b.images) and set(a.points) == set(b.points)
    for k, ia in a.images.items():
        ib = b.images[k]
        assert ia.name == ib.name and ia.camera_id == ib.camera_id
        assert np.allclose(ia.qvec, ib.qvec, atol=1e-12) and np.allclose(
            ia.tvec, ib.tvec, atol=1e-12
        )
        assert np.allclose(ia.xys, ib.xys, atol=1e-9) and np.array_equal(
            ia.point3d_ids, ib.point3d_ids
        )
    for k, pa in a.points.items():
        pb = b.points[k]
        assert np.allclose(pa.xyz, pb.xyz) and np.array_equal(pa.rgb, pb.rgb)
        assert pa.error == pytest.approx(pb.error)
        assert np.array_equal(pa.image_ids, pb.image_ids) and np.array_equal(
            pa.point2d_idxs, pb.point2d_idxs
        )


@pytest.mark.parametrize("ext", [".txt", ".bin"])
def test_roundtrip_text_and_binary(tmp_path: Path, ext: str) -> None:
    m = _synthetic_model(np.random.default_rng(1))
    colmap.write_model(m, tmp_path, ext)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}{ext}" for n in ("cameras", "images", "points3D")
    )
    _assert_models_equal(m, colmap.read_model(tmp_path))


def test_text_and_binary_agree_and_files_use_colmap_pixels(tmp_path: Path) -> None:
    m = _synthetic_model(np.random.default_rng(2))
    colmap.write_model(m, tmp_path / "t", ".txt")
    colmap.write_model(m, tmp_path / "b", ".bin")
    _assert_models_equal(colmap.read_model(tmp_path / "t"), colmap.read_model(tmp_path / "b"))
    line = [
        s for s in (tmp_path / "t" / "cameras.txt").read_text().splitlines() if s.startswith("1 ")
    ][0]
    assert [float(v) for v in line.split()[4:]] == pytest.approx([500.0, 505.0, 320.0, 240.0])
    # The binary cameras file holds COLMAP-convention params too (read independently here).
    raw = (tmp_path / "b" / "cameras.bin").read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 0)
    cid, mid, w, h = struct.unpack_from("<iiQQ", raw, 8)
    params = struct.unpack_from("<4d", raw, 8 + 24)
    assert (n, cid, mid, w, h) == (3, 1, 1, 640, 480)
    assert params == pytest.approx((500.0, 505.0, 320.0, 240.0))
    # Keypoints: in memory OpenCV (x - 0.5), on disk COLMAP.
    im_txt = (tmp_path / "t" / "images.txt").read_text().splitlines()
    first_pts = [s for s in im_txt if s and not s.startswith("#")][1].split()
    assert float(first_pts[0]) == pytest.approx(m.images[1].xys[0, 0] + 0.5)


def test_handwritten_binary_cameras_file(tmp_path: Path) -> None:
    # Written from the COLMAP format description, not with our writer.
    data = (
        struct.pack("<Q", 1)
        + struct.pack("<iiQQ", 7, 2, 320, 240)
        + struct.pack("<4d", 250.0, 160.0, 120.0, 0.02)
    )
    (tmp_path / "cameras.bin").write_bytes(data)
    cams = colmap.read_cameras_binary(tmp_path / "cameras.bin")
    assert cams[7].model == "SIMPLE_RADIAL"
    assert cams[7].params == pytest.approx((250.0, 159.5, 119.5, 0.02))


def test_malformed_text_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "cameras.txt").write_text(
        "# c\n1 PINHOLE 640 480 500 500 320 240\n2 PINHOLE 640 480 500 abc 320 240\n"
    )
    (tmp_path / "images.txt").write_text("")
    with pytest.raises(InputError, match=r"cameras.txt:3: malformed line"):
        colmap.read_model(tmp_path)
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 640 480 500 500 320\n")
    with pytest.raises(InputError, match=r"cameras.txt:1: .*PINHOLE needs 4 params"):
        colmap.read_cameras_text(tmp_path / "cameras.txt")
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 640 480 500 500 320 240\n")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n\n2 1 0 0 0 x 0 0 1 b.png\n\n")
    with pytest.raises(InputError, match=r"images.txt:3: malformed line"):
        colmap.read_model(tmp_path)
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n\n")
    (tmp_path / "points3D.txt").write_text("1 0 0 1 255 0 0 0.1 1\n")
    with pytest.raises(InputError, match=r"points3D.txt:1: malformed line"):
        colmap.read_model(tmp_path)


def test_truncated_binary_is_one_line_error(tmp_path: Path) -> None:
    m = _synthetic_model(np.random.default_rng(3))
    colmap.write_model(m, tmp_path, ".bin")
    raw = (tmp_path / "images.bin").read_bytes()
    (tmp_path / "images.bin").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="images.bin: truncated") as e:
        colmap.read_model(tmp_path)
    assert "\n" not in str(e.value)


def test_missing_model_is_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no COLMAP model"):
        colmap.read_model(tmp_path)


def test_queries_with_intrinsics_and_pose_lists(tmp_path: Path) -> None:
    cam = CameraSpec.from_colmap("SIMPLE_RADIAL", 640, 427, [575.0, 320.0, 213.5, 0.0])
    colmap.write_queries_with_intrinsics(tmp_path / "q.txt", [("a/0003.jpg", cam)])
    text = (tmp_path / "q.txt").read_text().split()
    assert text[:4] == ["a/0003.jpg", "SIMPLE_RADIAL", "640", "427"] and float(text[5]) == 320.0
    ((name, back),) = colmap.read_queries_with_intrinsics(tmp_path / "q.txt")
    assert name == "a/0003.jpg" and back == cam and back.params[1] == 319.5

    rng = np.random.default_rng(4)
    poses = {}
    for k in range(5):
        q = rng.normal(size=4)
        poses[f"{k:04d}.jpg"] = pose_from_qt(q / np.linalg.norm(q), rng.normal(size=3))
    colmap.write_pose_list(tmp_path / "p.txt", poses)
    back_p = colmap.read_pose_list(tmp_path / "p.txt")
    assert list(back_p) == list(poses)
    for k in poses:
        assert np.allclose(back_p[k], poses[k], atol=1e-9)
    (tmp_path / "bad.txt").write_text("a.jpg 1 0 0 0 1 2\n")
    with pytest.raises(InputError, match=r"bad.txt:1"):
        colmap.read_pose_list(tmp_path / "bad.txt")


def test_scene_model_roundtrip_and_exclude(tmp_path: Path) -> None:
    cams = {1: CameraSpec("PINHOLE", 100, 80, (90.0, 90.0, 49.5, 39.5))}
    ims = [PosedImage(f"{i}.png", 1, pose_from_qt([1, 0, 0, 0], [i, 0, 0])) for i in range(3)]
    tracks = Tracks.from_lists(
        np.array([[0, 0, 5.0], [1, 1, 5.0]]),
        np.zeros((2, 3)),
        [[(0, 10.0, 11.0), (1, 12.0, 13.0)], [(2, 1.0, 2.0)]],
    )
    scene = Scene(cams, ims, tracks)
    colmap.write_model(colmap.scene_to_model(scene), tmp_path)
    back = colmap.model_to_scene(colmap.read_model(tmp_path), None)
    assert back.names() == scene.names()
    assert np.allclose(back.points.xy, tracks.xy) and np.array_equal(
        back.points.image_index, tracks.image_index
    )
    assert np.allclose(camera_center(back.images[2].T_cam_world), [-2, 0, 0])
    sub = scene.without(["2.png"])
    assert sub.names() == ["0.png", "1.png"] and sub.points.n_points == 1
    assert sub.points.track_lengths().tolist() == [2]
