"""Two ROS processes on one isolated graph: a publisher sends 30 frames at 30 Hz of
Image (640x480 rgb8) + CameraInfo + TFMessage (/tf), and /tf_static once; a separate subscriber
process must receive every one of them intact (best-effort sensor QoS for the camera topics)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nre_localization.testing import ChildProcessGroup
from nre_localization.testing.probes import (
    CAMERA_FRAME,
    STAMP_SEC0,
    camera_info_fields,
    frame_sha256,
    tf_fields,
    tf_static_fields,
)

pytest.importorskip("rclpy", reason="ROS 2 rclpy is not importable")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs is not importable (run tools/setup_env.sh)")

FRAMES = 30
RATE_HZ = 30.0
HEIGHT, WIDTH = 480, 640
PROBES = "nre_localization.testing.probes"


def _close(a: list[float], b: list[float]) -> bool:
    if len(a) != len(b):
        return False
    return all(math.isclose(x, y, abs_tol=1e-12) for x, y in zip(a, b, strict=True))


@pytest.mark.ros
def test_image_camera_info_and_tf_cross_processes_intact(
    ros_children: ChildProcessGroup, tmp_path: Path
) -> None:
    out = tmp_path / "received.json"
    sub = ros_children.start_module(
        PROBES, "subscribe", "--frames", str(FRAMES), "--out", str(out), "--timeout", "60",
        name="subscriber",
    )  # fmt: skip
    sub.wait_for_output("STARTED subscriber", timeout=30)
    pub = ros_children.start_module(
        PROBES, "publish", "--frames", str(FRAMES), "--rate", str(RATE_HZ), "--timeout", "60",
        name="publisher",
    )  # fmt: skip

    rc = sub.wait(timeout=90)
    pub.wait_for_output("PUBLISHED", timeout=10)
    assert pub.stop() == 0, ros_children.outputs()
    assert rc == 0, ros_children.outputs()
    result = json.loads(out.read_text())
    assert result["complete"], result["reason"]

    # Every image, in order, bit-exact.
    images = result["images"]
    assert [m["index"] for m in images] == list(range(FRAMES)), ros_children.outputs()
    for k, m in enumerate(images):
        assert m["stamp"] == [STAMP_SEC0 + k, k * 1000]
        assert m["frame_id"] == CAMERA_FRAME
        assert (m["height"], m["width"], m["encoding"]) == (HEIGHT, WIDTH, "rgb8")
        assert (m["step"], m["is_bigendian"], m["nbytes"]) == (3 * WIDTH, 0, 3 * WIDTH * HEIGHT)
        assert m["sha256"] == frame_sha256(k, HEIGHT, WIDTH), f"frame {k} corrupted"

    # Camera info: same stamps as the images (exact-stamp pairing works), every field intact.
    expected_info = camera_info_fields(HEIGHT, WIDTH)
    infos = result["camera_infos"]
    assert [i["stamp"] for i in infos] == [m["stamp"] for m in images]
    for info in infos:
        assert info["frame_id"] == CAMERA_FRAME
        for key in ("height", "width", "distortion_model", "binning_x", "binning_y"):
            assert info[key] == expected_info[key], key
        for key in ("d", "k", "r", "p"):
            assert _close(info[key], expected_info[key]), key

    # /tf: one message per frame with the expected transform; /tf_static arrives (latched).
    assert len(result["tf"]) == FRAMES
    for k, transforms in enumerate(result["tf"]):
        (got,) = transforms
        (want,) = tf_fields(k)
        assert got["stamp"] == [STAMP_SEC0 + k, k * 1000]
        assert (got["frame_id"], got["child_frame_id"]) == (
            want["frame_id"],
            want["child_frame_id"],
        )
        assert _close(got["translation"], want["translation"])
        assert _close(got["rotation"], want["rotation"])
    assert len(result["tf_static"]) >= 1
    (static,) = result["tf_static"][0]
    (want_static,) = tf_static_fields()
    assert static["child_frame_id"] == want_static["child_frame_id"]
    assert _close(static["translation"], want_static["translation"])
    assert _close(static["rotation"], want_static["rotation"])

    # 30 frames at 30 Hz took about a second (not a burst or a stall).
    assert 0.5 < result["span_s"] < 5.0, result["span_s"]


@pytest.mark.ros
def test_generated_tf2_msgs_type_hash_equals_ros2_jazzy(ros_env: dict[str, str]) -> None:
    """The TFMessage generated from interfaces/ announces the same RIHS01 type hash as ROS 2
    Jazzy's own tf2_msgs (computed independently by rosbags' Jazzy type store), so rviz and tf2
    peers of a real installation accept it."""
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions
    from tf2_msgs.msg import TFMessage

    typesys = pytest.importorskip("rosbags.typesys")
    store = typesys.get_typestore(typesys.Stores.ROS2_JAZZY)
    expected = store.hash_rihs01("tf2_msgs/msg/TFMessage")

    context = Context()
    rclpy.init(
        context=context,
        domain_id=int(ros_env["ROS_DOMAIN_ID"]),
        signal_handler_options=SignalHandlerOptions.NO,
    )
    try:
        node = rclpy.create_node("nre_type_hash_probe", context=context)
        node.create_publisher(TFMessage, "/tf", 10)
        infos = node.get_publishers_info_by_topic("/tf")
        assert [info.topic_type for info in infos] == ["tf2_msgs/msg/TFMessage"]
        assert str(infos[0].topic_type_hash) == expected
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
