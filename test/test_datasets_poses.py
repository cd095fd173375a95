"""Quaternion / pose helpers (NumPy only) against OpenCV's Rodrigues formula."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from nre_localization.datasets import poses


def _axis_angle(axis: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    axis = axis / np.linalg.norm(axis)
    q = np.r_[np.cos(angle / 2), np.sin(angle / 2) * axis]
    r, _ = cv2.Rodrigues(axis * angle)
    return q, r


@pytest.mark.parametrize("angle", [1e-9, 0.3, 2.0, np.pi - 1e-6, np.pi])
def test_quaternion_matrix_roundtrip(angle: float) -> None:
    rng = np.random.default_rng(int(angle * 1000))
    for _ in range(20):
        q, r = _axis_angle(rng.normal(size=3), angle)
        assert np.allclose(poses.quat_wxyz_to_rotmat(q), r, atol=1e-9)
        q2 = poses.rotmat_to_quat_wxyz(r)
        assert q2[0] >= 0 and (np.allclose(q2, q, atol=1e-7) or np.allclose(q2, -q, atol=1e-7))
    batch = np.stack([_axis_angle(rng.normal(size=3), angle)[0] for _ in range(5)])
    assert poses.rotmat_to_quat_wxyz(poses.quat_wxyz_to_rotmat(batch)).shape == (5, 4)


def test_order_helpers_and_inverse() -> None:
    q = np.array([0.1, 0.2, 0.3, 0.9])
    assert np.allclose(poses.quat_wxyz_to_xyzw(q), [0.2, 0.3, 0.9, 0.1])
    assert np.allclose(poses.quat_xyzw_to_wxyz(poses.quat_wxyz_to_xyzw(q)), q)
    T = poses.pose_from_qt(q, [1.0, -2.0, 0.5])
    assert np.allclose(T @ poses.invert_pose(T), np.eye(4), atol=1e-12)
    assert np.allclose(poses.camera_center(T), poses.invert_pose(T)[:3, 3])


def test_interpolation_is_slerp_and_linear() -> None:
    _, r = _axis_angle(np.array([0.0, 0.0, 1.0]), 1.0)
    T0 = np.eye(4)
    T1 = np.eye(4)
    T1[:3, :3] = r
    T1[:3, 3] = [2.0, 0.0, 0.0]
    out = poses.interpolate_poses(np.array([0.0, 10.0]), np.stack([T0, T1]), np.array([2.5, 10.0]))
    _, r_q = _axis_angle(np.array([0.0, 0.0, 1.0]), 0.25)
    assert np.allclose(out[0, :3, :3], r_q, atol=1e-12) and np.allclose(out[0, :3, 3], [0.5, 0, 0])
    assert np.allclose(out[1], T1)
