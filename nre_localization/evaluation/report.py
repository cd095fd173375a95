"""File-level evaluation: read predictions and ground truth in the formats users exchange,
compare them with :mod:`metrics`, write JSON / CSV / PNG.

Predictions: hloc / COLMAP lists (``name qw qx qy qz tx ty tz``, world->camera) or TUM
trajectories (``t tx ty tz qx qy qz qw``, camera->world); declined queries in ``PRED.declined``.
Ground truth: a COLMAP model folder (matched by image name) or a TUM trajectory (matched by stamp,
taken from the TUM prediction or parsed from an image name such as ``rgb/1311868169.16.png``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from nre_localization.datasets import colmap, tum
from nre_localization.datasets.common import read_name_list
from nre_localization.datasets.poses import invert_pose
from nre_localization.errors import DatasetError, InputError
from nre_localization.evaluation.metrics import QueryError, evaluate_poses

_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def detect_pred_format(path: Path) -> str:
    """``tum`` when every line's first field is a number, else ``hloc``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: predictions file not found")
    firsts = [
        s.split()[0]
        for s in path.read_text(errors="replace").splitlines()
        if s.strip() and not s.lstrip().startswith("#")
    ]
    if firsts and all(_FLOAT.match(f) for f in firsts):
        return "tum"
    return "hloc"


def stamp_from_name(name: str) -> float:
    """Stamp encoded in an image name: ``rgb/1311868169.163498.png`` -> 1311868169.163498."""
    base = Path(name).name
    m = re.match(r"^([-+]?\d+(?:\.\d+)?)", base)
    if not m:
        raise InputError(f"cannot read a timestamp from image name {name!r}")
    return float(m.group(1))


def read_declined(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        return []
    return [
        s.split()[0] for s in path.read_text().splitlines() if s.strip() and not s.startswith("#")
    ]


def load_predictions(path: Path, fmt: str = "auto") -> dict[str, np.ndarray]:
    """{name: T_cam_world}. For TUM files the name is the stamp text as written."""
    path = Path(path)
    fmt = detect_pred_format(path) if fmt == "auto" else fmt
    if fmt == "hloc":
        return colmap.read_pose_list(path)
    if fmt == "tum":
        traj = tum.read_trajectory(path)
        T_cw = invert_pose(traj.T_world_cam)
        return {f"{s:.6f}": T for s, T in zip(traj.stamps, T_cw, strict=True)}
    raise InputError(f"unknown prediction format {fmt!r} (auto, hloc or tum)")


def load_ground_truth(gt: Path) -> tuple[str, object]:
    """(``colmap``, {name: T_cam_world}) or (``tum``, Trajectory)."""
    gt = Path(gt)
    if gt.is_dir():
        model = colmap.read_model(gt)
        return "colmap", {im.name: im.T_cam_world for im in model.images.values()}
    if gt.is_file():
        return "tum", tum.read_trajectory(gt)
    raise DatasetError(f"{gt}: ground truth not found (a COLMAP model folder or a TUM trajectory)")


def _match_name(name: str, gt_names: dict[str, str], pred_path: Path, gt_path: Path) -> str:
    if name in gt_names:
        return name
    base = Path(name).name
    if base in gt_names:
        return gt_names[base]
    raise InputError(f"{pred_path}: query {name!r} is not in the ground truth {gt_path}")


def evaluate_files(
    pred_path: Path,
    gt_path: Path,
    declined_path: Path | None = None,
    queries_path: Path | None = None,
    pred_format: str = "auto",
    max_dt: float = tum.DEFAULT_MAX_DT,
) -> tuple[dict, list[QueryError], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Evaluate a prediction file against ground truth -> (summary, rows, pred, gt) with names
    as in the prediction / query files. ``declined_path`` defaults to ``PRED.declined``."""
    pred_path = Path(pred_path)
    pred = load_predictions(pred_path, pred_format)
    declined = read_declined(
        Path(declined_path) if declined_path else Path(str(pred_path) + ".declined")
    )
    queries = read_name_list(queries_path) if queries_path else None
    kind, gt_data = load_ground_truth(Path(gt_path))
    names = list(dict.fromkeys([*(queries or []), *sorted([*pred, *declined])]))
    gt: dict[str, np.ndarray] = {}
    if kind == "colmap":
        assert isinstance(gt_data, dict)
        by_base = {Path(n).name: n for n in gt_data}
        by_base.update({n: n for n in gt_data})
        for n in names:
            gt[n] = gt_data[_match_name(n, by_base, pred_path, Path(gt_path))]
    else:
        assert isinstance(gt_data, tum.Trajectory)
        if names:
            stamps = np.array([stamp_from_name(n) for n in names])
            T_wc = tum.associate(gt_data, stamps, max_dt, what=names)
            gt = dict(zip(names, invert_pose(T_wc), strict=True))
    summary, rows = evaluate_poses(pred, gt, declined, queries if queries is not None else names)
    summary["ground_truth"] = str(gt_path)
    summary["ground_truth_kind"] = kind
    summary["predictions"] = str(pred_path)
    return summary, rows, pred, gt


def _json_safe(v: object) -> object:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return v


def _atomic(path: Path, text: str) -> None:
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, summary: dict, rows: list[QueryError] | None = None) -> None:
    """Summary (plus per-query rows) as strict JSON (infinite values written as null)."""
    data = dict(summary)
    if rows is not None:
        data["per_query"] = [
            {"name": q.name, "translation_m": q.t_err, "rotation_deg": q.r_err, "status": q.status}
            for q in rows
        ]
    _atomic(path, json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")


def write_csv(path: Path, rows: list[QueryError]) -> None:
    """One row per query: ``name,translation_m,rotation_deg,status`` (failures: ``inf``)."""
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["name", "translation_m", "rotation_deg", "status"])
    for q in rows:
        w.writerow([q.name, f"{q.t_err:.6g}", f"{q.r_err:.6g}", q.status])
    _atomic(path, buf.getvalue())
