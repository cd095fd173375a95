"""Every parameter of the node: name, default, type, range and meaning (no rclpy).

The node declares exactly these (:data:`PARAMS`), reads them, and builds a :class:`NodeParams`
through :func:`validate`, which raises :class:`~nre_localization.errors.ConfigError` with one line
naming the parameter, the bad value and what is allowed. ``config/nre_localization.yaml`` lists
the same set (a test keeps them in sync).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from nre_localization.errors import ConfigError


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: ``kind`` is bool, int, float or str; numbers have an inclusive range;
    strings may list their allowed ``choices``."""

    name: str
    default: Any
    kind: type
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None


PARAMS: tuple[ParamSpec, ...] = (
    # --- what to localise against
    ParamSpec("map_path", "", str, "map file (.nremap) built with `nre-localization build-map`"),
    ParamSpec("weights", "", str, "descriptor-net weights (.safetensors); empty = shipped default"),
    ParamSpec("device", "auto", str, "torch device: auto (cuda if available), cpu, cuda, cuda:N"),
    ParamSpec("autostart", True, bool, "configure + activate at start (false: wait for a manager)"),
    # --- frames (REP-105)
    ParamSpec("global_frame_id", "map", str, "frame of the map and of published poses"),
    ParamSpec("odom_frame_id", "odom", str, "odometry frame (map -> odom is broadcast)"),
    ParamSpec("base_frame_id", "base_link", str, "robot body frame whose pose is published"),
    ParamSpec("camera_frame_id", "", str, "camera optical frame; empty = the image's frame_id"),
    # --- outputs
    ParamSpec("publish_tf", True, bool, "broadcast map -> odom (false when an EKF owns it)"),
    ParamSpec(
        "transform_tolerance",
        1.0,
        float,
        "s; map -> odom is stamped image stamp + this (as AMCL)",
        0.0,
        10.0,
    ),
    ParamSpec(
        "publish_map_cloud", False, bool, "publish the map points once (PointCloud2, latched)"
    ),
    ParamSpec(
        "map_cloud_max_points", 50000, int, "subsample the map cloud to at most this", 1, 1e8
    ),
    ParamSpec("publish_debug_image", False, bool, "publish the image with reprojected map points"),
    ParamSpec("diagnostics_period", 1.0, float, "s between /diagnostics messages", 0.05, 60.0),
    # --- inputs
    ParamSpec(
        "image_transport",
        "raw",
        str,
        "raw: sensor_msgs/Image on `image`; compressed: CompressedImage on `image/compressed`",
        choices=("raw", "compressed"),
    ),
    ParamSpec("image_qos_reliable", False, bool, "reliable image QoS (default best effort)"),
    ParamSpec("use_rectified_intrinsics", False, bool, "use CameraInfo P and no distortion"),
    ParamSpec("pair_tolerance", 0.001, float, "s; max |image stamp - camera_info stamp|", 0.0, 1.0),
    ParamSpec("pair_wait", 0.2, float, "s to wait for a matching camera_info", 0.0, 5.0),
    ParamSpec("tf_wait", 0.05, float, "s to wait for odom -> base at the image stamp", 0.0, 2.0),
    ParamSpec("use_odometry", True, bool, "use the odom -> base motion as the tracking prior"),
    ParamSpec(
        "time_jump_threshold",
        1.0,
        float,
        "s; an image this far behind the last one resets (bag loop); less is out-of-order",
        0.0,
        1e6,
    ),
    ParamSpec(
        "max_rate",
        0.0,
        float,
        "Hz; process at most this often (0 = newest frame always)",
        0.0,
        1000.0,
    ),
    ParamSpec(
        "max_image_width", 640, int, "resize wider images to this width (0 = never)", 0, 100000
    ),
    # --- localiser state machine and acceptance
    ParamSpec("lost_after", 3, int, "consecutive unreliable frames before LOST", 1, 1000),
    ParamSpec(
        "tracking_max_gap", 2.0, float, "s without a pose (and no odometry) -> global", 0.0, 1e6
    ),
    ParamSpec("min_points", 20, int, "min map points that inform the pose", 0, 1e9),
    ParamSpec(
        "max_cost_ratio",
        0.75,
        float,
        "reject poses whose cost exceeds this fraction of an uninformative solution's",
        0.01,
        1.0,
    ),
    ParamSpec("max_position_std", 0.5, float, "m; reject poses less certain than this", 1e-6, 1e6),
    ParamSpec(
        "max_rotation_std_deg", 5.0, float, "deg; reject poses less certain than this", 1e-6, 360.0
    ),
    ParamSpec(
        "max_tracking_jump",
        1.0,
        float,
        "m; a tracked pose further from the prior is rejected",
        1e-3,
        1e6,
    ),
    ParamSpec("max_tracking_jump_deg", 30.0, float, "deg; same for rotation", 1e-3, 360.0),
    ParamSpec("retrieval_top_k", 5, int, "keyframes retrieved for global relocalisation", 1, 1000),
    ParamSpec("max_map_points", 4000, int, "map points given to the solver per frame", 10, 1e7),
    ParamSpec(
        "global_consensus_seeds",
        4,
        int,
        "global poses must agree across this many global solves (MSAC seeds); 1: off",
        1,
        64,
    ),
    ParamSpec(
        "compile_solver",
        False,
        bool,
        "CUDA: torch.compile the solver's GNC / Newton steps and MSAC scoring (70-100 s of "
        "compilation per point bucket at start-up, cached on disk; global 8.0 -> 3.2 ms and "
        "tracking 3.6 -> 1.6 ms per solve at 1000 points on an H200)",
    ),
)

