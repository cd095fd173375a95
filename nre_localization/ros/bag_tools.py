"""Image folder + trajectory + camera -> ROS 2 bag (mcap or sqlite3), without ROS installed.

What the bag holds (topics are the node's defaults, frames follow REP-105):

- ``/camera/image_raw`` (sensor_msgs/Image, ``encoding`` of choice, or ``/camera/image_raw/
  compressed`` as CompressedImage) and ``/camera/camera_info`` (same stamp), frame
  ``camera_optical_frame``;
- ``/tf_static``: ``base_link -> camera_optical_frame`` (``T_base_cam``, default a camera looking
  along the robot's x axis, REP-103 optical axes), offered TRANSIENT_LOCAL as a real recorder does;
- ``/tf``: ``odom -> base_link`` at ``odom_rate`` Hz, a simulated wheel odometry that drifts from
  the ground truth (``map -> odom`` = a fixed offset composed with a slow constant-velocity drift);
- ``/ground_truth/pose`` (PoseStamped, ``map`` frame): the true pose of ``base_link`` at every
  image stamp; ``/ground_truth/map_odom`` (TransformStamped): the true ``map -> odom`` there.

The trajectory is a TUM file (camera -> world, i.e. ``T_map_cam``); images come from a TUM-style
list (``rgb.txt``). ``T_map_base = T_map_cam @ inv(T_base_cam)``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from nre_localization.datasets.common import CameraSpec, read_rgb
from nre_localization.datasets.poses import interpolate_poses
from nre_localization.datasets.tum import (
    Trajectory,
    associate,
    read_camera_yaml,
    read_image_list,
    read_trajectory,
)
from nre_localization.errors import DatasetError, InputError, NreError
from nre_localization.ros.conversions import (
    invert_T,
    make_T,
    matrix_to_quat_xyzw,
    rgb_to_image_fields,
)

IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"
GT_TOPIC = "/ground_truth/pose"
GT_MAP_ODOM_TOPIC = "/ground_truth/map_odom"
CAMERA_FRAME = "camera_optical_frame"
# REP-103: optical z forward, x right, y down; base x forward, y left, z up.
R_BASE_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
DEFAULT_T_BASE_CAM = make_T(R_BASE_OPTICAL, np.array([0.10, 0.0, 0.30]))


@dataclass(frozen=True)
class OdomDrift:
    """``T_map_odom(t) = offset @ exp(t * velocity)`` with ``t`` seconds since the first image.

    ``offset``: (x, y, yaw_deg) of odom in map; ``velocity``: (vx, vy, yaw_rate_deg) drift per
    second (planar, as wheel odometry drifts)."""

    offset: tuple[float, float, float] = (0.5, -0.3, 20.0)
    velocity: tuple[float, float, float] = (0.02, -0.01, 1.0)

    def t_map_odom(self, t: float) -> np.ndarray:
        x0, y0, yaw0 = self.offset
        vx, vy, wz = self.velocity
        off = make_T(_rot_z(np.radians(yaw0)), np.array([x0, y0, 0.0]))
        drift = make_T(_rot_z(np.radians(wz * t)), np.array([vx * t, vy * t, 0.0]))
        return off @ drift


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def camera_info_values(cam: CameraSpec) -> dict[str, Any]:
    """CameraInfo fields for a :class:`CameraSpec` (OpenCV pixels, as CameraInfo uses)."""
    k, d, fisheye = cam.opencv()
    d = np.asarray(d, dtype=np.float64)
    if fisheye:
        model, dd = "equidistant", d[:4]
    elif d.size > 5 and np.any(d[5:]):
        model, dd = "rational_polynomial", np.concatenate([d, np.zeros(8)])[:8]
    else:
        model, dd = "plumb_bob", np.concatenate([d, np.zeros(5)])[:5]
    p = np.zeros((3, 4))
    p[:, :3] = k
    return {
        "width": cam.width,
        "height": cam.height,
        "distortion_model": model,
        "d": dd,
        "k": k.ravel(),
        "r": np.eye(3).ravel(),
        "p": p.ravel(),
    }


class _BagWriter:
    """Thin layer over ``rosbags`` (typestore ROS2_JAZZY): typed messages -> CDR -> bag."""

    def __init__(self, path: Path, storage: str) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        self.ts = get_typestore(Stores.ROS2_JAZZY)
        self.t = self.ts.types
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}.get(storage)
        if plugin is None:
            raise InputError(f"bag storage '{storage}' must be mcap or sqlite3")
        self.writer = Writer(path, version=9, storage_plugin=plugin)
        self.conns: dict[str, Any] = {}

    def __enter__(self) -> _BagWriter:
        self.writer.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.writer.close()

    def add(self, topic: str, msgtype: str, latched: bool = False) -> None:
        from rosbags.interfaces import (
            Qos,
            QosDurability,
            QosHistory,
            QosLiveliness,
            QosReliability,
            QosTime,
        )

        never = QosTime(sec=0x7FFFFFFF, nsec=0xFFFFFFFF)
        qos = Qos(
            history=QosHistory.KEEP_LAST,
            depth=1 if latched else 10,
            reliability=QosReliability.RELIABLE,
            durability=QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
            deadline=never,
            lifespan=never,
            liveliness=QosLiveliness.AUTOMATIC,
            liveliness_lease_duration=never,
            avoid_ros_namespace_conventions=False,
        )
        self.conns[topic] = self.writer.add_connection(
            topic, msgtype, typestore=self.ts, offered_qos_profiles=[qos]
        )

    def write(self, topic: str, stamp_ns: int, msg: Any) -> None:
        conn = self.conns[topic]
        self.writer.write(conn, stamp_ns, self.ts.serialize_cdr(msg, conn.msgtype))

    # --- message builders (rosbags dataclasses)
    def header(self, stamp_ns: int, frame: str) -> Any:
        sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
        return self.t["std_msgs/msg/Header"](
            stamp=self.t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame
        )

    def pose(self, t: np.ndarray) -> Any:
        q = matrix_to_quat_xyzw(t[:3, :3])
        return self.t["geometry_msgs/msg/Pose"](
            position=self.t["geometry_msgs/msg/Point"](*map(float, t[:3, 3])),
            orientation=self.t["geometry_msgs/msg/Quaternion"](*map(float, q)),
        )

    def transform(self, stamp_ns: int, parent: str, child: str, t: np.ndarray) -> Any:
        q = matrix_to_quat_xyzw(t[:3, :3])
        return self.t["geometry_msgs/msg/TransformStamped"](
            header=self.header(stamp_ns, parent),
            child_frame_id=child,
            transform=self.t["geometry_msgs/msg/Transform"](
                translation=self.t["geometry_msgs/msg/Vector3"](*map(float, t[:3, 3])),
                rotation=self.t["geometry_msgs/msg/Quaternion"](*map(float, q)),
            ),
        )


@dataclass
class BagSummary:
    path: Path
    n_images: int
    n_odom: int
    first_stamp_ns: int
    last_stamp_ns: int


def write_bag(
    out: Path,
    stamps: Sequence[float],
    load_image: Callable[[int], np.ndarray],
    camera: CameraSpec,
    trajectory: Trajectory,
    *,
    encoding: str = "rgb8",
    storage: str = "mcap",
    t_base_cam: np.ndarray = DEFAULT_T_BASE_CAM,
    drift: OdomDrift | None = None,
    odom_rate: float = 50.0,
    max_dt: float = 0.02,
    overwrite: bool = False,
) -> BagSummary:
    """Write the bag described in the module docstring.

    ``stamps [N]`` (seconds, increasing) are the image stamps; ``load_image(i)`` returns image
    ``i`` as RGB ``uint8 [H, W, 3]`` of ``camera``'s size; ``trajectory`` gives ``T_map_cam``
    (TUM, camera -> world) and must cover every image stamp within ``max_dt``. ``encoding`` is an
    Image encoding (see :func:`~nre_localization.ros.conversions.rgb_to_image_fields`) or
    ``jpeg`` / ``png`` for CompressedImage. The bag is written to a temporary name and renamed.
    """
    out = Path(out)
    stamps_arr = np.asarray(stamps, dtype=np.float64)
    if stamps_arr.size == 0:
        raise InputError("no images to write into the bag")
    if np.any(np.diff(stamps_arr) <= 0):
        raise InputError("image stamps must be strictly increasing")
    if out.exists():
        if not overwrite:
            raise InputError(f"{out} exists (pass overwrite=True / --overwrite)")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    drift = drift or OdomDrift()
    t_cam_gt = associate(trajectory, stamps_arr, max_dt=max_dt, what="image")  # T_map_cam
    t_cam_base = invert_T(t_base_cam)
    t0 = float(stamps_arr[0])
    compressed = encoding in ("jpeg", "png")
    img_topic = IMAGE_TOPIC + "/compressed" if compressed else IMAGE_TOPIC
    # odom -> base_link samples: a regular grid over the images' span (+ margins), clipped to the
    # trajectory (so every image stamp is bracketed by odometry samples).
    lo = max(t0 - 0.2, float(trajectory.stamps[0]))
    hi = min(float(stamps_arr[-1]) + 0.2, float(trajectory.stamps[-1]))
    odom_t = np.arange(lo, hi + 1e-9, 1.0 / odom_rate)
    odom_t = np.union1d(odom_t, stamps_arr)  # exact samples at image stamps too
    t_map_cam_odom = interpolate_poses(trajectory.stamps, trajectory.T_world_cam, odom_t)

    # rosbags names the storage file after the bag folder: write <tmpdir>/<name>, then move it.
    tmp_dir = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    tmp = tmp_dir / out.name
    info_vals = camera_info_values(camera)
    try:
        with _BagWriter(tmp, storage) as bw:
            t = bw.t
            bw.add(
                img_topic,
                "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image",
            )
            bw.add(INFO_TOPIC, "sensor_msgs/msg/CameraInfo")
            bw.add("/tf", "tf2_msgs/msg/TFMessage")
            bw.add("/tf_static", "tf2_msgs/msg/TFMessage", latched=True)
            bw.add(GT_TOPIC, "geometry_msgs/msg/PoseStamped")
            bw.add(GT_MAP_ODOM_TOPIC, "geometry_msgs/msg/TransformStamped")
            first_ns = round(min(lo, t0) * 1e9)
            static = t["tf2_msgs/msg/TFMessage"](
                transforms=[bw.transform(first_ns, "base_link", CAMERA_FRAME, t_base_cam)]
            )
            bw.write("/tf_static", first_ns, static)
            events: list[tuple[int, int, int]] = []  # (stamp_ns, kind 0=odom 1=image, index)
            events += [(round(s * 1e9), 0, i) for i, s in enumerate(odom_t)]
            events += [(round(s * 1e9), 1, i) for i, s in enumerate(stamps_arr)]
            events.sort()
            for stamp_ns, kind, i in events:
                if kind == 0:
                    ts_ = odom_t[i]
                    t_map_base = t_map_cam_odom[i] @ t_cam_base
                    t_odom_base = invert_T(drift.t_map_odom(ts_ - t0)) @ t_map_base
                    msg = t["tf2_msgs/msg/TFMessage"](
                        transforms=[bw.transform(stamp_ns, "odom", "base_link", t_odom_base)]
                    )
                    bw.write("/tf", stamp_ns, msg)
                    continue
                rgb = load_image(i)
                if (rgb.shape[1], rgb.shape[0]) != (camera.width, camera.height):
                    raise InputError(
                        f"image {i} is {rgb.shape[1]}x{rgb.shape[0]} but the camera is "
                        f"{camera.width}x{camera.height}"
                    )
                hdr = bw.header(stamp_ns, CAMERA_FRAME)
                if compressed:
                    ok, buf = cv2.imencode("." + encoding, rgb[:, :, ::-1])
                    if not ok:
                        raise InputError(f"cannot encode image {i} as {encoding}")
                    img = t["sensor_msgs/msg/CompressedImage"](
                        header=hdr, format=encoding, data=buf.reshape(-1)
                    )
                else:
                    f = rgb_to_image_fields(rgb, encoding)
                    img = t["sensor_msgs/msg/Image"](
                        header=hdr,
                        height=f.height,
                        width=f.width,
                        encoding=f.encoding,
                        is_bigendian=f.is_bigendian,
                        step=f.step,
                        data=np.frombuffer(f.data, np.uint8),
                    )
                info = t["sensor_msgs/msg/CameraInfo"](
                    header=hdr,
                    height=info_vals["height"],
                    width=info_vals["width"],
                    distortion_model=info_vals["distortion_model"],
                    d=np.asarray(info_vals["d"], dtype=np.float64),
                    k=np.asarray(info_vals["k"], dtype=np.float64),
                    r=np.asarray(info_vals["r"], dtype=np.float64),
                    p=np.asarray(info_vals["p"], dtype=np.float64),
                    binning_x=0,
                    binning_y=0,
                    roi=t["sensor_msgs/msg/RegionOfInterest"](0, 0, 0, 0, False),
                )
                bw.write(img_topic, stamp_ns, img)
                bw.write(INFO_TOPIC, stamp_ns, info)
                t_map_base = t_cam_gt[i] @ t_cam_base
                gt = t["geometry_msgs/msg/PoseStamped"](
                    header=bw.header(stamp_ns, "map"), pose=bw.pose(t_map_base)
                )
                bw.write(GT_TOPIC, stamp_ns, gt)
                mo = bw.transform(stamp_ns, "map", "odom", drift.t_map_odom(stamps_arr[i] - t0))
                bw.write(GT_MAP_ODOM_TOPIC, stamp_ns, mo)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return BagSummary(
        out,
        len(stamps_arr),
        len(odom_t),
        round(stamps_arr[0] * 1e9),
        round(stamps_arr[-1] * 1e9),
    )


def tum_folder_to_bag(
    folder: Path,
    out: Path,
    *,
    images: str = "rgb.txt",
    trajectory: str = "groundtruth.txt",
    camera: str = "camera.yaml",
    names: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    **kwargs: object,
) -> BagSummary:
    """A TUM-style folder (``rgb.txt``, ``groundtruth.txt``, ``camera.yaml``) -> bag.

    ``names`` keeps only those images (paths as listed in ``rgb.txt``, e.g. ``rgb/123.png``);
    ``exclude`` drops those. Other keyword arguments go to :func:`write_bag`.
    """
    folder = Path(folder)
    entries = read_image_list(folder / images)
    if names is not None:
        keep = set(names)
        entries = [e for e in entries if e[1] in keep or Path(e[1]).name in keep]
    if exclude:
        drop = set(exclude)
        entries = [e for e in entries if e[1] not in drop and Path(e[1]).name not in drop]
    if not entries:
        raise DatasetError(f"{folder / images}: no images left to write")
    cam = read_camera_yaml(folder / camera)
    traj = read_trajectory(folder / trajectory)
    stamps = [s for s, _ in entries]

    def load(i: int) -> np.ndarray:
        return read_rgb(folder / entries[i][1], cam)

    return write_bag(Path(out), stamps, load, cam, traj, **kwargs)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="make_bag",
        description="Turn an image folder + TUM trajectory + camera file into a ROS 2 bag with "
        "images, camera_info, TF (odom -> base_link drifting, base_link -> camera static) and "
        "ground-truth poses.",
    )
    ap.add_argument("folder", type=Path, help="folder with the image list, trajectory, camera")
    ap.add_argument("--out", type=Path, required=True, help="output bag (folder for mcap/sqlite3)")
    ap.add_argument("--images", default="rgb.txt", help="TUM image list (timestamp filename)")
    ap.add_argument("--trajectory", default="groundtruth.txt", help="TUM trajectory (cam->world)")
    ap.add_argument("--camera", default="camera.yaml", help="camera YAML (TUM/ROS/OpenCV form)")
    ap.add_argument("--exclude", type=Path, help="file listing image names to leave out")
    ap.add_argument(
        "--encoding", default="rgb8", help="rgb8, bgr8, mono8, bayer_rggb8, yuv422, jpeg, png, ..."
    )
    ap.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    ap.add_argument("--odom-rate", type=float, default=50.0, help="Hz of odom -> base_link TF")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    a = ap.parse_args(argv)
    try:
        exclude = None
        if a.exclude is not None:
            from nre_localization.datasets.common import read_name_list

            exclude = read_name_list(a.exclude)
        s = tum_folder_to_bag(
            a.folder,
            a.out,
            images=a.images,
            trajectory=a.trajectory,
            camera=a.camera,
            exclude=exclude,
            encoding=a.encoding,
            storage=a.storage,
            odom_rate=a.odom_rate,
            overwrite=a.overwrite,
        )
    except NreError as err:
        print(f"make_bag: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {s.path}: {s.n_images} images, {s.n_odom} odometry transforms, "
        f"{(s.last_stamp_ns - s.first_stamp_ns) * 1e-9:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
