#!/usr/bin/env python3
"""End-to-end latency of the localisation node: Image message in -> pose message out.

Scene: the map of the demo (even frames of ``demo_data/tum_fr2_desk``, ~1100 points), queries its
odd frames at 640x480 replayed back and forth with odometry, so the localiser stays in the
tracking state (the first frame is global and excluded). ``--points`` caps the map points handed
to the solver per frame (default 1000).

Modes:
- ``ros`` (needs rclpy + tf2_msgs): the node runs as its own process; this process publishes
  ``Image`` + ``CameraInfo`` + TF over DDS and times each frame from just before ``publish()`` to
  the arrival of its ``PoseWithCovarianceStamped`` (so both DDS hops are included). A second phase
  publishes ``--stream-frames`` frames at ``--rate`` Hz and reports (``stream`` in the JSON) the
  frames published and the publisher's real rate, the poses received and the output rate
  (``output_rate_hz``: between the first and the last pose; ``sustained_rate_hz``: poses / (last
  pose arrival - first publish)), the node's own counters from ``/diagnostics``
  (received, dropped: the node keeps only the newest pending frame, processed, declined), the
  frames lost in transport (published - received by the node), the latency under that load, and
  ``no_frame_dropped`` (every frame got its pose).
- ``inproc`` (no ROS needed): the node's per-frame path in one process, on a
  message object with the Image fields: decode (``image_to_rgb``) -> undistort -> Localizer ->
  covariance conversion -> pose fields. Everything the node does except the DDS transport
  (measured here: about 2 ms for a 640x480 rgb8 image on this machine's shared memory).
- ``auto``: ``ros`` when rclpy and tf2_msgs import, else ``inproc``.

Writes ``build/bench/bench_node_<mode>_<device>.json`` (or ``--out``) and prints a Markdown
summary.

    .venv/bin/python benchmarks/bench_node.py                       # this machine (CPU)
    benchmarks/device_node_bench.sh $OUT/node_dds_cuda.json         # GPU host, both modes (ROS
                                                                    # from carried wheels)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DATA = ROOT / "demo_data" / "tum_fr2_desk"
OUT = ROOT / "build" / "bench"
# /diagnostics counters of the node (nre_localization.ros.diagnostics.NodeStats.snapshot).
_DIAG_COUNTERS = (
    "frames_received",
    "frames_processed",
    "frames_dropped",
    "poses_published",
    "rejected_total",
)


def _pct(a: list[float]) -> dict[str, float | None]:
    x = np.asarray(a, dtype=np.float64) * 1e3
    if x.size == 0:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "n": 0}
    return {
        "p50_ms": float(np.percentile(x, 50)),
        "p90_ms": float(np.percentile(x, 90)),
        "p99_ms": float(np.percentile(x, 99)),
        "mean_ms": float(x.mean()),
        "n": int(x.size),
    }


def get_map(device: str, path: Path | None) -> Path:
    """The demo map (built here and cached under build/bench unless ``path`` is given)."""
    if path is not None:
        return path
    from nre_localization.maps.builder import BuildConfig, build_map, load_scene
    from nre_localization.maps.format import load_map, save_map
    from nre_localization.model.network import load_default_model

    model = load_default_model(device)
    out = OUT / "fr2_desk.nremap"
    if out.is_file():
        try:
            load_map(out, expected_fingerprint=model.fingerprint(), require_descriptors=True)
            return out
        except Exception:  # stale cache (other model): rebuild
            pass
    scene = load_scene(DATA, exclude=DATA / "query_frames.txt")
    m, _ = build_map(scene, model, BuildConfig(device=device))
    OUT.mkdir(parents=True, exist_ok=True)
    return save_map(m, out)


@dataclass
class Frames:
    """Query frames: stamps (ns), RGB images, odometry ``T_odom_base``, CameraInfo values."""

    stamps: list[int] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    odom: list[np.ndarray] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def load_frames() -> Frames:
    """Frames from the demo data, cached in ``build/bench/frames.npz`` (so a host without the
    dataset readers' dependencies, e.g. scipy or PyYAML on the GPU host, can run from the cache)."""
    cache = OUT / "frames.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        info = {k[5:]: z[k] for k in z.files if k.startswith("info_")}
        for k in ("width", "height"):
            info[k] = int(info[k])
        info["distortion_model"] = str(info["distortion_model"])
        return Frames([int(x) for x in z["stamps"]], list(z["images"]), list(z["odom"]), info)
    from nre_localization.datasets.common import read_rgb
    from nre_localization.datasets.tum import (
        associate,
        read_camera_yaml,
        read_image_list,
        read_trajectory,
    )
    from nre_localization.ros import conversions as cv
    from nre_localization.ros.bag_tools import DEFAULT_T_BASE_CAM, OdomDrift, camera_info_values

    names = set((DATA / "query_frames.txt").read_text().split())
    entries = [(s, n) for s, n in read_image_list(DATA / "rgb.txt") if n in names]
    cam = read_camera_yaml(DATA / "camera.yaml")
    stamps = np.array([s for s, _ in entries])
    gt = associate(read_trajectory(DATA / "groundtruth.txt"), stamps)
    drift = OdomDrift()
    f = Frames(info=camera_info_values(cam))
    for k, (s, n) in enumerate(entries):
        f.stamps.append(round(s * 1e9))
        f.images.append(read_rgb(DATA / n, cam))
        t_map_base = gt[k] @ cv.invert_T(DEFAULT_T_BASE_CAM)
        f.odom.append(cv.invert_T(drift.t_map_odom(s - stamps[0])) @ t_map_base)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        cache,
        stamps=np.array(f.stamps, dtype=np.int64),
        images=np.stack(f.images),
        odom=np.stack(f.odom),
        **{f"info_{k}": np.asarray(v) for k, v in f.info.items()},
    )
    return f