_BY_NAME = {p.name: p for p in PARAMS}


@dataclass(frozen=True)
class NodeParams:
    """Validated parameter values (field names = parameter names)."""

    map_path: str
    weights: str
    device: str
    autostart: bool
    global_frame_id: str
    odom_frame_id: str
    base_frame_id: str
    camera_frame_id: str
    publish_tf: bool
    transform_tolerance: float
    publish_map_cloud: bool
    map_cloud_max_points: int
    publish_debug_image: bool
    diagnostics_period: float
    image_transport: str
    image_qos_reliable: bool
    use_rectified_intrinsics: bool
    pair_tolerance: float
    pair_wait: float
    tf_wait: float
    use_odometry: bool
    time_jump_threshold: float
    max_rate: float
    max_image_width: int
    lost_after: int
    tracking_max_gap: float
    min_points: int
    max_cost_ratio: float
    max_position_std: float
    max_rotation_std_deg: float
    max_tracking_jump: float
    max_tracking_jump_deg: float
    retrieval_top_k: int
    max_map_points: int
    global_consensus_seeds: int
    compile_solver: bool


def defaults() -> dict[str, Any]:
    return {p.name: p.default for p in PARAMS}


def _check(spec: ParamSpec, value: Any) -> Any:
    name = spec.name
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"parameter {name}={value!r} must be true or false")
        return value
    if spec.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"parameter {name}={value!r} must be an integer")
    elif spec.kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"parameter {name}={value!r} must be a number")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"parameter {name}={value!r} must be finite")
    elif spec.kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"parameter {name}={value!r} must be a string")
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(
                f"parameter {name}={value!r} must be one of {', '.join(spec.choices)}"
            )
        return value
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        raise ConfigError(
            f"parameter {name}={value!r} is out of range [{spec.low:g}, {spec.high:g}]"
        )
    return value


def validate(values: dict[str, Any]) -> NodeParams:
    """Check every value (unknown names, types, ranges, cross-field rules) -> :class:`NodeParams`.

    Missing names take their defaults. Raises :class:`ConfigError` (one line) on the first bad one.
    """
    unknown = sorted(set(values) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown parameter(s): {', '.join(unknown)}")
    merged = defaults()
    merged.update(values)
    out = {name: _check(_BY_NAME[name], merged[name]) for name in _BY_NAME}
    if not out["map_path"]:
        raise ConfigError(
            "parameter map_path is empty: set it to a .nremap file (nre-localization build-map)"
        )
    dev = out["device"]
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"parameter device={dev!r} must be auto, cpu, cuda or cuda:N")
    for frame in ("global_frame_id", "odom_frame_id", "base_frame_id"):
        if not out[frame] or " " in out[frame]:
            raise ConfigError(f"parameter {frame}={out[frame]!r} must be a non-empty frame name")
    if len({out["global_frame_id"], out["odom_frame_id"], out["base_frame_id"]}) != 3:
        raise ConfigError("parameters global_frame_id, odom_frame_id, base_frame_id must differ")
    return NodeParams(**out)


assert [f.name for f in fields(NodeParams)] == [p.name for p in PARAMS]
