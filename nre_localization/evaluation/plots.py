"""PNG plots a person would rather look at than read (matplotlib, Agg backend, no display).

- :func:`plot_error_cdf`: cumulative fraction of queries under a translation / rotation error, one
  curve per method, with the recall thresholds marked; failures never reach the curve's top.
- :func:`plot_trajectory`: estimated vs ground-truth camera centres, top view onto the plane of
  largest ground-truth spread, each estimate joined to its truth.
- :func:`plot_per_query`: per-query translation and rotation errors as bars (log scale),
  declined / missing queries marked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nre_localization.evaluation.metrics import THRESHOLDS, QueryError  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_error_cdf(
    errors: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str = ""
) -> Path:
    """``errors``: {method: (translation m [N], rotation deg [N])}, failures as inf."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, (t, r) in errors.items():
        for ax, e in zip(axes, (t, r), strict=True):
            e = np.sort(np.asarray(e, dtype=np.float64))
            n = len(e)
            if n == 0:
                continue
            fin = e[np.isfinite(e)]
            frac = np.arange(1, len(fin) + 1) / n
            ax.step(np.maximum(fin, 1e-4), frac, where="post", label=f"{label} ({len(fin)}/{n})")
    for ax, unit, idx in zip(
        axes, ("translation error [m]", "rotation error [deg]"), (0, 1), strict=True
    ):
        for v in sorted({th[idx] for th in THRESHOLDS.values()}):
            ax.axvline(v, color="0.7", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel(unit)
        ax.set_ylabel("fraction of queries")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_trajectory(
    centres_gt: np.ndarray,
    centres_pred: np.ndarray | None,
    path: Path,
    title: str = "",
    sequence: bool = False,
) -> Path:
    """Camera centres ``[N, 3]`` (rows matched; NaN rows in ``centres_pred`` = not localised);
    ``sequence`` joins the ground-truth centres in row order."""
    g = np.asarray(centres_gt, dtype=np.float64).reshape(-1, 3)
    mu = g.mean(axis=0)
    _, _, vt = np.linalg.svd(g - mu) if len(g) > 1 else (None, None, np.eye(3))
    axes2 = vt[:2]
    pg = (g - mu) @ axes2.T
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot(
        pg[:, 0], pg[:, 1], "-o" if sequence else "o", color="k", ms=3, lw=1, label="ground truth"
    )
    if centres_pred is not None:
        p = np.asarray(centres_pred, dtype=np.float64).reshape(-1, 3)
        ok = np.isfinite(p).all(axis=1)
        pp = (p - mu) @ axes2.T
        for a, b in zip(pg[ok], pp[ok], strict=True):
            ax.plot([a[0], b[0]], [a[1], b[1]], color="tab:red", lw=0.8)
        ax.plot(pp[ok, 0], pp[ok, 1], "o", color="tab:red", ms=4, label="estimate")
        if (~ok).any():
            ax.plot(
                pg[~ok, 0], pg[~ok, 1], "x", color="tab:orange", ms=8, mew=2, label="not localised"
            )
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("principal axis 1 [m]")
    ax.set_ylabel("principal axis 2 [m]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_per_query(rows: Sequence[QueryError], path: Path, title: str = "") -> Path:
    """Bars of per-query errors (log scale); failed queries drawn at the top, hatched."""
    names = [q.name for q in rows]
    t = np.array([q.t_err for q in rows], dtype=np.float64)
    r = np.array([q.r_err for q in rows], dtype=np.float64)
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.35 * len(rows) + 2), 6), sharex=True)
    x = np.arange(len(rows))
    for ax, e, unit, idx in zip(
        axes, (t, r), ("translation [m]", "rotation [deg]"), (0, 1), strict=True
    ):
        fin = np.isfinite(e)
        top = max(float(e[fin].max()) * 3 if fin.any() else 1.0, 10.0 if idx else 1.0)
        ax.bar(x[fin], np.maximum(e[fin], 1e-4), color="tab:blue")
        ax.bar(
            x[~fin], top, color="none", edgecolor="tab:red", hatch="//", label="declined / missing"
        )
        for v in sorted({th[idx] for th in THRESHOLDS.values()}):
            ax.axhline(v, color="0.6", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3, axis="y")
        if (~fin).any():
            ax.legend(fontsize=8)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(names, rotation=90, fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
