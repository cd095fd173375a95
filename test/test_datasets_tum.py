"""TUM trajectories, image lists, camera YAML, stamp association, TUM <-> hloc conversions."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from nre_localization.datasets import colmap, tum
from nre_localization.datasets.common import CameraSpec, read_rgb
from nre_localization.datasets.poses import camera_center, invert_pose, pose_from_qt, qt_from_pose
from nre_localization.errors import DatasetError, InputError

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TUM = DATA / "tum_fr2_desk"
needs_tum = pytest.mark.skipif(not TUM.is_dir(), reason="../shared/data/tum_fr2_desk not present")


@needs_tum
def test_groundtruth_reads_camera_to_world_xyzw() -> None:
    traj = tum.read_trajectory(TUM / "groundtruth.txt")
    assert len(traj) > 100 and np.all(np.diff(traj.stamps) >= 0)
    # first line: 1311868168.1667 -0.2612 -2.1328 1.4668 0.7223 -0.4870 0.2667 -0.4123
    assert traj.stamps[0] == pytest.approx(1311868168.1667)
    T = traj.T_world_cam[0]
    assert np.allclose(T[:3, 3], [-0.2612, -2.1328, 1.4668])
    q, _ = qt_from_pose(T)  # (w, x, y, z), w >= 0
    assert np.allclose(q, np.array([-0.4123, 0.7223, -0.4870, 0.2667]) * -1, atol=2e-4)


@needs_tum
def test_tum_to_hloc_and_back_keeps_camera_centres(tmp_path: Path) -> None:
    """The classic bug: hloc lists are world->camera (qw first), TUM camera->world (qw last)."""
    traj = tum.read_trajectory(TUM / "groundtruth.txt")
    sel = slice(0, 50, 7)
    T_cw = invert_pose(traj.T_world_cam[sel])
    names = [f"{s:.4f}.png" for s in traj.stamps[sel]]
    colmap.write_pose_list(tmp_path / "p.txt", dict(zip(names, T_cw, strict=True)))
    back = colmap.read_pose_list(tmp_path / "p.txt")
    centres = np.stack([camera_center(back[n]) for n in names])
    assert np.allclose(centres, traj.T_world_cam[sel, :3, 3], atol=1e-8)
    # hloc quaternion = inverse rotation of the TUM one; TUM file stores (qx qy qz qw)
    line = (tmp_path / "p.txt").read_text().splitlines()[0].split()
    q_hloc = np.array([float(v) for v in line[1:5]])
    q_tum_wxyz, _ = qt_from_pose(traj.T_world_cam[0])
    conj = q_tum_wxyz * [1, -1, -1, -1]
    assert np.allclose(q_hloc, conj, atol=1e-8) or np.allclose(q_hloc, -conj, atol=1e-8)
    tum.write_trajectory(tmp_path / "t.txt", traj.stamps[sel], invert_pose(T_cw))
    t2 = tum.read_trajectory(tmp_path / "t.txt")
    assert np.allclose(t2.T_world_cam, traj.T_world_cam[sel], atol=1e-8)


@needs_tum
def test_camera_yaml_plumb_bob_with_k3() -> None:
    cam = tum.read_camera_yaml(TUM / "camera.yaml")
    assert cam.model == "FULL_OPENCV" and (cam.width, cam.height) == (640, 480)
    assert cam.params[:4] == pytest.approx((520.908620, 521.007327, 325.141442, 249.701764))
    assert cam.params[4:9] == pytest.approx((0.231222, -0.784899, -0.003257, -0.000105, 0.917205))
    # projection agrees with OpenCV's own plumb-bob model
    X = np.array([[0.3, -0.2, 1.0], [-0.1, 0.25, 2.0]])
    uv, ok = cam.project(X)
    k = np.array([[520.908620, 0, 325.141442], [0, 521.007327, 249.701764], [0, 0, 1]])
    ref, _ = cv2.projectPoints(X, np.zeros(3), np.zeros(3), k, np.array(cam.params[4:9]))
    assert ok.all() and np.allclose(uv, ref.reshape(-1, 2), atol=1e-9)
    assert np.allclose(cam.unproject(uv), X[:, :2] / X[:, 2:], atol=1e-6)


def test_camera_yaml_ros_and_opencv_forms(tmp_path: Path) -> None:
    (tmp_path / "ros.yaml").write_text(
        "image_width: 848\nimage_height: 800\ncamera_name: cam\n"
        "camera_matrix:\n  rows: 3\n  cols: 3\n  data: [284.5, 0, 424.4, 0, 285.5, 393.7, 0, 0, 1]\n"
        "distortion_model: equidistant\n"
        "distortion_coefficients:\n  rows: 1\n  cols: 4\n  data: [0.0008, 0.031, -0.03, 0.005]\n"
    )
    cam = tum.read_camera_yaml(tmp_path / "ros.yaml")
    assert cam == CameraSpec(
        "OPENCV_FISHEYE", 848, 800, (284.5, 285.5, 424.4, 393.7, 0.0008, 0.031, -0.03, 0.005)
    )
    fs = cv2.FileStorage(str(tmp_path / "cv.yaml"), cv2.FILE_STORAGE_WRITE)
    fs.write("image_width", 640)
    fs.write("image_height", 480)
    fs.write("camera_matrix", np.array([[500.0, 0, 319.5], [0, 501.0, 239.5], [0, 0, 1]]))
    fs.write("distortion_coefficients", np.array([[0.1, -0.2, 0.0, 0.0, 0.0]]))
    fs.release()
    cam = tum.read_camera_yaml(tmp_path / "cv.yaml")
    assert cam == CameraSpec("OPENCV", 640, 480, (500.0, 501.0, 319.5, 239.5, 0.1, -0.2, 0.0, 0.0))
    (tmp_path / "bad.yaml").write_text("width: 640\nheight: 480\nfx: 1\n")
    with pytest.raises(InputError, match="bad.yaml: missing or malformed calibration value"):
        tum.read_camera_yaml(tmp_path / "bad.yaml")


def test_association_interpolates_and_refuses_gaps(tmp_path: Path) -> None:
    stamps = np.array([10.0, 10.01, 10.02, 11.0])
    poses = np.stack([pose_from_qt([1, 0, 0, 0], [s - 10.0, 0, 0]) for s in stamps])
    c, s_ = np.cos(0.1), np.sin(0.1)
    poses[1, :3, :3] = [[c, -s_, 0], [s_, c, 0], [0, 0, 1]]
    traj = tum.Trajectory(stamps, poses, tmp_path / "gt.txt")
    out = tum.associate(traj, np.array([10.005, 10.02, 10.985]), max_dt=0.02)
    assert out[0, 0, 3] == pytest.approx(0.005)
    ang = np.arctan2(out[0, 1, 0], out[0, 0, 0])
    assert ang == pytest.approx(0.05, abs=1e-9)  # slerp halfway
    assert out[2, 0, 3] == pytest.approx(1.0)  # nearest within max_dt (11.0)
    with pytest.raises(
        DatasetError, match=r"gt.txt: no pose within 0.02 s of stamp 10.500000 \(img.png\)"
    ):
        tum.associate(traj, np.array([10.5]), max_dt=0.02, what=["img.png"])


@needs_tum
def test_tum_folder_scene(tmp_path: Path) -> None:
    scene = tum.load_tum_scene(TUM)
    assert len(scene.images) == 20 and scene.cameras[1].model == "FULL_OPENCV"
    im = scene.images[3]
    traj = tum.read_trajectory(TUM / "groundtruth.txt")
    T_wc = invert_pose(im.T_cam_world)
    j = np.argmin(np.abs(traj.stamps - im.stamp))
    assert np.linalg.norm(T_wc[:3, 3] - traj.T_world_cam[j, :3, 3]) < 0.01
    assert im.load_rgb(scene.cameras[1]).shape == (480, 640, 3)
    # a trajectory that does not cover the images is refused with file + stamp
    lines = (TUM / "groundtruth.txt").read_text().splitlines()
    (tmp_path / "rgb").symlink_to(TUM / "rgb")
    (tmp_path / "rgb.txt").write_text((TUM / "rgb.txt").read_text())
    (tmp_path / "camera.yaml").write_text((TUM / "camera.yaml").read_text())
    (tmp_path / "groundtruth.txt").write_text("\n".join(lines[:100]) + "\n")
    with pytest.raises(
        DatasetError, match=r"groundtruth.txt: no pose within 0.02 s of stamp 1311868169.163498"
    ):
        tum.load_tum_scene(tmp_path)


@needs_tum
def test_image_size_mismatch_and_missing_image(tmp_path: Path) -> None:
    cam = CameraSpec("PINHOLE", 320, 240, (300.0, 300.0, 160.0, 120.0))
    path = sorted((TUM / "rgb").iterdir())[0]
    with pytest.raises(InputError, match=r"image is 640x480 but its camera says 320x240"):
        read_rgb(path, cam)
    with pytest.raises(InputError, match=r"nope.png: image file not found"):
        read_rgb(tmp_path / "nope.png", cam)


def test_malformed_trajectory_line(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("# x\n1.0 0 0 0 0 0 0 1\n2.0 0 0 0 0 0 1\n")
    with pytest.raises(InputError, match=r"t.txt:3: malformed line"):
        tum.read_trajectory(tmp_path / "t.txt")


@needs_tum
def test_undistort_to_pinhole_moves_points_like_the_model() -> None:
    from nre_localization.datasets.common import undistort_to_pinhole

    cam = tum.read_camera_yaml(TUM / "camera.yaml")
    img = np.zeros((480, 640, 3), np.uint8)
    X = np.array([[0.5, 0.38, 1.0]])  # near a corner: strong distortion
    uv, _ = cam.project(X)
    u, v = np.round(uv[0]).astype(int)
    img[v - 2 : v + 3, u - 2 : u + 3] = 255
    out, pin = undistort_to_pinhole(img, cam)
    assert pin.model == "PINHOLE" and pin.params == cam.params[:4]
    ys, xs = np.nonzero(out[..., 0] > 128)
    uv_pin, _ = pin.project(X)
    assert abs(xs.mean() - uv_pin[0, 0]) < 1.5 and abs(ys.mean() - uv_pin[0, 1]) < 1.5
    assert np.hypot(*(uv_pin[0] - uv[0])) > 3  # the spot really moved


@needs_tum
def test_flat_yaml_fallback_matches_pyyaml() -> None:
    text = (TUM / "camera.yaml").read_text()
    flat = tum._flat_yaml(TUM / "camera.yaml", text)
    import yaml

    ref = yaml.safe_load(text)
    assert float(flat["fx"]) == ref["fx"] and flat["D"] == ref["D"]
    assert flat["distortion_model"] == ref["distortion_model"]
