#!/usr/bin/env python3
"""Preflight of the ROS 2 stack on a host without a ROS install (benchmarks/device_node_bench.sh).

Checks, in seconds, what ``bench_node.py --mode ros`` needs, so that a broken environment fails
with one line instead of a three-minute wait for a node that cannot start:

1. every ROS module the node and the benchmark import (rclpy with its lifecycle API, the message
   packages, the generated ``tf2_msgs``), and that the RMW is ``rmw_fastrtps_cpp``;
2. a cross-process round trip through DDS on a private domain with ``config/fastdds.xml``: this
   process publishes 640x480 rgb8 ``Image`` messages, a child echoes each stamp back as a
   ``TFMessage`` (shared-memory transport, both type supports, the ``tf2_msgs`` C libraries).

Prints ``dds preflight: OK ...`` and exits 0, or one ``dds preflight: FAILED ...`` line and 1.

    python3 benchmarks/dds_preflight.py [--images 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "build" / "bench"

MODULES = (
    "rclpy",
    "rclpy.lifecycle",
    "rclpy.executors",
    "rcl_interfaces.msg",
    "builtin_interfaces.msg",
    "std_msgs.msg",
    "std_srvs.srv",
    "sensor_msgs.msg",
    "geometry_msgs.msg",
    "nav_msgs.msg",
    "diagnostic_msgs.msg",
    "visualization_msgs.msg",
    "rosgraph_msgs.msg",
    "tf2_msgs.msg",
)


def _echo() -> int:
    """Child: every Image received -> a TFMessage carrying its stamp."""
    import rclpy
    from geometry_msgs.msg import TransformStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage

    rclpy.init()
    node = rclpy.create_node("nre_preflight_echo")
    pub = node.create_publisher(
        TFMessage,
        "/nre_preflight/echo",
        QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE),
    )

    def on_image(m: Any) -> None:
        ts = TransformStamped()
        ts.header.stamp = m.header.stamp
        ts.header.frame_id, ts.child_frame_id = "a", f"{m.width}x{m.height}:{len(m.data)}"
        pub.publish(TFMessage(transforms=[ts]))

    # Best effort, as the node's image subscription (sensor-data QoS).
    node.create_subscription(Image, "/nre_preflight/image", on_image, qos_profile_sensor_data)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, Exception):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _main(n_images: int, timeout: float) -> str:
    import importlib

    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as err:
            raise RuntimeError(f"import {name}: {type(err).__name__}: {err}") from None
    import numpy as np
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.utilities import get_rmw_implementation_identifier
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage

    from nre_localization.testing import (
        ChildProcessGroup,
        claim_domain_id,
        clean_stale_fastdds_shm,
        ros_env,
        wait_until,
    )
    from nre_localization.testing.spinning import BackgroundSpin

    clean_stale_fastdds_shm()
    with claim_domain_id() as lease:
        env = ros_env(lease.domain_id, log_dir=OUT / "ros_log")
        os.environ.update({k: v for k, v in env.items() if k.startswith(("ROS_", "RMW_", "FAST"))})
        with ChildProcessGroup(env, OUT / "logs", cwd=ROOT) as group:
            child = group.start_script(Path(__file__), "--role", "echo", name="preflight_echo")
            rclpy.init()
            try:
                rmw = get_rmw_implementation_identifier()
                if rmw != "rmw_fastrtps_cpp":
                    raise RuntimeError(f"RMW is {rmw}, expected rmw_fastrtps_cpp")
                node = rclpy.create_node("nre_preflight")
                rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
                pub = node.create_publisher(Image, "/nre_preflight/image", rel)
                got: dict[int, float] = {}
                lock = threading.Lock()

                def on_echo(m: Any) -> None:
                    with lock:
                        for t in m.transforms:
                            got[t.header.stamp.sec * 10**9 + t.header.stamp.nanosec] = (
                                time.perf_counter()
                            )

                node.create_subscription(TFMessage, "/nre_preflight/echo", on_echo, rel)
                spinner = BackgroundSpin(node, 0.01)
                try:
                    wait_until(
                        lambda: (
                            node.count_subscribers("/nre_preflight/image") > 0
                            or not child.running()
                        ),
                        timeout,
                        what="the echo process to subscribe",
                    )
                    if not child.running():
                        raise RuntimeError(
                            f"echo process exited: {child.output().strip().splitlines()[-1:]}"
                        )
                    rgb = np.zeros((480, 640, 3), np.uint8)
                    sent: dict[int, float] = {}
                    deadline = time.monotonic() + timeout
                    k = 0
                    while time.monotonic() < deadline:
                        with lock:
                            if len(got) >= n_images:
                                break
                        img = Image()
                        stamp = 1_000_000_000 + k * 33_000_000
                        img.header.stamp.sec, img.header.stamp.nanosec = divmod(stamp, 10**9)
                        img.height, img.width, img.encoding, img.step = 480, 640, "rgb8", 640 * 3
                        img.data = rgb.tobytes()
                        sent[stamp] = time.perf_counter()
                        pub.publish(img)
                        k += 1
                        time.sleep(0.05)
                    with lock:
                        rtt = sorted((got[s] - sent[s]) * 1e3 for s in got if s in sent)
                    if len(rtt) < n_images:
                        raise RuntimeError(
                            f"{len(rtt)}/{n_images} images echoed across processes within "
                            f"{timeout:g} s ({k} sent; DDS shared memory / loopback UDP blocked? "
                            f"/dev/shm free: {_shm_free()})"
                        )
                    return (
                        f"{rmw}, domain {lease.domain_id}, {len(rtt)}/{k} 640x480 rgb8 images "
                        f"echoed across processes, round trip p50 {rtt[len(rtt) // 2]:.1f} ms"
                    )
                finally:
                    spinner.stop()
                    node.destroy_node()
            finally:
                rclpy.try_shutdown()


def _shm_free() -> str:
    try:
        st = os.statvfs("/dev/shm")
        return f"{st.f_bavail * st.f_frsize / 2**20:.0f} MiB"
    except OSError:
        return "no /dev/shm"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", choices=("main", "echo"), default="main")
    ap.add_argument("--images", type=int, default=10, help="echoes needed")
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args(argv)
    if a.role == "echo":
        return _echo()
    try:
        msg = _main(a.images, a.timeout)
    except Exception as err:
        line = f"{type(err).__name__}: {err}".replace("\n", " ")
        print(f"dds preflight: FAILED {line}", flush=True)
        return 1
    print(f"dds preflight: OK ({msg})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
