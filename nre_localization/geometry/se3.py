"""SO(3) / SE(3) tools on batched torch tensors (any float dtype, any device).

Conventions (docs/architecture.md):

- ``T_a_b`` is a ``[..., 4, 4]`` homogeneous matrix mapping points from frame ``b`` to frame ``a``.
  The engine solves ``T_cam_world`` (world -> camera, as COLMAP).
- Twists are ``xi = (v, w)``: translation part first (metres), rotation part second (radians).
  The engine perturbs on the LEFT: ``T <- exp(xi) @ T``.
- Quaternions are ``(w, x, y, z)`` unless a function name says ``xyzw`` (ROS / TUM order). Functions
  that return quaternions return the canonical sign ``w >= 0``.

Covariances (see :func:`covariance_to_ros`): the engine's ``[6, 6]`` covariance is over the left
perturbation ``xi`` of ``T_cam_world``. ROS publishes ``T_map_cam`` with a covariance over
``(x, y, z, roll, pitch, yaw)``: a position error expressed in the map frame, and a small rotation
about the fixed map axes (a global, i.e. left, rotation perturbation of ``R_map_cam``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nre_localization.errors import InputError

__all__ = [
    "adjoint",
    "cam_world_to_world_cam",
    "covariance_cam_world_to_world_cam",
    "covariance_from_ros",
    "covariance_to_ros",
    "hat",
    "make_pose",
    "matrix_to_quat_wxyz",
    "matrix_to_quat_xyzw",
    "quat_wxyz_to_matrix",
    "quat_wxyz_to_xyzw",
    "quat_xyzw_to_matrix",
    "quat_xyzw_to_wxyz",
    "se3_exp",
    "se3_inverse",
    "se3_log",
    "so3_exp",
    "so3_log",
    "world_cam_to_cam_world",
]


def hat(w: torch.Tensor) -> torch.Tensor:
    """Skew matrix ``[..., 3, 3]`` of ``w [..., 3]``: ``hat(w) @ x == cross(w, x)``."""
    z = torch.zeros_like(w[..., 0])
    wx, wy, wz = w[..., 0], w[..., 1], w[..., 2]
    rows = (
        torch.stack([z, -wz, wy], dim=-1),
        torch.stack([wz, z, -wx], dim=-1),
        torch.stack([-wy, wx, z], dim=-1),
    )
    return torch.stack(rows, dim=-2)


def _small_angle_coeffs(
    theta2: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A = sin t / t``, ``B = (1 - cos t) / t^2``, ``C = (t - sin t) / t^3`` from ``t^2``.

    Taylor series below a dtype-dependent threshold so that gradients and values stay finite.
    """
    eps = 1e-6 if theta2.dtype == torch.float64 else 1e-3
    small = theta2 < eps
    t2s = torch.where(small, torch.ones_like(theta2), theta2)
    t = torch.sqrt(t2s)
    s, c = torch.sin(t), torch.cos(t)
    a = torch.where(small, 1.0 - theta2 / 6.0 + theta2 * theta2 / 120.0, s / t)
    b = torch.where(small, 0.5 - theta2 / 24.0 + theta2 * theta2 / 720.0, (1.0 - c) / t2s)
    cc = torch.where(
        small, 1.0 / 6.0 - theta2 / 120.0 + theta2 * theta2 / 5040.0, (t - s) / (t2s * t)
    )
    return a, b, cc


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation vector ``w [..., 3]`` (radians) -> rotation matrix ``[..., 3, 3]`` (Rodrigues)."""
    theta2 = (w * w).sum(-1)
    a, b, _ = _small_angle_coeffs(theta2)
    k = hat(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def so3_log(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrix ``[..., 3, 3]`` -> rotation vector ``[..., 3]`` with norm in ``[0, pi]``.

    Goes through the quaternion (robust near ``pi`` where the trace formula is not).
    """
    q = matrix_to_quat_wxyz(r)
    qw, qv = q[..., 0], q[..., 1:]
    n = torch.linalg.norm(qv, dim=-1)
    angle = 2.0 * torch.atan2(n, qw)
    small = n < (1e-12 if r.dtype == torch.float64 else 1e-6)
    # angle / n -> 2 / qw as n -> 0 (qw -> 1 with the canonical sign).
    scale = torch.where(small, 2.0 / qw.clamp_min(1e-30), angle / torch.where(small, 1.0, n))
    return qv * scale[..., None]


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """Twist ``xi = (v, w) [..., 6]`` -> ``[..., 4, 4]``: ``[[exp(w), V v], [0, 1]]``."""
    v, w = xi[..., :3], xi[..., 3:]
    theta2 = (w * w).sum(-1)
    a, b, c = _small_angle_coeffs(theta2)
    k = hat(w)
    k2 = k @ k
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
    rot = eye + a[..., None, None] * k + b[..., None, None] * k2
    vmat = eye + b[..., None, None] * k + c[..., None, None] * k2
    t = (vmat @ v[..., None])[..., 0]
    return make_pose(rot, t)


