"""Camera models: analytic Jacobians vs finite differences, conventions, validation."""

from __future__ import annotations

import math

import pytest
import torch

from nre_localization.errors import InputError
from nre_localization.geometry import se3
from nre_localization.geometry.cameras import Camera
from nre_localization.geometry.cells import cell_to_pixel, pixel_to_cell

CAMERAS = [
    Camera("PINHOLE", 640, 480, (500.0, 510.0, 320.0, 240.0)),
    Camera("SIMPLE_RADIAL", 640, 480, (500.0, 320.0, 240.0, -0.12)),
    Camera("OPENCV", 640, 480, (500.0, 510.0, 320.0, 240.0, -0.2, 0.05, 0.001, -0.002)),
    Camera("OPENCV_FISHEYE", 640, 480, (300.0, 310.0, 320.0, 240.0, 0.05, -0.01, 0.002, -0.001)),
]


def _points(n: int = 300, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn((n, 3), generator=g, dtype=torch.float64) * 0.6
    X[:, 2] = X[:, 2].abs() + 1.0
    X[0] = torch.tensor([1e-9, -1e-9, 2.0], dtype=torch.float64)  # on the optical axis
    X[1] = torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)  # exactly on the axis
    return X


@pytest.mark.parametrize("cam", CAMERAS, ids=lambda c: c.model)
def test_jacobian_matches_finite_differences(cam: Camera) -> None:
    X = _points()
    pix, J, valid = cam.project_jacobian(X)
    assert valid.all()
    eps = 1e-6
    Jn = torch.zeros_like(J)
    for k in range(6):
        d = torch.zeros(6, dtype=torch.float64)
        d[k] = eps
        Tp, Tm = se3.se3_exp(d), se3.se3_exp(-d)
        pp, _ = cam.project(X @ Tp[:3, :3].T + Tp[:3, 3])
        pm, _ = cam.project(X @ Tm[:3, :3].T + Tm[:3, 3])
        Jn[..., k] = (pp - pm) / (2 * eps)
    scale = J.abs().amax()
    assert (J - Jn).abs().amax() < 1e-6 * scale
    assert torch.allclose(pix, cam.project(X)[0], rtol=0, atol=1e-9)


@pytest.mark.parametrize("cam", CAMERAS, ids=lambda c: c.model)
def test_jacobian_float32_close_to_float64(cam: Camera) -> None:
    X = _points()
    _, J64, _ = cam.project_jacobian(X)
    _, J32, _ = cam.project_jacobian(X.float())
    assert (J32.double() - J64).abs().amax() < 1e-5 * J64.abs().amax()


@pytest.mark.parametrize("cam", CAMERAS, ids=lambda c: c.model)
def test_unproject_inverts_project(cam: Camera) -> None:
    X = _points()
    pix, _ = cam.project(X)
    rays = cam.unproject(pix)
    assert torch.allclose(rays[:, :2], X[:, :2] / X[:, 2:], atol=1e-9)
    b = cam.bearings(pix)
    assert torch.allclose(b, X / X.norm(dim=-1, keepdim=True), atol=1e-9)


def test_points_behind_camera_are_invalid() -> None:
    X = torch.tensor([[0.1, 0.2, -1.0], [0.0, 0.0, 0.0], [0.1, 0.1, 1.0]], dtype=torch.float64)
    for cam in CAMERAS:
        _, valid = cam.project(X)
        assert valid.tolist() == [False, False, True]


def test_distortion_fold_back_is_invalid() -> None:
    # k1 < 0: r (1 + k1 r^2) stops growing at r^2 = -1 / (3 k1); points beyond must be invalid.
    cam = Camera("SIMPLE_RADIAL", 640, 480, (500.0, 320.0, 240.0, -0.3))
    r_max = math.sqrt(1 / 0.9)
    X = torch.tensor([[0.5 * r_max, 0.0, 1.0], [1.5 * r_max, 0.0, 1.0]], dtype=torch.float64)
    _, valid = cam.project(X)
    assert valid.tolist() == [True, False]


