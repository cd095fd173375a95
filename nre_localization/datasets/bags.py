"""Posed images from ROS bags (ROS 1 ``.bag``, ROS 2 sqlite3 or mcap) through ``rosbags``.

An image topic (``sensor_msgs/Image`` or ``CompressedImage``) gives the images at their header
stamps; the camera comes from a ``CameraInfo`` topic (or is given); poses come from a pose topic
(``PoseStamped``, ``PoseWithCovarianceStamped``, ``Odometry``, ``TransformStamped``) or from TF
(``/tf`` + ``/tf_static``) as ``T_world_camera`` where the camera frame is the images'
``header.frame_id`` (an optical frame: z forward, x right, y down, REP-103).

A pose topic's body frame (``child_frame_id`` of Odometry / TransformStamped, else ``pose_frame``)
is joined to the camera frame through TF when TF links them; otherwise the pose is taken as the
camera's own. Scenes hold world->camera ``T_cam_world`` like every other reader.
"""

from __future__ import annotations

import os
import shutil
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from nre_localization.datasets.common import CameraSpec, PosedImage, Scene
from nre_localization.datasets.poses import (
    interpolate_poses,
    invert_pose,
    pose_from_qt,
    qt_from_pose,
)
from nre_localization.datasets.tum import _camera_from_values
from nre_localization.errors import DatasetError, InputError

POSE_TYPES = (
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "nav_msgs/msg/Odometry",
    "geometry_msgs/msg/TransformStamped",
)
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
TF_TOPICS = ("/tf", "/tf_static")


