"""SE(3)/SO(3) maps, quaternion orders, frame conventions and covariance conversion."""

from __future__ import annotations

import math

import pytest
import torch

from nre_localization.errors import InputError
from nre_localization.geometry import se3


def _twists(n: int, seed: int = 0, max_angle: float = 3.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xi = torch.randn((n, 6), generator=g, dtype=torch.float64)
    w = xi[:, 3:]
    ang = torch.rand((n, 1), generator=g, dtype=torch.float64) * max_angle
    xi[:, 3:] = w / w.norm(dim=1, keepdim=True) * ang
    return xi


def test_exp_log_round_trip_including_small_and_large_angles() -> None:
    xi = _twists(500)
    xi[:10, 3:] *= 1e-9  # tiny rotations
    xi[10:20, 3:] = xi[10:20, 3:] / xi[10:20, 3:].norm(dim=1, keepdim=True) * (math.pi - 1e-6)
    T = se3.se3_exp(xi)
    assert torch.allclose(se3.se3_log(T), xi, atol=1e-8)
    R = T[:, :3, :3]
    assert torch.allclose(
        R.transpose(1, 2) @ R, torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-12
    )
    assert torch.allclose(torch.linalg.det(R), torch.ones(500, dtype=torch.float64))


def test_so3_exp_matches_matrix_exponential() -> None:
    w = _twists(50)[:, 3:]
    ref = torch.linalg.matrix_exp(se3.hat(w))
    assert torch.allclose(se3.so3_exp(w), ref, atol=1e-12)


def test_se3_exp_matches_matrix_exponential() -> None:
    xi = _twists(50, seed=1)
    twist = torch.zeros((50, 4, 4), dtype=torch.float64)
    twist[:, :3, :3] = se3.hat(xi[:, 3:])
    twist[:, :3, 3] = xi[:, :3]  # translation part first in xi
    assert torch.allclose(se3.se3_exp(xi), torch.linalg.matrix_exp(twist), atol=1e-10)


def test_inverse_and_frame_conversions() -> None:
    T_cw = se3.se3_exp(_twists(20, seed=2))
    T_wc = se3.cam_world_to_world_cam(T_cw)
    eye = torch.eye(4, dtype=torch.float64).expand(20, 4, 4)
    assert torch.allclose(T_wc @ T_cw, eye, atol=1e-12)
    assert torch.allclose(se3.world_cam_to_cam_world(T_wc), T_cw, atol=1e-12)
    # The camera centre in the world is the translation of T_world_cam: it maps to the origin.
    centre = T_wc[:, :3, 3]
    Xc = (T_cw[:, :3, :3] @ centre[..., None])[..., 0] + T_cw[:, :3, 3]
    assert Xc.abs().max() < 1e-12


def test_quaternion_orders_and_known_rotation() -> None:
    # 90 degrees about z: (w, x, y, z) = (cos 45, 0, 0, sin 45).
    c = math.sqrt(0.5)
    q_wxyz = torch.tensor([c, 0.0, 0.0, c], dtype=torch.float64)
    R = se3.quat_wxyz_to_matrix(q_wxyz)
    assert torch.allclose(
        R, torch.tensor([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64), atol=1e-15
    )
    q_xyzw = se3.quat_wxyz_to_xyzw(q_wxyz)
    assert q_xyzw.tolist() == [0.0, 0.0, c, c]
    assert torch.allclose(se3.quat_xyzw_to_matrix(q_xyzw), R)
    assert torch.equal(se3.quat_xyzw_to_wxyz(q_xyzw), q_wxyz)


def test_matrix_quaternion_round_trip_all_branches() -> None:
    xi = _twists(1000, seed=3, max_angle=math.pi)
    R = se3.se3_exp(xi)[:, :3, :3]
    q = se3.matrix_to_quat_wxyz(R)
    assert (q[:, 0] >= 0).all()
    assert torch.allclose(q.norm(dim=1), torch.ones(1000, dtype=torch.float64))
    assert torch.allclose(se3.quat_wxyz_to_matrix(q), R, atol=1e-12)
    qx = se3.matrix_to_quat_xyzw(R)
    assert torch.allclose(se3.quat_xyzw_to_matrix(qx), R, atol=1e-12)
    # 180-degree rotations (trace = -1) hit the non-w branches.
    for axis in torch.eye(3, dtype=torch.float64):
        Rpi = se3.so3_exp(axis * math.pi)
        assert torch.allclose(
            se3.quat_wxyz_to_matrix(se3.matrix_to_quat_wxyz(Rpi)), Rpi, atol=1e-12
        )


def test_zero_quaternion_raises() -> None:
    with pytest.raises(InputError):
        se3.quat_wxyz_to_matrix(torch.zeros(4))


def test_adjoint_identity() -> None:
    T = se3.se3_exp(_twists(10, seed=4))
    xi = _twists(10, seed=5) * 0.1
    lhs = T @ se3.se3_exp(xi) @ se3.se3_inverse(T)
    rhs = se3.se3_exp((se3.adjoint(T) @ xi[..., None])[..., 0])
    assert torch.allclose(lhs, rhs, atol=1e-10)


def _ros_error(T_cw_est: torch.Tensor, T_cw: torch.Tensor) -> torch.Tensor:
    """ROS pose error of T_map_cam: (position delta in map, small rotation about map axes)."""
    T_wc, T_wc_est = se3.se3_inverse(T_cw), se3.se3_inverse(T_cw_est)
    dp = T_wc_est[..., :3, 3] - T_wc[..., :3, 3]
    dtheta = se3.so3_log(T_wc_est[..., :3, :3] @ T_wc[..., :3, :3].transpose(-1, -2))
    return torch.cat([dp, dtheta], -1)


def test_covariance_to_ros_matches_sampling() -> None:
    g = torch.Generator().manual_seed(6)
    T_cw = se3.se3_exp(torch.tensor([1.0, -2.0, 3.0, 0.3, -0.5, 1.0], dtype=torch.float64))
    a = torch.randn((6, 6), generator=g, dtype=torch.float64) * 1e-3
    cov = a @ a.T + 1e-8 * torch.eye(6, dtype=torch.float64)
    L = torch.linalg.cholesky(cov)
    xi = (L @ torch.randn((6, 20000), generator=g, dtype=torch.float64)).T
    errs = _ros_error(se3.se3_exp(xi) @ T_cw, T_cw)
    emp = errs.T @ errs / errs.shape[0]
    ros = se3.covariance_to_ros(cov, T_cw)
    assert torch.allclose(emp, ros, atol=0.05 * ros.diagonal().max())
    # And it is not the adjoint-transported covariance (whose translation part is not a position).
    adj = se3.covariance_cam_world_to_world_cam(cov, T_cw)
    assert (adj - ros).abs().max() > 0.2 * ros.diagonal().max()
    assert torch.allclose(se3.covariance_from_ros(ros, T_cw), cov, atol=1e-15)


def test_covariance_cam_world_to_world_cam_matches_sampling() -> None:
    g = torch.Generator().manual_seed(7)
    T_cw = se3.se3_exp(torch.tensor([0.5, 1.0, -1.0, -0.2, 0.4, 0.3], dtype=torch.float64))
    a = torch.randn((6, 6), generator=g, dtype=torch.float64) * 1e-3
    cov = a @ a.T
    L = torch.linalg.cholesky(cov + 1e-12 * torch.eye(6, dtype=torch.float64))
    xi = (L @ torch.randn((6, 20000), generator=g, dtype=torch.float64)).T
    T_wc = se3.se3_inverse(T_cw)
    eta = se3.se3_log(se3.se3_inverse(se3.se3_exp(xi) @ T_cw) @ se3.se3_inverse(T_wc))
    emp = eta.T @ eta / eta.shape[0]
    conv = se3.covariance_cam_world_to_world_cam(cov, T_cw)
    assert torch.allclose(emp, conv, atol=0.05 * conv.diagonal().max())
