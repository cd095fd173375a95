#!/usr/bin/env python3
"""Covariance consistency of the NRE engine on real queries, and a single calibration factor.

Protocol = benchmarks/bench_localization.py's (same splits, maps and oracle keyframes; its map
cache under ``--work``): Strecha scenes (every 3rd image a query) and TUM fr2_desk (odd frames),
``clean`` and ``robot`` protocols, engine ``solve`` (``nre_oracle``) with the default SolverConfig.
Per query: ``xi_err = log(T_gt @ inv(T_est))`` (left perturbation of ``T_cam_world``, (v, w), the
covariance's convention) and NEES ``xi_err^T Cov^-1 xi_err`` (full 6 dof, translation and rotation
3-dof marginal blocks). A single factor ``s`` (``Cov_cal = s * Cov``) is fitted on the queries the
engine calls reliable, globally and leave-one-scene-out (fit on 4 scenes, NEES on the 5th).

    .venv/bin/python benchmarks/bench_covariance.py --json benchmarks/results/covariance_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_localization as bl  # noqa: E402

from nre_localization.datasets.common import ENGINE_MODELS, undistort_to_pinhole  # noqa: E402
from nre_localization.evaluation import consistency as cs  # noqa: E402
from nre_localization.evaluation import metrics, protocols  # noqa: E402
from nre_localization.maps import retrieval  # noqa: E402
from nre_localization.maps.triangulation import TriangulationConfig  # noqa: E402

BLOCK_DOF = {"full": 6, "translation": 3, "rotation": 3}


def run_scene(name: str, args: argparse.Namespace, model: torch.nn.Module) -> list[dict]:
    """Per-query records (pose error twist, covariance, verdict) of one scene, both protocols."""
    dev = torch.device("cpu")
    scene, queries, map_scene = bl.load_split(name, args.data)
    work = Path(args.work) / name
    tracks, _, _ = bl.feature_map(map_scene, work, TriangulationConfig(max_features=4000))
    m, _ = bl.nre_map(map_scene, tracks, model, work, "cpu", args.map_width)
    runner = bl.EngineRunner(m, model, dev)
    by_name = {im.name: im for im in scene.images}
    rows = []
    for proto in args.protocols:
        for qn in queries:
            im = by_name[qn]
            cam = scene.camera_of(im)
            rgb = im.load_rgb(cam)
            if proto == "robot":
                rgb = protocols.degrade_robot(rgb, zlib.crc32(f"{name}/{qn}".encode()))
                cam = protocols.robot_camera(cam)
            if cam.model not in ENGINE_MODELS:
                rgb, cam = undistort_to_pinhole(rgb, cam)
            rgb, cam = bl.resize_max(rgb, cam, args.max_width)
            T_gt = im.T_cam_world
            kfs = retrieval.oracle_keyframes(m, T_gt, cam, args.top_k)
            idx = retrieval.candidate_points(m, kfs, args.max_points)
            if len(idx) < 4:
                continue
            r = runner.solve("nre_oracle", runner.features(rgb), cam, idx)
            T = np.asarray(r.T_cam_world.detach().cpu().numpy(), dtype=np.float64)
            cov = np.asarray(r.covariance.detach().cpu().numpy(), dtype=np.float64)
            xi = cs.pose_error_twist(T, T_gt)
            te, re_ = metrics.pose_errors(T, T_gt)
            row = {
                "scene": name,
                "protocol": proto,
                "query": qn,
                "reliable": bool(r.reliable),
                "t_err_m": float(te),
                "r_err_deg": float(re_),
                "xi_err": xi.tolist(),
                "covariance": cov.tolist(),
                "std_t_m": float(np.sqrt(np.trace(cov[:3, :3]))),
                "std_r_deg": float(np.degrees(np.sqrt(np.trace(cov[3:, 3:])))),
            }
            for b in BLOCK_DOF:
                row[f"nees_{b}"] = float(cs.nees(xi, cov, b))
            rows.append(row)
            bl.log(
                f"{name} {proto} {qn}: {te:.3f} m {re_:.2f} deg, std {row['std_t_m']:.3f} m "
                f"{row['std_r_deg']:.2f} deg, NEES {row['nees_full']:.1f}"
                + ("" if r.reliable else " (declined)")
            )
    return rows


def block_stats(rows: list[dict], scale: float = 1.0) -> dict:
    return {
        b: cs.nees_stats(np.array([r[f"nees_{b}"] for r in rows]) / scale, d)
        for b, d in BLOCK_DOF.items()
    }


def analyse(rows: list[dict], method: str) -> dict:
    """Statistics per scene x protocol, global and leave-one-scene-out fits (reliable queries)."""
    rel = [r for r in rows if r["reliable"]]
    scenes = list(dict.fromkeys(r["scene"] for r in rows))
    protos = list(dict.fromkeys(r["protocol"] for r in rows))
    out: dict = {"fit_method": method, "groups": {}}
    for sub, name in ((rows, "all"), (rel, "reliable")):
        for p in [*protos, "both"]:
            for sc in [*scenes, "all"]:
                g = [
                    r
                    for r in sub
                    if (p == "both" or r["protocol"] == p) and (sc == "all" or r["scene"] == sc)
                ]
                out["groups"][f"{name}/{p}/{sc}"] = block_stats(g)
    full = {sc: np.array([r["nees_full"] for r in rel if r["scene"] == sc]) for sc in scenes}
    allv = np.concatenate(list(full.values()))
    s_glob = cs.fit_scale(allv, 6, method)
    out["global_scale"] = s_glob
    out["global_scale_mean_fit"] = cs.fit_scale(allv, 6, "mean")
    out["global_scale_median_fit"] = cs.fit_scale(allv, 6, "median")
    out["per_scene_scale"] = {sc: cs.fit_scale(v, 6, method) for sc, v in full.items() if v.size}
    out["per_protocol_scale"] = {
        p: cs.fit_scale(np.array([r["nees_full"] for r in rel if r["protocol"] == p]), 6, method)
        for p in protos
    }
    loo = cs.leave_one_out_scales({k: v for k, v in full.items() if v.size}, 6, method)
    for sc, d in loo.items():
        held = [r for r in rel if r["scene"] == sc]
        d["held_out_blocks"] = block_stats(held, d["scale"])
        d["held_out_uncalibrated"] = block_stats(held)
    out["leave_one_out"] = loo
    out["calibrated_global"] = {
        p: block_stats([r for r in rel if p == "both" or r["protocol"] == p], s_glob)
        for p in [*protos, "both"]
    }
    return out


def fmt(v: float | None, f: str = ".1f") -> str:
    return "-" if v is None else format(v, f)


def markdown(a: dict, scenes: list[str], protos: list[str]) -> str:
    lines = [
        "# Covariance consistency (engine `solve`, oracle keyframes, default SolverConfig)",
        "",
        "NEES over reliable queries; ideal: mean = dof (6 / 3 / 3), median 5.35 / 2.37 / 2.37, "
        "95 % within bound (12.59 / 7.81 / 7.81).",
        "",
        "| protocol | scene | n | NEES6 mean | median | in 95% | t3 mean | median | in 95% | "
        "r3 mean | median | in 95% |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in [*protos, "both"]:
        for sc in [*scenes, "all"]:
            g = a["groups"][f"reliable/{p}/{sc}"]
            cells = [str(g["full"]["n"])]
            for b in BLOCK_DOF:
                s = g[b]
                cells += [fmt(s["mean"]), fmt(s["median"]), fmt(s["frac_within_95"], ".2f")]
            lines.append(f"| {p} | {sc} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Global factor ({a['fit_method']} fit): s = {a['global_scale']:.2f} "
        f"(mean fit {a['global_scale_mean_fit']:.2f}, median fit "
        f"{a['global_scale_median_fit']:.2f}); per protocol: "
        + ", ".join(f"{k} {v:.2f}" for k, v in a["per_protocol_scale"].items()),
        "",
        "| held-out scene | s (fit on the others) | s (own scene) | NEES6 mean | median | in 95% | "
        "t3 in 95% | r3 in 95% | uncalibrated NEES6 median |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sc, d in a["leave_one_out"].items():
        h = d["held_out_blocks"]
        lines.append(
            f"| {sc} | {d['scale']:.2f} | {a['per_scene_scale'][sc]:.2f} | "
            f"{fmt(h['full']['mean'])} | {fmt(h['full']['median'])} | "
            f"{fmt(h['full']['frac_within_95'], '.2f')} | "
            f"{fmt(h['translation']['frac_within_95'], '.2f')} | "
            f"{fmt(h['rotation']['frac_within_95'], '.2f')} | "
            f"{fmt(d['held_out_uncalibrated']['full']['median'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data")
    p.add_argument("--scenes", nargs="+", default=list(bl.SCENES), choices=bl.SCENES)
    p.add_argument("--protocols", nargs="+", default=["clean", "robot"], choices=["clean", "robot"])
    p.add_argument("--work", type=Path, default=ROOT / "build" / "nre_eval")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--max-points", type=int, default=4000)
    p.add_argument("--max-width", type=int, default=640)
    p.add_argument("--map-width", type=int, default=640)
    p.add_argument("--fit", choices=["median", "mean"], default="median")
    p.add_argument("--json", type=Path, default=ROOT / "build" / "nre_eval" / "covariance.json")
    p.add_argument("--md", type=Path, help="also write the markdown table here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from nre_localization.model.network import load_default_model

    model = load_default_model(torch.device("cpu"))
    t0 = time.perf_counter()
    rows = [r for s in args.scenes for r in run_scene(s, args, model)]
    a = analyse(rows, args.fit)
    md = markdown(a, list(args.scenes), list(args.protocols))
    strecha = [sc for sc in args.scenes if sc != "tum_fr2_desk"]
    a_strecha = None
    if len(strecha) > 1 and len(strecha) < len(args.scenes):  # TUM's ground truth is coarser
        a_strecha = analyse([r for r in rows if r["scene"] in strecha], args.fit)
        md += "\n## Strecha scenes only\n\n" + markdown(a_strecha, strecha, list(args.protocols))
    doc = {
        "device": bl.device_name(torch.device("cpu")),
        "model_fingerprint": model.fingerprint(),
        "convention": "xi_err = log(T_gt @ inv(T_est)), left perturbation of T_cam_world, (v, w)",
        "robot_protocol": protocols.describe(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "seconds": time.perf_counter() - t0,
        "analysis": a,
        "analysis_strecha_only": a_strecha,
        "queries": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(bl.metrics_json_safe(doc), indent=1) + "\n")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
