"""Pose-format helpers for the file formats users exchange (NumPy, float64).

Frames and orders (see docs/architecture.md):
- ``T_a_b`` is a 4x4 matrix mapping points from frame b to frame a.
- COLMAP / hloc store world->camera poses as ``qw qx qy qz tx ty tz`` (``X_cam = R X_world + t``).
- TUM stores camera->world poses as ``t tx ty tz qx qy qz qw`` (scalar last, ``xyzw``).

Quaternions are Hamilton, unit norm, and ``(w, x, y, z)`` unless the function name says ``xyzw``.
"""

from __future__ import annotations

import numpy as np

# NumPy only (no SciPy): this module also runs on GPU hosts that have just torch/NumPy/OpenCV.


def quat_wxyz_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Quaternion(s) ``[..., 4]`` (w, x, y, z) -> rotation matrices ``[..., 3, 3]`` (normalised first)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    r = np.empty(q.shape[:-1] + (3, 3))
    r[..., 0, 0] = 1 - 2 * (y * y + z * z)
    r[..., 0, 1] = 2 * (x * y - z * w)
    r[..., 0, 2] = 2 * (x * z + y * w)
    r[..., 1, 0] = 2 * (x * y + z * w)
    r[..., 1, 1] = 1 - 2 * (x * x + z * z)
    r[..., 1, 2] = 2 * (y * z - x * w)
    r[..., 2, 0] = 2 * (x * z - y * w)
    r[..., 2, 1] = 2 * (y * z + x * w)
    r[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return r


def rotmat_to_quat_wxyz(r: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` -> unit quaternions ``[..., 4]`` (w, x, y, z), ``w >= 0``.

    Uses the eigenvector of the symmetric 4x4 matrix of Bar-Itzhack (robust for any rotation and
    the best fit for slightly non-orthonormal input).
    """
    r = np.asarray(r, dtype=np.float64)
    m = r.reshape(-1, 3, 3)
    k = np.empty((len(m), 4, 4))
    r00, r01, r02 = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    r10, r11, r12 = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    r20, r21, r22 = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
    k[:, 0, 0] = r00 + r11 + r22
    k[:, 1, 1] = r00 - r11 - r22
    k[:, 2, 2] = r11 - r00 - r22
    k[:, 3, 3] = r22 - r00 - r11
    k[:, 0, 1] = k[:, 1, 0] = r21 - r12
    k[:, 0, 2] = k[:, 2, 0] = r02 - r20
    k[:, 0, 3] = k[:, 3, 0] = r10 - r01
    k[:, 1, 2] = k[:, 2, 1] = r01 + r10
    k[:, 1, 3] = k[:, 3, 1] = r02 + r20
    k[:, 2, 3] = k[:, 3, 2] = r12 + r21
    _, vecs = np.linalg.eigh(k / 3.0)
    q = vecs[:, :, -1]  # (w, x, y, z): eigenvector of the largest eigenvalue
    q = np.where(q[:, :1] < 0, -q, q)
    return q.reshape(r.shape[:-2] + (4,))


def _slerp(q0: np.ndarray, q1: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Spherical interpolation of unit quaternions ``[M, 4]`` at fractions ``u [M]``."""
    d = np.sum(q0 * q1, axis=-1)
    q1 = np.where(d[:, None] < 0, -q1, q1)
    d = np.abs(d)
    theta = np.arccos(np.clip(d, -1.0, 1.0))
    small = theta < 1e-8
    s = np.where(small, 1.0, np.sin(theta))
    a = np.where(small, 1.0 - u, np.sin((1.0 - u) * theta) / s)
    b = np.where(small, u, np.sin(u * theta) / s)
    q = a[:, None] * q0 + b[:, None] * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def quat_xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """Reorder ``[..., 4]`` quaternions from (x, y, z, w) to (w, x, y, z)."""
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([q[..., 3:], q[..., :3]], axis=-1)


def quat_wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """Reorder ``[..., 4]`` quaternions from (w, x, y, z) to (x, y, z, w)."""
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([q[..., 1:], q[..., :1]], axis=-1)


def pose_from_qt(q_wxyz: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``q [..., 4]`` (w, x, y, z) and ``t [..., 3]`` -> homogeneous ``[..., 4, 4]`` matrices."""
    q = np.asarray(q_wxyz, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros(q.shape[:-1] + (4, 4))
    out[..., :3, :3] = quat_wxyz_to_rotmat(q)
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def qt_from_pose(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``T [..., 4, 4]`` -> (``q [..., 4]`` (w, x, y, z) with ``w >= 0``, ``t [..., 3]``)."""
    T = np.asarray(T, dtype=np.float64)
    return rotmat_to_quat_wxyz(T[..., :3, :3]), T[..., :3, 3].copy()


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transform(s) ``[..., 4, 4]`` (``T_b_a`` from ``T_a_b``)."""
    T = np.asarray(T, dtype=np.float64)
    out = np.zeros_like(T)
    rt = np.swapaxes(T[..., :3, :3], -1, -2)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -(rt @ T[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def camera_center(T_cam_world: np.ndarray) -> np.ndarray:
    """Camera centre(s) in world ``[..., 3]`` of world->camera pose(s) ``[..., 4, 4]``: ``-R^T t``."""
    T = np.asarray(T_cam_world, dtype=np.float64)
    r = T[..., :3, :3]
    return -(np.swapaxes(r, -1, -2) @ T[..., :3, 3:4])[..., 0]


def interpolate_poses(stamps: np.ndarray, poses: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Interpolate rigid poses ``[N, 4, 4]`` at sorted ``stamps [N]`` to ``query [M]`` stamps.

    Translation is linear, rotation is slerp. Queries must lie within ``[stamps[0], stamps[-1]]``
    (the caller checks the allowed time gap). Returns ``[M, 4, 4]``.
    """
    stamps = np.asarray(stamps, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    if len(stamps) == 1:
        return np.repeat(poses[:1], len(query), axis=0)
    qc = np.clip(query, stamps[0], stamps[-1])
    i = np.clip(np.searchsorted(stamps, qc, side="right") - 1, 0, len(stamps) - 2)
    u = (qc - stamps[i]) / np.maximum(stamps[i + 1] - stamps[i], 1e-300)
    quats = rotmat_to_quat_wxyz(poses[:, :3, :3])
    out = np.zeros((len(query), 4, 4))
    out[:, :3, :3] = quat_wxyz_to_rotmat(_slerp(quats[i], quats[i + 1], u))
    for k in range(3):
        out[:, k, 3] = np.interp(query, stamps, poses[:, k, 3])
    out[:, 3, 3] = 1.0
    return out
