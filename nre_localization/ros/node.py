"""``nre_localization_node``: live visual localisation against a prebuilt NRE map.

Lifecycle node, started active by default (``autostart: true``)
----------------------------------------------------------------
AMCL, which this node replaces for Nav2 users, is a managed (lifecycle) node, and Nav2's
``lifecycle_manager`` can bring it up and down with the rest of the stack: map and model loading
(seconds, gigabytes of GPU memory) belong in ``configure``, processing in ``active``. A plain node
would make that impossible. But a lifecycle node that nobody activates does nothing, which
surprises anyone who runs it alone (``ros2 run``, the demo, robot_localization setups), so the node
configures and activates itself at start unless ``autostart`` is false. Under a Nav2
``lifecycle_manager`` set ``autostart: false`` and ``bond_timeout: 0.0`` for the manager (this node
does not create a bond).

Data flow
---------
``image`` (+ ``camera_info`` paired by stamp within ``pair_tolerance``) -> the callback only
stamps and stores the newest frame (an older pending frame is dropped and counted) -> a worker
thread decodes it, looks up ``base -> camera`` and ``odom -> base`` at the image stamp, runs the
:class:`~nre_localization.localizer.Localizer`, and, only when the pose is reliable, publishes:

- ``pose`` (geometry_msgs/PoseStamped) and ``pose_with_covariance`` (PoseWithCovarianceStamped,
  transient-local depth 1 like ``amcl_pose``; remap it to ``amcl_pose`` for Nav2 tools), both the
  pose of ``base_frame_id`` in ``global_frame_id`` stamped with the image stamp, with the engine's
  covariance converted to the ROS convention;
- TF ``map -> odom`` computed through ``odom -> base`` at the image stamp and stamped
  ``image stamp + transform_tolerance`` (``publish_tf``); while tracking, frames whose pose is
  not reliable re-send the last ``map -> odom`` with the new stamp (as AMCL does between updates);
  once LOST nothing is sent.

Always: ``state`` (std_msgs/String, transient local: global | tracking | lost), ``/diagnostics``
(latency p50/p90/p99, frames received/processed/dropped, rejected messages per kind, points used,
cost), service ``relocalize`` (std_srvs/Trigger: next frame runs global relocalisation),
``initialpose`` (PoseWithCovarianceStamped in the global frame) as a prior, optional
``map_points`` (PointCloud2, latched) and ``debug_image``.

Run: ``ros2 launch nre_localization localization.launch.py map:=MAP`` on a ROS 2 install, or
(what ``ros2 run`` does) ``nre_localization_node --ros-args --params-file
config/nre_localization.yaml -p map_path:=MAP -r image:=/camera/image_raw -r
camera_info:=/camera/camera_info`` (with ``image_transport: compressed`` remap
``image/compressed`` instead). TF comes through tf2_ros when importable, else through the node's
own ``/tf`` + ``/tf_static`` subscriptions (:mod:`nre_localization.ros.tf_buffer`).

A malformed message never stops the node: it is counted under ``rejected.<kind>`` on
``/diagnostics`` (kinds in :data:`~nre_localization.ros.conversions.REJECT_KINDS`), the last
error is reported, and the next message is processed.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from nre_localization.errors import ConfigError, NreError
from nre_localization.ros import conversions as cv
from nre_localization.ros.diagnostics import NodeStats, fill_status
from nre_localization.ros.params import PARAMS, NodeParams, validate
from nre_localization.ros.tf_buffer import TransformBuffer, TransformUnavailable

try:  # rclpy is only needed here; import errors surface in main() with one line
    import rclpy
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
    from rclpy.qos import (
        DurabilityPolicy,
        HistoryPolicy,
        QoSProfile,
        ReliabilityPolicy,
        qos_profile_sensor_data,
    )
    from rclpy.time import Time

    _RCLPY_ERROR = ""
except ImportError as _err:  # pragma: no cover - exercised only without ROS
    _RCLPY_ERROR = str(_err)
    LifecycleNode = object  # type: ignore[misc,assignment]

NODE_NAME = "nre_localization"


def _latched(depth: int = 1) -> Any:
    return QoSProfile(
        depth=depth,
        history=HistoryPolicy.KEEP_LAST,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def _reliable(depth: int) -> Any:
    return QoSProfile(
        depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE
    )


@dataclass
class _Frame:
    msg: Any
    stamp_ns: int
    t_rx: float  # time.monotonic() at receipt
    compressed: bool


class _TfSource:
    """TF lookups through tf2_ros when importable, else through :class:`TransformBuffer` fed by
    our own ``/tf`` and ``/tf_static`` subscriptions. Broadcasting likewise."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.bad_messages = 0
        try:
            import tf2_ros

            self.tf2 = tf2_ros
            self.buffer = tf2_ros.Buffer()
            self.listener = tf2_ros.TransformListener(self.buffer, node, spin_thread=False)
            self.broadcaster = tf2_ros.TransformBroadcaster(node)
            self.own: TransformBuffer | None = None
        except ImportError:
            self.tf2 = None
            try:
                from tf2_msgs.msg import TFMessage
            except ImportError as err:
                raise ConfigError(
                    "neither tf2_ros nor tf2_msgs is importable: run `make setup` (generates "
                    "tf2_msgs) or source a ROS 2 install"
                ) from err
            self.TFMessage = TFMessage
            self.own = TransformBuffer(cache_s=10.0)
            self.subs = [
                node.create_subscription(TFMessage, "/tf", self._on_tf, _reliable(100)),
                node.create_subscription(
                    TFMessage, "/tf_static", self._on_tf_static, _latched(100)
                ),
            ]
            self.pub = node.create_publisher(TFMessage, "/tf", _reliable(100))

    def _on_tf(self, msg: Any) -> None:
        self.bad_messages += self.own.add_tf_message(msg, static=False)  # type: ignore[union-attr]

    def _on_tf_static(self, msg: Any) -> None:
        self.bad_messages += self.own.add_tf_message(msg, static=True)  # type: ignore[union-attr]

    def lookup(self, target: str, source: str, stamp_ns: int, wait_s: float) -> np.ndarray:
        """``T_target_source`` at ``stamp_ns``; waits up to ``wait_s`` for late data."""
        if self.tf2 is not None:
            from rclpy.duration import Duration

            try:
                ts = self.buffer.lookup_transform(
                    target, source, Time(nanoseconds=stamp_ns), Duration(seconds=wait_s)
                )
            except self.tf2.TransformException as err:
                raise TransformUnavailable(str(err).splitlines()[0]) from None
            return cv.transform_msg_to_matrix(ts.transform)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self.own.lookup(target, source, stamp_ns)  # type: ignore[union-attr]
            except TransformUnavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.002)

    def clear(self) -> None:
        if self.tf2 is not None:
            self.buffer.clear()
        else:
            self.own.clear()  # type: ignore[union-attr]

    def destroy(self) -> None:
        """Remove the subscriptions / publishers this object made (lifecycle cleanup)."""
        if self.tf2 is not None:
            if hasattr(self.listener, "unregister"):
                self.listener.unregister()
            return
        for sub in self.subs:
            self.node.destroy_subscription(sub)
        self.node.destroy_publisher(self.pub)

    def send(self, transforms: list[Any]) -> None:
        if self.tf2 is not None:
            self.broadcaster.sendTransform(transforms)
        else:
            self.pub.publish(self.TFMessage(transforms=transforms))