def schedule(frames: Frames, n: int) -> list[tuple[int, int]]:
    """``n`` (frame index, stamp ns) pairs: the sequence forth and back, stamps increasing."""
    k = len(frames.stamps)
    order = list(range(k)) + list(range(k - 2, 0, -1))
    out, t = [], frames.stamps[0]
    for i in range(n):
        out.append((order[i % len(order)], t))
        t += 100_000_000
    return out


# ------------------------------------------------------------------------------------------
def bench_inproc(args: argparse.Namespace, map_path: Path) -> dict[str, Any]:
    import torch

    from nre_localization.localizer import Localizer, LocalizerConfig, resolve_device
    from nre_localization.ros import conversions as cv
    from nre_localization.ros.bag_tools import DEFAULT_T_BASE_CAM as t_base_cam

    @dataclass
    class Msg:  # the fields of sensor_msgs/Image / CameraInfo the node reads
        height: int = 0
        width: int = 0
        encoding: str = ""
        is_bigendian: int = 0
        step: int = 0
        data: bytes = b""

    @dataclass
    class Roi:
        x_offset: int = 0
        y_offset: int = 0
        width: int = 0
        height: int = 0

    @dataclass
    class Info:
        width: int
        height: int
        distortion_model: str
        d: Any
        k: Any
        p: Any
        binning_x: int = 0
        binning_y: int = 0
        roi: Roi = field(default_factory=Roi)

    @dataclass
    class V3:
        x: float = 0.0
        y: float = 0.0
        z: float = 0.0
        w: float = 1.0

    @dataclass
    class Pose:
        position: V3 = field(default_factory=V3)
        orientation: V3 = field(default_factory=V3)

    dev = resolve_device(args.device)
    loc = Localizer.from_files(map_path, None, dev, LocalizerConfig(max_map_points=args.points))
    frames = load_frames()
    fi = frames.info
    info = Info(fi["width"], fi["height"], fi["distortion_model"], fi["d"], fi["k"], fi["p"])
    conv = cv.CameraInfoConverter()
    msgs = []
    for img in frames.images:
        m = Msg()
        cv.rgb_to_image_fields(img, "rgb8").fill(m)
        msgs.append(m)
    lat, stages, paths, npts = [], {}, [], []
    sched = schedule(frames, args.frames + args.warmup)
    for j, (i, stamp) in enumerate(sched):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        rgb = cv.image_to_rgb(msgs[i])
        cam = conv.convert(info)
        cv.check_image_matches(rgb, cam)
        rgb = cam.apply(rgb)
        t_odom_cam = frames.odom[i] @ t_base_cam
        res = loc.process(rgb, cam.spec, stamp * 1e-9, T_odom_cam=t_odom_cam)
        if res.reliable:
            cov = cv.engine_cov_to_ros(res.T_cam_world, res.covariance, t_base_cam)
            cv.fill_pose(Pose(), cv.invert_T(t_base_cam @ res.T_cam_world))
            _ = cov.ravel().tolist()
        dt = time.perf_counter() - t0
        if j < args.warmup:
            continue
        paths.append(res.path if res.reliable else "declined")
        if res.reliable and res.path == "tracking":
            lat.append(dt)
            npts.append(res.n_points)
            for k, v in res.timings.items():
                stages.setdefault(k, []).append(v)
    return {
        "mode": "inproc",
        "latency_tracking": _pct(lat),
        "stages_p50_ms": {k: float(np.median(v) * 1e3) for k, v in sorted(stages.items())},
        "paths": {p: paths.count(p) for p in sorted(set(paths))},
        "points_per_frame_median": float(np.median(npts)) if npts else None,
        "sustained_rate_hz": (1.0 / float(np.mean(lat))) if lat else None,
    }


