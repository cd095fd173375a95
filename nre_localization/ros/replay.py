"""Bag replay: offline through the Localizer (no ROS graph), or live into a running graph.

Offline (``python -m nre_localization.ros.replay offline BAG --map MAP --out DIR``)
    Reads a ROS 1 ``.bag``, ROS 2 sqlite3 or mcap bag with ``rosbags``, feeds every image (paired
    with its camera_info by stamp, TF from ``/tf`` + ``/tf_static``) to a
    :class:`~nre_localization.localizer.Localizer` exactly as the node does, and writes
    ``DIR/trajectory.tum`` (camera -> map, TUM), ``DIR/trajectory.tum.declined`` (stamps the
    localiser declined), ``DIR/frames.csv`` (per-frame state, errors, time) and, when a
    ground-truth topic is present, ``DIR/metrics.json`` (median errors, recalls at the standard
    thresholds, decline rate, ATE without alignment) and ``DIR/trajectory.png``.

Live (``python -m nre_localization.ros.replay live BAG [--rate 1] [--loop N]``)
    Publishes the bag's messages as raw CDR bytes (no deserialisation, as ``ros2 bag play``)
    at ``rate`` x real time, ``/clock`` from the bag time (for ``use_sim_time``), and
    ``/tf_static`` as one TRANSIENT_LOCAL message holding every static transform. ``--loop N``
    replays N times: stamps then jump back, as with ``ros2 bag play --loop``.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nre_localization.datasets.bags import open_bag
from nre_localization.errors import DatasetError, NreError
from nre_localization.ros import conversions as cv
from nre_localization.ros.tf_buffer import TransformBuffer, TransformUnavailable

DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_INFO_TOPIC = "/camera/camera_info"
DEFAULT_GT_TOPIC = "/ground_truth/pose"


def _pose_of(msg: Any, msgtype: str) -> np.ndarray:
    """``T_parent_body`` from a PoseStamped / PoseWithCovarianceStamped / Odometry /
    TransformStamped message."""
    if msgtype.endswith("TransformStamped"):
        return cv.transform_msg_to_matrix(msg.transform)
    if msgtype.endswith("PoseStamped") and not msgtype.endswith("CovarianceStamped"):
        return cv.pose_msg_to_matrix(msg.pose)
    return cv.pose_msg_to_matrix(msg.pose.pose)  # PoseWithCovarianceStamped, Odometry


@dataclass
class OfflineResult:
    stamps: list[float] = field(default_factory=list)
    T_map_cam: list[np.ndarray | None] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    gt_T_map_cam: list[np.ndarray | None] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def replay_offline(
    bag: Path,
    localizer: Any,
    *,
    image_topic: str = DEFAULT_IMAGE_TOPIC,
    info_topic: str = DEFAULT_INFO_TOPIC,
    gt_topic: str | None = DEFAULT_GT_TOPIC,
    base_frame: str = "base_link",
    odom_frame: str = "odom",
    gt_frame: str | None = None,
    camera_frame: str | None = None,
    use_odometry: bool = True,
    pair_tolerance: float = 0.001,
    on_frame: Callable[[int, float, Any, np.ndarray | None], None] | None = None,
) -> OfflineResult:
    """Run ``localizer`` over every image of ``bag`` (see the module docstring).

    ``gt_frame``: body frame of the ground-truth poses (default ``base_frame``); the ground
    truth is moved to the camera through TF. ``on_frame(i, stamp, result, gt_T_map_cam)`` is
    called after each frame (progress printing).
    """
    reader = open_bag(bag)
    out = OfflineResult()
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        if image_topic not in topics:
            have = ", ".join(sorted(topics)) or "none"
            raise DatasetError(f"{bag}: no image topic {image_topic!r} (topics: {have})")
        if info_topic not in topics:
            raise DatasetError(f"{bag}: no camera_info topic {info_topic!r}")
        # Pass 1: TF, camera_info and ground truth (small messages) into memory.
        tf = TransformBuffer(cache_s=1e9)
        infos: dict[int, Any] = {}
        gt: list[tuple[int, np.ndarray]] = []
        small = [c for c in reader.connections if c.topic in ("/tf", "/tf_static", info_topic)]
        if gt_topic and gt_topic in topics:
            small += [c for c in reader.connections if c.topic == gt_topic]
        for conn, _, raw in reader.messages(connections=small):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic in ("/tf", "/tf_static"):
                tf.add_tf_message(msg, static=conn.topic == "/tf_static")
            elif conn.topic == info_topic:
                infos[cv.stamp_to_ns(msg.header.stamp)] = msg
            else:
                gt.append((cv.stamp_to_ns(msg.header.stamp), _pose_of(msg, conn.msgtype)))
        info_stamps = np.array(sorted(infos), dtype=np.int64)
        gt.sort(key=lambda x: x[0])
        gt_frame = gt_frame or base_frame
        caminfo = cv.CameraInfoConverter()
        rejected: dict[str, int] = {}
        # Pass 2: images in time order.
        conns = [c for c in reader.connections if c.topic == image_topic]
        for i, (conn, _, raw) in enumerate(reader.messages(connections=conns)):
            msg = reader.deserialize(raw, conn.msgtype)
            stamp_ns = cv.stamp_to_ns(msg.header.stamp)
            stamp = stamp_ns * 1e-9
            t0 = time.perf_counter()
            try:
                j = int(np.argmin(np.abs(info_stamps - stamp_ns))) if info_stamps.size else -1
                if j < 0 or abs(int(info_stamps[j]) - stamp_ns) > pair_tolerance * 1e9:
                    raise cv.MessageRejected("no_camera_info", f"no camera_info at {stamp:.6f}")
                if conn.msgtype.endswith("CompressedImage"):
                    rgb = cv.compressed_to_rgb(msg)
                else:
                    rgb = cv.image_to_rgb(msg)
                cam = caminfo.convert(infos[int(info_stamps[j])])
                cv.check_image_matches(rgb, cam)
                rgb = cam.apply(rgb)
                cam_frame = camera_frame or msg.header.frame_id.lstrip("/")
                try:
                    t_base_cam = tf.lookup(base_frame, cam_frame, stamp_ns)
                except TransformUnavailable as err:
                    raise cv.MessageRejected("tf_unavailable", str(err)) from None
                t_odom_cam = None
                if use_odometry:
                    try:
                        t_odom_cam = tf.lookup(odom_frame, base_frame, stamp_ns) @ t_base_cam
                    except TransformUnavailable:
                        t_odom_cam = None
                res = localizer.process(rgb, cam.spec, stamp, T_odom_cam=t_odom_cam)
            except cv.MessageRejected as err:
                rejected[err.kind] = rejected.get(err.kind, 0) + 1
                res = None
            except Exception as err:  # as the node: one failing frame never ends the replay
                rejected["localizer_error"] = rejected.get("localizer_error", 0) + 1
                out.errors.append(f"{stamp:.6f}: {type(err).__name__}: {err}".splitlines()[0])
                res = None
            dt = time.perf_counter() - t0
            gt_cam = _gt_at(gt, stamp_ns, tf, gt_frame, camera_frame or msg.header.frame_id)
            t_map_cam = None
            if res is not None and res.reliable:
                t_map_cam = cv.invert_T(res.T_cam_world)
            out.stamps.append(stamp)
            out.T_map_cam.append(t_map_cam)
            out.states.append(res.state.value if res is not None else "rejected")
            out.reasons.append(res.reason if res is not None else "rejected")
            out.seconds.append(dt)
            out.gt_T_map_cam.append(gt_cam)
            if on_frame is not None:
                on_frame(i, stamp, res, gt_cam)
        out.rejected = rejected
    finally:
        reader.close()
    out.summary = summarize(out)
    return out


def _gt_at(
    gt: list[tuple[int, np.ndarray]], stamp_ns: int, tf: TransformBuffer, gt_frame: str, cam: str
) -> np.ndarray | None:
    """Ground-truth ``T_map_cam`` at ``stamp_ns`` (nearest sample within 20 ms)."""
    if not gt:
        return None
    stamps = np.array([s for s, _ in gt], dtype=np.int64)
    j = int(np.argmin(np.abs(stamps - stamp_ns)))
    if abs(int(stamps[j]) - stamp_ns) > 20_000_000:
        return None
    try:
        t_body_cam = tf.lookup(gt_frame, cam.lstrip("/"), stamp_ns)
    except TransformUnavailable:
        return None
    return gt[j][1] @ t_body_cam


def summarize(res: OfflineResult) -> dict:
    """Metrics over frames with ground truth (see :mod:`nre_localization.evaluation.metrics`)."""
    from nre_localization.evaluation.metrics import evaluate_poses, latency_stats

    names = [f"{s:.6f}" for s in res.stamps]
    pred = {n: cv.invert_T(t) for n, t in zip(names, res.T_map_cam, strict=True) if t is not None}
    gt = {n: cv.invert_T(g) for n, g in zip(names, res.gt_T_map_cam, strict=True) if g is not None}
    declined = [n for n, t in zip(names, res.T_map_cam, strict=True) if t is None]
    out: dict = {"n_frames": len(names), "rejected": dict(res.rejected)}
    if gt:
        queries = [n for n in names if n in gt]
        summ, _ = evaluate_poses(
            {k: v for k, v in pred.items() if k in gt},
            gt,
            [d for d in declined if d in gt],
            queries,
        )
        out.update(summ)
    out["latency"] = latency_stats(res.seconds)
    out["states"] = {s: res.states.count(s) for s in sorted(set(res.states))}
    return out


def write_offline_outputs(res: OfflineResult, out_dir: Path, title: str = "") -> dict[str, Path]:
    """TUM trajectory, declined list, per-frame CSV, metrics JSON, trajectory plot."""
    from nre_localization.datasets.tum import write_trajectory

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    ok = [i for i, t in enumerate(res.T_map_cam) if t is not None]
    tum = out_dir / "trajectory.tum"
    write_trajectory(
        tum,
        np.array([res.stamps[i] for i in ok]),
        np.array([res.T_map_cam[i] for i in ok]).reshape(-1, 4, 4),
    )
    paths["tum"] = tum
    declined = out_dir / "trajectory.tum.declined"
    declined.write_text(
        "".join(f"{s:.6f}\n" for s, t in zip(res.stamps, res.T_map_cam, strict=True) if t is None)
    )
    paths["declined"] = declined
    rows = out_dir / "frames.csv"
    with open(rows, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stamp", "state", "localized", "t_err_m", "r_err_deg", "ms", "reason"])
        for k in range(len(res.stamps)):
            te, re_ = _errors(res.T_map_cam[k], res.gt_T_map_cam[k])
            w.writerow(
                [
                    f"{res.stamps[k]:.6f}",
                    res.states[k],
                    int(res.T_map_cam[k] is not None),
                    f"{te:.4f}",
                    f"{re_:.3f}",
                    f"{res.seconds[k] * 1e3:.1f}",
                    res.reasons[k],
                ]
            )
    paths["frames"] = rows
    metrics = out_dir / "metrics.json"
    metrics.write_text(json.dumps(_json_safe(res.summary), indent=2) + "\n")
    paths["metrics"] = metrics
    gts = [g for g in res.gt_T_map_cam if g is not None]
    if gts:
        from nre_localization.evaluation.plots import plot_trajectory

        keep = [k for k, g in enumerate(res.gt_T_map_cam) if g is not None]
        cg = np.array([res.gt_T_map_cam[k][:3, 3] for k in keep])  # type: ignore[index]
        cp = np.array(
            [
                res.T_map_cam[k][:3, 3] if res.T_map_cam[k] is not None else [np.nan] * 3  # type: ignore[index]
                for k in keep
            ]
        )
        paths["plot"] = plot_trajectory(cg, cp, out_dir / "trajectory.png", title=title)
    return paths


def _errors(t_map_cam: np.ndarray | None, gt: np.ndarray | None) -> tuple[float, float]:
    """(camera-centre error m, rotation error deg); inf when either pose is missing."""
    if t_map_cam is None or gt is None:
        return math.inf, math.inf
    from nre_localization.evaluation.metrics import pose_errors

    t, r = pose_errors(cv.invert_T(t_map_cam), cv.invert_T(gt))
    return float(t), float(r)


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# ------------------------------------------------------------------------------------------
# Live replay
# ------------------------------------------------------------------------------------------


def _msg_class(msgtype: str) -> Any:
    """``pkg/msg/Name`` -> the rclpy message class (``ImportError`` if the package is absent)."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def replay_live(
    bag: Path,
    *,
    rate: float = 1.0,
    loops: int = 1,
    clock: bool = True,
    topics: Sequence[str] | None = None,
    wait_for: Sequence[str] = (),
    wait_timeout: float = 30.0,
    start_delay: float = 0.0,
    linger: float = 0.2,
    node_name: str = "nre_bag_player",
    log: Callable[[str], None] | None = print,
) -> dict[str, int]:
    """Publish the bag into the live graph (needs rclpy; see the module docstring).

    ``topics``: only these (default all); ``wait_for``: topics that must have a subscriber
    before playback starts (so best-effort frames are not sent into the void); ``linger``: s to
    stay alive after the last message (reliable repairs, late joiners of ``/tf_static``). Returns
    ``{topic: messages published}``. ``rclpy.init()`` is called if needed.
    """
    import rclpy
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    if rate <= 0:
        raise NreError(f"replay rate must be positive, got {rate}")
    own_init = not rclpy.ok()
    if own_init:
        rclpy.init()
    node = rclpy.create_node(node_name)
    reader = open_bag(bag)
    counts: dict[str, int] = {}
    try:
        if not reader.is2:
            raise DatasetError(
                f"{bag}: live replay needs a ROS 2 bag (convert with `rosbags-convert`); offline "
                "replay reads ROS 1 bags directly"
            )
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        pubs: dict[str, Any] = {}
        latched = QoSProfile(
            depth=1,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        normal = QoSProfile(
            depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE
        )
        for c in conns:
            if c.topic in pubs:
                continue
            cls = _msg_class(c.msgtype)
            pubs[c.topic] = node.create_publisher(
                cls, c.topic, latched if c.topic == "/tf_static" else normal
            )
        clock_pub = None
        if clock:
            from rosgraph_msgs.msg import Clock

            clock_pub = node.create_publisher(Clock, "/clock", normal)
        # Static TF: one latched message with every static transform of the bag.
        static_conns = [c for c in conns if c.topic == "/tf_static"]
        static_msg = None
        if static_conns:
            from tf2_msgs.msg import TFMessage

            transforms: dict[str, Any] = {}
            for c, _, raw in reader.messages(connections=static_conns):
                m = reader.deserialize(raw, c.msgtype)
                for ts in m.transforms:
                    transforms[ts.child_frame_id] = ts
            static_msg = TFMessage(transforms=[_to_rclpy(t) for t in transforms.values()])

        deadline = time.monotonic() + wait_timeout
        for topic in wait_for:
            while node.count_subscribers(topic) == 0:
                if time.monotonic() > deadline:
                    raise NreError(f"no subscriber on {topic} after {wait_timeout:g} s")
                time.sleep(0.05)
        if start_delay > 0:
            time.sleep(start_delay)
        if static_msg is not None:
            pubs["/tf_static"].publish(static_msg)
            counts["/tf_static"] = 1
        dyn = [c for c in conns if c.topic != "/tf_static"]
        span_ns = reader.end_time - reader.start_time
        for loop in range(loops):
            wall0 = time.monotonic()
            t0 = reader.start_time
            last_clock = -1.0
            for c, t_ns, raw in reader.messages(connections=dyn):
                target = wall0 + (t_ns - t0) * 1e-9 / rate
                while True:
                    now = time.monotonic()
                    if clock_pub is not None and now - last_clock >= 0.01:
                        bag_now = t0 + int(min(now - wall0, (t_ns - t0) * 1e-9 / rate) * rate * 1e9)
                        _publish_clock(clock_pub, bag_now)
                        last_clock = now
                    if now >= target:
                        break
                    time.sleep(min(0.005, target - now))
                if clock_pub is not None:
                    _publish_clock(clock_pub, t_ns)
                pubs[c.topic].publish(bytes(raw))
                counts[c.topic] = counts.get(c.topic, 0) + 1
            if log is not None and loops > 1:
                log(f"loop {loop + 1}/{loops} done ({span_ns * 1e-9:.1f} s of bag time)")
        time.sleep(max(linger, 0.0))  # reliable repairs, latched /tf_static for late joiners
    finally:
        reader.close()
        node.destroy_node()
        if own_init:
            rclpy.try_shutdown()
    return counts


def _publish_clock(pub: Any, stamp_ns: int) -> None:
    from rosgraph_msgs.msg import Clock

    msg = Clock()
    cv.set_stamp(msg.clock, stamp_ns)
    pub.publish(msg)


def _to_rclpy(ts: Any) -> Any:
    """A rosbags TransformStamped -> rclpy TransformStamped."""
    from geometry_msgs.msg import TransformStamped

    out = TransformStamped()
    out.header.frame_id = ts.header.frame_id
    out.header.stamp.sec = int(ts.header.stamp.sec)
    out.header.stamp.nanosec = int(ts.header.stamp.nanosec)
    out.child_frame_id = ts.child_frame_id
    cv.fill_transform(out.transform, cv.transform_msg_to_matrix(ts.transform))
    return out


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nre-replay", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    off = sub.add_parser("offline", help="localise every image of a bag, no ROS graph")
    off.add_argument("bag", type=Path)
    off.add_argument("--map", type=Path, required=True, help=".nremap file")
    off.add_argument("--weights", type=Path, help="model weights (default: shipped)")
    off.add_argument("--device", default="auto")
    off.add_argument("--out", type=Path, required=True, help="output folder")
    off.add_argument("--image-topic", default=DEFAULT_IMAGE_TOPIC)
    off.add_argument("--info-topic", default=DEFAULT_INFO_TOPIC)
    off.add_argument("--gt-topic", default=DEFAULT_GT_TOPIC, help="ground-truth pose topic")
    off.add_argument("--gt-frame", help="body frame of the ground truth (default: base frame)")
    off.add_argument("--base-frame", default="base_link")
    off.add_argument("--odom-frame", default="odom")
    off.add_argument("--no-odometry", action="store_true", help="ignore odom -> base TF")
    live = sub.add_parser("live", help="publish a bag into the running ROS graph")
    live.add_argument("bag", type=Path)
    live.add_argument("--rate", type=float, default=1.0, help="x real time")
    live.add_argument("--loop", type=int, default=1, help="play this many times")
    live.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    live.add_argument("--topics", nargs="*", help="only these topics")
    live.add_argument("--wait-for", nargs="*", default=[], help="topics needing a subscriber")
    live.add_argument("--wait-timeout", type=float, default=30.0)
    live.add_argument("--start-delay", type=float, default=0.0, help="s to wait before playing")
    live.add_argument("--linger", type=float, default=0.2, help="s to stay up after the end")
    a = ap.parse_args(argv)
    try:
        if a.mode == "offline":
            from nre_localization.localizer import Localizer

            loc = Localizer.from_files(a.map, a.weights, a.device)

            def show(i: int, stamp: float, res: Any, gt: np.ndarray | None) -> None:
                if res is None:
                    print(f"[{i:4d}] {stamp:.3f} rejected")
                    return
                te, re_ = _errors(cv.invert_T(res.T_cam_world) if res.reliable else None, gt)
                err = f"err {te * 100:6.1f} cm {re_:5.2f} deg" if math.isfinite(te) else "no pose"
                print(
                    f"[{i:4d}] {stamp:.3f} {res.state.value:8s} {err} "
                    f"{res.timings.get('total', 0) * 1e3:6.0f} ms"
                )

            res = replay_offline(
                a.bag,
                loc,
                image_topic=a.image_topic,
                info_topic=a.info_topic,
                gt_topic=a.gt_topic,
                gt_frame=a.gt_frame,
                base_frame=a.base_frame,
                odom_frame=a.odom_frame,
                use_odometry=not a.no_odometry,
                on_frame=show,
            )
            paths = write_offline_outputs(res, a.out, title=str(a.bag.name))
            s = res.summary
            rec = s.get("recall", {})
            print(
                f"{s['n_frames']} frames, localised {s.get('n_localized', '?')}, median error "
                f"{_fmt_m(s.get('median_translation_m_localized'))} / "
                f"{_fmt_deg(s.get('median_rotation_deg_localized'))}, recall@(5cm,5deg) "
                f"{rec.get('0.05m_5deg', float('nan')):.2f}; outputs in {paths['tum'].parent}"
            )
        else:
            counts = replay_live(
                a.bag,
                rate=a.rate,
                loops=a.loop,
                clock=not a.no_clock,
                topics=a.topics,
                wait_for=a.wait_for,
                wait_timeout=a.wait_timeout,
                start_delay=a.start_delay,
                linger=a.linger,
            )
            print("published " + ", ".join(f"{t}: {n}" for t, n in sorted(counts.items())))
    except NreError as err:
        print(f"nre-replay: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _fmt_m(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f} cm"


def _fmt_deg(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} deg"


if __name__ == "__main__":
    sys.exit(main())
