"""The fallback TF buffer: chaining, interpolation, static edges, extrapolation, time jumps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from nre_localization.ros.conversions import invert_T, make_T
from nre_localization.ros.tf_buffer import TransformBuffer, TransformUnavailable

S = 1_000_000_000


def _T(rot_deg: tuple[float, float, float], t: tuple[float, float, float]) -> np.ndarray:
    return make_T(Rotation.from_euler("xyz", rot_deg, degrees=True).as_matrix(), np.array(t))


def test_chain_through_common_ancestor_and_static() -> None:
    buf = TransformBuffer()
    t_map_odom = _T((0, 0, 30), (1, 2, 0))
    t_odom_base = _T((0, 0, -10), (0.5, 0, 0))
    t_base_cam = _T((-90, 0, -90), (0.1, 0, 0.3))
    buf.set_transform("map", "odom", 5 * S, t_map_odom, static=False)
    buf.set_transform("odom", "base_link", 5 * S, t_odom_base, static=False)
    buf.set_transform("base_link", "camera", 0, t_base_cam, static=True)
    got = buf.lookup("map", "camera", 5 * S)
    assert np.allclose(got, t_map_odom @ t_odom_base @ t_base_cam)
    # Reverse direction and a sibling-branch lookup.
    assert np.allclose(buf.lookup("camera", "map", 5 * S), invert_T(got))
    assert np.allclose(buf.lookup("camera", "odom", 5 * S), invert_T(t_odom_base @ t_base_cam))
    # Static edges hold at any time; dynamic ones do not extrapolate.
    assert np.allclose(buf.lookup("base_link", "camera", 123 * S), t_base_cam)
    with pytest.raises(TransformUnavailable, match="future"):
        buf.lookup("map", "camera", 6 * S)
    with pytest.raises(TransformUnavailable, match="no TF path"):
        buf.lookup("map", "nowhere", 5 * S)
    # A leading slash (ROS 1 style frame id) is the same frame.
    assert np.allclose(buf.lookup("/odom", "base_link", 5 * S), t_odom_base)


def test_interpolation_matches_slerp_and_tolerance() -> None:
    buf = TransformBuffer()
    a, b = _T((10, -20, 30), (0, 0, 0)), _T((40, 5, -60), (1, 2, 3))
    buf.set_transform("odom", "base", 10 * S, a, static=False)
    buf.set_transform("odom", "base", 11 * S, b, static=False)
    got = buf.lookup("odom", "base", 10 * S + S // 4)
    rots = Rotation.from_matrix(np.stack([a[:3, :3], b[:3, :3]]))
    ref = Slerp([0.0, 1.0], rots)([0.25]).as_matrix()[0]
    assert np.allclose(got[:3, :3], ref, atol=1e-9)
    assert np.allclose(got[:3, 3], [0.25, 0.5, 0.75])
    # Latest common time (stamp 0) and tolerance at the ends.
    assert np.allclose(buf.lookup("odom", "base", 0), b)
    with pytest.raises(TransformUnavailable, match="past"):
        buf.lookup("odom", "base", 10 * S - 1000)
    assert np.allclose(buf.lookup("odom", "base", 10 * S - 1000, tolerance_ns=10_000), a)


def test_cache_window_and_clear_on_time_jump() -> None:
    buf = TransformBuffer(cache_s=2.0)
    for k in range(10):
        buf.set_transform("odom", "base", k * S, _T((0, 0, k), (k, 0, 0)), static=False)
    buf.set_transform("base", "cam", 0, _T((0, 0, 0), (0, 0, 1)), static=True)
    with pytest.raises(TransformUnavailable):
        buf.lookup("odom", "base", 5 * S)  # older than 2 s behind the newest
    assert buf.lookup("odom", "base", 8 * S)[0, 3] == pytest.approx(8.0)
    buf.clear()  # a bag loop: dynamic history forgotten, static kept
    assert not buf.can_transform("odom", "base", 8 * S)
    assert buf.can_transform("base", "cam", 8 * S)
    # Out-of-order insertion keeps the samples sorted.
    buf.set_transform("odom", "base", 3 * S, _T((0, 0, 0), (3, 0, 0)), static=False)
    buf.set_transform("odom", "base", 1 * S, _T((0, 0, 0), (1, 0, 0)), static=False)
    assert buf.lookup("odom", "base", 2 * S)[0, 3] == pytest.approx(2.0)


def test_bad_transforms_rejected() -> None:
    buf = TransformBuffer()
    with pytest.raises(ValueError):
        buf.set_transform("a", "a", 0, np.eye(4), static=False)
    bad = np.eye(4)
    bad[0, 3] = np.nan
    with pytest.raises(ValueError):
        buf.set_transform("a", "b", 0, bad, static=False)


def test_tf_message_from_real_bag() -> None:
    """TF from the Nav2 TurtleBot bag (real tf2_msgs/TFMessage, decoded by rosbags) chains."""
    bag = Path(__file__).parents[1] / ".." / "shared" / "data" / "bags" / "nav2_turtlebot.mcap"
    if not bag.exists():
        pytest.skip("../shared/data/bags/nav2_turtlebot.mcap is absent")
    from rosbags.highlevel import AnyReader

    buf = TransformBuffer(cache_s=1e6)
    n_msgs = bad = 0
    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if c.topic in ("/tf", "/tf_static")]
        assert conns, "bag has no TF"
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            bad += buf.add_tf_message(msg, static=conn.topic == "/tf_static")
            n_msgs += 1
    assert n_msgs > 0 and bad == 0
    frames = buf.frames()
    assert len(frames) >= 2
    # Every frame connects to its root and the looked-up transform is a rigid motion.
    root = frames[0]
    for f in frames:
        if buf.can_transform(root, f, 0):
            t = buf.lookup(root, f, 0)
            assert np.allclose(t[:3, :3] @ t[:3, :3].T, np.eye(3), atol=1e-9)
