"""evaluation/consistency.py: pose-error convention, NEES statistics and scale fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nre_localization.errors import InputError
from nre_localization.evaluation import consistency as cs
from nre_localization.geometry.se3 import se3_exp


def _random_pose(rng: np.random.Generator) -> np.ndarray:
    xi = np.concatenate([rng.normal(0, 2.0, 3), rng.normal(0, 1.0, 3)])
    return se3_exp(torch.as_tensor(xi)).numpy()


def test_error_twist_is_left_perturbation() -> None:
    rng = np.random.default_rng(0)
    T_est = _random_pose(rng)
    xi = np.array([0.03, -0.02, 0.05, 0.004, -0.01, 0.002])
    T_gt = se3_exp(torch.as_tensor(xi)).numpy() @ T_est  # T_true = exp(xi) @ T_est
    np.testing.assert_allclose(cs.pose_error_twist(T_est, T_gt), xi, atol=1e-12)
    # a right perturbation gives a different twist (the convention matters)
    T_right = T_est @ se3_exp(torch.as_tensor(xi)).numpy()
    assert np.abs(cs.pose_error_twist(T_est, T_right) - xi).max() > 1e-3


def test_nees_follows_chi2_and_scale_is_recovered() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T * 1e-4 + np.eye(6) * 1e-6
    m = 20000
    xi = rng.multivariate_normal(np.zeros(6), cov, size=m)
    covs = np.broadcast_to(cov, (m, 6, 6))
    for block, dof in (("full", 6), ("translation", 3), ("rotation", 3)):
        v = cs.nees(xi, covs, block)
        st = cs.nees_stats(v, dof)
        assert abs(st["mean"] - dof) < 0.1 * dof
        assert abs(st["frac_within_95"] - 0.95) < 0.01
        assert abs(st["median"] - cs.CHI2_MEDIAN[dof]) < 0.1 * dof
    # an over-confident covariance (4x too small) is detected and its factor recovered
    v = cs.nees(xi, covs / 4.0)
    assert abs(cs.fit_scale(v, 6, "mean") - 4.0) < 0.2
    assert abs(cs.fit_scale(v, 6, "median") - 4.0) < 0.2


def test_leave_one_out_uses_other_groups_only() -> None:
    rng = np.random.default_rng(2)
    groups = {f"g{i}": rng.chisquare(6, size=2000) * s for i, s in enumerate((3.0, 3.0, 3.0, 30.0))}
    loo = cs.leave_one_out_scales(groups, 6, "median")
    assert abs(loo["g3"]["scale"] - 3.0) < 0.3  # fitted without the outlier group
    assert loo["g3"]["held_out"]["median"] > 5 * cs.CHI2_MEDIAN[6]  # inconsistent when held out
    assert loo["g0"]["scale"] > 3.5  # the outlier group pulls the fit of the others


def test_bad_arguments_raise() -> None:
    with pytest.raises(InputError):
        cs.nees(np.zeros(6), np.eye(6), "yaw")
    with pytest.raises(InputError):
        cs.fit_scale(np.zeros(0))
    with pytest.raises(InputError):
        cs.pose_error_twist(np.eye(3), np.eye(4))
