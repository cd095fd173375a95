"""The node in its own process over DDS: this test publishes images + camera_info + TF as a robot
would and checks what the node publishes (pose, covariance, map -> odom, state, /diagnostics).

One node process serves the module (start-up costs seconds); the tests run in file order and each
leaves the node in a known state. Real data: a map built from the even frames of the committed
TUM fr2_desk subset, queries from its odd frames, odometry simulated as in the demo bag.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from _localization_fixtures import demo_map_path, demo_queries

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed")
pytest.importorskip("tf2_msgs", reason="tf2_msgs not generated (run make setup)")

from nre_localization.ros import conversions as cv
from nre_localization.ros.bag_tools import (
    CAMERA_FRAME,
    DEFAULT_T_BASE_CAM,
    OdomDrift,
    camera_info_values,
)
from nre_localization.testing import (
    ChildProcessGroup,
    claim_domain_id,
    repo_root,
    ros_env,
    wait_until,
)

pytestmark = pytest.mark.ros
ROOT = repo_root()
DATA = ROOT / "demo_data" / "tum_fr2_desk"
S = 1_000_000_000


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def demo_map() -> Path:
    return demo_map_path()


class Queries:
    """Odd frames of the demo subset: stamps (ns), RGB images, ground truth, odometry."""

    def __init__(self) -> None:
        q = demo_queries()
        self.camera = q["camera"]
        self.stamps = [round(s * 1e9) for s in q["stamps"]]
        self.images = q["images"]
        self.t_map_cam = q["T_world_cam"]
        self.t0 = q["stamps"][0]
        self.drift = OdomDrift()

    def t_map_base(self, i: int) -> np.ndarray:
        return self.t_map_cam[i] @ cv.invert_T(DEFAULT_T_BASE_CAM)

    def t_odom_base(self, i: int) -> np.ndarray:
        t = self.stamps[i] * 1e-9 - self.t0
        return cv.invert_T(self.drift.t_map_odom(t)) @ self.t_map_base(i)


class Rig:
    """The test's own rclpy node: publishers of sensor data, recorders of the node's outputs."""

    def __init__(self, q: Queries) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from std_msgs.msg import String
        from tf2_msgs.msg import TFMessage

        self.q = q
        rclpy.init()
        self.node = rclpy.create_node("nre_test_rig")
        self.latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        n = self.node
        self.pub_image = n.create_publisher(Image, "/camera/image_raw", reliable)
        self.pub_info = n.create_publisher(CameraInfo, "/camera/camera_info", reliable)
        self.pub_tf = n.create_publisher(TFMessage, "/tf", reliable)
        self.pub_static = n.create_publisher(TFMessage, "/tf_static", self.latched)
        self.lock = threading.Lock()
        self.poses: dict[int, Any] = {}
        self.poses_cov: dict[int, Any] = {}
        self.map_odom: dict[int, Any] = {}
        self.states: list[str] = []
        self.diag: dict[str, str] = {}
        self.debug_images: dict[int, Any] = {}
        self.clouds: list[Any] = []
        n.create_subscription(PoseStamped, "/pose", self._rec(self.poses), reliable)
        n.create_subscription(
            PoseWithCovarianceStamped,
            "/pose_with_covariance",
            self._rec(self.poses_cov),
            self.latched,
        )
        n.create_subscription(TFMessage, "/tf", self._on_tf, reliable)
        n.create_subscription(String, "/state", self._on_state, self.latched)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, reliable)
        n.create_subscription(Image, "/debug_image", self._rec(self.debug_images), reliable)
        n.create_subscription(PointCloud2, "/map_points", self.clouds.append, self.latched)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(n)
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        self.last_stamp = 0

    # --- recording
    def _spin(self) -> None:
        while not self._stop:
            self.executor.spin_once(timeout_sec=0.02)

    def _rec(self, store: dict[int, Any]) -> Any:
        def cb(msg: Any) -> None:
            with self.lock:
                store[cv.stamp_to_ns(msg.header.stamp)] = msg

        return cb

    def _on_tf(self, msg: Any) -> None:
        with self.lock:
            for ts in msg.transforms:
                if ts.header.frame_id == "map" and ts.child_frame_id == "odom":
                    self.map_odom[cv.stamp_to_ns(ts.header.stamp)] = ts

    def _on_state(self, msg: Any) -> None:
        with self.lock:
            self.states.append(msg.data)

    def _on_diag(self, msg: Any) -> None:
        with self.lock:
            for st in msg.status:
                if st.name.endswith(": localizer"):
                    self.diag = {kv.key: kv.value for kv in st.values}

    def d(self, key: str, default: float = 0.0) -> float:
        with self.lock:
            v = self.diag.get(key)
        return float(v) if v not in (None, "", "nan") else default

    def close(self) -> None:
        import rclpy

        self._stop = True
        self._thread.join(timeout=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown()

    # --- publishing
    def publish_static(self) -> None:
        from geometry_msgs.msg import TransformStamped
        from tf2_msgs.msg import TFMessage

        ts = TransformStamped()
        ts.header.frame_id, ts.child_frame_id = "base_link", CAMERA_FRAME
        cv.fill_transform(ts.transform, DEFAULT_T_BASE_CAM)
        self.pub_static.publish(TFMessage(transforms=[ts]))

    def publish_odom(self, stamp_ns: int, t_odom_base: np.ndarray) -> None:
        from geometry_msgs.msg import TransformStamped
        from tf2_msgs.msg import TFMessage

        ts = TransformStamped()
        cv.set_stamp(ts.header.stamp, stamp_ns)
        ts.header.frame_id, ts.child_frame_id = "odom", "base_link"
        cv.fill_transform(ts.transform, t_odom_base)
        self.pub_tf.publish(TFMessage(transforms=[ts]))

    def info_msg(self, stamp_ns: int, width: int = 640, height: int = 480) -> Any:
        from sensor_msgs.msg import CameraInfo

        cam = self.q.camera if width == 640 else self.q.camera.scaled(width, height)
        vals = camera_info_values(cam)
        m = CameraInfo()
        cv.set_stamp(m.header.stamp, stamp_ns)
        m.header.frame_id = CAMERA_FRAME
        m.width, m.height = int(vals["width"]), int(vals["height"])  # type: ignore[call-overload]
        m.distortion_model = str(vals["distortion_model"])
        m.d = [float(x) for x in vals["d"]]  # type: ignore[attr-defined]
        m.k = [float(x) for x in vals["k"]]  # type: ignore[attr-defined]
        m.r = [float(x) for x in vals["r"]]  # type: ignore[attr-defined]
        m.p = [float(x) for x in vals["p"]]  # type: ignore[attr-defined]
        return m

    def image_msg(self, stamp_ns: int, rgb: np.ndarray, encoding: str = "rgb8") -> Any:
        from sensor_msgs.msg import Image

        m = Image()
        cv.set_stamp(m.header.stamp, stamp_ns)
        m.header.frame_id = CAMERA_FRAME
        cv.rgb_to_image_fields(rgb, encoding).fill(m)
        return m

    def send(
        self,
        stamp_ns: int,
        rgb: np.ndarray,
        t_odom_base: np.ndarray | None,
        image: Any = None,
        info: Any = None,
        wait: bool = True,
    ) -> None:
        """Publish TF, camera_info and image of one frame; wait until the node's worker is done
        with it (``last_frame_stamp`` on /diagnostics)."""
        received = self.d("frames_received")
        if t_odom_base is not None:
            for dt in (-20_000_000, 0, 20_000_000):  # bracket the stamp, as a 50 Hz odometry
                self.publish_odom(stamp_ns + dt, t_odom_base)
        self.pub_info.publish(info if info is not None else self.info_msg(stamp_ns))
        self.pub_image.publish(image if image is not None else self.image_msg(stamp_ns, rgb))
        self.last_stamp = max(self.last_stamp, stamp_ns)
        if not wait:
            return
        wait_until(
            lambda: self.d("frames_received") > received, 20.0, what="the node receiving a frame"
        )
        wait_until(
            lambda: abs(self.d("last_frame_stamp") - stamp_ns * 1e-9) < 1e-6,
            60.0,
            what="the node processing a frame",
        )
        time.sleep(0.05)  # outputs were published before the diagnostics reported the frame

    def send_query(self, i: int, stamp_ns: int | None = None) -> int:
        stamp = self.q.stamps[i] if stamp_ns is None else stamp_ns
        self.send(stamp, self.q.images[i], self.q.t_odom_base(i))
        return stamp


@pytest.fixture(scope="module")
def rig(demo_map: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rig, Any]]:
    tmp = tmp_path_factory.mktemp("node")
    saved = dict(os.environ)
    with claim_domain_id() as lease:
        env = ros_env(lease.domain_id, log_dir=tmp / "ros_log")
        for k in (
            "ROS_DOMAIN_ID",
            "ROS_AUTOMATIC_DISCOVERY_RANGE",
            "RMW_IMPLEMENTATION",
            "FASTRTPS_DEFAULT_PROFILES_FILE",
            "FASTDDS_DEFAULT_PROFILES_FILE",
            "AMENT_PREFIX_PATH",
            "ROS_LOG_DIR",
        ):
            os.environ[k] = env[k]
        os.environ.pop("ROS_LOCALHOST_ONLY", None)
        group = ChildProcessGroup(env, tmp / "children", cwd=ROOT)
        node = group.start_module(
            "nre_localization.ros.node",
            "--ros-args",
            "--params-file", str(ROOT / "config" / "nre_localization.yaml"),
            "-p", f"map_path:={demo_map}",
            "-p", "device:=cpu",
            "-p", "diagnostics_period:=0.1",
            "-p", "pair_wait:=1.0",
            "-p", "tf_wait:=0.5",
            "-p", "publish_map_cloud:=true",
            "-p", "publish_debug_image:=true",
            "-r", "image:=/camera/image_raw",
            "-r", "camera_info:=/camera/camera_info",
            name="node",
        )  # fmt: skip
        r = Rig(Queries())
        try:
            r.publish_static()
            wait_until(lambda: bool(r.states) or not node.running(), 120.0, what="node start-up")
            assert node.running(), node.output()
            wait_until(lambda: bool(r.diag), 30.0, what="first /diagnostics")
            yield r, node
        finally:
            r.close()
            code = node.stop()
            os.environ.clear()
            os.environ.update(saved)
        assert code == 0, f"node exit code {code}\n{node.output()[-3000:]}"


def _err(t_map_base: np.ndarray, t_gt: np.ndarray) -> tuple[float, float]:
    dt = float(np.linalg.norm(t_map_base[:3, 3] - t_gt[:3, 3]))
    r = t_gt[:3, :3].T @ t_map_base[:3, :3]
    ang = float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))
    return dt, ang


# ----------------------------------------------------------------------------------- tests
def test_localizes_and_broadcasts_map_odom(rig: tuple[Rig, Any]) -> None:
    r, node = rig
    q = r.q
    assert r.states[-1] == "global"
    good = 0
    covs = []
    for i in range(len(q.stamps)):
        stamp = r.send_query(i)
        msg = r.poses_cov.get(stamp)
        if msg is None:
            continue
        # Pose of base_link in map, stamped with the image stamp, frame = global frame.
        assert msg.header.frame_id == "map"
        t_map_base = cv.pose_msg_to_matrix(msg.pose.pose)
        ps = r.poses[stamp]
        assert np.allclose(cv.pose_msg_to_matrix(ps.pose), t_map_base)
        dt, dr = _err(t_map_base, q.t_map_base(i))
        if dt < 0.10 and dr < 5.0:
            good += 1
        cov = np.array(msg.pose.covariance).reshape(6, 6)
        assert np.allclose(cov, cov.T)
        assert np.linalg.eigvalsh(cov)[0] > 0, cov
        covs.append(cov)
        # map -> odom post-dated by transform_tolerance (1 s), consistent with odometry:
        # T_map_odom @ T_odom_base(stamp) == published T_map_base.
        wait_until(lambda s=stamp: s + S in r.map_odom, 5.0, what="map -> odom")
        t_map_odom = cv.transform_msg_to_matrix(r.map_odom[stamp + S].transform)
        assert np.allclose(t_map_odom @ q.t_odom_base(i), t_map_base, atol=1e-6)
        true_mo = q.drift.t_map_odom(stamp * 1e-9 - q.t0)
        assert np.linalg.norm(t_map_odom[:3, 3] - true_mo[:3, 3]) < 0.15
    assert good >= len(q.stamps) * 0.7, (
        f"{good}/{len(q.stamps)} good poses\n{node.output()[-2000:]}"
    )
    assert r.states[-1] == "tracking"
    # Covariances come from the engine per frame: never all equal.
    assert len(covs) >= 2 and not all(np.allclose(c, covs[0]) for c in covs[1:])
    assert r.d("poses_published") >= good
    assert r.d("latency_p50_ms", default=-1) > 0


def test_map_cloud_and_debug_image(rig: tuple[Rig, Any], demo_map: Path) -> None:
    from nre_localization.maps.format import load_map

    r, _ = rig
    m = load_map(demo_map)
    wait_until(lambda: bool(r.clouds), 10.0, what="the latched map cloud")
    cloud = r.clouds[-1]
    assert cloud.header.frame_id == "map"
    assert cloud.width == m.n_points and cloud.point_step == 16
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb"]
    rec = np.frombuffer(bytes(cloud.data), dtype=[("xyz", "<f4", 3), ("rgb", "<u4")])
    assert np.allclose(rec["xyz"], m.points.xyz, atol=1e-4)
    # One debug image per processed frame, same stamp and size as the input.
    stamp = max(r.poses_cov)
    dbg = r.debug_images[stamp]
    assert (dbg.width, dbg.height, dbg.encoding) == (640, 480, "rgb8")
    img = cv.image_to_rgb(dbg)
    i = r.q.stamps.index(stamp)
    assert not np.array_equal(img, r.q.images[i])  # points and text drawn over it


def test_late_subscriber_gets_latched_pose(rig: tuple[Rig, Any]) -> None:
    from geometry_msgs.msg import PoseWithCovarianceStamped

    r, _ = rig
    assert r.poses_cov, "no pose was published by the previous test"
    last = max(r.poses_cov)
    got: list[Any] = []
    sub = r.node.create_subscription(
        PoseWithCovarianceStamped, "/pose_with_covariance", got.append, r.latched
    )
    try:
        wait_until(lambda: bool(got), 10.0, what="the latched pose")
        assert cv.stamp_to_ns(got[0].header.stamp) == last
    finally:
        r.node.destroy_subscription(sub)


def test_noise_images_lead_to_lost_and_no_pose(rig: tuple[Rig, Any]) -> None:
    r, _ = rig
    rng = np.random.default_rng(0)
    q = r.q
    n_mo = len(r.map_odom)
    stamps = []
    for _k in range(5):
        stamp = r.last_stamp + S // 10
        noise = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        r.send(stamp, noise, q.t_odom_base(len(q.stamps) - 1))
        stamps.append(stamp)
    time.sleep(0.5)
    assert not any(s in r.poses_cov or s in r.poses for s in stamps)
    assert r.states[-1] == "lost", r.states[-6:]
    # Once lost, map -> odom is no longer broadcast.
    later = [s for s in r.map_odom if s - S >= stamps[2]]
    assert not later, later
    assert len(r.map_odom) <= n_mo + 2


@pytest.mark.parametrize(
    "kind",
    [
        "unknown_encoding",
        "step_mismatch",
        "empty_data",
        "size_mismatch",
        "bad_camera_info",
        "out_of_order",
        "time_jump_back",
    ],
)
def test_bad_message_is_counted_and_node_goes_on(rig: tuple[Rig, Any], kind: str) -> None:
    r, node = rig
    q = r.q
    before = r.d(f"rejected.{kind}")
    stamp = r.last_stamp + S // 10
    img = q.images[0]
    image = info = None
    if kind == "unknown_encoding":
        image = r.image_msg(stamp, img)
        image.encoding = "32FC1"
    elif kind == "step_mismatch":
        image = r.image_msg(stamp, img)
        image.step = image.step + 4
    elif kind == "empty_data":
        image = r.image_msg(stamp, img)
        image.data = b""
    elif kind == "size_mismatch":
        image = r.image_msg(stamp, cv2.resize(img, (320, 240)))
    elif kind == "bad_camera_info":
        info = r.info_msg(stamp)
        info.k = [float("nan"), *list(info.k)[1:]]
    elif kind == "out_of_order":
        stamp = r.last_stamp - S // 20
    elif kind == "time_jump_back":
        stamp = r.last_stamp - 30 * S
    r.send(stamp, img, q.t_odom_base(0), image=image, info=info, wait=False)
    wait_until(lambda: r.d(f"rejected.{kind}") > before, 20.0, what=f"rejected.{kind}")
    assert node.running()
    if kind == "time_jump_back":
        r.last_stamp = stamp  # the node accepted it and reset: the timeline restarts here
    # A good frame afterwards is still processed.
    processed = r.d("frames_processed")
    r.send_query(1, stamp_ns=r.last_stamp + S // 10)
    assert r.d("frames_processed") > processed
    assert node.running()


def test_relocalize_service_and_recovery(rig: tuple[Rig, Any]) -> None:
    from std_srvs.srv import Trigger

    r, _ = rig
    cli = r.node.create_client(Trigger, "/relocalize")
    try:
        assert cli.wait_for_service(timeout_sec=10.0)
        fut = cli.call_async(Trigger.Request())
        wait_until(fut.done, 10.0, what="relocalize response")
        assert fut.result().success
    finally:
        r.node.destroy_client(cli)
    got = []
    for i in (2, 3, 4):
        stamp = r.send_query(i, stamp_ns=r.last_stamp + S // 10)
        if stamp in r.poses_cov:
            got.append(stamp)
    assert got, f"no pose after global relocalisation: {r.diag}"
    assert r.states[-1] == "tracking"


def test_initialpose_prior_and_bad_frame(rig: tuple[Rig, Any]) -> None:
    from geometry_msgs.msg import PoseWithCovarianceStamped

    r, _ = rig
    pub = r.node.create_publisher(PoseWithCovarianceStamped, "/initialpose", 10)
    try:
        wait_until(lambda: pub.get_subscription_count() > 0, 10.0, what="initialpose subscriber")
        before = r.d("rejected.bad_initialpose")
        bad = PoseWithCovarianceStamped()
        bad.header.frame_id = "odom"  # not the global frame: refused, counted
        bad.pose.pose.orientation.w = 1.0
        pub.publish(bad)
        wait_until(lambda: r.d("rejected.bad_initialpose") > before, 10.0, what="rejection")
        # A good prior (RViz's "2D Pose Estimate" gives base_link in map) is used at once.
        good = PoseWithCovarianceStamped()
        good.header.frame_id = "map"
        cv.fill_pose(good.pose.pose, r.q.t_map_base(5))
        pub.publish(good)
        time.sleep(0.5)
        stamp = r.send_query(5, stamp_ns=r.last_stamp + S // 10)
        assert stamp in r.poses_cov
        dt, dr = _err(cv.pose_msg_to_matrix(r.poses_cov[stamp].pose.pose), r.q.t_map_base(5))
        assert dt < 0.10 and dr < 5.0
    finally:
        r.node.destroy_publisher(pub)


def test_lifecycle_deactivate_and_activate(rig: tuple[Rig, Any]) -> None:
    """Managed like AMCL: inactive, it ignores images; active again, it localises."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    r, _ = rig
    change = r.node.create_client(ChangeState, "/nre_localization/change_state")
    get = r.node.create_client(GetState, "/nre_localization/get_state")

    def call(cli: Any, req: Any) -> Any:
        assert cli.wait_for_service(timeout_sec=10.0)
        fut = cli.call_async(req)
        wait_until(fut.done, 10.0, what="lifecycle service")
        return fut.result()

    try:
        assert call(get, GetState.Request()).current_state.label == "active"
        req = ChangeState.Request()
        req.transition.id = Transition.TRANSITION_DEACTIVATE
        assert call(change, req).success
        assert call(get, GetState.Request()).current_state.label == "inactive"
        processed = r.d("frames_processed")
        r.send(r.last_stamp + S // 10, r.q.images[6], r.q.t_odom_base(6), wait=False)
        time.sleep(1.5)
        assert r.d("frames_processed") == processed  # inactive: nothing processed
        req.transition.id = Transition.TRANSITION_ACTIVATE
        assert call(change, req).success
        stamp = r.send_query(7, stamp_ns=r.last_stamp + S // 10)
        assert r.d("frames_processed") > processed and stamp in r.poses_cov
    finally:
        r.node.destroy_client(change)
        r.node.destroy_client(get)


def test_soak_2000_frames_no_memory_growth(rig: tuple[Rig, Any]) -> None:
    """2000 small frames as fast as DDS takes them: the node keeps the newest, drops the rest,
    and its resident memory does not grow (a leaked 160x120 frame per message would add 115 MB)."""
    r, node = rig
    q = r.q
    small = cv2.resize(q.images[0], (160, 120), interpolation=cv2.INTER_AREA)
    info0 = r.info_msg(0, 160, 120)

    def rss_mb() -> float:
        for line in Path(f"/proc/{node.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    received0 = r.d("frames_received")
    base = r.last_stamp + S
    rss = []
    for k in range(2000):
        stamp = base + k * (S // 100)
        info0.header.stamp.sec, info0.header.stamp.nanosec = cv.ns_to_sec_nsec(stamp)
        r.pub_info.publish(info0)
        r.pub_image.publish(r.image_msg(stamp, small))
        if k % 50 == 0:
            r.publish_odom(stamp, q.t_odom_base(0))
        if k in (500, 1999):
            time.sleep(1.0)
            rss.append(rss_mb())
        else:
            time.sleep(0.002)
    r.last_stamp = base + 1999 * (S // 100)
    wait_until(lambda: r.d("frames_received") >= received0 + 1500, 30.0, what="frames received")
    assert node.running()
    growth = rss[1] - rss[0]
    print(
        f"soak: RSS {rss} MB, received {r.d('frames_received') - received0:.0f}, "
        f"processed {r.d('frames_processed'):.0f}, dropped {r.d('frames_dropped'):.0f}"
    )
    assert growth < 40.0, f"RSS grew {growth:.1f} MB over 1500 frames ({rss})"
    assert r.d("frames_dropped") > 0  # newest-only: a slow worker drops, never queues


def test_autostart_false_waits_for_a_lifecycle_manager(
    demo_map: Path, ros_env: dict[str, str], ros_children: Any
) -> None:
    """Under a Nav2 lifecycle manager: unconfigured at start, then configure -> activate ->
    deactivate -> cleanup -> configure again (entities destroyed and re-created) by service."""
    import rclpy
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    node = ros_children.start_module(
        "nre_localization.ros.node", "--ros-args",
        "--params-file", str(ROOT / "config" / "nre_localization.yaml"),
        "-p", f"map_path:={demo_map}", "-p", "device:=cpu", "-p", "autostart:=false",
        "-r", "__node:=nre_managed",
        name="managed",
    )  # fmt: skip
    from rclpy.executors import SingleThreadedExecutor

    # Own context: the module's rig may hold the default one (on another domain).
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    probe = rclpy.create_node("lifecycle_probe", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(probe)
    change = probe.create_client(ChangeState, "/nre_managed/change_state")
    get = probe.create_client(GetState, "/nre_managed/get_state")

    def call(cli: Any, req: Any) -> Any:
        fut = cli.call_async(req)
        ex.spin_until_future_complete(fut, timeout_sec=120.0)
        assert fut.done(), f"no lifecycle response\n{node.output()[-2000:]}"
        return fut.result()

    try:
        assert get.wait_for_service(timeout_sec=60.0), node.output()
        assert call(get, GetState.Request()).current_state.label == "unconfigured"
        for tid, label in (
            (Transition.TRANSITION_CONFIGURE, "inactive"),
            (Transition.TRANSITION_ACTIVATE, "active"),
            (Transition.TRANSITION_DEACTIVATE, "inactive"),
            (Transition.TRANSITION_CLEANUP, "unconfigured"),
            (Transition.TRANSITION_CONFIGURE, "inactive"),
        ):
            req = ChangeState.Request()
            req.transition.id = tid
            assert call(change, req).success, node.output()[-2000:]
            assert call(get, GetState.Request()).current_state.label == label
        assert node.running()
    finally:
        ex.shutdown()
        probe.destroy_node()
        rclpy.try_shutdown(context=ctx)
    assert node.stop() == 0, node.output()[-2000:]