def test_colmap_round_trip_and_pixel_centres() -> None:
    params = [500.0, 510.0, 320.5, 240.5, -0.2, 0.05, 0.001, -0.002]
    cam = Camera.from_colmap("OPENCV", 640, 480, params)
    assert cam.cx == 320.0 and cam.cy == 240.0  # COLMAP (0.5, 0.5) -> OpenCV (0, 0) centres
    assert list(cam.colmap_params()) == params
    sr = Camera.from_colmap("SIMPLE_RADIAL", 640, 480, [500.0, 320.5, 240.5, 0.1])
    assert (sr.fx, sr.fy, sr.cx, sr.cy) == (500.0, 500.0, 320.0, 240.0)
    # A point on the optical axis projects on the principal point: pixel (cx, cy) in OpenCV units,
    # which COLMAP calls (cx + 0.5, cy + 0.5).
    pix, _ = cam.project(torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64))
    assert torch.allclose(pix, torch.tensor([[320.0, 240.0]], dtype=torch.float64))


@pytest.mark.parametrize("cam", CAMERAS, ids=lambda c: c.model)
def test_scaled_follows_opencv_pixel_convention(cam: Camera) -> None:
    X = _points()
    for w, h in ((320, 240), (1280, 960), (321, 200)):
        sc = cam.scaled(w, h)
        sx, sy = w / cam.width, h / cam.height
        p0, _ = cam.project(X)
        p1, _ = sc.project(X)
        expect = torch.stack([(p0[:, 0] + 0.5) * sx - 0.5, (p0[:, 1] + 0.5) * sy - 0.5], -1)
        assert torch.allclose(p1, expect, atol=1e-9)
        assert (sc.width, sc.height) == (w, h)


@pytest.mark.parametrize("cam", CAMERAS, ids=lambda c: c.model)
def test_cell_camera_matches_cells_module(cam: Camera) -> None:
    X = _points()
    pix, _ = cam.project(X)
    for stride in (2, 8, 16):
        cells, _ = cam.cell_camera(stride).project(X)
        assert torch.allclose(cells, pixel_to_cell(pix, stride), atol=1e-9)
        assert torch.allclose(cell_to_pixel(cells, stride), pix, atol=1e-9)


def test_K_matrix() -> None:
    cam = CAMERAS[2]
    K = cam.K()
    assert K.dtype == torch.float64
    assert torch.equal(
        K, torch.tensor([[500.0, 0, 320], [0, 510, 240], [0, 0, 1]], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("model", "w", "h", "params"),
    [
        ("PINHOLE", 640, 480, (float("nan"), 500, 320, 240)),
        ("PINHOLE", 640, 480, (0.0, 500, 320, 240)),
        ("PINHOLE", 640, 480, (500, -1.0, 320, 240)),
        ("PINHOLE", 640, 480, (500, 500, 320)),
        ("PINHOLE", 0, 480, (500, 500, 320, 240)),
        ("SIMPLE_RADIAL", 640, 480, (-500.0, 320, 240, 0.1)),
        ("OPENCV", 640, 480, (500, 500, 320, 240, float("inf"), 0, 0, 0)),
        ("FOO", 640, 480, (500, 500, 320, 240)),
    ],
)
def test_invalid_cameras_raise_input_error(model: str, w: int, h: int, params: tuple) -> None:
    with pytest.raises(InputError):
        Camera(model, w, h, params)


def test_simple_radial_anisotropic_scaling_becomes_opencv() -> None:
    cam = CAMERAS[1]
    sc = cam.scaled(320, 200)
    assert sc.model == "OPENCV"
    X = _points()
    p0, _ = cam.project(X)
    p1, _ = sc.project(X)
    sx, sy = 320 / 640, 200 / 480
    assert torch.allclose(p1[:, 0], (p0[:, 0] + 0.5) * sx - 0.5, atol=1e-9)
    assert torch.allclose(p1[:, 1], (p0[:, 1] + 0.5) * sy - 0.5, atol=1e-9)
