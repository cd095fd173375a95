"""Bag tools and replay: the bag a user gets from an image folder + trajectory + camera, the
offline replay through the Localizer, and the live replay into a DDS graph (with /clock)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _localization_fixtures import demo_map, demo_model

from nre_localization.ros import conversions as cv
from nre_localization.ros.bag_tools import (
    CAMERA_FRAME,
    DEFAULT_T_BASE_CAM,
    GT_MAP_ODOM_TOPIC,
    GT_TOPIC,
    IMAGE_TOPIC,
    INFO_TOPIC,
    tum_folder_to_bag,
)
from nre_localization.ros.tf_buffer import TransformBuffer

ROOT = Path(__file__).parents[1]
DATA = ROOT / "demo_data" / "tum_fr2_desk"


def _queries() -> list[str]:
    return (DATA / "query_frames.txt").read_text().split()


def _truth(names: list[str]) -> tuple[list[int], np.ndarray, list[np.ndarray]]:
    from nre_localization.datasets.common import read_rgb
    from nre_localization.datasets.tum import (
        associate,
        read_camera_yaml,
        read_image_list,
        read_trajectory,
    )

    entries = [(s, n) for s, n in read_image_list(DATA / "rgb.txt") if n in set(names)]
    cam = read_camera_yaml(DATA / "camera.yaml")
    stamps = np.array([s for s, _ in entries])
    gt = associate(read_trajectory(DATA / "groundtruth.txt"), stamps)
    return [round(s * 1e9) for s in stamps], gt, [read_rgb(DATA / n, cam) for _, n in entries]


@pytest.mark.parametrize(
    "encoding, storage", [("rgb8", "mcap"), ("bayer_rggb8", "sqlite3"), ("jpeg", "mcap")]
)
def test_bag_contents(tmp_path: Path, encoding: str, storage: str) -> None:
    from rosbags.highlevel import AnyReader

    names = _queries()[:4]
    bag = tmp_path / "q"
    summary = tum_folder_to_bag(DATA, bag, names=names, encoding=encoding, storage=storage)
    assert summary.n_images == 4
    stamps, gt_map_cam, images = _truth(names)
    img_topic = IMAGE_TOPIC + ("/compressed" if encoding == "jpeg" else "")
    tf = TransformBuffer(cache_s=1e9)
    got: dict[str, list[Any]] = {}
    with AnyReader([bag]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts[img_topic] == 4 and counts[INFO_TOPIC] == 4 and counts["/tf_static"] == 1
        assert counts["/tf"] > 4 * 10  # 50 Hz odometry over the frames' span
        for conn, t_ns, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            got.setdefault(conn.topic, []).append(msg)
            if conn.topic in ("/tf", "/tf_static"):
                assert tf.add_tf_message(msg, static=conn.topic == "/tf_static") == 0
            if hasattr(msg, "header"):
                assert t_ns == cv.stamp_to_ns(msg.header.stamp)  # log time == header stamp
    for k, (img, info) in enumerate(zip(got[img_topic], got[INFO_TOPIC], strict=True)):
        assert cv.stamp_to_ns(img.header.stamp) == stamps[k] == cv.stamp_to_ns(info.header.stamp)
        assert img.header.frame_id == CAMERA_FRAME
        rgb = cv.compressed_to_rgb(img) if encoding == "jpeg" else cv.image_to_rgb(img)
        err = np.abs(rgb.astype(int) - images[k].astype(int))
        if encoding == "rgb8":
            assert err.max() == 0
        else:  # demosaicing / JPEG: close, not exact
            assert np.mean(err) < 8, np.mean(err)
        cam = cv.camera_info_to_camera(info)
        assert cam.spec.params[:4] == pytest.approx((520.90862, 521.007327, 325.141442, 249.701764))
        # Ground truth, odometry and the true map -> odom agree: map->odom * odom->base == gt.
        gt_base = cv.pose_msg_to_matrix(got[GT_TOPIC][k].pose)
        t_map_odom = cv.transform_msg_to_matrix(got[GT_MAP_ODOM_TOPIC][k].transform)
        t_odom_base = tf.lookup("odom", "base_link", stamps[k])
        assert np.allclose(t_map_odom @ t_odom_base, gt_base, atol=1e-6)
        t_base_cam = tf.lookup("base_link", CAMERA_FRAME, stamps[k])
        assert np.allclose(t_base_cam, DEFAULT_T_BASE_CAM)
        assert np.allclose(gt_base @ t_base_cam, gt_map_cam[k], atol=1e-6)
    # The map -> odom truth drifts: odometry is not ground truth.
    first = cv.transform_msg_to_matrix(got[GT_MAP_ODOM_TOPIC][0].transform)
    last = cv.transform_msg_to_matrix(got[GT_MAP_ODOM_TOPIC][-1].transform)
    assert np.linalg.norm(first[:3, 3] - last[:3, 3]) > 0.005


def test_bag_tool_errors(tmp_path: Path) -> None:
    from nre_localization.errors import NreError
    from nre_localization.ros.bag_tools import main

    with pytest.raises(NreError, match="no images left"):
        tum_folder_to_bag(DATA, tmp_path / "b", names=["nope.jpg"])
    tum_folder_to_bag(DATA, tmp_path / "b", names=_queries()[:1])
    with pytest.raises(NreError, match="exists"):
        tum_folder_to_bag(DATA, tmp_path / "b", names=_queries()[:1])
    assert main([str(DATA), "--out", str(tmp_path / "b")]) == 2  # exists, one line, code 2


def test_offline_replay_writes_trajectory_and_metrics(tmp_path: Path) -> None:
    from nre_localization.datasets.tum import read_trajectory
    from nre_localization.localizer import Localizer
    from nre_localization.ros.replay import replay_offline, write_offline_outputs

    model, nre_map = demo_model(), demo_map()
    names = _queries()[:4]
    bag = tmp_path / "q"
    tum_folder_to_bag(DATA, bag, names=names)
    seen: list[int] = []
    res = replay_offline(
        bag, Localizer(nre_map, model, device="cpu"), on_frame=lambda i, *a: seen.append(i)
    )
    assert seen == [0, 1, 2, 3]
    s = res.summary
    assert s["n_frames"] == 4 and s["n_queries"] == 4
    assert s["n_localized"] >= 3, res.reasons
    assert s["median_translation_m_localized"] < 0.05
    assert s["recall"]["0.25m_2deg"] >= 0.75
    paths = write_offline_outputs(res, tmp_path / "out")
    traj = read_trajectory(paths["tum"])
    assert len(traj) == s["n_localized"]
    stamps, gt_map_cam, _ = _truth(names)
    j = [round(t * 1e9) for t in traj.stamps]
    for t_ns, pose in zip(j, traj.T_world_cam, strict=True):
        k = min(range(4), key=lambda i: abs(stamps[i] - t_ns))
        assert abs(stamps[k] - t_ns) < 2000  # microsecond-rounded TUM stamps
        assert np.linalg.norm(pose[:3, 3] - gt_map_cam[k][:3, 3]) < 0.10
    assert paths["plot"].stat().st_size > 1000
    assert "recall" in paths["metrics"].read_text()


@pytest.mark.ros
def test_live_replay_publishes_bag_with_clock(
    tmp_path: Path, ros_env: dict[str, str], ros_children: Any
) -> None:
    pytest.importorskip("tf2_msgs", reason="tf2_msgs not generated (run make setup)")
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage

    from nre_localization.testing import wait_until
    from nre_localization.testing.spinning import BackgroundSpin

    names = _queries()[:3]
    bag = tmp_path / "q"
    tum_folder_to_bag(DATA, bag, names=names)
    stamps, _, images = _truth(names)
    rclpy.init()
    node = rclpy.create_node("replay_probe")
    lock = threading.Lock()
    seen_images: list[tuple[int, bytes]] = []
    clocks: list[int] = []
    statics: list[Any] = []
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
    )

    def on_image(m: Any) -> None:
        with lock:
            seen_images.append((cv.stamp_to_ns(m.header.stamp), bytes(m.data)))

    def on_clock(m: Any) -> None:
        with lock:
            clocks.append(cv.stamp_to_ns(m.clock))

    node.create_subscription(Image, IMAGE_TOPIC, on_image, reliable)
    node.create_subscription(Clock, "/clock", on_clock, reliable)
    spinner = BackgroundSpin(node, 0.02)
    try:
        player = ros_children.start_module(
            "nre_localization.ros.replay", "live", str(bag), "--rate", "4", "--loop", "2",
            "--wait-for", IMAGE_TOPIC, "/clock", "--start-delay", "0.5", "--linger", "5",
            name="player",
        )  # fmt: skip
        # A subscriber that joins after /tf_static was sent still gets it (TRANSIENT_LOCAL).
        wait_until(lambda: len(seen_images) >= 1 or not player.running(), 30.0, what="images")
        node.create_subscription(TFMessage, "/tf_static", statics.append, latched)
        wait_until(lambda: bool(statics), 10.0, what="latched /tf_static")
        assert player.wait(timeout=60) == 0, player.output()
        wait_until(lambda: len(seen_images) >= 6, 10.0, what="all images")
    finally:
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    got = [s for s, _ in seen_images]
    assert got == stamps + stamps  # two loops: the stamps jump back once, as a looping bag
    for k, (_, data) in enumerate(seen_images[:3]):
        assert data == images[k].tobytes()  # raw CDR passthrough, bytes intact
    assert statics and statics[0].transforms[0].child_frame_id == CAMERA_FRAME
    assert clocks and min(clocks) >= stamps[0] - 300_000_000
    # /clock runs forward within a loop and jumps back once, where the second loop starts.
    jumps = sum(b < a - 1_000_000 for a, b in zip(clocks, clocks[1:], strict=False))
    assert jumps == 1, clocks