# ------------------------------------------------------------------------------------------
def bench_ros(args: argparse.Namespace, map_path: Path) -> dict[str, Any]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    from nre_localization.localizer import resolve_device
    from nre_localization.ros import conversions as cv
    from nre_localization.ros.bag_tools import CAMERA_FRAME, DEFAULT_T_BASE_CAM
    from nre_localization.testing import (
        ChildProcessGroup,
        claim_domain_id,
        clean_stale_fastdds_shm,
        ros_env,
        wait_until,
    )
    from nre_localization.testing.spinning import BackgroundSpin

    dev = str(resolve_device(args.device))
    frames = load_frames()
    clean_stale_fastdds_shm()
    result: dict[str, Any] = {"mode": "ros"}
    with claim_domain_id() as lease:
        env = ros_env(lease.domain_id, log_dir=OUT / "ros_log")
        os.environ.update({k: v for k, v in env.items() if k.startswith(("ROS_", "RMW_", "FAST"))})
        os.environ["AMENT_PREFIX_PATH"] = env.get("AMENT_PREFIX_PATH", "")
        with ChildProcessGroup(env, OUT / "logs", cwd=ROOT) as group:
            node_proc = group.start_module(
                "nre_localization.ros.node", "--ros-args",
                "--params-file", str(ROOT / "config" / "nre_localization.yaml"),
                "-p", f"map_path:={map_path}", "-p", f"device:={dev}",
                "-p", f"max_map_points:={args.points}", "-p", "diagnostics_period:=0.2",
                "-r", "image:=/camera/image_raw", "-r", "camera_info:=/camera/camera_info",
                name="node",
            )  # fmt: skip
            rclpy.init()
            node = rclpy.create_node("nre_bench")
            rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            latched = QoSProfile(
                depth=1,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL,
            )
            pub_img = node.create_publisher(Image, "/camera/image_raw", rel)
            pub_info = node.create_publisher(CameraInfo, "/camera/camera_info", rel)
            pub_tf = node.create_publisher(TFMessage, "/tf", rel)
            pub_static = node.create_publisher(TFMessage, "/tf_static", latched)
            lock = threading.Lock()
            arrived: dict[int, float] = {}
            diag: dict[str, str] = {}
            diag_seq = [0]  # /diagnostics messages of the node received so far

            def on_pose(m: Any) -> None:
                with lock:
                    arrived[cv.stamp_to_ns(m.header.stamp)] = time.perf_counter()

            def on_diag(m: Any) -> None:
                with lock:
                    for st in m.status:
                        if st.name.endswith(": localizer"):
                            diag.clear()
                            diag.update({kv.key: kv.value for kv in st.values})
                            diag_seq[0] += 1

            # Transient local like the node's publisher; a deep queue, so that no pose of the
            # 30 Hz stream is overwritten in this process before the callback takes it.
            pose_qos = QoSProfile(
                depth=100,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL,
            )
            node.create_subscription(
                PoseWithCovarianceStamped, "/pose_with_covariance", on_pose, pose_qos
            )
            node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, rel)
            spinner = BackgroundSpin(node, 0.01)
            try:
                ts = TransformStamped()
                ts.header.frame_id, ts.child_frame_id = "base_link", CAMERA_FRAME
                cv.fill_transform(ts.transform, DEFAULT_T_BASE_CAM)
                pub_static.publish(TFMessage(transforms=[ts]))
                wait_until(lambda: bool(diag) or not node_proc.running(), 180.0, what="node up")
                if not node_proc.running():
                    raise RuntimeError(node_proc.output()[-2000:])
                fi = frames.info

                def send(i: int, stamp: int) -> float:
                    tf = TransformStamped()
                    cv.set_stamp(tf.header.stamp, stamp)
                    tf.header.frame_id, tf.child_frame_id = "odom", "base_link"
                    cv.fill_transform(tf.transform, frames.odom[i])
                    pub_tf.publish(TFMessage(transforms=[tf]))
                    info = CameraInfo()
                    cv.set_stamp(info.header.stamp, stamp)
                    info.header.frame_id = CAMERA_FRAME
                    info.width, info.height = int(fi["width"]), int(fi["height"])
                    info.distortion_model = fi["distortion_model"]
                    info.d = [float(x) for x in fi["d"]]
                    info.k = [float(x) for x in fi["k"]]
                    info.r = [float(x) for x in fi["r"]]
                    info.p = [float(x) for x in fi["p"]]
                    img = Image()
                    cv.set_stamp(img.header.stamp, stamp)
                    img.header.frame_id = CAMERA_FRAME
                    cv.rgb_to_image_fields(frames.images[i], "rgb8").fill(img)
                    pub_info.publish(info)
                    t = time.perf_counter()
                    pub_img.publish(img)
                    return t

                def done_without_pose(stamp: int) -> bool:
                    """The node finished ``stamp`` (diagnostics) and no pose came: declined."""
                    with lock:
                        if stamp in arrived:
                            return False
                        last = float(diag.get("last_frame_stamp", 0.0) or 0.0)
                    return last >= stamp * 1e-9 - 1e-6

                # Phase 1: one frame at a time (latency).
                lat = []
                sched = schedule(frames, args.frames + args.warmup)
                for j, (i, stamp) in enumerate(sched):
                    t_pub = send(i, stamp)
                    t_done: list[float] = []

                    def finished(s: int = stamp, t_done: list[float] = t_done) -> bool:
                        if s in arrived:
                            return True
                        if done_without_pose(s):  # give a pose in flight 50 ms to land
                            t_done.append(time.perf_counter())
                            return time.perf_counter() - t_done[0] > 0.05
                        return False

                    try:
                        wait_until(finished, 30.0, interval=0.0005)
                    except AssertionError:
                        continue
                    if j >= args.warmup and stamp in arrived:
                        lat.append(arrived[stamp] - t_pub)
                time.sleep(0.5)
                result["latency_tracking"] = _pct(lat)
                result["declined"] = args.frames - len(lat)
                with lock:
                    result["node_diagnostics"] = dict(diag)

                # Phase 2: a stream at --rate Hz (the node keeps only the newest pending frame:
                # the rest are dropped and counted on /diagnostics).
                def counters() -> dict[str, int]:
                    with lock:
                        return {k: int(float(diag.get(k, 0) or 0)) for k in _DIAG_COUNTERS}

                def fresh_diag(n: int = 2, timeout: float = 3.0) -> None:
                    with lock:
                        seq0 = diag_seq[0]
                    with contextlib.suppress(AssertionError):
                        wait_until(lambda: diag_seq[0] >= seq0 + n, timeout, what="diagnostics")

                fresh_diag()
                c0 = counters()
                t_last = sched[-1][1]
                n = args.stream_frames
                sched2 = [
                    (i, t_last + (k + 1) * 100_000_000)
                    for k, (i, _) in enumerate(schedule(frames, n))
                ]
                sent: dict[int, float] = {}
                lateness = []
                t0 = time.perf_counter()
                for k, (i, stamp) in enumerate(sched2):
                    target = t0 + k / args.rate
                    while (now := time.perf_counter()) < target:
                        time.sleep(min(0.0005, target - now))
                    lateness.append(time.perf_counter() - target)
                    sent[stamp] = send(i, stamp)
                t_sent_end = time.perf_counter()

                def stream_poses() -> list[int]:
                    with lock:
                        return [s for s in sent if s in arrived]

                # Drain: until the last frame is answered or nothing new arrives for 1 s.
                last_n, last_change = -1, time.perf_counter()
                while time.perf_counter() - t_sent_end < 15.0:
                    got = stream_poses()
                    if sched2[-1][1] in arrived:
                        break
                    if len(got) != last_n:
                        last_n, last_change = len(got), time.perf_counter()
                    elif time.perf_counter() - last_change > 1.0:
                        break
                    time.sleep(0.02)
                fresh_diag()
                c1 = counters()
                got = stream_poses()
                with lock:
                    t_arr = [arrived[s] for s in got]
                    lat2 = [arrived[s] - sent[s] for s in got]
                d = {k: c1[k] - c0[k] for k in _DIAG_COUNTERS}
                t_arr.sort()
                pub_span = max(sent.values()) - min(sent.values()) if n > 1 else 0.0
                out_span = t_arr[-1] - t_arr[0] if len(t_arr) > 1 else 0.0
                window = (t_arr[-1] - t0) if t_arr else 0.0
                result["stream"] = {
                    "input_rate_hz": args.rate,
                    "frames_sent": n,
                    "publish_rate_hz": (n - 1) / pub_span if pub_span > 0 else None,
                    "publish_lateness_max_ms": float(max(lateness) * 1e3) if lateness else None,
                    "poses_received": len(got),
                    "frames_without_pose": n - len(got),
                    "frames_received_by_node": d["frames_received"],
                    "frames_lost_in_transport": n - d["frames_received"],
                    "frames_dropped_by_node": d["frames_dropped"],
                    "frames_processed_by_node": d["frames_processed"],
                    "poses_published_by_node": d["poses_published"],
                    "frames_declined_by_node": d["frames_processed"] - d["poses_published"],
                    "messages_rejected_by_node": d["rejected_total"],
                    # poses per second between the first and the last pose received
                    "output_rate_hz": (len(t_arr) - 1) / out_span if out_span > 0 else 0.0,
                    # poses received / (last pose arrival - first frame published)
                    "sustained_rate_hz": len(t_arr) / window if window > 0 else 0.0,
                    "no_frame_dropped": len(got) == n and d["frames_dropped"] == 0,
                    "latency": _pct(lat2),
                }
            finally:
                spinner.stop()
                node.destroy_node()
                rclpy.try_shutdown()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("auto", "ros", "inproc"), default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--frames", type=int, default=40, help="timed frames")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--points", type=int, default=1000, help="max map points per frame")
    ap.add_argument("--rate", type=float, default=30.0, help="Hz of the streaming phase (ros)")
    ap.add_argument("--stream-frames", type=int, default=60)
    ap.add_argument("--map", type=Path, help="use this map instead of building the demo map")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument(
        "--out", type=Path, help="JSON path (default build/bench/bench_node_<mode>_<device>.json)"
    )
    a = ap.parse_args(argv)
    import torch

    from nre_localization.localizer import resolve_device

    torch.set_num_threads(a.threads)
    mode = a.mode
    if mode == "auto":
        try:
            import rclpy  # noqa: F401
            import tf2_msgs  # noqa: F401

            mode = "ros"
        except ImportError:
            mode = "inproc"
    dev = resolve_device(a.device)
    map_path = get_map(str(dev), a.map)
    res = bench_ros(a, map_path) if mode == "ros" else bench_inproc(a, map_path)
    res.update(
        date=time.strftime("%Y-%m-%d %H:%M:%S %z"),
        argv=sys.argv[1:] if argv is None else list(argv),
        python=platform.python_version(),
        torch=torch.__version__,
        device=str(dev),
        device_name=torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        image="640x480 rgb8",
        max_map_points=a.points,
        frames=a.frames,
    )
    out = a.out or OUT / f"bench_node_{mode}_{dev.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    lt = res["latency_tracking"]
    print(f"## bench_node ({mode}, {res['device_name']}, {dev})")
    print("| image -> pose, tracking | p50 ms | p90 ms | p99 ms | frames |")
    print("|---|---|---|---|---|")
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    print(
        f"| {mode} | {fmt(lt['p50_ms'])} | {fmt(lt['p90_ms'])} | {fmt(lt['p99_ms'])} | {lt['n']} |"
    )
    if "stages_p50_ms" in res:
        print(
            "stages p50 ms: " + ", ".join(f"{k} {v:.1f}" for k, v in res["stages_p50_ms"].items())
        )
    if "stream" in res:
        s = res["stream"]
        sl = s["latency"]
        print(
            f"stream at {s['input_rate_hz']:g} Hz (published at {fmt(s['publish_rate_hz'])} Hz): "
            f"{s['poses_received']}/{s['frames_sent']} poses, output {s['output_rate_hz']:.1f} Hz; "
            f"node: {s['frames_received_by_node']} received, {s['frames_dropped_by_node']} dropped, "
            f"{s['frames_declined_by_node']} declined; {s['frames_lost_in_transport']} lost in "
            f"transport; latency p50 {fmt(sl['p50_ms'])} / p99 {fmt(sl['p99_ms'])} ms; "
            f"no frame dropped: {s['no_frame_dropped']}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