class LocalizationNode(LifecycleNode):
    """See the module docstring. Parameters: :data:`nre_localization.ros.params.PARAMS`."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in PARAMS:
            self.declare_parameter(
                spec.name,
                spec.default,
                ParameterDescriptor(description=spec.doc, dynamic_typing=True),
            )
        self.stats = NodeStats()
        self.params: NodeParams | None = None
        self.localizer: Any = None
        self.configure_error = ""
        self._active = False
        self._cv = threading.Condition()
        self._pending: _Frame | None = None
        self._reset_requested = False
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._infos: list[tuple[int, Any]] = []
        self._last_rx_stamp: int | None = None
        self._initialpose: np.ndarray | None = None  # T_map_base
        self._last_map_odom: np.ndarray | None = None
        self._last_state = ""
        self._entities: list[Any] = []
        self._tf: _TfSource | None = None

    # ------------------------------------------------------------------ lifecycle
    def _read_params(self) -> NodeParams:
        values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMS}
        return validate(values)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._last_rx_stamp = None
        self._initialpose = None
        self._last_map_odom = None
        self._pending = None
        self._infos = []
        try:
            self.params = p = self._read_params()
            self.localizer = self._build_localizer(p)
            self._create_entities(p)
        except (NreError, OSError) as err:
            self.configure_error = str(err).splitlines()[0] if str(err) else type(err).__name__
            self.get_logger().error(f"configure failed: {self.configure_error}")
            self._destroy_entities()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(
            f"configured: map {p.map_path}, device {self.localizer.device}, "
            f"{self.localizer.n_map_points} map points"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self._publish_state(self.localizer.state.value)
        self.get_logger().info("active: waiting for images")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        with self._cv:
            self._pending = None
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._destroy_entities()
        self.localizer = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ setup
    def _build_localizer(self, p: NodeParams) -> Any:
        from nre_localization.localizer import Localizer, LocalizerConfig

        cfg = LocalizerConfig(
            lost_after=p.lost_after,
            tracking_max_gap=p.tracking_max_gap,
            min_points=p.min_points,
            max_cost_ratio=p.max_cost_ratio,
            max_position_std=p.max_position_std,
            max_rotation_std_deg=p.max_rotation_std_deg,
            max_tracking_jump=p.max_tracking_jump,
            max_tracking_jump_deg=p.max_tracking_jump_deg,
            retrieval_top_k=p.retrieval_top_k,
            max_map_points=p.max_map_points,
            max_image_width=p.max_image_width,
            global_consensus_seeds=p.global_consensus_seeds,
            debug=p.publish_debug_image,
        )
        from nre_localization.engine.types import SolverConfig

        solver = SolverConfig(compile_gnc=p.compile_solver)
        return Localizer.from_files(p.map_path, p.weights or None, p.device, cfg, solver)

    def _create_entities(self, p: NodeParams) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        self._tf = _TfSource(self)
        self._caminfo = cv.CameraInfoConverter(p.use_rectified_intrinsics)
        img_qos = _reliable(2) if p.image_qos_reliable else qos_profile_sensor_data
        if p.image_transport == "compressed":
            self._entities.append(
                self.create_subscription(
                    CompressedImage, "image/compressed", self._on_compressed, img_qos
                )
            )
        else:
            self._entities.append(self.create_subscription(Image, "image", self._on_image, img_qos))
        self._entities += [
            self.create_subscription(CameraInfo, "camera_info", self._on_info, img_qos),
            self.create_subscription(
                PoseWithCovarianceStamped, "initialpose", self._on_initialpose, _reliable(1)
            ),
            self.create_service(Trigger, "relocalize", self._on_relocalize),
            self.create_timer(p.diagnostics_period, self._on_diagnostics_timer),
        ]
        self._pub_pose = self.create_publisher(PoseStamped, "pose", _reliable(10))
        self._pub_pose_cov = self.create_publisher(
            PoseWithCovarianceStamped, "pose_with_covariance", _latched(1)
        )
        self._pub_state = self.create_publisher(String, "state", _latched(1))
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", _reliable(10))
        self._pub_debug = (
            self.create_publisher(Image, "debug_image", _reliable(2))
            if p.publish_debug_image
            else None
        )
        if p.publish_map_cloud:
            self._pub_cloud = self.create_publisher(PointCloud2, "map_points", _latched(1))
            self._publish_map_cloud(p)
            self._entities.append(self._pub_cloud)
        if self._pub_debug is not None:
            self._entities.append(self._pub_debug)
        self._entities += [self._pub_pose, self._pub_pose_cov, self._pub_state, self._pub_diag]
        self._stop.clear()
        self._worker = threading.Thread(target=self._work_loop, name="nre_worker", daemon=True)
        self._worker.start()

    def _destroy_entities(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=10.0)
        self._worker = None
        for ent in self._entities:
            try:
                if hasattr(ent, "cancel"):
                    ent.cancel()
                    self.destroy_timer(ent)
                elif hasattr(ent, "publish"):
                    self.destroy_publisher(ent)
                elif hasattr(ent, "srv_type"):
                    self.destroy_service(ent)
                else:
                    self.destroy_subscription(ent)
            except Exception:  # best effort at teardown
                pass
        self._entities = []
        if self._tf is not None:
            with contextlib.suppress(Exception):  # best effort at teardown
                self._tf.destroy()
            self._tf = None

    # ------------------------------------------------------------------ callbacks (never block)
    def _accept_stamp(self, stamp_ns: int) -> bool:
        """Order checks on received images: out-of-order is dropped; a big jump back resets."""
        p = self.params
        last = self._last_rx_stamp
        if last is not None:
            if stamp_ns < last - int(p.time_jump_threshold * 1e9):  # type: ignore[union-attr]
                self.stats.reject(
                    "time_jump_back",
                    f"image stamp jumped back {(last - stamp_ns) * 1e-9:.3f} s: resetting "
                    "(TF buffer, tracking state)",
                )
                with self._cv:
                    self._reset_requested = True
            elif stamp_ns <= last:
                self.stats.reject(
                    "out_of_order",
                    f"image stamp {stamp_ns * 1e-9:.6f} is not after the previous "
                    f"{last * 1e-9:.6f}: dropped",
                )
                return False
        self._last_rx_stamp = stamp_ns
        return True

    def _enqueue(self, msg: Any, compressed: bool) -> None:
        t_rx = time.monotonic()
        self.stats.count("received")
        self.stats.last_image_time = t_rx
        if not self._active:
            return
        stamp_ns = cv.stamp_to_ns(msg.header.stamp)
        if not self._accept_stamp(stamp_ns):
            return
        with self._cv:
            if self._pending is not None:
                self.stats.count("dropped")
            self._pending = _Frame(msg, stamp_ns, t_rx, compressed)
            self._cv.notify_all()

    def _on_image(self, msg: Any) -> None:
        self._enqueue(msg, compressed=False)

    def _on_compressed(self, msg: Any) -> None:
        self._enqueue(msg, compressed=True)

    def _on_info(self, msg: Any) -> None:
        with self._cv:
            self._infos.append((cv.stamp_to_ns(msg.header.stamp), msg))
            if len(self._infos) > 30:
                del self._infos[:-30]
            self._cv.notify_all()

    def _on_initialpose(self, msg: Any) -> None:
        p = self.params
        frame = msg.header.frame_id.lstrip("/")
        if frame not in ("", p.global_frame_id):  # type: ignore[union-attr]
            self.stats.reject(
                "bad_initialpose",
                f"initialpose frame '{frame}' is not the global frame '{p.global_frame_id}'",  # type: ignore[union-attr]
            )
            return
        try:
            t_map_base = cv.pose_msg_to_matrix(msg.pose.pose)
        except NreError as err:
            self.stats.reject("bad_initialpose", str(err))
            return
        if not np.all(np.isfinite(t_map_base)):
            self.stats.reject("bad_initialpose", "initialpose has non-finite values")
            return
        with self._cv:
            self._initialpose = t_map_base
        self.get_logger().info("initialpose received: tracking from it on the next frame")

    def _on_relocalize(self, request: Any, response: Any) -> Any:
        if self.localizer is None or not self._active:
            response.success = False
            response.message = "node is not active"
            return response
        self.localizer.request_global()
        with self._cv:
            self._initialpose = None
        response.success = True
        response.message = "global relocalisation requested for the next frame"
        return response

    def _on_diagnostics_timer(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

        snap = self.stats.snapshot()
        if self._tf is not None and self._tf.bad_messages:
            snap["rejected.bad_tf"] = self._tf.bad_messages
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        status = DiagnosticStatus()
        fill_status(
            status,
            f"{self.get_name()}: localizer",
            self.get_fully_qualified_name(),
            snap,
            self._active,
        )
        arr.status = [status]
        self._pub_diag.publish(arr)

    # ------------------------------------------------------------------ worker
    def _next_frame(self) -> _Frame | None:
        with self._cv:
            while self._pending is None and not self._stop.is_set():
                self._cv.wait(timeout=0.5)
            frame, self._pending = self._pending, None
            return frame

    def _find_info(self, stamp_ns: int) -> Any:
        tol = int(self.params.pair_tolerance * 1e9)  # type: ignore[union-attr]
        best = None
        for s, m in self._infos:
            if abs(s - stamp_ns) <= tol and (best is None or abs(s - stamp_ns) < best[0]):
                best = (abs(s - stamp_ns), m)
        return None if best is None else best[1]

    def _pair(self, frame: _Frame) -> Any:
        """The camera_info with the frame's stamp, waiting up to ``pair_wait``; None if a newer
        frame arrived meanwhile (then this one is dropped)."""
        deadline = time.monotonic() + self.params.pair_wait  # type: ignore[union-attr]
        with self._cv:
            while True:
                info = self._find_info(frame.stamp_ns)
                if info is not None:
                    return info
                if self._pending is not None or self._stop.is_set():
                    self.stats.count("dropped")
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise cv.MessageRejected(
                        "no_camera_info",
                        f"no camera_info within {self.params.pair_tolerance:g} s of image stamp "  # type: ignore[union-attr]
                        f"{frame.stamp_ns * 1e-9:.6f}",
                    )
                self._cv.wait(timeout=left)

    def _work_loop(self) -> None:
        last_start = 0.0
        while not self._stop.is_set():
            frame = self._next_frame()
            if frame is None:
                continue
            p = self.params
            if p.max_rate > 0:  # type: ignore[union-attr]
                wait = last_start + 1.0 / p.max_rate - time.monotonic()  # type: ignore[union-attr]
                if wait > 0:
                    time.sleep(wait)
                    with self._cv:  # a newer frame arrived while we waited: take it instead
                        if self._pending is not None:
                            self.stats.count("dropped")
                            frame, self._pending = self._pending, None
            last_start = time.monotonic()
            try:
                self._process(frame)
            except cv.MessageRejected as err:
                self.stats.reject(err.kind, str(err))
            except NreError as err:
                self.stats.reject("localizer_error", str(err).splitlines()[0])
            except Exception as err:  # never let one frame kill the worker
                self.stats.reject("localizer_error", f"{type(err).__name__}: {err}".splitlines()[0])
                self.get_logger().error(f"frame failed: {type(err).__name__}: {err}")
            finally:
                self.stats.last_frame_stamp = frame.stamp_ns

    def _process(self, frame: _Frame) -> None:
        p = self.params
        assert p is not None and self._tf is not None
        with self._cv:
            reset, self._reset_requested = self._reset_requested, False
            initialpose, self._initialpose = self._initialpose, None
        if reset:
            self._tf.clear()
            self.localizer.reset()
            self._last_map_odom = None
        t0 = time.perf_counter()
        info = self._pair(frame)
        if info is None:
            return
        t_pair = time.perf_counter()
        rgb = cv.compressed_to_rgb(frame.msg) if frame.compressed else cv.image_to_rgb(frame.msg)
        cam = self._caminfo.convert(info)
        cv.check_image_matches(rgb, cam)
        rgb = cam.apply(rgb)
        t_decode = time.perf_counter()

        cam_frame = p.camera_frame_id or frame.msg.header.frame_id
        try:
            t_base_cam = self._tf.lookup(p.base_frame_id, cam_frame, frame.stamp_ns, p.tf_wait)
        except TransformUnavailable as err:
            raise cv.MessageRejected(
                "tf_unavailable", f"{p.base_frame_id} -> {cam_frame}: {err}"
            ) from None
        t_odom_base = None
        if p.use_odometry or p.publish_tf:
            try:
                t_odom_base = self._tf.lookup(
                    p.odom_frame_id, p.base_frame_id, frame.stamp_ns, p.tf_wait
                )
            except TransformUnavailable as err:
                self.stats.count("odom_missing")
                self.stats.last_error = f"odom: {err}"
        t_tf = time.perf_counter()

        prior = None
        if initialpose is not None:
            prior = cv.invert_T(initialpose @ t_base_cam)  # T_cam_world
        t_odom_cam = (
            t_odom_base @ t_base_cam if (t_odom_base is not None and p.use_odometry) else None
        )
        res = self.localizer.process(
            rgb, cam.spec, frame.stamp_ns * 1e-9, prior=prior, T_odom_cam=t_odom_cam
        )
        state = res.state.value
        if state != self._last_state:
            self._publish_state(state)
        published = False
        if res.reliable and res.T_cam_world is not None:
            self._publish_pose(frame, res, t_base_cam)
            published = True
            if t_odom_base is not None:
                t_map_base = cv.invert_T(t_base_cam @ res.T_cam_world)
                self._last_map_odom = t_map_base @ cv.invert_T(t_odom_base)
        if state == "lost" or (reset and not published):
            self._last_map_odom = None
        if p.publish_tf and self._last_map_odom is not None and state == "tracking":
            self._send_map_odom(frame.stamp_ns)
        if self._pub_debug is not None:
            self._publish_debug(frame, rgb, res)
        timings = dict(res.timings)
        timings.update(pair=t_pair - t0, decode=t_decode - t_pair, tf=t_tf - t_decode)
        self.stats.frame_done(
            state,
            (time.monotonic() - frame.t_rx) if published else None,
            timings,
            int(res.n_informative),
            int(res.n_points),
            float(res.cost),
        )
        if published:
            self.stats.count("poses_published")

    # ------------------------------------------------------------------ publishing
    def _publish_state(self, state: str) -> None:
        from std_msgs.msg import String

        self._last_state = state
        self._pub_state.publish(String(data=state))

    def _publish_pose(self, frame: _Frame, res: Any, t_base_cam: np.ndarray) -> None:
        from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped

        p = self.params
        t_map_base = cv.invert_T(t_base_cam @ res.T_cam_world)
        cov = cv.engine_cov_to_ros(res.T_cam_world, res.covariance, t_base_cam)
        ps = PoseStamped()
        ps.header.frame_id = p.global_frame_id  # type: ignore[union-attr]
        cv.set_stamp(ps.header.stamp, frame.stamp_ns)
        cv.fill_pose(ps.pose, t_map_base)
        pc = PoseWithCovarianceStamped()
        pc.header = ps.header
        pc.pose.pose = ps.pose
        pc.pose.covariance = cov.ravel().astype(np.float64)
        self._pub_pose.publish(ps)
        self._pub_pose_cov.publish(pc)

    def _send_map_odom(self, stamp_ns: int) -> None:
        from geometry_msgs.msg import TransformStamped

        p = self.params
        ts = TransformStamped()
        ts.header.frame_id = p.global_frame_id  # type: ignore[union-attr]
        ts.child_frame_id = p.odom_frame_id  # type: ignore[union-attr]
        cv.set_stamp(ts.header.stamp, stamp_ns + int(p.transform_tolerance * 1e9))  # type: ignore[union-attr]
        cv.fill_transform(ts.transform, self._last_map_odom)  # type: ignore[arg-type]
        self._tf.send([ts])  # type: ignore[union-attr]

    def _publish_map_cloud(self, p: NodeParams) -> None:
        from sensor_msgs.msg import PointCloud2, PointField

        xyz, rgb = self.localizer.map_cloud(p.map_cloud_max_points)
        n = xyz.shape[0]
        rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
        rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        if rgb is not None:
            c = rgb.astype(np.uint32)
            rec["rgb"] = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
        msg = PointCloud2()
        msg.header.frame_id = p.global_frame_id
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.height, msg.width = 1, n
        msg.fields = [
            PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
            PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
            PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
            PointField(name="rgb", offset=12, datatype=PointField.UINT32, count=1),
        ]
        msg.is_bigendian = False
        msg.point_step = 16
        msg.row_step = 16 * n
        msg.is_dense = True
        msg.data = rec.tobytes()
        self._pub_cloud.publish(msg)

    def _publish_debug(self, frame: _Frame, rgb: np.ndarray, res: Any) -> None:
        import cv2
        from sensor_msgs.msg import Image

        out = rgb.copy()
        uv = getattr(res, "debug_uv", None)
        if uv is not None:
            for x, y in np.asarray(uv)[:2000]:
                if 0 <= x < out.shape[1] and 0 <= y < out.shape[0]:
                    cv2.circle(out, (int(x), int(y)), 2, (0, 255, 0), -1)
        colour = (0, 200, 0) if res.reliable else (220, 0, 0)
        cv2.putText(
            out,
            f"{res.state.value} {res.n_informative}/{res.n_points}",
            (8, 24),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.7,
            colour,
            2,
        )
        msg = Image()
        msg.header = frame.msg.header
        cv.rgb_to_image_fields(out, "rgb8").fill(msg)
        self._pub_debug.publish(msg)  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> int:
    """Console script ``nre_localization_node`` (also ``ros2 run nre_localization ...``)."""
    if _RCLPY_ERROR:
        print(f"nre_localization_node: rclpy is not importable ({_RCLPY_ERROR})", file=sys.stderr)
        return 2
    args = sys.argv if argv is None else argv
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = LocalizationNode()
        autostart = bool(node.get_parameter("autostart").value)
        if autostart:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                print(f"nre_localization_node: {node.configure_error}", file=sys.stderr)
                return 2
            node.trigger_activate()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node._active = False
            node._destroy_entities()
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
