"""Publisher / subscriber probe programs for two-process ROS tests (run as child processes).

    python -m nre_localization.testing.probes publish --frames 30 --rate 30
    python -m nre_localization.testing.probes subscribe --frames 30 --out result.json

The publisher sends, per frame ``k``: an ``Image`` (``rgb8``, :func:`frame_pattern`), a
``CameraInfo`` with the same stamp, and a ``TFMessage`` on ``/tf``; once, a ``TFMessage`` on
``/tf_static`` (transient local). Handshake, so that no best-effort frame is sent before the
subscriber can take it: the subscriber waits until each of its subscriptions has matched a
publisher, then publishes ``ready`` (reliable, transient local); the publisher waits for it and
for each of its publishers to have matched a subscription, then publishes the frames at
``--rate`` Hz and stays alive (so reliable samples can be repaired) until SIGINT or ``--linger``
seconds.

The camera topics are best effort on both sides (the publisher uses the sensor-data profile; the
subscriber's history holds ``--frames`` samples so that a briefly descheduled Python thread loses
nothing). The subscriber records what arrived (fields, SHA-256 of image bytes) to ``--out`` as
JSON and exits 0 once it has everything, 2 when it gave up (``--timeout``, ``--idle-timeout`` or
SIGINT).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
READY_TOPIC = "/nre_probe/ready"
CAMERA_FRAME = "camera_optical"
STAMP_SEC0 = 1000  # frame k is stamped (STAMP_SEC0 + k, k * 1000) so the receiver can index it


def frame_pattern(index: int, height: int = 480, width: int = 640) -> np.ndarray:
    """Deterministic test image ``[height, width, 3]`` uint8 (RGB) for frame ``index``."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    r = (x + 3 * index) % 256
    g = (y + 5 * index) % 256
    b = (x ^ y ^ (7 * index)) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def frame_sha256(index: int, height: int = 480, width: int = 640) -> str:
    """SHA-256 (hex) of :func:`frame_pattern`'s bytes, row-major, as carried in ``Image.data``."""
    return hashlib.sha256(frame_pattern(index, height, width).tobytes()).hexdigest()