def se3_log(T: torch.Tensor) -> torch.Tensor:
    """``[..., 4, 4]`` -> twist ``xi = (v, w) [..., 6]`` with ``se3_exp(xi) == T``."""
    w = so3_log(T[..., :3, :3])
    theta2 = (w * w).sum(-1)
    a, b, _ = _small_angle_coeffs(theta2)
    eps = 1e-6 if T.dtype == torch.float64 else 1e-3
    small = theta2 < eps
    # V^-1 = I - K / 2 + d K^2 with d = (1 - A / (2 B)) / theta^2  (-> 1/12 at 0).
    d = torch.where(
        small,
        1.0 / 12.0 + theta2 / 720.0,
        (1.0 - a / (2.0 * b)) / torch.where(small, 1.0, theta2),
    )
    k = hat(w)
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    vinv = eye - 0.5 * k + d[..., None, None] * (k @ k)
    v = (vinv @ T[..., :3, 3:4])[..., 0]
    return torch.cat([v, w], dim=-1)


def make_pose(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rotation ``[..., 3, 3]`` and translation ``[..., 3]`` -> ``[..., 4, 4]``."""
    top = torch.cat([r, t[..., :, None]], dim=-1)
    # (0, 0, 0, 1) from device ops only (no host->device copy: safe inside a CUDA-graph capture).
    bottom = F.pad(torch.zeros_like(top[..., :1, :3]), (0, 1), value=1.0)
    return torch.cat([top, bottom], dim=-2)


def se3_inverse(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms ``[..., 4, 4]``: ``T_b_a`` from ``T_a_b``."""
    rt = T[..., :3, :3].transpose(-1, -2)
    t = -(rt @ T[..., :3, 3:4])[..., 0]
    return make_pose(rt, t)


def world_cam_to_cam_world(T_world_cam: torch.Tensor) -> torch.Tensor:
    """camera->world pose (TUM, ROS ``T_map_cam``) -> world->camera pose (COLMAP, the engine)."""
    return se3_inverse(T_world_cam)


def cam_world_to_world_cam(T_cam_world: torch.Tensor) -> torch.Tensor:
    """world->camera pose (COLMAP, the engine) -> camera->world pose (TUM, ROS ``T_map_cam``)."""
    return se3_inverse(T_cam_world)


def adjoint(T: torch.Tensor) -> torch.Tensor:
    """Adjoint ``[..., 6, 6]`` of ``T [..., 4, 4]`` for twists ordered ``(v, w)``.

    ``T @ exp(xi) @ T^-1 == exp(adjoint(T) @ xi)``; blocks ``[[R, hat(t) R], [0, R]]``.
    """
    r, t = T[..., :3, :3], T[..., :3, 3]
    top = torch.cat([r, hat(t) @ r], dim=-1)
    bottom = torch.cat([torch.zeros_like(r), r], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def _sym(c: torch.Tensor) -> torch.Tensor:
    return 0.5 * (c + c.transpose(-1, -2))


def covariance_cam_world_to_world_cam(cov: torch.Tensor, T_cam_world: torch.Tensor) -> torch.Tensor:
    """Covariance of a left perturbation of ``T_cam_world`` -> of a left perturbation of ``T_world_cam``.

    ``exp(xi) T_cw`` inverts to ``T_wc exp(-xi) = exp(-Ad(T_wc) xi) T_wc``, so the covariance
    becomes ``Ad(T_wc) cov Ad(T_wc)^T``. ``cov [..., 6, 6]`` and the result are over ``(v, w)``.
    """
    ad = adjoint(se3_inverse(T_cam_world))
    return _sym(ad @ cov @ ad.transpose(-1, -2))


def _ros_jacobian(T_cam_world: torch.Tensor) -> torch.Tensor:
    """``[..., 6, 6]`` d(ROS pose error) / d(engine xi) (up to a sign that cancels)."""
    r_wc = T_cam_world[..., :3, :3].transpose(-1, -2)
    z = torch.zeros_like(r_wc)
    return torch.cat(
        [torch.cat([r_wc, z], dim=-1), torch.cat([z, r_wc], dim=-1)],
        dim=-2,
    )


def covariance_to_ros(cov: torch.Tensor, T_cam_world: torch.Tensor) -> torch.Tensor:
    """Engine covariance -> ROS covariance of ``T_map_cam`` (world frame == map frame).

    Engine: ``cov [..., 6, 6]`` over the left perturbation ``xi = (v, w)`` of ``T_cam_world``.
    ROS (``geometry_msgs/PoseWithCovariance``): over ``(x, y, z, roll, pitch, yaw)`` where
    ``(x, y, z)`` is the camera position error in the map frame and ``(roll, pitch, yaw)`` a small
    rotation about the fixed map axes, i.e. ``R_map_cam <- exp(dtheta) R_map_cam``.

    To first order, ``exp(xi) T_cw`` moves the camera centre by ``-R_wc v`` and rotates
    ``R_wc`` by ``exp(-R_wc w)`` on the left, so the Jacobian is ``-blockdiag(R_wc, R_wc)``.
    Note this is NOT the covariance of a left SE(3) perturbation of ``T_world_cam`` (that one,
    :func:`covariance_cam_world_to_world_cam`, couples position and rotation through the
    adjoint's ``hat(t)`` block: its translational part is not the position error).
    """
    j = _ros_jacobian(T_cam_world)
    return _sym(j @ cov @ j.transpose(-1, -2))


def covariance_from_ros(cov_ros: torch.Tensor, T_cam_world: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`covariance_to_ros` (e.g. for an ``/initialpose`` prior)."""
    j = _ros_jacobian(T_cam_world).transpose(-1, -2)  # orthogonal: inverse == transpose
    return _sym(j @ cov_ros @ j.transpose(-1, -2))


def quat_wxyz_to_xyzw(q: torch.Tensor) -> torch.Tensor:
    """Reorder ``(w, x, y, z) [..., 4]`` -> ``(x, y, z, w)``."""
    return torch.cat([q[..., 1:], q[..., :1]], dim=-1)


def quat_xyzw_to_wxyz(q: torch.Tensor) -> torch.Tensor:
    """Reorder ``(x, y, z, w) [..., 4]`` -> ``(w, x, y, z)``."""
    return torch.cat([q[..., 3:], q[..., :3]], dim=-1)


def quat_wxyz_to_matrix(q: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Quaternion ``(w, x, y, z) [..., 4]`` (normalised here) -> rotation ``[..., 3, 3]``.

    Raises :class:`InputError` on a zero or non-finite quaternion when ``check`` (which reads the
    values: pass ``check=False`` in code that must not synchronise with a GPU).
    """
    n = torch.linalg.norm(q, dim=-1, keepdim=True)
    if check and (not torch.isfinite(q).all() or bool((n < 1e-12).any())):
        raise InputError("quaternion with zero or non-finite norm")
    w, x, y, z = (q / n.clamp_min(1e-30)).unbind(-1)
    rows = (
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], dim=-1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], dim=-1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], dim=-1),
    )
    return torch.stack(rows, dim=-2)


