#!/usr/bin/env python3
"""Localisation benchmark on held-out RENDERED room scenes: NRE vs RE vs PnP-RANSAC, exact truth.

Scenes come from :func:`nre_localization.training.scenes.make_room_pair` (room, boxes, panels,
z-buffered, exact depth and occlusion) textured ONLY with the validation split of ``.traindata``
(``photos/val``, ``textures/val``: the material of training's ``valroom`` set; never the Strecha /
TUM evaluation data). The generator returns correspondences, not poses or depth, so this file
captures its two calls of the private renderer ``scenes._render_view`` (surfaces, intrinsics,
world->camera rotation and centre, and A's inverse-depth buffer) while it runs: the scene and the
cameras are the generator's own sampling, nothing in ``scenes.py`` is changed.

Per scene: view A is the map keyframe (world frame = A's camera frame), view B the query with
the exact relative pose. Map points: up to ``--points`` corners of A (``cv2.goodFeaturesToTrack``
as the map builder's depth path, topped up from a grid), away from surface boundaries, lifted
with A's exact depth; descriptors sampled from A's coarse (stride 16) and fine (stride 2) maps
with :func:`nre_localization.maps.builder.sample_descriptors` (the builder's fusion of a single
observation is the sample itself). Both views are rendered at the same resolution (512x384
default), so map descriptors are sampled at the query's image scale (the views' local scale still
differs with the viewpoint, up to ~3x). All map points are handed to the solver, including the
ones B does not see (out of view or occluded), as a keyframe's points would be.

Methods (engine, global path, no prior): ``nre`` (:func:`solve`), ``re`` (:func:`solve_re`, the
same features on one-hot argmax maps), ``pnp`` (:func:`solve_pnp_ransac`, OpenCV PnP-RANSAC on
argmax correspondences). A pose counts only when the engine calls it ``reliable``; the raw pose
error is kept in the JSON too.

Protocols (query B only; the map keyframe A stays clean):
- ``clean``: B as rendered;
- ``robot``: training's photometric chain (:func:`training.pairs.photometric`, fast path, default
  :class:`PairConfig` probabilities: motion/Gaussian blur, white balance, contrast, gamma,
  exposure incl. dark frames with amplified noise, JPEG), seeded per scene;
- ``strong`` (not default): the evaluation robot protocol
  (:func:`evaluation.protocols.degrade_robot`: dark/bright gain, 4-10 px motion blur, Poisson and
  read noise, JPEG 80) at the rendered width.

Scene tags for hard-case subsets: ``texture_frac`` = fraction of map points on periodically tiled
material textures (repeated patterns) rather than photos; subsets ``tiled`` (>= 0.9) and
``mixed`` (< 0.9). The validation split has only 4 photos and 4 textures and the generator
prefers textures on most surfaces, so nearly every scene is texture-dominated.

Summary rows ``nre_loc``: the same NRE solves, also declined when the cost ratio exceeds the
localiser's ``LocalizerConfig.max_cost_ratio`` (0.75), as ``Localizer`` would (derived, no extra
solve). ``--from-json`` re-summarises an earlier output without solving again.

Usage:
    .venv/bin/python benchmarks/bench_rendered.py [--scenes 40] [--out build/bench_rendered.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nre_localization.engine import solver  # noqa: E402
from nre_localization.engine.types import MapPoints, QueryFeatures, SolverConfig  # noqa: E402
from nre_localization.evaluation import metrics, protocols  # noqa: E402
from nre_localization.geometry.cameras import Camera  # noqa: E402
from nre_localization.maps.builder import image_to_tensor, sample_descriptors  # noqa: E402
from nre_localization.training import scenes  # noqa: E402
from nre_localization.training.pairs import (  # noqa: E402
    PairConfig,
    Photo,
    list_photos,
    photometric,
    read_photo,
)


def _nre_with(**kw: object):  # noqa: ANN202
    """NRE with SolverConfig fields replaced."""

    def run(q, pts, cam, prior, conf):  # noqa: ANN001, ANN202
        return solver.solve(q, pts, cam, prior, replace(conf, **kw))

    return run


METHODS = {
    "nre": solver.solve,  # the engine's defaults
    "nre_window_trunc": _nre_with(fine_truncation="window"),
    "nre_map_trunc": _nre_with(fine_truncation="map"),  # the paper's fine truncation
    "nre_consensus4": _nre_with(consensus_seeds=4),
    "nre_coarse_nre": _nre_with(coarse_refinement="nre"),
    "nre_coarse_argmax": _nre_with(coarse_refinement="argmax"),
    "re": solver.solve_re,
    "pnp": solver.solve_pnp_ransac,
}
PROTOCOLS = ("clean", "robot", "strong")
# (translation m, rotation deg): room scenes, viewing depth 1-14 m, baseline 5-50 % of it
THRESHOLDS = {"2cm_1deg": (0.02, 1.0), "5cm_2deg": (0.05, 2.0), "10cm_5deg": (0.10, 5.0)}
THRESHOLDS["25cm_10deg"] = (0.25, 10.0)
TILED_FRAC = 0.9
# the localiser's own gate on top of the engine's (LocalizerConfig.max_cost_ratio)
LOC_MAX_COST_RATIO = 0.75


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# scene rendering (the generator's own sampling; renderer calls captured)
@contextlib.contextmanager
def _capture_renders() -> Iterator[list[tuple]]:
    """Record every ``scenes._render_view`` call as (surfaces, k, rot, cam, (img, label, iz))."""
    calls: list[tuple] = []
    orig = scenes._render_view

    def wrapped(surfaces, k, rot, cam, w, h):  # noqa: ANN001, ANN202
        out = orig(surfaces, k, rot, cam, w, h)
        calls.append((surfaces, k.copy(), rot.copy(), cam.copy(), out))
        return out

    scenes._render_view = wrapped
    try:
        yield calls
    finally:
        scenes._render_view = orig


def load_assets(data: Path) -> tuple[list[Photo], list[Photo]]:
    """Validation photos and textures (held out from training) as pyramids."""
    photos = [Photo(read_photo(f)) for f in list_photos(data / "photos" / "val")]
    tdir = data / "textures" / "val"
    textures = [Photo(read_photo(f)) for f in list_photos(tdir)] if tdir.is_dir() else []
    return photos, textures


def render_scene(
    photos: list[Photo], textures: list[Photo], seed: int, index: int, cfg: PairConfig
) -> dict:
    """One room scene: images A and B (clean), A's label / inverse depth, B's label / inverse
    depth, intrinsics and the exact pose ``T_b`` (A's camera frame -> B's camera frame)."""
    rng = np.random.default_rng([seed, index])
    for _ in range(200):
        with _capture_renders() as calls:
            pair = scenes.make_room_pair(photos, textures, rng, cfg)
        # as training's valroom set: non-degenerate, > 10 % of sampled A pixels matched in B
        if pair is None or pair["valid"].mean() <= 0.1 or len(calls) != 2:
            continue
        (surfs, k, rot_a, cam_a, (img_a, lab_a, iz_a)) = calls[0]
        (_, _, rot_b, cam_b, (img_b, lab_b, iz_b)) = calls[1]
        t_b = np.eye(4)
        t_b[:3, :3] = rot_b @ rot_a.T
        t_b[:3, 3] = rot_b @ (cam_a - cam_b)
        return {
            "image_a": img_a,
            "image_b": img_b,
            "label_a": lab_a,
            "iz_a": iz_a,
            "label_b": lab_b,
            "iz_b": iz_b,
            "k": k,
            "T_b": t_b,
            "tiled": np.array([not s.mirror for s in surfs]),
        }
    raise RuntimeError(f"scene {index}: no usable room pair in 200 tries")


def map_points(scene: dict, n_max: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pixels ``[M, 2]`` of A and their 3D points ``[M, 3]`` (A's frame), plus tags."""
    img, lab, iz, k = scene["image_a"], scene["label_a"], scene["iz_a"], scene["k"]
    h, w = lab.shape
    kernel = np.ones((5, 5), np.uint8)
    labf = lab.astype(np.float32)
    ok = (lab >= 0) & (iz > 1e-6) & (cv2.dilate(labf, kernel) == cv2.erode(labf, kernel))
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    c = cv2.goodFeaturesToTrack(gray, n_max, 0.005, 6, mask=ok.astype(np.uint8))
    xy = np.zeros((0, 2), np.int64) if c is None else np.round(c.reshape(-1, 2)).astype(np.int64)
    if len(xy) < n_max:  # top up from a grid (textureless regions still give points)
        step = max(4, int(math.sqrt(h * w / n_max)))
        gx, gy = np.meshgrid(np.arange(step // 2, w, step), np.arange(step // 2, h, step))
        grid = np.stack([gx.ravel(), gy.ravel()], 1)
        grid = grid[ok[grid[:, 1], grid[:, 0]]]
        taken = np.zeros((h, w), bool)
        taken[xy[:, 1], xy[:, 0]] = True
        taken = cv2.dilate(taken.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        grid = grid[~taken[grid[:, 1], grid[:, 0]]]
        rng = np.random.default_rng(0)
        extra = grid[rng.permutation(len(grid))[: n_max - len(xy)]]
        xy = np.concatenate([xy, extra])
    z = 1.0 / iz[xy[:, 1], xy[:, 0]].astype(np.float64)
    rays = np.c_[xy.astype(np.float64), np.ones(len(xy))] @ np.linalg.inv(k).T
    xyz = rays * z[:, None]
    # visibility in B (exact: B's z-buffer agrees with the point's depth)
    t = scene["T_b"]
    xb = xyz @ t[:3, :3].T + t[:3, 3]
    front = xb[:, 2] > 1e-3
    uv = (xb @ k.T)[:, :2] / np.where(front, xb[:, 2], 1.0)[:, None]
    ib = np.round(uv).astype(np.int64)
    inside = front & (ib[:, 0] >= 0) & (ib[:, 1] >= 0) & (ib[:, 0] < w) & (ib[:, 1] < h)
    vis = np.zeros(len(xy), bool)
    idx = np.flatnonzero(inside)
    izb = scene["iz_b"][ib[idx, 1], ib[idx, 0]]
    vis[idx] = np.abs(izb * xb[idx, 2] - 1.0) < 0.02
    labels = lab[xy[:, 1], xy[:, 0]]
    tags = {
        "n_points": len(xy),
        "visible_in_b": float(vis.mean()) if len(xy) else 0.0,
        "texture_frac": float(scene["tiled"][labels].mean()) if len(xy) else 0.0,
        "median_depth_m": float(np.median(z)) if len(xy) else float("nan"),
    }
    return xy.astype(np.float32), xyz, tags


def degrade(img: np.ndarray, proto: str, seed: int, index: int) -> np.ndarray:
    if proto == "clean":
        return img
    if proto == "robot":
        return photometric(img, np.random.default_rng([seed, index, 1]), PairConfig(fast=True))
    if proto == "strong":
        settings = replace(protocols.ROBOT, width=img.shape[1])
        return protocols.degrade_robot(img, seed * 100003 + index, settings)
    raise ValueError(proto)


# ---------------------------------------------------------------------------------------------
def features(model: torch.nn.Module, rgb: np.ndarray, dev: torch.device) -> dict:
    with torch.inference_mode():
        return model(image_to_tensor(rgb, dev))


def run_scene(
    index: int,
    photos: list[Photo],
    textures: list[Photo],
    model: torch.nn.Module,
    dev: torch.device,
    args: argparse.Namespace,
) -> dict:
    """Render scene ``index``, build its one-keyframe map, solve B with every method and
    protocol. Returns per-protocol, per-method errors and timings."""
    cfg = PairConfig(photometric=False, fast=True)
    sc = render_scene(photos, textures, args.seed, index, cfg)
    xy, xyz, tags = map_points(sc, args.points)
    h, w = sc["label_a"].shape
    k = sc["k"]
    cam = Camera.pinhole(k[0, 0], k[1, 1], k[0, 2], k[1, 2], w, h)
    fa = features(model, sc["image_a"], dev)
    cs, fs = int(model.coarse_stride), int(model.fine_stride)
    dc = sample_descriptors(fa["coarse"][0], xy, cs).float()
    df = sample_descriptors(fa["fine"][0], xy, fs).float()
    pts = MapPoints(
        xyz=torch.as_tensor(xyz, dtype=torch.float64, device=dev), desc_coarse=dc, desc_fine=df
    )
    t_gt = sc["T_b"]
    base_m = float(np.linalg.norm(-t_gt[:3, :3].T @ t_gt[:3, 3]))
    _, rot_deg = metrics.pose_errors(np.eye(4), t_gt)
    out: dict = {
        "scene": index,
        **tags,
        "baseline_m": base_m,
        "relative_rotation_deg": float(rot_deg),
        "focal_px": float(k[0, 0]),
        "queries": {},
    }
    conf = SolverConfig(seed=args.seed)
    for proto in args.protocols:
        img_b = degrade(sc["image_b"], proto, args.seed, index)
        t0 = time.perf_counter()
        fb = features(model, img_b, dev)
        t_net = time.perf_counter() - t0
        q = QueryFeatures(
            coarse=fb["coarse"][0], fine=fb["fine"][0], coarse_stride=cs, fine_stride=fs
        )
        rows = {}
        for meth in args.methods:
            t0 = time.perf_counter()
            r = METHODS[meth](q, pts, cam, None, conf)
            sec = time.perf_counter() - t0
            t_raw = np.asarray(r.T_cam_world.detach().cpu().numpy(), dtype=np.float64)
            te, re_ = metrics.pose_errors(t_raw, t_gt)
            ok = bool(r.reliable)
            rows[meth] = {
                "ok": ok,
                "t_err": float(te) if ok else math.inf,
                "r_err": float(re_) if ok else math.inf,
                "t_err_raw": float(te),
                "r_err_raw": float(re_),
                "cost_ratio": float(getattr(r, "cost_ratio", math.nan)),
                "n_informative": int(r.n_informative),
                "reasons": list(getattr(r, "reasons", [])),
                "consensus_spread": getattr(r, "consensus_spread", None),
                "solve_s": sec,
                "network_s": t_net,
            }
        out["queries"][proto] = rows
        log(
            f"scene {index:3d} {proto:6s} (base {base_m:.2f} m, rot {rot_deg:.1f} deg, "
            f"vis {tags['visible_in_b']:.2f}, tex {tags['texture_frac']:.2f}): "
            + ", ".join(
                f"{m} {v['t_err_raw'] * 100:.1f}cm/{v['r_err_raw']:.2f}d{'' if v['ok'] else '(x)'}"
                for m, v in rows.items()
            )
        )
    return out


def _row(rows: dict, meth: str) -> dict:
    """One method's row; ``nre_loc`` = the ``nre`` row behind the localiser's cost-ratio gate."""
    if meth != "nre_loc":
        return rows[meth]
    r = dict(rows["nre"])
    if not r["cost_ratio"] <= LOC_MAX_COST_RATIO:
        r.update(ok=False, t_err=math.inf, r_err=math.inf)
    return r


def summarise(results: list[dict], methods: list[str], protos: list[str]) -> dict:
    """{subset: {protocol/method: stats}} for subsets ``all`` and ``tiled``."""
    subsets = {
        "all": results,
        "tiled": [r for r in results if r["texture_frac"] >= TILED_FRAC],
        "mixed": [r for r in results if r["texture_frac"] < TILED_FRAC],
    }
    if "nre" in methods:
        methods = [*methods, "nre_loc"]
    table: dict = {}
    for sub, rs in subsets.items():
        tab: dict = {}
        for proto in protos:
            for meth in methods:
                rows = [_row(r["queries"][proto], meth) for r in rs]
                t = np.array([x["t_err"] for x in rows], dtype=np.float64)
                rr = np.array([x["r_err"] for x in rows], dtype=np.float64)
                n = len(rows)
                med_t = float(np.median(t)) if n else math.inf
                med_r = float(np.median(rr)) if n else math.inf
                tab[f"{proto}/{meth}"] = {
                    "n_queries": n,
                    "n_declined": int(sum(not x["ok"] for x in rows)),
                    "recall": {k: metrics.recall(t, rr, *v) for k, v in THRESHOLDS.items()},
                    "median_translation_m": med_t if math.isfinite(med_t) else None,
                    "median_rotation_deg": med_r if math.isfinite(med_r) else None,
                    "median_solve_s": float(np.median([x["solve_s"] for x in rows])) if n else None,
                }
        table[sub] = tab
    return table


def markdown(table: dict, args: argparse.Namespace, dev_name: str, wall_s: float) -> str:
    thr = ", ".join(f"({t * 100:.0f} cm, {r:g}°)" for t, r in THRESHOLDS.values())
    lines = [
        f"# Rendered room scenes: {args.scenes} scenes (seed {args.seed}), validation photos/textures",
        "",
        f"Device: {dev_name}. Wall time {wall_s:.0f} s. One keyframe map (<= {args.points} points "
        "with exact depth), global path, no prior. Recall = fraction of ALL queries within "
        f"{thr} (declined = failure); medians over all queries ('-' when over half failed).",
        "",
    ]
    keys = list(THRESHOLDS)
    for sub, tab in table.items():
        n = next(iter(tab.values()))["n_queries"] if tab else 0
        title = {
            "all": "all scenes",
            "tiled": f"tiled-texture scenes (texture_frac >= {TILED_FRAC:g})",
            "mixed": f"mixed scenes (texture_frac < {TILED_FRAC:g})",
        }[sub]
        lines += [
            f"## {title}: {n} queries per protocol",
            "",
            "| protocol | method | "
            + " | ".join(keys)
            + " | median t [cm] | median R [°] | declined | solve p50 [s] |",
            "|---|---|" + "---|" * (len(keys) + 4),
        ]
        for key, s in tab.items():
            proto, meth = key.split("/")
            mt = s["median_translation_m"]
            mr = s["median_rotation_deg"]
            ms = s["median_solve_s"]
            lines.append(
                f"| {proto} | {meth} | "
                + " | ".join(f"{s['recall'][k]:.3f}" for k in keys)
                + f" | {'-' if mt is None else f'{mt * 100:.2f}'}"
                + f" | {'-' if mr is None else f'{mr:.2f}'}"
                + f" | {s['n_declined']}/{s['n_queries']}"
                + f" | {'-' if ms is None else f'{ms:.2f}'} |"
            )
        lines.append("")
    return "\n".join(lines)


def json_safe(v):  # noqa: ANN001, ANN201
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    return v


def run(args: argparse.Namespace, model: torch.nn.Module | None = None) -> dict:
    """Core of the benchmark: every scene, every protocol and method; returns the JSON document."""
    from nre_localization.localizer import resolve_device
    from nre_localization.model.network import load_default_model

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    dev = resolve_device(args.device)
    if model is None:
        model = load_default_model(dev)
    model = model.to(dev).eval()
    dev_name = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    t0 = time.perf_counter()
    photos, textures = load_assets(Path(args.data))
    results = [
        run_scene(i, photos, textures, model, dev, args)
        for i in range(args.first, args.first + args.scenes)
    ]
    wall = time.perf_counter() - t0
    table = summarise(results, list(args.methods), list(args.protocols))
    return {
        "device": dev_name,
        "model_fingerprint": model.fingerprint(),
        "wall_s": wall,
        "thresholds": {
            k: {"translation_m": t, "rotation_deg": r} for k, (t, r) in THRESHOLDS.items()
        },
        "tiled_fraction": TILED_FRAC,
        "loc_max_cost_ratio": LOC_MAX_COST_RATIO,
        "args": {k: str(v) for k, v in vars(args).items()},
        "summary": table,
        "scenes": results,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scenes", type=int, default=40, help="number of scenes")
    p.add_argument("--first", type=int, default=0, help="index of the first scene")
    p.add_argument("--seed", type=int, default=4321, help="scene / degradation seed")
    p.add_argument("--points", type=int, default=1000, help="map points per scene (max)")
    p.add_argument("--protocols", nargs="+", default=["clean", "robot"], choices=PROTOCOLS)
    p.add_argument("--methods", nargs="+", default=["nre", "re", "pnp"], choices=list(METHODS))
    p.add_argument("--data", type=Path, default=ROOT / ".traindata", help="training data root")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch / OpenCV CPU threads")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "bench_rendered.json")
    p.add_argument("--from-json", type=Path, help="only re-summarise this earlier output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        doc = json.loads(args.from_json.read_text())
        for sc in doc["scenes"]:  # JSON null = infinite error
            for rows in sc["queries"].values():
                for r in rows.values():
                    for key in ("t_err", "r_err", "t_err_raw", "r_err_raw", "cost_ratio"):
                        r[key] = math.inf if r[key] is None else r[key]
        old = doc["args"]
        args.scenes, args.seed, args.points = int(old["scenes"]), int(old["seed"]), old["points"]
        args.protocols = list(doc["scenes"][0]["queries"])
        args.methods = list(doc["scenes"][0]["queries"][args.protocols[0]])
        doc["summary"] = summarise(doc["scenes"], args.methods, args.protocols)
        doc["tiled_fraction"] = TILED_FRAC
    else:
        doc = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(json_safe(doc), indent=1) + "\n")
    md = markdown(doc["summary"], args, doc["device"], doc["wall_s"])
    print(md)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