def is_bag(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix in (".bag", ".mcap", ".db3")
    return path.is_dir() and (path / "metadata.yaml").is_file()


def open_bag(path: Path) -> Any:
    """Open a ROS 1 bag, ROS 2 sqlite3 or mcap bag with rosbags' AnyReader (Jazzy typestore)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: bag not found")
    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_JAZZY))
        reader.open()
    except Exception as e:  # rosbags raises several unrelated types for unreadable bags
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{path}: cannot open as a ROS bag ({msg})") from None
    return reader


def list_topics(path: Path) -> dict[str, tuple[str, int]]:
    """{topic: (message type, message count)} of a bag."""
    reader = open_bag(path)
    try:
        out: dict[str, tuple[str, int]] = {}
        for c in reader.connections:
            t, n = out.get(c.topic, (c.msgtype, 0))
            out[c.topic] = (t, n + c.msgcount)
        return out
    finally:
        reader.close()


def _stamp(header: Any) -> float:
    return float(header.stamp.sec) + 1e-9 * float(header.stamp.nanosec)


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _pose_matrix(p: Any) -> np.ndarray:
    return pose_from_qt(
        np.array([p.orientation.w, p.orientation.x, p.orientation.y, p.orientation.z]),
        np.array([p.position.x, p.position.y, p.position.z]),
    )


def _transform_matrix(t: Any) -> np.ndarray:
    return pose_from_qt(
        np.array([t.rotation.w, t.rotation.x, t.rotation.y, t.rotation.z]),
        np.array([t.translation.x, t.translation.y, t.translation.z]),
    )


@dataclass
class TfBuffer:
    """TF edges read from a bag: ``static[(parent, child)] = T_parent_child`` and time series
    ``dynamic[(parent, child)] = (stamps [N], T_parent_child [N, 4, 4])``."""

    static: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    dynamic: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    source: str = "TF"

    def frames(self) -> set[str]:
        out: set[str] = set()
        for p, c in list(self.static) + list(self.dynamic):
            out.update((p, c))
        return out

    def _path(self, target: str, source: str) -> list[tuple[str, str, bool]] | None:
        """Edges from ``target`` to ``source``: (parent, child, forward) where forward means the
        edge is traversed parent->child."""
        adj: dict[str, list[tuple[str, str, str, bool]]] = {}
        for p, c in list(self.static) + list(self.dynamic):
            adj.setdefault(p, []).append((c, p, c, True))
            adj.setdefault(c, []).append((p, p, c, False))
        prev: dict[str, tuple[str, tuple[str, str, bool]] | None] = {target: None}
        q = deque([target])
        while q:
            f = q.popleft()
            if f == source:
                break
            for nxt, p, c, fwd in adj.get(f, []):
                if nxt not in prev:
                    prev[nxt] = (f, (p, c, fwd))
                    q.append(nxt)
        if source not in prev:
            return None
        edges = []
        f = source
        while prev[f] is not None:
            f_prev, e = prev[f]  # type: ignore[misc]
            edges.append(e)
            f = f_prev
        return edges[::-1]

    def can_transform(self, target: str, source: str) -> bool:
        return target == source or self._path(target, source) is not None

    def lookup(self, target: str, source: str, stamp: float, max_dt: float) -> np.ndarray:
        """``T_target_source [4, 4]`` at ``stamp``; dynamic edges interpolated between samples
        within ``max_dt`` (or the nearest within ``max_dt``)."""
        if target == source:
            return np.eye(4)
        path = self._path(target, source)
        if path is None:
            raise DatasetError(
                f"{self.source}: no TF path from {target!r} to {source!r} "
                f"(frames: {', '.join(sorted(self.frames())) or 'none'})"
            )
        T = np.eye(4)
        for p, c, fwd in path:
            if (p, c) in self.static:
                e = self.static[(p, c)]
            else:
                st, poses = self.dynamic[(p, c)]
                e = _sample(st, poses, stamp, max_dt, f"{self.source}: TF {p} -> {c}")
            T = T @ (e if fwd else invert_pose(e))
        return T


def _sample(st: np.ndarray, poses: np.ndarray, s: float, max_dt: float, what: str) -> np.ndarray:
    i = int(np.searchsorted(st, s))
    lo, hi = max(i - 1, 0), min(i, len(st) - 1)
    if st[lo] <= s <= st[hi] and s - st[lo] <= max_dt and st[hi] - s <= max_dt:
        if hi == lo:
            return poses[lo]
        return interpolate_poses(st[[lo, hi]], poses[[lo, hi]], np.array([s]))[0]
    d = np.abs(st[[lo, hi]] - s)
    if d.min() <= max_dt:
        return poses[[lo, hi][int(np.argmin(d))]]
    raise DatasetError(
        f"{what}: no sample within {max_dt:g} s of stamp {s:.6f} (nearest {d.min():.3f} s away)"
    )


def decode_image(msg: Any, msgtype: str) -> np.ndarray:
    """``sensor_msgs/Image`` or ``CompressedImage`` -> RGB ``uint8 [H, W, 3]``."""
    if msgtype.endswith("CompressedImage"):
        img = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"compressed image ({msg.format}) cannot be decoded")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    enc = msg.encoding.lower()
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    buf = np.frombuffer(bytes(msg.data), np.uint8)
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3}
    if enc in ("mono16", "16uc1"):
        dt = ">u2" if msg.is_bigendian else "<u2"
        arr = np.ndarray((h, w), dtype=dt, buffer=buf[: h * step], strides=(step, 2))
        g = (arr.astype(np.float32) / 256.0).clip(0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if enc.startswith("bayer_"):
        arr = np.ndarray((h, w), dtype=np.uint8, buffer=buf[: h * step], strides=(step, 1)).copy()
        code = {
            "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
            "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
            "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
            "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
        }.get(enc)
        if code is None:
            raise InputError(f"unsupported image encoding {msg.encoding!r}")
        return cv2.cvtColor(arr, code)
    if enc not in channels:
        raise InputError(f"unsupported image encoding {msg.encoding!r}")
    c = channels[enc]
    if len(buf) < h * step or step < w * c:
        raise InputError(f"image message data too short for {w}x{h} {msg.encoding}")
    arr = np.ndarray((h, w, c), dtype=np.uint8, buffer=buf[: h * step], strides=(step, c, 1)).copy()
    if c == 1:
        return np.repeat(arr, 3, axis=2)
    if enc == "bgr8":
        return arr[:, :, ::-1].copy()
    if enc == "bgra8":
        return arr[:, :, [2, 1, 0]].copy()
    return arr[:, :, :3].copy()


def camera_from_info(msg: Any, what: str = "CameraInfo") -> CameraSpec:
    """``sensor_msgs/CameraInfo`` (ROS 1 or 2 field names) -> CameraSpec of the raw image."""
    k = list(msg.k if hasattr(msg, "k") else msg.K)
    d = list(msg.d if hasattr(msg, "d") else msg.D)
    if len(k) != 9 or k[0] <= 0 or k[4] <= 0:
        raise InputError(f"{what}: camera matrix K is empty or invalid")
    return _camera_from_values(
        Path(what),
        int(msg.width),
        int(msg.height),
        [k[0], k[4], k[2], k[5]],
        msg.distortion_model,
        d,
    )


def _check_topic(
    path: Path, topics: dict[str, str], topic: str, allowed: tuple[str, ...], role: str
) -> str:
    if topic not in topics:
        have = ", ".join(f"{t} ({m.split('/')[-1]})" for t, m in sorted(topics.items())) or "none"
        raise DatasetError(f"{path}: bag has no {role} topic {topic!r} (topics: {have})")
    if topics[topic] not in allowed:
        raise DatasetError(
            f"{path}: topic {topic!r} is {topics[topic]}, expected one of {', '.join(allowed)}"
        )
    return topics[topic]


def read_tf(reader: Any, path: Path) -> TfBuffer:
    """All ``/tf`` and ``/tf_static`` transforms of an open reader."""
    buf = TfBuffer(source=str(path))
    series: dict[tuple[str, str], list[tuple[float, np.ndarray]]] = {}
    conns = [c for c in reader.connections if c.topic in TF_TOPICS]
    if not conns:  # rosbags reads every topic when given no connections
        return buf
    for c, _, raw in reader.messages(connections=conns):
        msg = reader.deserialize(raw, c.msgtype)
        for tr in msg.transforms:
            key = (tr.header.frame_id.lstrip("/"), tr.child_frame_id.lstrip("/"))
            T = _transform_matrix(tr.transform)
            if c.topic == "/tf_static":
                buf.static[key] = T
            else:
                series.setdefault(key, []).append((_stamp(tr.header), T))
    for key, items in series.items():
        items.sort(key=lambda x: x[0])
        buf.dynamic[key] = (np.array([s for s, _ in items]), np.stack([T for _, T in items]))
    return buf


def read_pose_topic(reader: Any, path: Path, topic: str) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(stamps [N], T_frame_body [N, 4, 4], frame, body frame or '') of a pose topic."""
    conns = [c for c in reader.connections if c.topic == topic]
    stamps, poses = [], []
    frame = body = ""
    for c, _, raw in reader.messages(connections=conns):
        msg = reader.deserialize(raw, c.msgtype)
        frame = msg.header.frame_id.lstrip("/")
        if c.msgtype.endswith("TransformStamped"):
            T = _transform_matrix(msg.transform)
            body = msg.child_frame_id.lstrip("/")
        elif c.msgtype.endswith("Odometry"):
            T = _pose_matrix(msg.pose.pose)
            body = msg.child_frame_id.lstrip("/")
        elif c.msgtype.endswith("PoseWithCovarianceStamped"):
            T = _pose_matrix(msg.pose.pose)
        else:
            T = _pose_matrix(msg.pose)
        stamps.append(_stamp(msg.header))
        poses.append(T)
    if not stamps:
        raise DatasetError(f"{path}: pose topic {topic!r} has no messages")
    order = np.argsort(stamps, kind="stable")
    return np.array(stamps)[order], np.stack(poses)[order], frame, body


def load_bag_scene(
    path: Path,
    image_topic: str,
    camera_info_topic: str | None = None,
    pose_topic: str | None = None,
    world_frame: str | None = None,
    camera_frame: str | None = None,
    pose_frame: str | None = None,
    camera: CameraSpec | None = None,
    max_dt: float = 0.05,
    every: int = 1,
) -> Scene:
    """Posed images of a bag (see the module docstring). Images are decoded lazily.

    ``world_frame`` (TF mode) defaults to ``map``, else ``world``, else ``odom`` when present.
    Every ``every``-th image is kept. Names are ``<sec>.<nsec>.png`` of the header stamp.
    """
    path = Path(path)
    reader = open_bag(path)
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        itype = _check_topic(path, topics, image_topic, IMAGE_TYPES, "image")
        if camera is None:
            if camera_info_topic is None:
                raise DatasetError(f"{path}: no camera given and no CameraInfo topic named")
            _check_topic(
                path, topics, camera_info_topic, ("sensor_msgs/msg/CameraInfo",), "CameraInfo"
            )
        if pose_topic is not None:
            _check_topic(path, topics, pose_topic, POSE_TYPES, "pose")
        elif not any(t in topics for t in TF_TOPICS):
            raise DatasetError(f"{path}: no pose topic named and the bag has no /tf or /tf_static")

        tf = read_tf(reader, path)
        if camera is None:
            conns = [c for c in reader.connections if c.topic == camera_info_topic]
            for c, _, raw in reader.messages(connections=conns):
                camera = camera_from_info(
                    reader.deserialize(raw, c.msgtype), f"{path}:{camera_info_topic}"
                )
                break
            if camera is None:
                raise DatasetError(
                    f"{path}: CameraInfo topic {camera_info_topic!r} has no messages"
                )

        conns = [c for c in reader.connections if c.topic == image_topic]
        raw_images: list[tuple[float, int, str, Any]] = []
        for k, (c, _, raw) in enumerate(reader.messages(connections=conns)):
            if k % every:
                continue
            msg = reader.deserialize(raw, c.msgtype)
            raw_images.append(
                (_stamp(msg.header), _stamp_ns(msg.header), msg.header.frame_id.lstrip("/"), msg)
            )
        if not raw_images:
            raise DatasetError(f"{path}: image topic {image_topic!r} has no messages")
        cam_frame = camera_frame or raw_images[0][2]

        if pose_topic is not None:
            st, poses, _, body = read_pose_topic(reader, path, pose_topic)
            body = pose_frame or body
            T_body_cam = np.eye(4)
            if body and body != cam_frame and tf.can_transform(body, cam_frame):
                T_body_cam = tf.lookup(body, cam_frame, raw_images[0][0], np.inf)
            T_wc = []
            for s, _, _, _ in raw_images:
                T_wb = _sample(st, poses, s, max_dt, f"{path}: pose topic {pose_topic}")
                T_wc.append(T_wb @ T_body_cam)
        else:
            if world_frame is None:
                frames = tf.frames()
                world_frame = next((f for f in ("map", "world", "odom") if f in frames), None)
                if world_frame is None:
                    raise DatasetError(
                        f"{path}: no world frame given and TF has no map/world/odom frame"
                    )
            T_wc = [tf.lookup(world_frame, cam_frame, s, max_dt) for s, _, _, _ in raw_images]

        images = []
        for (s, ns, _, msg), T in zip(raw_images, T_wc, strict=True):
            name = f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}.png"
            images.append(
                PosedImage(
                    name=name,
                    camera_id=1,
                    T_cam_world=invert_pose(T),
                    stamp=s,
                    loader=_Loader(msg, itype),
                )
            )
        return Scene(cameras={1: camera}, images=images, source=f"bag:{path}")
    finally:
        reader.close()