def quat_xyzw_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Quaternion ``(x, y, z, w) [..., 4]`` (ROS / TUM order) -> rotation ``[..., 3, 3]``."""
    return quat_wxyz_to_matrix(quat_xyzw_to_wxyz(q))


def matrix_to_quat_wxyz(r: torch.Tensor) -> torch.Tensor:
    """Rotation ``[..., 3, 3]`` -> unit quaternion ``(w, x, y, z) [..., 4]`` with ``w >= 0``.

    Branch-free Shepperd: the four candidate formulas are evaluated and the best conditioned one
    (largest diagonal term) is kept per element.
    """
    m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    tr = m00 + m11 + m22
    cand_sq = torch.stack(
        [1 + tr, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
    )
    idx = cand_sq.argmax(-1, keepdim=True)
    s = torch.sqrt(cand_sq.clamp_min(1e-30))  # 2 * |component|
    d21, d02, d10 = (
        r[..., 2, 1] - r[..., 1, 2],
        r[..., 0, 2] - r[..., 2, 0],
        r[..., 1, 0] - r[..., 0, 1],
    )
    a01, a02, a12 = (
        r[..., 0, 1] + r[..., 1, 0],
        r[..., 0, 2] + r[..., 2, 0],
        r[..., 1, 2] + r[..., 2, 1],
    )
    s0, s1, s2, s3 = s.unbind(-1)
    cands = torch.stack(
        [
            torch.stack([s0 * s0, d21, d02, d10], dim=-1) / (2 * s0[..., None]),
            torch.stack([d21, s1 * s1, a01, a02], dim=-1) / (2 * s1[..., None]),
            torch.stack([d02, a01, s2 * s2, a12], dim=-1) / (2 * s2[..., None]),
            torch.stack([d10, a02, a12, s3 * s3], dim=-1) / (2 * s3[..., None]),
        ],
        dim=-2,
    )  # [..., 4 candidates, 4 components]
    q = torch.gather(cands, -2, idx[..., None].expand(*idx.shape[:-1], 1, 4))[..., 0, :]
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_to_quat_xyzw(r: torch.Tensor) -> torch.Tensor:
    """Rotation ``[..., 3, 3]`` -> unit quaternion ``(x, y, z, w)`` (ROS / TUM order), ``w >= 0``."""
    return quat_wxyz_to_xyzw(matrix_to_quat_wxyz(r))
