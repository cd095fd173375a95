"""ROS message <-> NumPy conversions, without rclpy (duck-typed message objects).

Works on rclpy messages and on ``rosbags`` dataclasses alike: only attributes are read
(``msg.encoding``, ``msg.data``, ...) or written (``pose.position.x = ...``).

Images come out as ``uint8`` RGB arrays ``[H, W, 3]`` (what the Localizer takes). Supported
``sensor_msgs/Image`` encodings: ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``rgb16``, ``bgr16``,
``mono8``, ``mono16`` (16-bit values are mapped to 8 bits by ``v // 257``, i.e. the full 16-bit
range), ``bayer_{rggb,bggr,gbrg,grbg}{8,16}`` (demosaiced with OpenCV), ``yuv422`` / ``uyvy``
(U Y0 V Y1) and ``yuv422_yuy2`` / ``yuyv`` (Y0 U Y1 V). ``step`` (row stride in bytes, which may
include padding) and ``is_bigendian`` (16-bit encodings) are honoured. ``sensor_msgs/
CompressedImage`` in any format OpenCV decodes (jpeg, png) is supported too.

Every malformed message raises :class:`MessageRejected` whose ``kind`` names the fault, so the node
can count rejections per kind on ``/diagnostics`` and carry on.

Poses: ``T_a_b`` (4x4, float64) maps points from frame b to frame a; quaternions in ROS messages
are ``(x, y, z, w)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from nre_localization.datasets.common import CameraSpec
from nre_localization.errors import InputError

# Kinds of rejected input, as counted by the node (diagnostics keys ``rejected.<kind>``).
REJECT_KINDS = (
    "unknown_encoding",
    "step_mismatch",
    "empty_data",
    "size_mismatch",
    "bad_camera_info",
    "decode_error",
    "out_of_order",
    "time_jump_back",
    "no_camera_info",
    "bad_initialpose",
    "tf_unavailable",
    "localizer_error",
)


class MessageRejected(InputError):
    """A message the node cannot use; ``kind`` is one of :data:`REJECT_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# --------------------------------------------------------------------------------------------
# Stamps
# --------------------------------------------------------------------------------------------


def stamp_to_ns(stamp: object) -> int:
    """``builtin_interfaces/Time`` (``sec``, ``nanosec``) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)  # type: ignore[attr-defined]


def ns_to_sec_nsec(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> ``(sec, nanosec)`` with ``0 <= nanosec < 1e9``."""
    sec, nsec = divmod(int(ns), 1_000_000_000)
    return sec, nsec


def set_stamp(stamp: object, ns: int) -> None:
    """Write integer nanoseconds into a ``builtin_interfaces/Time`` in place."""
    sec, nsec = ns_to_sec_nsec(ns)
    stamp.sec = sec  # type: ignore[attr-defined]
    stamp.nanosec = nsec  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

# encoding -> (channels, bytes per channel)
_PLAIN = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "rgb16": (3, 2),
    "bgr16": (3, 2),
    "mono8": (1, 1),
    "8uc1": (1, 1),
    "mono16": (1, 2),
    "16uc1": (1, 2),
}
# ROS Bayer pattern (top-left 2x2, row-major) -> OpenCV code. OpenCV's two-letter Bayer names
# describe the second row's second and third pixels, so ``rggb`` is OpenCV's ``BG``; these codes
# exist in every OpenCV release (checked by test_ros_conversions against a synthetic mosaic).
_BAYER = {
    "rggb": cv2.COLOR_BayerBG2RGB,
    "bggr": cv2.COLOR_BayerRG2RGB,
    "gbrg": cv2.COLOR_BayerGR2RGB,
    "grbg": cv2.COLOR_BayerGB2RGB,
}
_YUV = {
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV,
    "yuyv": cv2.COLOR_YUV2RGB_YUYV,
}


def _layout(encoding: str) -> tuple[int, int]:
    """Encoding -> (channels, bytes per channel); raises ``unknown_encoding``."""
    enc = encoding.lower()
    if enc in _PLAIN:
        return _PLAIN[enc]
    if enc.startswith("bayer_") and enc[6:10] in _BAYER and enc[10:] in ("8", "16"):
        return 1, int(enc[10:]) // 8
    if enc in _YUV:
        return 2, 1
    raise MessageRejected(
        "unknown_encoding",
        f"image encoding '{encoding}' is not supported (use rgb8, bgr8, mono8, mono16, bayer_*, "
        "yuv422 or a CompressedImage)",
    )


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit over the full range (``v // 257``); 8-bit passes through."""
    if arr.dtype == np.uint8:
        return arr
    return (arr // 257).astype(np.uint8)


def image_to_rgb(msg: object) -> np.ndarray:
    """``sensor_msgs/Image`` -> RGB ``uint8 [H, W, 3]`` (a fresh, contiguous array).

    Raises :class:`MessageRejected` (``empty_data``, ``unknown_encoding``, ``step_mismatch``,
    ``decode_error``) on malformed input.
    """
    height, width = int(msg.height), int(msg.width)  # type: ignore[attr-defined]
    step = int(msg.step)  # type: ignore[attr-defined]
    encoding = str(msg.encoding)  # type: ignore[attr-defined]
    data = np.frombuffer(msg.data, dtype=np.uint8)  # type: ignore[attr-defined]
    if data.size == 0 or height <= 0 or width <= 0:
        raise MessageRejected(
            "empty_data", f"image is empty ({width}x{height}, {data.size} bytes of data)"
        )
    channels, depth = _layout(encoding)
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise MessageRejected(
            "step_mismatch",
            f"image step {step} is smaller than width {width} x {channels * depth} bytes "
            f"({encoding})",
        )
    if data.size != step * height:
        raise MessageRejected(
            "step_mismatch",
            f"image data has {data.size} bytes, expected step {step} x height {height} = "
            f"{step * height}",
        )
    rows = data.reshape(height, step)[:, :row_bytes]
    enc = encoding.lower()
    if depth == 2:
        dtype = np.dtype(">u2") if bool(msg.is_bigendian) else np.dtype("<u2")  # type: ignore[attr-defined]
        pix: np.ndarray = np.ascontiguousarray(rows).view(dtype).astype(np.uint16)
    else:
        pix = rows
    pix = pix.reshape(height, width, channels) if channels > 1 else pix.reshape(height, width)
    try:
        if enc in ("rgb8", "rgb16"):
            out = _to_uint8(pix)
        elif enc in ("bgr8", "bgr16"):
            out = _to_uint8(pix)[:, :, ::-1]
        elif enc == "rgba8":
            out = pix[:, :, :3]
        elif enc == "bgra8":
            out = pix[:, :, 2::-1]
        elif enc in ("mono8", "8uc1", "mono16", "16uc1"):
            out = cv2.cvtColor(np.ascontiguousarray(_to_uint8(pix)), cv2.COLOR_GRAY2RGB)
        elif enc.startswith("bayer_"):
            if height < 2 or width < 2:
                raise MessageRejected("decode_error", f"Bayer image {width}x{height} is too small")
            out = _to_uint8(cv2.cvtColor(np.ascontiguousarray(pix), _BAYER[enc[6:10]]))
        else:  # yuv422 family
            if width % 2:
                raise MessageRejected("decode_error", f"{encoding} image width {width} is odd")
            out = cv2.cvtColor(np.ascontiguousarray(pix), _YUV[enc])
    except cv2.error as err:  # pragma: no cover - OpenCV rejects what we validated above
        msg_text = f"OpenCV could not convert {encoding}: {err}".replace("\n", " ")
        raise MessageRejected("decode_error", msg_text) from err
    return np.ascontiguousarray(out, dtype=np.uint8)


def compressed_to_rgb(msg: object) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg, png, ...) -> RGB ``uint8 [H, W, 3]``."""
    fmt = str(getattr(msg, "format", ""))
    if "compresseddepth" in fmt.lower():
        raise MessageRejected("unknown_encoding", f"compressed image format '{fmt}' holds depth")
    data = np.frombuffer(msg.data, dtype=np.uint8)  # type: ignore[attr-defined]
    if data.size == 0:
        raise MessageRejected("empty_data", "compressed image has no data")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise MessageRejected("decode_error", f"compressed image ('{fmt}') could not be decoded")
    return np.ascontiguousarray(bgr[:, :, ::-1])


@dataclass
class EncodedImage:
    """Fields of a ``sensor_msgs/Image`` (what :func:`rgb_to_image_fields` produces)."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes

    def fill(self, msg: object) -> object:
        """Copy the fields into an Image message (``data`` as bytes: fast in rclpy)."""
        for name in ("height", "width", "encoding", "is_bigendian", "step", "data"):
            setattr(msg, name, getattr(self, name))
        return msg


def rgb_to_image_fields(
    rgb: np.ndarray, encoding: str = "rgb8", big_endian: bool = False, pad: int = 0
) -> EncodedImage:
    """RGB ``uint8 [H, W, 3]`` -> Image fields in ``encoding`` (used by bag tools and tests).

    ``pad`` extra bytes are appended to every row (``step > width * bytes_per_pixel``).
    Supports the encodings :func:`image_to_rgb` reads, except ``rgba8``/``bgra8``.
    """
    h, w = rgb.shape[:2]
    enc = encoding.lower()
    if enc == "rgb8":
        pix = rgb
    elif enc == "bgr8":
        pix = rgb[:, :, ::-1]
    elif enc in ("rgb16", "bgr16"):
        pix = rgb.astype(np.uint16) * 257
        pix = pix if enc == "rgb16" else pix[:, :, ::-1]
    elif enc in ("mono8", "8uc1"):
        pix = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif enc in ("mono16", "16uc1"):
        pix = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    elif enc.startswith("bayer_") and enc[6:10] in _BAYER:
        pattern = enc[6:10]
        chan = {"r": 0, "g": 1, "b": 2}
        pix = np.empty((h, w), np.uint8)
        for dy in range(2):
            for dx in range(2):
                pix[dy::2, dx::2] = rgb[dy::2, dx::2, chan[pattern[dy * 2 + dx]]]
        if enc.endswith("16"):
            pix = pix.astype(np.uint16) * 257
    elif enc in _YUV:
        pix = _rgb_to_yuv422(rgb, uyvy=enc in ("yuv422", "uyvy"))
    else:
        raise MessageRejected("unknown_encoding", f"cannot encode RGB as '{encoding}'")
    pix = np.ascontiguousarray(pix)
    if pix.dtype == np.uint16:
        pix = pix.astype(">u2" if big_endian else "<u2")
    row = pix.reshape(h, -1).view(np.uint8)
    if pad:
        row = np.concatenate([row, np.zeros((h, pad), np.uint8)], axis=1)
    return EncodedImage(h, w, encoding, int(big_endian), row.shape[1], row.tobytes())


def _rgb_to_yuv422(rgb: np.ndarray, uyvy: bool) -> np.ndarray:
    """RGB ``[H, W, 3]`` (W even) -> packed 4:2:2 ``[H, W, 2]`` (BT.601 limited range)."""
    yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # planar 4:2:0, BT.601 limited range
    h, w = rgb.shape[:2]
    y = yuv[:h]
    u = yuv[h : h + h // 4].reshape(h // 2, w // 2)
    v = yuv[h + h // 4 :].reshape(h // 2, w // 2)
    u = np.repeat(u, 2, axis=0)
    v = np.repeat(v, 2, axis=0)
    out = np.empty((h, w, 2), np.uint8)
    if uyvy:
        out[:, 0::2, 0], out[:, 1::2, 0] = u, v
        out[:, :, 1] = y
    else:
        out[:, :, 0] = y
        out[:, 0::2, 1], out[:, 1::2, 1] = u, v
    return out


# --------------------------------------------------------------------------------------------
# CameraInfo
# --------------------------------------------------------------------------------------------


@dataclass
class RosCamera:
    """Intrinsics decoded from ``sensor_msgs/CameraInfo`` (OpenCV pixel convention).

    ``spec`` is the project's :class:`~nre_localization.datasets.common.CameraSpec` (PINHOLE,
    OPENCV or OPENCV_FISHEYE). ``rectify`` holds ``(map_x, map_y)`` when the distortion cannot be
    expressed by the engine's models (plumb_bob with k3 != 0, rational_polynomial): the image is
    then remapped to the PINHOLE camera ``spec`` before localisation.
    """

    spec: CameraSpec
    rectify: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _engine: object | None = field(default=None, repr=False)

    @property
    def width(self) -> int:
        return self.spec.width

    @property
    def height(self) -> int:
        return self.spec.height

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """Undistort ``rgb [H, W, 3]`` when :attr:`rectify` is set; else return it unchanged."""
        if self.rectify is None:
            return rgb
        return cv2.remap(rgb, self.rectify[0], self.rectify[1], cv2.INTER_LINEAR)

    def engine_camera(self) -> object:
        """The engine's :class:`~nre_localization.geometry.cameras.Camera` (built once)."""
        if self._engine is None:
            self._engine = self.spec.to_engine()
        return self._engine


def _get(msg: object, name: str) -> object:
    """A CameraInfo field by its ROS 2 name, or the ROS 1 capitalised one (``K``, ``D``, ...)."""
    if hasattr(msg, name):
        return getattr(msg, name)
    return getattr(msg, name.upper())


def _bad_info(msg: str) -> MessageRejected:
    return MessageRejected("bad_camera_info", msg)


class CameraInfoConverter:
    """``sensor_msgs/CameraInfo`` -> :class:`RosCamera`, cached (CameraInfo rarely changes).

    ``use_rectified`` uses the projection matrix ``P`` and no distortion (for ``image_rect``
    topics). Binning and a region of interest are applied to the intrinsics (ROI offsets in
    full-resolution pixels, then binning, as ``sensor_msgs/CameraInfo`` defines them).
    """

    def __init__(self, use_rectified: bool = False) -> None:
        self.use_rectified = use_rectified
        self._key: tuple | None = None
        self._spec: RosCamera | None = None

    def convert(self, info: object) -> RosCamera:
        k = np.asarray(_get(info, "k"), dtype=np.float64).ravel()
        p = np.asarray(_get(info, "p"), dtype=np.float64).ravel()
        d = np.asarray(_get(info, "d"), dtype=np.float64).ravel()
        roi = info.roi  # type: ignore[attr-defined]
        key = (
            k.tobytes(),
            p.tobytes(),
            d.tobytes(),
            str(info.distortion_model),  # type: ignore[attr-defined]
            int(info.width),  # type: ignore[attr-defined]
            int(info.height),  # type: ignore[attr-defined]
            int(info.binning_x),  # type: ignore[attr-defined]
            int(info.binning_y),  # type: ignore[attr-defined]
            int(roi.x_offset),
            int(roi.y_offset),
            int(roi.width),
            int(roi.height),
        )
        if key == self._key and self._spec is not None:
            return self._spec
        spec = camera_info_to_camera(info, self.use_rectified)
        self._key, self._spec = key, spec
        return spec


def camera_info_to_camera(info: object, use_rectified: bool = False) -> RosCamera:
    """Decode and validate one ``sensor_msgs/CameraInfo``; raises ``bad_camera_info``."""
    width, height = int(info.width), int(info.height)  # type: ignore[attr-defined]
    k = np.asarray(_get(info, "k"), dtype=np.float64).ravel()
    p = np.asarray(_get(info, "p"), dtype=np.float64).ravel()
    d = np.asarray(_get(info, "d"), dtype=np.float64).ravel()
    model_name = str(info.distortion_model).lower()  # type: ignore[attr-defined]
    if width <= 0 or height <= 0:
        raise _bad_info(f"camera_info size {width}x{height} is not positive")
    if k.size != 9 or not np.all(np.isfinite(k)):
        raise _bad_info("camera_info K has non-finite values (NaN or inf)")
    if not np.all(np.isfinite(d)):
        raise _bad_info("camera_info D has non-finite values (NaN or inf)")
    if use_rectified:
        if p.size != 12 or not np.all(np.isfinite(p)):
            raise _bad_info("camera_info P has non-finite values (NaN or inf)")
        fx, fy, cx, cy = p[0], p[5], p[2], p[6]
        d = np.zeros(0)
    else:
        fx, fy, cx, cy = k[0], k[4], k[2], k[5]
    if fx <= 0 or fy <= 0:
        raise _bad_info(f"camera_info focal lengths fx={fx}, fy={fy} must be positive")
    if abs(k[1]) > 1e-9 * fx and not use_rectified:
        raise _bad_info("camera_info K has a skew term; skewed cameras are not supported")

    # Region of interest (full-resolution pixels), then binning.
    roi = info.roi  # type: ignore[attr-defined]
    bx = max(int(info.binning_x), 1)  # type: ignore[attr-defined]
    by = max(int(info.binning_y), 1)  # type: ignore[attr-defined]
    full_w, full_h = width, height
    if int(roi.width) > 0 and int(roi.height) > 0:
        cx -= int(roi.x_offset)
        cy -= int(roi.y_offset)
        full_w, full_h = int(roi.width), int(roi.height)
    out_w, out_h = full_w // bx, full_h // by
    fx, cx = fx / bx, (cx + 0.5) / bx - 0.5
    fy, cy = fy / by, (cy + 0.5) / by - 0.5
    if not (-out_w <= cx <= 2 * out_w and -out_h <= cy <= 2 * out_h):
        raise _bad_info(f"camera_info principal point ({cx:.1f}, {cy:.1f}) is far off the image")

    pinhole = [float(fx), float(fy), float(cx), float(cy)]
    if d.size == 0 or not np.any(d):
        return RosCamera(CameraSpec("PINHOLE", out_w, out_h, tuple(pinhole)))
    if model_name in ("plumb_bob", "rational_polynomial"):
        if d.size >= 4 and not np.any(d[4:]):
            params = tuple(pinhole + [float(x) for x in d[:4]])
            return RosCamera(CameraSpec("OPENCV", out_w, out_h, params))
        # Not expressible by our models: remap the image to the pinhole camera K.
        kk = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
        mx, my = cv2.initUndistortRectifyMap(kk, d, None, kk, (out_w, out_h), cv2.CV_32FC1)
        return RosCamera(CameraSpec("PINHOLE", out_w, out_h, tuple(pinhole)), rectify=(mx, my))
    if model_name == "equidistant":
        if d.size != 4:
            raise _bad_info(f"equidistant distortion needs 4 coefficients, got {d.size}")
        params = tuple(pinhole + [float(x) for x in d])
        return RosCamera(CameraSpec("OPENCV_FISHEYE", out_w, out_h, params))
    raise _bad_info(
        f"camera_info distortion model '{info.distortion_model}' is not supported "  # type: ignore[attr-defined]
        "(plumb_bob, rational_polynomial, equidistant)"
    )


def check_image_matches(rgb: np.ndarray, spec: RosCamera) -> None:
    """Raise ``size_mismatch`` when the decoded image and camera_info disagree in size."""
    h, w = rgb.shape[:2]
    if (w, h) != (spec.width, spec.height):
        raise MessageRejected(
            "size_mismatch", f"image is {w}x{h} but camera_info says {spec.width}x{spec.height}"
        )


# --------------------------------------------------------------------------------------------
# Poses, transforms
# --------------------------------------------------------------------------------------------


def quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternion ``(x, y, z, w)`` -> rotation ``[3, 3]``; raises ``InputError`` if ~zero."""
    q = np.asarray(q, dtype=np.float64)
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n < 1e-6:
        raise InputError(f"quaternion {q.tolist()} has zero or non-finite norm")
    x, y, z, w = q / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat_xyzw(r: np.ndarray) -> np.ndarray:
    """Rotation ``[3, 3]`` -> unit quaternion ``(x, y, z, w)`` with ``w >= 0``."""
    m = np.asarray(r, dtype=np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s]
    qa = np.asarray(q)
    qa /= np.linalg.norm(qa)
    return -qa if qa[3] < 0 else qa


def make_T(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Rotation ``[3, 3]`` + translation ``[3]`` -> homogeneous ``[4, 4]``."""
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = np.asarray(t, dtype=np.float64).ravel()
    return out


def invert_T(t: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform ``[4, 4]``."""
    r = t[:3, :3]
    return make_T(r.T, -r.T @ t[:3, 3])


def pose_msg_to_matrix(pose: object) -> np.ndarray:
    """``geometry_msgs/Pose`` -> ``[4, 4]`` (the pose of the child in the header frame)."""
    p, q = pose.position, pose.orientation  # type: ignore[attr-defined]
    return make_T(quat_xyzw_to_matrix(np.array([q.x, q.y, q.z, q.w])), np.array([p.x, p.y, p.z]))


def transform_msg_to_matrix(tf: object) -> np.ndarray:
    """``geometry_msgs/Transform`` -> ``[4, 4]`` ``T_parent_child``."""
    t, q = tf.translation, tf.rotation  # type: ignore[attr-defined]
    return make_T(quat_xyzw_to_matrix(np.array([q.x, q.y, q.z, q.w])), np.array([t.x, t.y, t.z]))


def fill_pose(pose: object, t: np.ndarray) -> object:
    """Write ``T [4, 4]`` into a ``geometry_msgs/Pose`` in place; returns it."""
    q = matrix_to_quat_xyzw(t[:3, :3])
    pos, ori = pose.position, pose.orientation  # type: ignore[attr-defined]
    pos.x, pos.y, pos.z = (float(v) for v in t[:3, 3])
    ori.x, ori.y, ori.z, ori.w = (float(v) for v in q)
    return pose


def fill_transform(tf: object, t: np.ndarray) -> object:
    """Write ``T [4, 4]`` into a ``geometry_msgs/Transform`` in place; returns it."""
    q = matrix_to_quat_xyzw(t[:3, :3])
    tr, rot = tf.translation, tf.rotation  # type: ignore[attr-defined]
    tr.x, tr.y, tr.z = (float(v) for v in t[:3, 3])
    rot.x, rot.y, rot.z, rot.w = (float(v) for v in q)
    return tf


def engine_cov_to_ros(
    t_cam_world: np.ndarray, cov_cam: np.ndarray, t_body_cam: np.ndarray | None = None
) -> np.ndarray:
    """Engine covariance -> ROS pose covariance of a body rigidly attached to the camera.

    Engine (architecture.md): ``T_cam_world <- exp(xi) @ T_cam_world``, ``xi = (v, w)``,
    ``cov_cam [6, 6]`` over ``xi``. The body (e.g. ``base_link``) pose ``T_world_body`` is
    published in ROS, with a covariance over ``(x, y, z, roll, pitch, yaw)``: a position error in
    the world (map) frame and a small rotation about the fixed world axes.

    ``T_body_world = T_body_cam T_cam_world`` receives the left perturbation
    ``Ad(T_body_cam) xi``; :func:`nre_localization.geometry.se3.covariance_to_ros` then maps
    that to the ROS convention. Returns a symmetric ``[6, 6]`` float64 array.
    """
    import torch

    from nre_localization.geometry import se3

    t_bc = np.eye(4) if t_body_cam is None else np.asarray(t_body_cam, dtype=np.float64)
    t_bc_t = torch.from_numpy(t_bc)
    ad = se3.adjoint(t_bc_t)
    cov_b = ad @ torch.as_tensor(np.asarray(cov_cam, dtype=np.float64)) @ ad.T
    t_bw = t_bc_t @ torch.as_tensor(np.asarray(t_cam_world, dtype=np.float64))
    return se3.covariance_to_ros(cov_b, t_bw).numpy()


def ros_cov_to_engine(
    t_world_body: np.ndarray, cov_ros: np.ndarray, t_body_cam: np.ndarray | None = None
) -> np.ndarray:
    """Inverse of :func:`engine_cov_to_ros` (e.g. for ``initialpose``): ROS body covariance ->
    engine covariance over the left perturbation of ``T_cam_world``."""
    import torch

    from nre_localization.geometry import se3

    t_bc = np.eye(4) if t_body_cam is None else np.asarray(t_body_cam, dtype=np.float64)
    t_bw = torch.from_numpy(invert_T(np.asarray(t_world_body, dtype=np.float64)))
    cov_b = se3.covariance_from_ros(torch.as_tensor(np.asarray(cov_ros, dtype=np.float64)), t_bw)
    ad_inv = se3.adjoint(torch.from_numpy(invert_T(t_bc)))
    out = (ad_inv @ cov_b @ ad_inv.T).numpy()
    return 0.5 * (out + out.T)
