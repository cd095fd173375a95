"""Image / CameraInfo / pose conversions on real message classes (no DDS graph needed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from nre_localization.errors import InputError
from nre_localization.ros import conversions as cv

msg_mod = pytest.importorskip("sensor_msgs.msg", reason="ROS 2 message wheels not installed")
from geometry_msgs.msg import Pose, PoseWithCovarianceStamped, Transform  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

TUM = Path(__file__).parents[1] / ".." / "shared" / "data" / "tum_fr2_desk"
_TS = get_typestore(Stores.ROS2_JAZZY)


def _real_rgb(h: int = 96, w: int = 128) -> np.ndarray:
    """A real photograph (TUM fr2_desk) when available, else a smooth synthetic gradient."""
    files = sorted((TUM / "rgb").glob("*.png")) if TUM.is_dir() else []
    if files:
        img = cv2.cvtColor(cv2.imread(str(files[0])), cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 2 % 256, yy * 2 % 256, (xx + yy) % 256], -1).astype(np.uint8)


def _ros_image(rgb: np.ndarray, encoding: str, **kw: object) -> object:
    return cv.rgb_to_image_fields(rgb, encoding, **kw).fill(msg_mod.Image())


def _bag_image(rgb: np.ndarray, encoding: str, **kw: object) -> object:
    """The same message as a rosbags dataclass (what offline replay decodes)."""
    f = cv.rgb_to_image_fields(rgb, encoding, **kw)
    hdr = _TS.types["std_msgs/msg/Header"](
        stamp=_TS.types["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="cam"
    )
    return _TS.types["sensor_msgs/msg/Image"](
        header=hdr,
        height=f.height,
        width=f.width,
        encoding=f.encoding,
        is_bigendian=f.is_bigendian,
        step=f.step,
        data=np.frombuffer(f.data, np.uint8),
    )


@pytest.mark.parametrize("make", [_ros_image, _bag_image], ids=["rclpy", "rosbags"])
@pytest.mark.parametrize(
    "encoding, tol",
    [
        ("rgb8", 0),
        ("bgr8", 0),
        ("rgb16", 0),
        ("bgr16", 0),
        ("mono8", -1),
        ("mono16", -1),
        ("yuv422", 6),
        ("yuv422_yuy2", 6),
        ("uyvy", 6),
        ("yuyv", 6),
    ],
)
def test_plain_encodings_round_trip(make, encoding: str, tol: int) -> None:
    rgb = _real_rgb()
    out = cv.image_to_rgb(make(rgb, encoding))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    if tol >= 0:
        # yuv422 halves the chroma resolution: compare on a blurred version, typical error small
        ref = rgb.astype(int)
        err = np.abs(out.astype(int) - ref)
        assert np.median(err) <= tol, (encoding, np.median(err))
    else:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        assert np.abs(out[:, :, 0].astype(int) - gray).max() <= 1
        assert np.array_equal(out[:, :, 0], out[:, :, 2])


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", ["8", "16"])
def test_bayer_patterns_recover_colour(pattern: str, bits: str) -> None:
    """A flat colour mosaicked in each ROS pattern demosaics back to that colour (catches the
    OpenCV Bayer naming offset)."""
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:] = (200, 90, 30)
    out = cv.image_to_rgb(_ros_image(rgb, f"bayer_{pattern}{bits}"))
    centre = out[4:12, 4:12].reshape(-1, 3).astype(int)
    assert np.abs(centre - np.array([200, 90, 30])).max() <= 2, (pattern, centre[0])


def test_step_padding_and_big_endian_are_honoured() -> None:
    rgb = _real_rgb()
    padded = _ros_image(rgb, "rgb8", pad=13)
    assert padded.step == rgb.shape[1] * 3 + 13
    assert np.array_equal(cv.image_to_rgb(padded), rgb)
    # 16-bit values whose two bytes differ, in both byte orders.
    vals = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21 % 65536).astype(np.uint16)
    msgs = {}
    for big in (0, 1):
        m = msg_mod.Image(height=48, width=64, encoding="mono16", is_bigendian=big, step=128)
        m.data = vals.astype(">u2" if big else "<u2").tobytes()
        msgs[big] = m
    assert bytes(msgs[0].data) != bytes(msgs[1].data)
    ref = (vals // 257).astype(np.uint8)
    for big in (0, 1):
        assert np.array_equal(cv.image_to_rgb(msgs[big])[:, :, 1], ref)
    # Interpreting big-endian bytes as little-endian would scramble the image:
    msgs[1].is_bigendian = 0
    assert not np.array_equal(cv.image_to_rgb(msgs[1])[:, :, 1], ref)


def test_compressed_image() -> None:
    rgb = _real_rgb()
    _ok, jpg = cv2.imencode(".png", rgb[:, :, ::-1])
    msg = msg_mod.CompressedImage(format="png", data=jpg.tobytes())
    assert np.array_equal(cv.compressed_to_rgb(msg), rgb)
    with pytest.raises(cv.MessageRejected) as e:
        cv.compressed_to_rgb(msg_mod.CompressedImage(format="jpeg", data=b"not a jpeg"))
    assert e.value.kind == "decode_error"
    with pytest.raises(cv.MessageRejected) as e:
        cv.compressed_to_rgb(msg_mod.CompressedImage(format="jpeg", data=b""))
    assert e.value.kind == "empty_data"


@pytest.mark.parametrize(
    "mutate, kind",
    [
        (lambda m: setattr(m, "encoding", "32FC1"), "unknown_encoding"),
        (lambda m: setattr(m, "encoding", "bayer_xyzw8"), "unknown_encoding"),
        (lambda m: setattr(m, "step", m.step - 1), "step_mismatch"),
        (lambda m: setattr(m, "step", m.step + 3), "step_mismatch"),
        (lambda m: setattr(m, "data", bytes(m.data)[:-5]), "step_mismatch"),
        (lambda m: setattr(m, "data", b""), "empty_data"),
        (lambda m: setattr(m, "height", 0), "empty_data"),
    ],
)
def test_malformed_images_are_rejected_with_a_kind(mutate, kind: str) -> None:
    msg = _ros_image(_real_rgb(), "rgb8")
    mutate(msg)
    with pytest.raises(cv.MessageRejected) as e:
        cv.image_to_rgb(msg)
    assert e.value.kind == kind
    assert "\n" not in str(e.value)
    assert isinstance(e.value, InputError)


def _info(w: int = 640, h: int = 480, d: list[float] | None = None, model: str = "plumb_bob"):
    m = msg_mod.CameraInfo()
    m.width, m.height = w, h
    m.k = [520.9, 0.0, 325.1, 0.0, 521.0, 249.7, 0.0, 0.0, 1.0]
    m.p = [520.9, 0.0, 325.1, 0.0, 0.0, 521.0, 249.7, 0.0, 0.0, 0.0, 1.0, 0.0]
    m.distortion_model = model
    m.d = d if d is not None else [0.0] * 5
    return m


def test_camera_info_models() -> None:
    cam = cv.camera_info_to_camera(_info())
    assert cam.spec.model == "PINHOLE" and cam.rectify is None
    assert cam.spec.params == pytest.approx((520.9, 521.0, 325.1, 249.7))
    cam = cv.camera_info_to_camera(_info(d=[0.1, -0.2, 0.001, 0.002, 0.0]))
    assert cam.spec.model == "OPENCV"
    assert cam.spec.params[4:] == pytest.approx((0.1, -0.2, 0.001, 0.002))
    fish = cv.camera_info_to_camera(_info(d=[0.1, 0.01, 0.0, 0.001], model="equidistant"))
    assert fish.spec.model == "OPENCV_FISHEYE"
    # TUM fr2 has k3 != 0: not an engine model -> rectified to a pinhole camera.
    tum = cv.camera_info_to_camera(_info(d=[0.231222, -0.784899, -0.003257, -0.000105, 0.917205]))
    assert tum.spec.model == "PINHOLE" and tum.rectify is not None
    rgb = _real_rgb(480, 640)
    und = tum.apply(rgb)
    assert und.shape == rgb.shape and not np.array_equal(und, rgb)
    # A distorted pixel of the raw image lands where cv2.undistortPoints says.
    k = np.array([[520.9, 0, 325.1], [0, 521.0, 249.7], [0, 0, 1]])
    d = np.array([0.231222, -0.784899, -0.003257, -0.000105, 0.917205])
    raw = np.array([[[600.0, 420.0]]])
    ideal = cv2.undistortPoints(raw, k, d, P=k).reshape(2)
    mx, my = tum.rectify
    xi, yi = round(ideal[0]), round(ideal[1])
    assert abs(mx[yi, xi] - 600.0) < 1.5 and abs(my[yi, xi] - 420.0) < 1.5


def test_camera_info_binning_and_roi() -> None:
    info = _info()
    info.binning_x = info.binning_y = 2
    cam = cv.camera_info_to_camera(info)
    assert (cam.width, cam.height) == (320, 240)
    fx, _fy, cx, _cy = cam.spec.params
    assert fx == pytest.approx(520.9 / 2) and cx == pytest.approx((325.1 + 0.5) / 2 - 0.5)
    info = _info()
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 100, 50, 320, 240
    cam = cv.camera_info_to_camera(info)
    assert (cam.width, cam.height) == (320, 240)
    assert cam.spec.params[2:] == pytest.approx((225.1, 199.7))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: setattr(m, "k", [float("nan"), *list(m.k)[1:]]),
        lambda m: setattr(m, "k", [0.0] * 9),
        lambda m: setattr(m, "d", [float("inf"), 0, 0, 0, 0]),
        lambda m: setattr(m, "width", 0),
        lambda m: setattr(m, "d", [0.1, 0.0, 0.0, 0.0, 0.0]) or setattr(m, "distortion_model", "x"),
    ],
)
def test_bad_camera_info_rejected(mutate) -> None:
    info = _info()
    mutate(info)
    with pytest.raises(cv.MessageRejected) as e:
        cv.camera_info_to_camera(info)
    assert e.value.kind == "bad_camera_info"


def test_converter_caches_and_size_check() -> None:
    conv = cv.CameraInfoConverter()
    a = conv.convert(_info())
    assert conv.convert(_info()) is a
    b = conv.convert(_info(w=320, h=240))
    assert b is not a and b.width == 320
    with pytest.raises(cv.MessageRejected) as e:
        cv.check_image_matches(np.zeros((480, 640, 3), np.uint8), b)
    assert e.value.kind == "size_mismatch"


def _random_T(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    return cv.make_T(cv.quat_xyzw_to_matrix(q), rng.normal(size=3))


def test_pose_and_transform_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        t = _random_T(rng)
        assert np.allclose(cv.pose_msg_to_matrix(cv.fill_pose(Pose(), t)), t, atol=1e-12)
        assert np.allclose(cv.transform_msg_to_matrix(cv.fill_transform(Transform(), t)), t)
        assert np.allclose(cv.invert_T(t) @ t, np.eye(4), atol=1e-12)
    # 180-degree rotations (trace = -1) take the other branches of matrix_to_quat_xyzw.
    for axis in np.eye(3):
        r = 2 * np.outer(axis, axis) - np.eye(3)
        assert np.allclose(cv.quat_xyzw_to_matrix(cv.matrix_to_quat_xyzw(r)), r)
    with pytest.raises(InputError):
        cv.quat_xyzw_to_matrix(np.zeros(4))


def test_stamps() -> None:
    msg = PoseWithCovarianceStamped()
    cv.set_stamp(msg.header.stamp, 1_311_868_169_163_498_000)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1311868169, 163498000)
    assert cv.stamp_to_ns(msg.header.stamp) == 1_311_868_169_163_498_000


def test_engine_covariance_to_ros_matches_monte_carlo() -> None:
    """Sample the engine's left perturbation, push it through to the base pose in the map frame,
    and compare the empirical (x, y, z, fixed-axis rotation) covariance with the closed form."""
    rng = np.random.default_rng(1)
    t_cw = _random_T(rng)
    t_bc = _random_T(rng)  # base <- camera
    a = rng.normal(size=(6, 6)) * np.array([0.02, 0.02, 0.02, 0.005, 0.005, 0.005])
    cov = a @ a.T + 1e-6 * np.eye(6)
    closed = cv.engine_cov_to_ros(t_cw, cov, t_bc)
    t_wb = cv.invert_T(t_bc @ t_cw)
    n = 20000
    xis = rng.multivariate_normal(np.zeros(6), cov, size=n)
    # Exact SE(3) exponential of each sample (independent of the code under test: matrix exp).
    import torch

    m = torch.zeros(n, 4, 4, dtype=torch.float64)
    w = torch.from_numpy(xis[:, 3:])
    m[:, 0, 1], m[:, 0, 2], m[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
    m[:, 1, 0], m[:, 2, 0], m[:, 2, 1] = w[:, 2], -w[:, 1], w[:, 0]
    m[:, :3, 3] = torch.from_numpy(xis[:, :3])
    exp = torch.linalg.matrix_exp(m).numpy()
    t_bw_s = t_bc @ exp @ t_cw  # [n, 4, 4]
    r_wb_s = np.swapaxes(t_bw_s[:, :3, :3], 1, 2)
    p_wb_s = -np.einsum("nij,nj->ni", r_wb_s, t_bw_s[:, :3, 3])
    errs = np.zeros((n, 6))
    errs[:, :3] = p_wb_s - t_wb[:3, 3]
    dr = r_wb_s @ t_wb[:3, :3].T  # world-frame (fixed-axis) rotation error
    errs[:, 3:] = (
        np.stack(
            [dr[:, 2, 1] - dr[:, 1, 2], dr[:, 0, 2] - dr[:, 2, 0], dr[:, 1, 0] - dr[:, 0, 1]], 1
        )
        / 2
    )
    emp = np.cov(errs.T)
    scale = np.sqrt(np.outer(np.diag(closed), np.diag(closed)))
    assert np.abs(emp - closed).max() / scale.max() < 0.05
    assert np.allclose(closed, closed.T)
    back = cv.ros_cov_to_engine(t_wb, closed, t_bc)
    assert np.allclose(back, cov, rtol=1e-9, atol=1e-12)