class _Loader:
    """Decodes one image message on demand (keeps the message, not the decoded pixels)."""

    def __init__(self, msg: Any, msgtype: str) -> None:
        self.msg = msg
        self.msgtype = msgtype

    def __call__(self) -> np.ndarray:
        return decode_image(self.msg, self.msgtype)


# ---------------------------------------------------------------------------------------------
# writing (demo and test bags from a Scene)
_TF_MSG = "geometry_msgs/TransformStamped[] transforms\n"


def _typestore(ros1: bool) -> Any:
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_JAZZY)
    if "tf2_msgs/msg/TFMessage" not in ts.types:
        ts.register(get_types_from_msg(_TF_MSG, "tf2_msgs/msg/TFMessage"))
    return ts


def write_scene_bag(
    scene: Scene,
    path: Path,
    storage: str = "mcap",
    image_topic: str = "/camera/image_raw",
    camera_info_topic: str = "/camera/camera_info",
    pose_topic: str | None = "/camera/pose",
    world_frame: str = "map",
    camera_frame: str = "camera_optical_frame",
    tf: bool = True,
    pose_delay: float = 0.0,
) -> Path:
    """Write a Scene's images (rgb8 Image), CameraInfo, camera poses (PoseStamped in
    ``world_frame``) and TF ``world_frame -> camera_frame`` into a bag.

    ``storage``: ``rosbag1`` (``path`` a ``.bag`` file), ``sqlite3`` or ``mcap`` (``path`` a
    folder). Images need stamps (``PosedImage.stamp``); otherwise 10 Hz from t = 1 s is used.
    ``pose_delay`` (s) shifts the pose / TF stamps (to test stamp association).
    Written to a temporary name and renamed.
    """
    path = Path(path)
    ros1 = storage == "rosbag1"
    if storage not in ("rosbag1", "sqlite3", "mcap"):
        raise InputError(f"unknown bag storage {storage!r} (rosbag1, sqlite3 or mcap)")
    ts = _typestore(ros1)
    T = ts.types
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    if ros1:
        from rosbags.rosbag1 import Writer as Writer1

        writer: Any = Writer1(tmp)
    else:
        from rosbags.rosbag2 import StoragePlugin
        from rosbags.rosbag2 import Writer as Writer2

        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer2(tmp, version=9, storage_plugin=plugin)
    ser = ts.serialize_ros1 if ros1 else ts.serialize_cdr

    def header(ns: int, frame: str, seq: int) -> Any:
        stamp = T["builtin_interfaces/msg/Time"](
            sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000
        )
        if ros1:
            return T["std_msgs/msg/Header"](seq=seq, stamp=stamp, frame_id=frame)
        return T["std_msgs/msg/Header"](stamp=stamp, frame_id=frame)

    def vec3(v: np.ndarray, name: str) -> Any:
        return T[name](x=float(v[0]), y=float(v[1]), z=float(v[2]))

    def quat(q: np.ndarray) -> Any:
        return T["geometry_msgs/msg/Quaternion"](
            x=float(q[1]), y=float(q[2]), z=float(q[3]), w=float(q[0])
        )

    try:
        writer.open()
        c_img = writer.add_connection(image_topic, "sensor_msgs/msg/Image", typestore=ts)
        c_info = writer.add_connection(
            camera_info_topic, "sensor_msgs/msg/CameraInfo", typestore=ts
        )
        c_pose = (
            writer.add_connection(pose_topic, "geometry_msgs/msg/PoseStamped", typestore=ts)
            if pose_topic
            else None
        )
        c_tf = writer.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=ts) if tf else None
        cam = scene.cameras[scene.images[0].camera_id]
        k, d, fisheye = cam.opencv()
        kk = np.array(k, dtype=np.float64).ravel()
        p = np.zeros(12)
        p[:3], p[4:7], p[8:11] = kk[:3], kk[3:6], kk[6:9]
        info_fields = dict(
            height=cam.height,
            width=cam.width,
            distortion_model="equidistant" if fisheye else "plumb_bob",
            binning_x=0,
            binning_y=0,
            roi=T["sensor_msgs/msg/RegionOfInterest"](
                x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
            ),
        )
        names = ("D", "K", "R", "P") if ros1 else ("d", "k", "r", "p")
        info_fields.update(
            dict(
                zip(names, (np.asarray(d, dtype=np.float64), kk, np.eye(3).ravel(), p), strict=True)
            )
        )
        for i, im in enumerate(scene.images):
            ns = int(round((im.stamp if im.stamp is not None else 1.0 + 0.1 * i) * 1e9))
            rgb = im.load_rgb(scene.cameras[im.camera_id])
            h, w = rgb.shape[:2]
            msg = T["sensor_msgs/msg/Image"](
                header=header(ns, camera_frame, i),
                height=h,
                width=w,
                encoding="rgb8",
                is_bigendian=0,
                step=w * 3,
                data=np.ascontiguousarray(rgb).ravel(),
            )
            writer.write(c_img, ns, ser(msg, "sensor_msgs/msg/Image"))
            info = T["sensor_msgs/msg/CameraInfo"](
                header=header(ns, camera_frame, i), **info_fields
            )
            writer.write(c_info, ns, ser(info, "sensor_msgs/msg/CameraInfo"))
            q, t = qt_from_pose(invert_pose(im.T_cam_world))
            ns_pose = ns + int(round(pose_delay * 1e9))
            if c_pose is not None:
                pose = T["geometry_msgs/msg/Pose"](
                    position=vec3(t, "geometry_msgs/msg/Point"), orientation=quat(q)
                )
                ps = T["geometry_msgs/msg/PoseStamped"](
                    header=header(ns_pose, world_frame, i), pose=pose
                )
                writer.write(c_pose, ns_pose, ser(ps, "geometry_msgs/msg/PoseStamped"))
            if c_tf is not None:
                tr = T["geometry_msgs/msg/TransformStamped"](
                    header=header(ns_pose, world_frame, i),
                    child_frame_id=camera_frame,
                    transform=T["geometry_msgs/msg/Transform"](
                        translation=vec3(t, "geometry_msgs/msg/Vector3"), rotation=quat(q)
                    ),
                )
                tfm = T["tf2_msgs/msg/TFMessage"](transforms=[tr])
                writer.write(c_tf, ns_pose, ser(tfm, "tf2_msgs/msg/TFMessage"))
        writer.close()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.replace(tmp, path)
    return path


def iter_bag_messages(path: Path, topic: str) -> Iterator[tuple[int, Any]]:
    """(bag time ns, deserialised message) of one topic (DatasetError if the topic is absent)."""
    reader = open_bag(path)
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        if topic not in topics:
            _check_topic(Path(path), topics, topic, (topics.get(topic, ""),), "requested")
        conns = [c for c in reader.connections if c.topic == topic]
        for c, t, raw in reader.messages(connections=conns):
            yield t, reader.deserialize(raw, c.msgtype)
    finally:
        reader.close()
