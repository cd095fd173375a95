#!/usr/bin/env python3
"""Engine speed benchmark on planted-map scenes (no network): writes JSON, prints a summary.

For a 640x480 PINHOLE query (coarse stride 16 or 8, fine stride 2, Dc = Df = 128 like the model's
defaults, 50 % outlier points) and N map points, it measures per-stage p50/p90 of

- the global solve (MSAC-P3P with ``--hypotheses`` triplets + coarse GNC + fine GNC + finalize),
- the tracking solve (fine maps + fine GNC from a prior a few pixels off),
- MSAC-P3P alone with ``--msac-hypotheses`` (default 5000) triplets,
- peak GPU memory per N (CUDA),

and the scaling with the fine window size at N = ``--window-n``. Accuracy (reprojection RMS in fine
cells) is reported next to the timings so a fast-but-wrong configuration is visible.

Examples::

    python benchmarks/bench_engine.py --device cpu --threads 2 --out build/bench_cpu.json
    python benchmarks/bench_engine.py --device cuda --out build/bench_cuda.json

Only torch + numpy (+ opencv, imported by the engine) are needed; run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nre_localization.engine import graphs  # noqa: E402
from nre_localization.engine import loss_maps as lm  # noqa: E402
from nre_localization.engine.gnc import gnc_radius  # noqa: E402
from nre_localization.engine.solver import _msac, _pad_points, solve  # noqa: E402
from nre_localization.engine.synthetic import PlantedScene, make_planted_scene  # noqa: E402
from nre_localization.engine.types import SolverConfig  # noqa: E402
from nre_localization.geometry import se3  # noqa: E402
from nre_localization.geometry.cameras import Camera  # noqa: E402

CAMERA = Camera.pinhole(500.0, 500.0, 319.5, 239.5, 640, 480)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _summary(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = sorted({k for s in samples for k in s})
    return {
        k: {
            "p50_ms": 1e3 * _pct([s[k] for s in samples if k in s], 0.5),
            "p90_ms": 1e3 * _pct([s[k] for s in samples if k in s], 0.9),
        }
        for k in keys
    }


def _rms(scene: PlantedScene, T: torch.Tensor) -> float:
    p, _ = CAMERA.project_world(scene.points.xyz.double().cpu(), T)
    return float(((p - scene.true_pixels) / 2).pow(2).sum(-1).mean().sqrt())


def _timed_solve(
    scene: PlantedScene, prior: torch.Tensor | None, cfg: SolverConfig, dev: torch.device
):  # noqa: ANN202
    _sync(dev)
    t0 = time.perf_counter()
    res = solve(scene.query, scene.points, CAMERA, prior, cfg)
    _sync(dev)
    wall = time.perf_counter() - t0
    return res, dict(res.timings, wall=wall)


def bench_solves(
    scene: PlantedScene, cfg: SolverConfig, dev: torch.device, repeats: int, warmup: int
) -> dict:
    out: dict = {}
    prior = se3.se3_exp(
        torch.tensor([0.01, -0.01, 0.02, 0.002, -0.002, 0.001], dtype=torch.float64)
    )
    prior = (prior @ scene.T_cam_world).to(dev)
    for name, pr in (("global", None), ("tracking", prior)):
        for _ in range(warmup):
            _timed_solve(scene, pr, cfg, dev)
        samples, rms, paths, reliable = [], [], set(), 0
        for _ in range(repeats):
            res, t = _timed_solve(scene, pr, cfg, dev)
            samples.append(t)
            rms.append(_rms(scene, res.T_cam_world))
            paths.add(res.path)
            reliable += int(res.reliable)
        out[name] = {
            "stages": _summary(samples),
            "rms_fine_cells_median": statistics.median(rms),
            "paths": sorted(paths),
            "reliable_fraction": reliable / repeats,
        }
    return out


def bench_msac(
    scene: PlantedScene, cfg: SolverConfig, dev: torch.device, repeats: int, warmup: int
) -> dict:
    """MSAC-P3P alone (same code path as in the solve: padded bucket + CUDA graph on GPU)."""
    n = len(scene.points)
    points, alive = scene.points, None
    if dev.type == "cuda" and cfg.cuda_graphs:
        nb = graphs.bucket_size(n)
        points = _pad_points(points, nb)
        alive = torch.arange(nb, device=dev) < n
    with torch.no_grad():
        coarse = lm.build_coarse_maps(scene.query, points, cfg, alive)
        cinfo = lm.coarse_info_maps(coarse, 2 * gnc_radius(cfg.coarse_sigmas) + 1, alive=alive)
        xyz = points.xyz.float()
        for _ in range(warmup):
            _msac(coarse, cinfo, xyz, CAMERA, cfg, n, "bench_msac")
        ts, rms = [], []
        for _ in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            T = _msac(coarse, cinfo, xyz, CAMERA, cfg, n, "bench_msac")
            _sync(dev)
            ts.append(time.perf_counter() - t0)
            rms.append(_rms(scene, T.cpu()))
    return {
        "hypotheses": cfg.msac_hypotheses,
        "p50_ms": 1e3 * _pct(ts, 0.5),
        "p90_ms": 1e3 * _pct(ts, 0.9),
        "rms_fine_cells_median": statistics.median(rms),
    }


def cpu_cuda_check(dev: torch.device) -> dict:
    """Same scene solved on the CPU and on CUDA (fp32 correlation, graphs on and off, global and
    tracking): the largest pose-matrix difference (the test suite asks for < 1e-4)."""
    scene = make_planted_scene(CAMERA, 1000, seed=3, noise_px=0.3)
    cfg = SolverConfig(half_correlation=False)
    ref = solve(scene.query, scene.points, CAMERA, None, cfg)
    gscene = make_planted_scene(CAMERA, 1000, seed=3, noise_px=0.3, device=dev)
    out: dict = {"cpu_rms_fine_cells": _rms(scene, ref.T_cam_world)}
    for graphs_on in (False, True):
        gcfg = SolverConfig(half_correlation=False, cuda_graphs=graphs_on)
        diffs = []
        for _ in range(2):  # the second call replays captured graphs
            res = solve(gscene.query, gscene.points, CAMERA, None, gcfg)
            diffs.append(float((res.T_cam_world - ref.T_cam_world).abs().max()))
        tr = solve(gscene.query, gscene.points, CAMERA, ref.T_cam_world.to(dev), gcfg)
        out[f"graphs_{graphs_on}"] = {
            "global_max_abs_diff": max(diffs),
            "tracking_path": tr.path,
            "tracking_max_abs_diff": float((tr.T_cam_world - ref.T_cam_world).abs().max()),
        }
    half = solve(gscene.query, gscene.points, CAMERA, None, SolverConfig())
    out["fp16_rms_fine_cells"] = _rms(scene, half.T_cam_world)
    ok = all(out[k]["global_max_abs_diff"] < 1e-4 for k in ("graphs_False", "graphs_True"))
    out["pass"] = ok and out["fp16_rms_fine_cells"] < 0.1
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON output file")
    ap.add_argument("--sizes", default="500,1000,2000,4000", help="numbers of map points")
    ap.add_argument("--coarse-stride", type=int, default=16, choices=[8, 16])
    ap.add_argument("--fine-window", type=int, default=17)
    ap.add_argument("--windows", default="9,17,33,64", help="fine window sizes for the scaling run")
    ap.add_argument("--window-n", type=int, default=1000)
    ap.add_argument(
        "--hypotheses", type=int, default=1024, help="MSAC triplets in the global solve"
    )
    ap.add_argument(
        "--msac-hypotheses", type=int, default=5000, help="triplets for the MSAC-alone run"
    )
    ap.add_argument("--dim-coarse", type=int, default=128)
    ap.add_argument("--dim-fine", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=0, help="timed runs (default 30 CUDA, 7 CPU)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    ap.add_argument("--no-graphs", action="store_true", help="disable CUDA graphs")
    ap.add_argument("--no-half", action="store_true", help="fp32 correlation on CUDA")
    ap.add_argument("--compile", action="store_true", help="torch.compile the GNC iteration")
    ap.add_argument("--check", action="store_true", help="CUDA only: CPU-vs-CUDA pose check first")
    args = ap.parse_args()

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (30 if dev.type == "cuda" else 7)
    base = dict(
        fine_window=args.fine_window,
        msac_hypotheses=args.hypotheses,
        cuda_graphs=not args.no_graphs,
        half_correlation=not args.no_half,
        compile_gnc=args.compile,
    )
    cfg = SolverConfig(**base)
    report: dict = {
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "image": [CAMERA.width, CAMERA.height],
        "coarse_stride": args.coarse_stride,
        "fine_stride": 2,
        "dims": [args.dim_coarse, args.dim_fine],
        "config": {k: v for k, v in vars(cfg).items()},
        "sizes": {},
        "window_scaling": {},
    }
    if args.check and dev.type == "cuda":
        report["cpu_cuda_check"] = cpu_cuda_check(dev)
        print("cpu/cuda check:", json.dumps(report["cpu_cuda_check"]), flush=True)
        graphs.clear()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    for n in sizes:
        scene = make_planted_scene(
            CAMERA,
            n,
            coarse_stride=args.coarse_stride,
            dim_coarse=args.dim_coarse,
            dim_fine=args.dim_fine,
            seed=n,
            device=dev,
        )
        if dev.type == "cuda":
            # Peak memory *for this N*: drop the previous sizes' graphs (and their pool) first.
            graphs.clear()
            torch.cuda.synchronize(dev)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        entry = bench_solves(scene, cfg, dev, repeats, args.warmup)
        mcfg = SolverConfig(**dict(base, msac_hypotheses=args.msac_hypotheses))
        entry["msac"] = bench_msac(scene, mcfg, dev, repeats, args.warmup)
        if dev.type == "cuda":
            entry["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        report["sizes"][str(n)] = entry
        g, t, m = entry["global"], entry["tracking"], entry["msac"]
        for name in ("global", "tracking"):
            st = entry[name]["stages"]
            print(
                f"N={n:5d} {name:8s} stage p50 ms: "
                + ", ".join(f"{k} {v['p50_ms']:.2f}" for k, v in st.items()),
                flush=True,
            )
        print(
            f"N={n:5d} global p50 {g['stages']['wall']['p50_ms']:8.2f} ms (rms {g['rms_fine_cells_median']:.3f})"
            f" | tracking p50 {t['stages']['wall']['p50_ms']:7.2f} ms"
            f" | msac {m['hypotheses']} hyp p50 {m['p50_ms']:7.2f} ms"
            + (
                f" | peak {entry['peak_gpu_memory_mb']:.0f} MB"
                if "peak_gpu_memory_mb" in entry
                else ""
            ),
            flush=True,
        )
    scene = make_planted_scene(
        CAMERA,
        args.window_n,
        coarse_stride=args.coarse_stride,
        dim_coarse=args.dim_coarse,
        dim_fine=args.dim_fine,
        seed=7,
        device=dev,
    )
    for w in [int(s) for s in args.windows.split(",") if s]:
        wcfg = SolverConfig(**dict(base, fine_window=w))
        e = bench_solves(scene, wcfg, dev, max(3, repeats // 2), args.warmup)
        report["window_scaling"][str(w)] = e
        print(
            f"window {w:2d}: global p50 {e['global']['stages']['wall']['p50_ms']:8.2f} ms, tracking p50 "
            f"{e['tracking']['stages']['wall']['p50_ms']:7.2f} ms, fine_maps p50 "
            f"{e['tracking']['stages']['fine_maps']['p50_ms']:6.2f} ms",
            flush=True,
        )
    if dev.type == "cuda":
        report["cuda_graphs"] = graphs.status()
        gs = report["cuda_graphs"]
        print("CUDA graphs captured:", ", ".join(gs["captured_stages"]) or "NONE", flush=True)
        if gs["failed_stages"]:
            print("!" * 78)
            print("CUDA-GRAPH CAPTURE FAILED for:", flush=True)
            for k, v in gs["failed_stages"].items():
                print(f"  {k}: {v}", flush=True)
            print("!" * 78, flush=True)
        elif not args.no_graphs:
            print("CUDA graphs: no capture failures", flush=True)
    text = json.dumps(report, indent=1, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