def camera_info_fields(height: int = 480, width: int = 640) -> dict[str, Any]:
    """The CameraInfo the publisher sends (pinhole, plumb_bob), as plain values."""
    fx = fy = 525.0
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    return {
        "height": height,
        "width": width,
        "distortion_model": "plumb_bob",
        "d": [0.1, -0.05, 0.001, 0.002, 0.0],
        "k": [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
        "r": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "p": [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
        "binning_x": 0,
        "binning_y": 0,
    }


def tf_fields(index: int) -> list[dict[str, Any]]:
    """The transforms of ``/tf`` message ``index``: ``map -> base_link``, moving along x and
    turning about z (quaternions ``(x, y, z, w)``, ROS order)."""
    yaw = 0.01 * index
    return [
        {
            "frame_id": "map",
            "child_frame_id": "base_link",
            "translation": [0.01 * index, 0.02, 0.0],
            "rotation": [0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0)],
        }
    ]


def tf_static_fields() -> list[dict[str, Any]]:
    """The ``/tf_static`` transforms: ``base_link -> camera_optical`` (optical axes)."""
    return [
        {
            "frame_id": "base_link",
            "child_frame_id": CAMERA_FRAME,
            "translation": [0.1, 0.0, 0.5],
            "rotation": [-0.5, 0.5, -0.5, 0.5],
        }
    ]


def _qos() -> dict[str, Any]:
    from rclpy.qos import (
        DurabilityPolicy,
        HistoryPolicy,
        QoSProfile,
        ReliabilityPolicy,
        qos_profile_sensor_data,
    )

    latched = QoSProfile(
        depth=1,
        history=HistoryPolicy.KEEP_LAST,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    reliable = QoSProfile(
        depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE
    )
    return {"sensor": qos_profile_sensor_data, "latched": latched, "reliable": reliable}


def _stamp(index: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=STAMP_SEC0 + index, nanosec=index * 1000)


def _transforms(fields: list[dict[str, Any]], stamp: Any) -> Any:
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    msg = TFMessage()
    for f in fields:
        t = TransformStamped()
        t.header.stamp = stamp
        t.header.frame_id = f["frame_id"]
        t.child_frame_id = f["child_frame_id"]
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = f[
            "translation"
        ]
        r = t.transform.rotation
        r.x, r.y, r.z, r.w = f["rotation"]
        msg.transforms.append(t)
    return msg


def _log(text: str) -> None:
    print(f"[probe {os.getpid()} {time.monotonic():.3f}] {text}", flush=True)


def run_publisher(args: argparse.Namespace) -> int:
    """Publisher side of the probe protocol (see module docstring). Exit code 0 on success."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import String
    from tf2_msgs.msg import TFMessage

    height, width = args.height, args.width
    frames = [frame_pattern(k, height, width).tobytes() for k in range(args.frames)]
    info = camera_info_fields(height, width)
    rclpy.init()
    node = rclpy.create_node("nre_probe_publisher")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    qos = _qos()
    image_pub = node.create_publisher(Image, IMAGE_TOPIC, qos["sensor"])
    info_pub = node.create_publisher(CameraInfo, INFO_TOPIC, qos["sensor"])
    tf_pub = node.create_publisher(TFMessage, TF_TOPIC, qos["reliable"])
    static_pub = node.create_publisher(TFMessage, TF_STATIC_TOPIC, qos["latched"])
    ready: list[str] = []

    def on_ready(msg: Any) -> None:
        ready.append(str(msg.data))

    node.create_subscription(String, READY_TOPIC, on_ready, qos["latched"])
    static_pub.publish(_transforms(tf_static_fields(), _stamp(0)))
    _log("STARTED publisher")
    code = 0
    try:
        deadline = time.monotonic() + args.timeout
        pubs = (image_pub, info_pub, tf_pub, static_pub)
        while not (ready and all(p.get_subscription_count() > 0 for p in pubs)):
            if time.monotonic() > deadline:
                _log(f"TIMEOUT waiting for subscriber (ready={ready})")
                return 3
            executor.spin_once(timeout_sec=0.02)
        _log("MATCHED subscriber")
        t0 = time.monotonic()
        for k in range(args.frames):
            stamp = _stamp(k)
            img = Image()
            img.header.stamp = stamp
            img.header.frame_id = CAMERA_FRAME
            img.height, img.width, img.encoding = height, width, "rgb8"
            img.is_bigendian, img.step = 0, 3 * width
            img.data = frames[k]
            cam = CameraInfo()
            cam.header.stamp = stamp
            cam.header.frame_id = CAMERA_FRAME
            cam.height, cam.width = info["height"], info["width"]
            cam.distortion_model = info["distortion_model"]
            cam.d, cam.k, cam.r, cam.p = info["d"], info["k"], info["r"], info["p"]
            image_pub.publish(img)
            info_pub.publish(cam)
            tf_pub.publish(_transforms(tf_fields(k), stamp))
            next_tick = t0 + (k + 1) / args.rate
            while (remaining := next_tick - time.monotonic()) > 0:
                executor.spin_once(timeout_sec=remaining)
        _log(f"PUBLISHED {args.frames} frames in {time.monotonic() - t0:.3f} s")
        end = time.monotonic() + args.linger
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        _log("INTERRUPTED publisher")
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return code


def _image_record(msg: Any) -> dict[str, Any]:
    data = msg.data
    return {
        "index": msg.header.stamp.sec - STAMP_SEC0,
        "stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec],
        "frame_id": msg.header.frame_id,
        "height": msg.height,
        "width": msg.width,
        "encoding": msg.encoding,
        "is_bigendian": msg.is_bigendian,
        "step": msg.step,
        "nbytes": len(data),
        "sha256": hashlib.sha256(memoryview(data).cast("B")).hexdigest(),
    }


def _info_record(msg: Any) -> dict[str, Any]:
    return {
        "stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec],
        "frame_id": msg.header.frame_id,
        "height": msg.height,
        "width": msg.width,
        "distortion_model": msg.distortion_model,
        "d": [float(v) for v in msg.d],
        "k": [float(v) for v in msg.k],
        "r": [float(v) for v in msg.r],
        "p": [float(v) for v in msg.p],
        "binning_x": msg.binning_x,
        "binning_y": msg.binning_y,
    }


def _tf_record(msg: Any) -> list[dict[str, Any]]:
    out = []
    for t in msg.transforms:
        tr, rot = t.transform.translation, t.transform.rotation
        out.append(
            {
                "stamp": [t.header.stamp.sec, t.header.stamp.nanosec],
                "frame_id": t.header.frame_id,
                "child_frame_id": t.child_frame_id,
                "translation": [tr.x, tr.y, tr.z],
                "rotation": [rot.x, rot.y, rot.z, rot.w],
            }
        )
    return out


def run_subscriber(args: argparse.Namespace) -> int:
    """Subscriber side of the probe protocol; writes ``args.out``. 0 if everything arrived."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import String
    from tf2_msgs.msg import TFMessage

    result: dict[str, Any] = {"images": [], "camera_infos": [], "tf": [], "tf_static": []}
    times: list[float] = []

    def keep(kind: str, record: Any) -> None:
        result[kind].append(record)
        times.append(time.monotonic())

    rclpy.init()
    node = rclpy.create_node("nre_probe_subscriber")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    qos = _qos()
    # Best effort like the sensor-data profile, but a history deep enough for every frame: what is
    # tested is the transport, not whether this Python thread is scheduled within 5 frames.
    camera_qos = QoSProfile(
        depth=max(args.frames, 5),
        history=HistoryPolicy.KEEP_LAST,
        reliability=ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )
    subs = [
        node.create_subscription(
            Image, IMAGE_TOPIC, lambda m: keep("images", _image_record(m)), camera_qos
        ),
        node.create_subscription(
            CameraInfo, INFO_TOPIC, lambda m: keep("camera_infos", _info_record(m)), camera_qos
        ),
        node.create_subscription(
            TFMessage, TF_TOPIC, lambda m: keep("tf", _tf_record(m)), qos["reliable"]
        ),
        node.create_subscription(
            TFMessage, TF_STATIC_TOPIC, lambda m: keep("tf_static", _tf_record(m)), qos["latched"]
        ),
    ]
    ready_pub = node.create_publisher(String, READY_TOPIC, qos["latched"])
    _log("STARTED subscriber")
    n = args.frames
    complete = False
    reason = "complete"
    try:
        deadline = time.monotonic() + args.timeout
        while not all(s.get_publisher_count() > 0 for s in subs):
            if time.monotonic() > deadline:
                raise TimeoutError("no publisher matched")
            executor.spin_once(timeout_sec=0.02)
        ready_pub.publish(String(data="ready"))
        _log("READY")
        while True:
            executor.spin_once(timeout_sec=0.05)
            complete = (
                len(result["images"]) >= n
                and len(result["camera_infos"]) >= n
                and len(result["tf"]) >= n
                and len(result["tf_static"]) >= 1
            )
            now = time.monotonic()
            if complete:
                break
            if now > deadline:
                raise TimeoutError(f"overall timeout {args.timeout} s")
            if times and now - times[-1] > args.idle_timeout:
                raise TimeoutError(f"nothing new for {args.idle_timeout} s")
    except TimeoutError as err:
        reason = f"timeout: {err}"
    except (KeyboardInterrupt, ExternalShutdownException):
        reason = "interrupted"
    finally:
        result["complete"] = complete
        result["reason"] = reason
        result["span_s"] = (times[-1] - times[0]) if times else None
        out = Path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(out)
        counts = {k: len(v) for k, v in result.items() if isinstance(v, list)}
        _log(f"DONE {reason} {counts}")
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0 if complete else 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nre_localization.testing.probes")
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("publish", "subscribe"):
        p = sub.add_parser(role)
        p.add_argument("--frames", type=int, default=30)
        p.add_argument("--height", type=int, default=480)
        p.add_argument("--width", type=int, default=640)
        p.add_argument("--timeout", type=float, default=60.0, help="give up after this many s")
    pub = sub.choices["publish"]
    pub.add_argument("--rate", type=float, default=30.0, help="frames per second")
    pub.add_argument("--linger", type=float, default=30.0, help="stay alive after sending (s)")
    sb = sub.choices["subscribe"]
    sb.add_argument("--out", required=True, help="JSON file to write")
    sb.add_argument("--idle-timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    return run_publisher(args) if args.role == "publish" else run_subscriber(args)


if __name__ == "__main__":
    sys.exit(main())
