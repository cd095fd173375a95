"""Covariance consistency: pose-error twists, NEES and a single calibration factor.

Convention (docs/architecture.md): the engine's ``[6, 6]`` covariance is over the LEFT perturbation
``xi = (v, w)`` of ``T_cam_world`` (translation first, metres; rotation second, radians):
``T_true = exp(xi) @ T_est``, hence ``xi_err = log(T_gt @ inv(T_est))``.

NEES = ``xi_err^T Cov^-1 xi_err``; for a consistent Gaussian estimate it follows chi2(dof)
(mean = dof). A calibrated covariance is ``s * Cov``, whose NEES is ``NEES / s``.
"""

from __future__ import annotations

import numpy as np
import torch

from nre_localization.errors import InputError
from nre_localization.geometry.se3 import se3_inverse, se3_log

__all__ = [
    "CHI2_95",
    "CHI2_MEDIAN",
    "fit_scale",
    "leave_one_out_scales",
    "nees",
    "nees_stats",
    "pose_error_twist",
]

# chi2 quantiles for dof 3 and 6 (95 % and 50 %), so no SciPy is needed.
CHI2_95 = {3: 7.814727903251178, 6: 12.591587243743977}
CHI2_MEDIAN = {3: 2.365973884375338, 6: 5.348120627447116}

BLOCKS = {"full": slice(0, 6), "translation": slice(0, 3), "rotation": slice(3, 6)}


def pose_error_twist(T_est: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """``[..., 4, 4]`` world->camera poses -> ``xi_err [..., 6] = log(T_gt @ inv(T_est))``
    (left perturbation of ``T_est``, ``(v [m], w [rad])``), float64."""
    Te = torch.as_tensor(np.asarray(T_est, dtype=np.float64))
    Tg = torch.as_tensor(np.asarray(T_gt, dtype=np.float64))
    if Te.shape[-2:] != (4, 4) or Tg.shape[-2:] != (4, 4):
        raise InputError(f"poses must be [..., 4, 4], got {tuple(Te.shape)} and {tuple(Tg.shape)}")
    return se3_log(Tg @ se3_inverse(Te)).numpy()


def nees(xi: np.ndarray, cov: np.ndarray, block: str = "full") -> np.ndarray:
    """NEES of errors ``xi [..., 6]`` under covariances ``cov [..., 6, 6]`` restricted to ``block``
    (``"full"`` 6 dof, ``"translation"`` or ``"rotation"`` 3 dof: the marginal block) -> ``[...]``."""
    if block not in BLOCKS:
        raise InputError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
    s = BLOCKS[block]
    e = np.asarray(xi, dtype=np.float64)[..., s]
    c = np.asarray(cov, dtype=np.float64)[..., s, s]
    return np.einsum("...i,...i->...", e, np.linalg.solve(c, e[..., None])[..., 0])


def nees_stats(values: np.ndarray, dof: int) -> dict[str, float | int | None]:
    """Mean, median and fraction within the 95 % chi2(dof) bound of NEES ``values [M]``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "mean": None, "median": None, "frac_within_95": None}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "frac_within_95": float(np.mean(v <= CHI2_95[dof])),
    }


def fit_scale(values: np.ndarray, dof: int = 6, method: str = "median") -> float:
    """Scale ``s`` so that ``values / s`` matches chi2(dof): ``"mean"`` (Gaussian ML: mean NEES =
    dof) or ``"median"`` (robust to gross failures: median NEES = chi2 median)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise InputError("fit_scale needs at least one NEES value")
    if method == "mean":
        return float(v.mean() / dof)
    if method == "median":
        return float(np.median(v) / CHI2_MEDIAN[dof])
    raise InputError(f"method must be 'mean' or 'median', got {method!r}")


def leave_one_out_scales(
    groups: dict[str, np.ndarray], dof: int = 6, method: str = "median"
) -> dict[str, dict]:
    """For each group (scene): fit ``s`` on the other groups, report it and the held-out group's
    NEES statistics after scaling (``values / s``)."""
    out: dict[str, dict] = {}
    for name, held in groups.items():
        rest = [np.asarray(v, dtype=np.float64) for k, v in groups.items() if k != name]
        rest_all = np.concatenate(rest) if rest else np.zeros(0)
        if rest_all.size == 0:
            continue
        s = fit_scale(rest_all, dof, method)
        out[name] = {"scale": s, "held_out": nees_stats(np.asarray(held) / s, dof)}
    return out
