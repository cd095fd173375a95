"""Localisation metrics as hloc / PixLoc / visuallocalization.net compute them.

Per query (world->camera poses ``T_cam_world [4, 4]``):
- translation error: distance between camera centres ``|-R_gt^T t_gt + R^T t|`` (metres);
- rotation error: ``arccos((trace(R_gt^T R) - 1) / 2)`` (degrees).
A declined or missing query counts as a failure with infinite errors; recalls are fractions of all
queries. ATE (sequences) is the RMSE of camera-centre differences without any alignment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from nre_localization.datasets.poses import camera_center

# key -> (max translation error in metres, max rotation error in degrees)
THRESHOLDS: dict[str, tuple[float, float]] = {
    "0.25m_2deg": (0.25, 2.0),
    "0.5m_5deg": (0.5, 5.0),
    "5m_10deg": (5.0, 10.0),
    "0.05m_5deg": (0.05, 5.0),
}


def pose_errors(T_pred: np.ndarray, T_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World->camera poses ``[..., 4, 4]`` -> (translation error m ``[...]``, rotation error deg ``[...]``)."""
    T_pred = np.asarray(T_pred, dtype=np.float64)
    T_gt = np.asarray(T_gt, dtype=np.float64)
    dt = np.linalg.norm(camera_center(T_pred) - camera_center(T_gt), axis=-1)
    r = np.swapaxes(T_gt[..., :3, :3], -1, -2) @ T_pred[..., :3, :3]
    cos = np.clip((np.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    return dt, np.degrees(np.arccos(cos))


def recall(t_err: np.ndarray, r_err: np.ndarray, t_max: float, r_max: float) -> float:
    """Fraction of queries with both errors within thresholds (inf errors count as failures)."""
    t_err = np.asarray(t_err, dtype=np.float64)
    if t_err.size == 0:
        return 0.0
    return float(np.mean((t_err <= t_max) & (np.asarray(r_err) <= r_max)))


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


@dataclass
class QueryError:
    """One query's outcome: ``status`` is ``ok``, ``declined`` or ``missing``."""

    name: str
    t_err: float
    r_err: float
    status: str


def evaluate_poses(
    pred: Mapping[str, np.ndarray],
    gt: Mapping[str, np.ndarray],
    declined: Iterable[str] = (),
    queries: Iterable[str] | None = None,
) -> tuple[dict, list[QueryError]]:
    """Compare predictions with ground truth.

    ``pred`` / ``gt``: {name: T_cam_world}; ``declined``: names the system declined;
    ``queries``: the full query set (default: predicted plus declined names). Queries neither
    predicted nor declined are ``missing`` (failures). Returns (summary dict, per-query list).
    Every query must be in ``gt`` (KeyError names it otherwise).
    """
    declined = list(declined)
    qset = list(queries) if queries is not None else list(dict.fromkeys([*pred, *declined]))
    dset = set(declined)
    rows = []
    for name in qset:
        if name not in gt:
            raise KeyError(name)
        if name in pred:
            t, r = pose_errors(pred[name], gt[name])
            rows.append(QueryError(name, float(t), float(r), "ok"))
        else:
            rows.append(
                QueryError(name, math.inf, math.inf, "declined" if name in dset else "missing")
            )
    return summarize(rows), rows


def summarize(rows: list[QueryError]) -> dict:
    """Summary of per-query errors: counts, medians (failures as +inf; ``None`` when infinite),
    medians over localised queries, recalls at :data:`THRESHOLDS`, ATE (RMSE, no alignment)."""
    t = np.array([q.t_err for q in rows], dtype=np.float64)
    r = np.array([q.r_err for q in rows], dtype=np.float64)
    ok = np.isfinite(t)
    n = len(rows)
    n_declined = sum(q.status == "declined" for q in rows)
    n_missing = sum(q.status == "missing" for q in rows)
    out = {
        "n_queries": n,
        "n_localized": int(ok.sum()),
        "n_declined": n_declined,
        "n_missing": n_missing,
        "decline_rate": n_declined / n if n else 0.0,
        "median_translation_m": _finite_or_none(float(np.median(t))) if n else None,
        "median_rotation_deg": _finite_or_none(float(np.median(r))) if n else None,
        "median_translation_m_localized": float(np.median(t[ok])) if ok.any() else None,
        "median_rotation_deg_localized": float(np.median(r[ok])) if ok.any() else None,
        "recall": {k: recall(t, r, *v) for k, v in THRESHOLDS.items()},
        "thresholds": {
            k: {"translation_m": v[0], "rotation_deg": v[1]} for k, v in THRESHOLDS.items()
        },
        "ate_rmse_m": float(np.sqrt(np.mean(t[ok] ** 2))) if ok.any() else None,
    }
    return out


def ate(centres_pred: np.ndarray, centres_gt: np.ndarray) -> dict:
    """Absolute trajectory error without alignment: centres ``[N, 3]`` (same frame, matched rows)
    -> {rmse, mean, median, max, n} in metres (as ``evo_ape`` without ``-a``)."""
    e = np.linalg.norm(np.asarray(centres_pred) - np.asarray(centres_gt), axis=-1)
    if e.size == 0:
        return {"rmse": None, "mean": None, "median": None, "max": None, "n": 0}
    return {
        "rmse": float(np.sqrt(np.mean(e**2))),
        "mean": float(e.mean()),
        "median": float(np.median(e)),
        "max": float(e.max()),
        "n": int(e.size),
    }


def latency_stats(seconds: Iterable[float]) -> dict:
    """p50 / p90 / p99 / mean of per-frame times, in milliseconds."""
    a = np.asarray(list(seconds), dtype=np.float64) * 1e3
    if a.size == 0:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "n": 0}
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "n": int(a.size),
    }
