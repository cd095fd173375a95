#!/usr/bin/env python3
"""The end-to-end demo behind ``make demo`` (about a minute on a 2-core CPU).

1. Builds a map from the even frames of the committed TUM fr2_desk subset (``demo_data/``, CC BY
   4.0): the frames have no depth, so the map builder triangulates SIFT matches from the
   ground-truth poses, then stores our network's descriptors per point.
2. Writes a ROS 2 bag (mcap) of the odd frames: images, camera_info, TF (``odom -> base_link``
   from a simulated drifting odometry, ``base_link -> camera_optical_frame`` static) and the
   ground truth (:mod:`nre_localization.ros.bag_tools`).
3. Starts ``nre_localization_node`` as its own process (``python -m nre_localization.ros.node
   --ros-args --params-file config/nre_localization.yaml ...``, ``use_sim_time``), isolated on a
   private ROS domain on localhost.
4. Replays the bag into the live graph with ``/clock`` (``python -m nre_localization.ros.replay
   live``) and listens to what the node publishes, as a robot's other nodes would.
5. Prints, per frame, the pose, its error against the ground truth and the latency (image seen
   on the graph -> pose seen on the graph), checks ``map -> odom`` against the true odometry
   drift, writes ``build/demo/trajectory.png`` and ends with one summary line.

Exit code 0 when at least half of the frames were localised within 10 cm / 5 deg.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT / "demo_data" / "tum_fr2_desk"


def log(msg: str) -> None:
    print(msg, flush=True)


def build_map(out: Path, device: str) -> Path:
    import torch

    from nre_localization.maps.builder import BuildConfig, build_map, load_scene
    from nre_localization.maps.format import save_map
    from nre_localization.model.network import load_default_model

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    scene = load_scene(DATA, exclude=DATA / "query_frames.txt")
    model = load_default_model(device)
    m, stats = build_map(scene, model, BuildConfig(device=device))
    save_map(m, out)
    log(
        f"[map]  {len(scene.images)} keyframes -> {stats.n_points} points "
        f"({stats.points_from}) in {time.perf_counter() - t0:.1f} s: {out}"
    )
    return out


def make_bag(out: Path) -> object:
    from nre_localization.datasets.common import read_name_list
    from nre_localization.ros.bag_tools import tum_folder_to_bag

    queries = read_name_list(DATA / "query_frames.txt")
    s = tum_folder_to_bag(DATA, out, names=queries, overwrite=True)
    log(f"[bag]  {s.n_images} query frames + TF + ground truth -> {out}")
    return s


class Listener:
    """In-process rclpy node recording what the localisation node publishes."""

    def __init__(self) -> None:
        import rclpy
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import (
            DurabilityPolicy,
            QoSProfile,
            ReliabilityPolicy,
            qos_profile_sensor_data,
        )
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from tf2_msgs.msg import TFMessage

        from nre_localization.ros.conversions import stamp_to_ns

        self._stamp = stamp_to_ns
        rclpy.init()
        self.node = rclpy.create_node("nre_demo_listener")
        latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.lock = threading.Lock()
        self.image_seen: dict[int, float] = {}
        self.poses: dict[int, tuple[float, object]] = {}
        self.map_odom: dict[int, object] = {}
        self.states: list[str] = []
        self.node.create_subscription(
            Image, "/camera/image_raw", self._on_image, qos_profile_sensor_data
        )
        self.node.create_subscription(
            PoseWithCovarianceStamped, "/pose_with_covariance", self._on_pose, latched
        )
        self.node.create_subscription(TFMessage, "/tf", self._on_tf, 100)
        self.node.create_subscription(String, "/state", self._on_state, latched)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._stop = False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while not self._stop:
            self.executor.spin_once(timeout_sec=0.05)

    def _on_image(self, msg: object) -> None:
        with self.lock:
            self.image_seen[self._stamp(msg.header.stamp)] = time.monotonic()  # type: ignore[attr-defined]

    def _on_pose(self, msg: object) -> None:
        with self.lock:
            self.poses[self._stamp(msg.header.stamp)] = (time.monotonic(), msg)  # type: ignore[attr-defined]

    def _on_tf(self, msg: object) -> None:
        with self.lock:
            for ts in msg.transforms:  # type: ignore[attr-defined]
                if ts.header.frame_id == "map" and ts.child_frame_id == "odom":
                    self.map_odom[self._stamp(ts.header.stamp)] = ts

    def _on_state(self, msg: object) -> None:
        with self.lock:
            self.states.append(msg.data)  # type: ignore[attr-defined]

    def close(self) -> None:
        import rclpy

        self._stop = True
        self.thread.join(timeout=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="nre_localization end-to-end demo")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "demo")
    ap.add_argument("--rate", type=float, default=0.2, help="bag replay speed (x real time)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)

    from nre_localization.datasets.tum import associate, read_image_list, read_trajectory
    from nre_localization.evaluation.metrics import pose_errors
    from nre_localization.evaluation.plots import plot_trajectory
    from nre_localization.localizer import resolve_device
    from nre_localization.ros import conversions as cv
    from nre_localization.ros.bag_tools import DEFAULT_T_BASE_CAM, OdomDrift
    from nre_localization.testing import (
        ChildProcessGroup,
        claim_domain_id,
        clean_stale_fastdds_shm,
        ros_env,
    )

    device = str(resolve_device(a.device))
    map_path = build_map(out / "fr2_desk.nremap", device)
    bag_path = out / "fr2_desk_queries"
    make_bag(bag_path)

    # Ground truth at the query stamps (camera -> map) and the true map -> odom.
    queries = {Path(n).name for n in (DATA / "query_frames.txt").read_text().split()}
    stamps = [s for s, n in read_image_list(DATA / "rgb.txt") if Path(n).name in queries]
    gt_map_cam = associate(read_trajectory(DATA / "groundtruth.txt"), np.array(stamps))
    gt = {round(s * 1e9): g for s, g in zip(stamps, gt_map_cam, strict=True)}
    drift = OdomDrift()

    clean_stale_fastdds_shm()
    with claim_domain_id() as lease:
        env = ros_env(lease.domain_id, log_dir=out / "ros_log")
        os.environ.update({k: env[k] for k in env if k.startswith(("ROS_", "RMW_", "FAST"))})
        os.environ["AMENT_PREFIX_PATH"] = env.get("AMENT_PREFIX_PATH", "")
        with ChildProcessGroup(env, out / "logs", cwd=ROOT) as group:
            node = group.start_module(
                "nre_localization.ros.node",
                "--ros-args",
                "--params-file",
                str(ROOT / "config" / "nre_localization.yaml"),
                "-p",
                f"map_path:={map_path}",
                "-p",
                f"device:={device}",
                "-p",
                "use_sim_time:=true",
                "-r",
                "image:=/camera/image_raw",
                "-r",
                "camera_info:=/camera/camera_info",
                name="nre_localization_node",
            )
            listener = Listener()
            try:
                t_wait = time.monotonic()
                while not listener.states:
                    if not node.running():
                        log(node.output())
                        log("DEMO FAILED: the node exited during start-up")
                        return 1
                    if time.monotonic() - t_wait > 120:
                        log("DEMO FAILED: the node did not come up within 120 s")
                        return 1
                    time.sleep(0.1)
                log(
                    f"[node] up in {time.monotonic() - t_wait:.1f} s (state: {listener.states[-1]})"
                )
                player = group.start_module(
                    "nre_localization.ros.replay",
                    "live",
                    str(bag_path),
                    "--rate",
                    str(a.rate),
                    "--wait-for",
                    "/camera/image_raw",
                    "/camera/camera_info",
                    name="bag_player",
                )
                log(f"[play] replaying {len(stamps)} frames at {a.rate:g}x with /clock ...")
                player.wait(timeout=60 + len(stamps) / (5.0 * a.rate))
                time.sleep(3.0)  # the last frame's pose
            finally:
                listener.close()
            if not node.running():
                log(node.output())
                log("DEMO FAILED: the node died")
                return 1

    # ----- report
    log("")
    log("  frame stamp        result  x [m]    y [m]    z [m]   err [cm]  err [deg]  latency [ms]")
    t_errs, r_errs, lats, centres = [], [], [], []
    for s in stamps:
        key = round(s * 1e9)
        g = gt[key]
        item = listener.poses.get(key)
        if item is None:
            log(f"  {s:.3f}  declined (no pose published)")
            t_errs.append(math.inf)
            r_errs.append(math.inf)
            centres.append([np.nan] * 3)
            continue
        t_seen, msg = item
        t_map_base = cv.pose_msg_to_matrix(msg.pose.pose)  # type: ignore[attr-defined]
        t_map_cam = t_map_base @ DEFAULT_T_BASE_CAM
        te, re_ = pose_errors(cv.invert_T(t_map_cam), cv.invert_T(g))
        seen = listener.image_seen.get(key)
        lat = (t_seen - seen) * 1e3 if seen is not None else math.nan
        t_errs.append(float(te))
        r_errs.append(float(re_))
        lats.append(lat)
        centres.append(t_map_cam[:3, 3])
        p = t_map_base[:3, 3]
        log(
            f"  {s:.3f}  pose     {p[0]:7.3f}  {p[1]:7.3f}  {p[2]:7.3f}  {te * 100:8.1f}  "
            f"{re_:9.2f}  {lat:12.0f}"
        )
    # map -> odom against the simulated odometry's true drift (stamped image + tolerance).
    mo_errs = []
    t0 = stamps[0]
    for key, ts in listener.map_odom.items():
        img_stamp = (key - 1_000_000_000) * 1e-9  # transform_tolerance = 1.0 s
        t_est = cv.transform_msg_to_matrix(ts.transform)  # type: ignore[attr-defined]
        t_true = drift.t_map_odom(img_stamp - t0)
        mo_errs.append(float(np.linalg.norm(t_est[:3, 3] - t_true[:3, 3])))
    plot = plot_trajectory(
        gt_map_cam[:, :3, 3], np.array(centres), out / "trajectory.png", "TUM fr2_desk demo"
    )
    t_arr, r_arr = np.array(t_errs), np.array(r_errs)
    ok = (t_arr <= 0.10) & (r_arr <= 5.0)
    n_loc = int(np.isfinite(t_arr).sum())
    med_t = float(np.median(t_arr[np.isfinite(t_arr)])) if n_loc else math.nan
    med_r = float(np.median(r_arr[np.isfinite(r_arr)])) if n_loc else math.nan
    lat_p50 = float(np.nanmedian(lats)) if lats else math.nan
    mo = f"{np.median(mo_errs) * 100:.1f} cm" if mo_errs else "not received"
    log("")
    log(f"trajectory plot: {plot}")
    passed = ok.sum() >= max(1, len(stamps) // 2)
    log(
        f"DEMO {'OK' if passed else 'FAILED'}: {n_loc}/{len(stamps)} frames localised, "
        f"{int(ok.sum())} within 10 cm / 5 deg; median error {med_t * 100:.1f} cm / "
        f"{med_r:.2f} deg; "
        f"map->odom error {mo}; latency p50 {lat_p50:.0f} ms on {device}; "
        f"total {time.perf_counter() - t_start:.0f} s"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
