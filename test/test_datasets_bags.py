"""ROS bags through rosbags: ROS 1 / sqlite3 / mcap round trips, pose topics and TF, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nre_localization.datasets import bags, tum
from nre_localization.datasets.common import CameraSpec
from nre_localization.datasets.poses import camera_center, invert_pose, pose_from_qt
from nre_localization.errors import DatasetError

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TUM = DATA / "tum_fr2_desk"
BAGS = DATA / "bags"
needs_tum = pytest.mark.skipif(not TUM.is_dir(), reason="../shared/data/tum_fr2_desk not present")
needs_bags = pytest.mark.skipif(not BAGS.is_dir(), reason="../shared/data/bags not present")


@pytest.fixture(scope="module")
def tum_scene():  # noqa: ANN201
    if not TUM.is_dir():
        pytest.skip("../shared/data/tum_fr2_desk not present")
    s = tum.load_tum_scene(TUM)
    s.images = s.images[:6]
    return s


@needs_tum
@pytest.mark.parametrize(
    "storage,name", [("rosbag1", "x.bag"), ("sqlite3", "x_sqlite"), ("mcap", "x_mcap")]
)
def test_bag_roundtrip_pose_topic_and_tf(
    tmp_path: Path, tum_scene, storage: str, name: str
) -> None:  # noqa: ANN001
    path = bags.write_scene_bag(tum_scene, tmp_path / name, storage)
    assert not list(tmp_path.glob(".*tmp*")), "temporary bag left behind"
    topics = bags.list_topics(path)
    assert topics["/camera/image_raw"] == ("sensor_msgs/msg/Image", 6)
    for kw in (dict(pose_topic="/camera/pose"), dict(world_frame="map")):
        s = bags.load_bag_scene(path, "/camera/image_raw", "/camera/camera_info", **kw)
        assert s.cameras[1] == tum_scene.cameras[1]
        assert len(s.images) == 6
        for a, b in zip(tum_scene.images, s.images, strict=True):
            assert np.allclose(a.T_cam_world, b.T_cam_world, atol=1e-9)
            assert abs(a.stamp - b.stamp) < 1e-6
        assert np.array_equal(s.images[2].load_rgb(), tum_scene.images[2].load_rgb())


@needs_tum
def test_bag_errors_name_the_bag_and_topic(tmp_path: Path, tum_scene) -> None:  # noqa: ANN001
    path = bags.write_scene_bag(tum_scene, tmp_path / "b.mcap_dir", "mcap", pose_topic=None)
    with pytest.raises(
        DatasetError,
        match=r"b.mcap_dir: bag has no image topic '/cam/img' \(topics: /camera/camera_info",
    ):
        bags.load_bag_scene(path, "/cam/img", "/camera/camera_info")
    with pytest.raises(DatasetError, match=r"bag has no pose topic '/gt'"):
        bags.load_bag_scene(path, "/camera/image_raw", "/camera/camera_info", pose_topic="/gt")
    with pytest.raises(
        DatasetError, match=r"topic '/camera/camera_info' is sensor_msgs/msg/CameraInfo, expected"
    ):
        bags.load_bag_scene(path, "/camera/camera_info", "/camera/camera_info")
    with pytest.raises(DatasetError, match=r"no TF path from 'world' to 'camera_optical_frame'"):
        bags.load_bag_scene(path, "/camera/image_raw", "/camera/camera_info", world_frame="world")
    with pytest.raises(DatasetError, match=r"nothing.bag: bag not found"):
        bags.list_topics(tmp_path / "nothing.bag")
    (tmp_path / "junk.bag").write_bytes(b"not a bag at all")
    with pytest.raises(DatasetError, match=r"junk.bag: cannot open as a ROS bag"):
        bags.list_topics(tmp_path / "junk.bag")


@needs_tum
def test_pose_gap_in_bag_is_refused(tmp_path: Path, tum_scene) -> None:  # noqa: ANN001
    path = bags.write_scene_bag(tum_scene, tmp_path / "g", "sqlite3", pose_delay=0.03)
    with pytest.raises(DatasetError, match=r"pose topic /camera/pose: no sample within 0.01 s"):
        bags.load_bag_scene(
            path, "/camera/image_raw", "/camera/camera_info", pose_topic="/camera/pose", max_dt=0.01
        )
    with pytest.raises(
        DatasetError, match=r"TF map -> camera_optical_frame: no sample within 0.01 s"
    ):
        bags.load_bag_scene(path, "/camera/image_raw", "/camera/camera_info", max_dt=0.01)
    # within max_dt the poses are interpolated between samples (10 Hz, 30 ms late)
    s = bags.load_bag_scene(
        path, "/camera/image_raw", "/camera/camera_info", pose_topic="/camera/pose", max_dt=0.1
    )
    c_true = camera_center(tum_scene.images[3].T_cam_world)
    assert np.linalg.norm(camera_center(s.images[3].T_cam_world) - c_true) < 0.02
    # a camera given explicitly replaces CameraInfo
    cam = CameraSpec("PINHOLE", 640, 480, (500.0, 500.0, 319.5, 239.5))
    s = bags.load_bag_scene(path, "/camera/image_raw", None, pose_topic="/camera/pose", camera=cam)
    assert s.cameras[1] == cam


@needs_bags
def test_nav2_mcap_tf_chain_matches_amcl_pose() -> None:
    """TF (map -> odom -> base_link, published by AMCL and odometry) agrees with /amcl_pose."""
    path = BAGS / "nav2_turtlebot.mcap"
    reader = bags.open_bag(path)
    try:
        tf = bags.read_tf(reader, path)
        st, poses, frame, _ = bags.read_pose_topic(reader, path, "/amcl_pose")
    finally:
        reader.close()
    assert frame == "map"
    assert ("base_link", "oakd_rgb_camera_frame") not in tf.static  # reached through a chain
    T_cam = tf.lookup("base_link", "oakd_rgb_camera_optical_frame", 0.0, np.inf)
    # an optical frame looks along the base's +x: its z axis is the base x axis
    assert np.allclose(T_cam[:3, 2], [1, 0, 0], atol=1e-6)
    errs = []
    for s, T_amcl in zip(st[5:], poses[5:], strict=True):
        try:
            T = tf.lookup("map", "base_link", s, 0.1)
        except DatasetError:
            continue
        errs.append(np.linalg.norm(T[:3, 3] - T_amcl[:3, 3]))
    assert len(errs) > 50
    assert np.median(errs) < 0.05


@needs_bags
def test_t265_bag_mono_fisheye_images_with_odometry(tmp_path: Path) -> None:
    cam = CameraSpec(
        "OPENCV_FISHEYE", 848, 800, (284.468, 285.51, 424.355, 393.742, 0.0008, 0.031, -0.03, 0.005)
    )
    s = bags.load_bag_scene(
        BAGS / "t265_locoffice.bag",
        "/camera/fisheye1/image_raw",
        None,
        pose_topic="/camera/odom/sample",
        camera=cam,
        max_dt=0.5,
    )
    assert len(s.images) == 3
    img = s.images[0].load_rgb(cam)
    assert img.shape == (800, 848, 3) and np.array_equal(img[..., 0], img[..., 1])
    c = camera_center(np.stack([im.T_cam_world for im in s.images]))
    assert np.isfinite(c).all()
    with pytest.raises(DatasetError, match="no camera given and no CameraInfo topic"):
        bags.load_bag_scene(
            BAGS / "t265_locoffice.bag",
            "/camera/fisheye1/image_raw",
            None,
            pose_topic="/camera/odom/sample",
        )


def test_tf_buffer_interpolates_and_inverts() -> None:
    buf = bags.TfBuffer(source="test")
    buf.static[("base", "cam")] = pose_from_qt([1, 0, 0, 0], [0.1, 0, 0.5])
    st = np.array([0.0, 1.0])
    buf.dynamic[("map", "base")] = (
        st,
        np.stack([pose_from_qt([1, 0, 0, 0], [x, 0, 0]) for x in (0.0, 2.0)]),
    )
    T = buf.lookup("map", "cam", 0.25, 1.0)
    assert np.allclose(T[:3, 3], [0.6, 0, 0.5])
    T_inv = buf.lookup("cam", "map", 0.25, 1.0)
    assert np.allclose(T_inv, invert_pose(T))
    with pytest.raises(
        DatasetError, match=r"test: TF map -> base: no sample within 0.1 s of stamp 3.000000"
    ):
        buf.lookup("map", "cam", 3.0, 0.1)
