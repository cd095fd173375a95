#!/usr/bin/env python3
"""Engine speed benchmark on planted-map scenes (no network): writes JSON, prints a summary.

For a 640x480 PINHOLE query (coarse stride 16 or 8, fine stride 2, Dc = Df = 128 like the model's
defaults, 50 % outlier points) and N map points, it measures per-stage p50/p90 of

- the global solve (MSAC-P3P with ``--hypotheses`` triplets + coarse GNC + fine GNC + finalize),
- the tracking solve (fine maps + fine GNC from a prior a few pixels off),
- MSAC-P3P alone with ``--msac-hypotheses`` (default 5000) triplets,
- GPU memory per N (CUDA): ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` over
  the size (peaks reset between sizes, the previous sizes' graphs dropped), per phase (global,
  tracking, MSAC) and what stays allocated after each phase (captured graphs' static buffers),

and the scaling with the fine window size at N = ``--window-n``. Accuracy (reprojection RMS in fine
cells) is reported next to the timings so a fast-but-wrong configuration is visible.

Variants (``--variants``, comma-separated, run one after the other in the same process):

- ``eager``: each path as one captured CUDA graph of eager PyTorch ops (the default;
  ``SolverConfig.single_graph``);
- ``compile_gnc``: only ``SolverConfig.compile_gnc`` (GNC slots, Newton steps, finalisation
  compiled; MSAC and the fine maps stay eager CUDA graphs);
- ``compile``: the same, with ``SolverConfig.compile_gnc``, ``compile_msac`` and ``compile_maps``
  (GNC slots, Newton steps, finalisation, MSAC and fine maps through ``torch.compile``/Inductor,
  then captured). Compilation is
  start-up cost: it is reported separately (``compile`` per size: seconds per compiled unit, and
  ``first_call_s``: wall time of the first solve of each path, compilation and capture included),
  never in the timings. Sizes ``--compile-sizes`` and windows ``--compile-windows`` (compiling is
  slow: by default two sizes, no window scaling), and its poses are compared with the eager
  variant's on the same scenes (``vs_eager_max_abs_diff``).
- any of them with the suffix ``_stages`` (``eager_stages``, ``compile_gnc_stages``): one graph
  per stage (``single_graph=False``), for the per-stage breakdown (host work between stages
  included in the wall time).

``--graph-nodes-n`` (CUDA): at that N, every captured graph is dumped (``cudaGraphDebugDotPrint``)
and its nodes are counted by type (``graph_nodes``: kernels, memsets, copies per stage) - the
real launch count per replay. ``--budget-s`` skips the remaining sizes of a variant once the run
has taken that long (listed under ``skipped``).

Examples::

    python benchmarks/bench_engine.py --device cpu --threads 2 --out build/bench_cpu.json
    python benchmarks/bench_engine.py --device cuda --check --variants eager,compile \\
        --out build/bench_cuda.json

Only torch + numpy (+ opencv, imported by the engine) are needed; run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nre_localization.engine import (
    compiled,  # noqa: E402
    graphs,  # noqa: E402
)
from nre_localization.engine import loss_maps as lm  # noqa: E402
from nre_localization.engine.gnc import gnc_radius  # noqa: E402
from nre_localization.engine.solver import _msac, _pad_points, solve  # noqa: E402
from nre_localization.engine.synthetic import PlantedScene, make_planted_scene  # noqa: E402
from nre_localization.engine.types import SolverConfig  # noqa: E402
from nre_localization.geometry import se3  # noqa: E402
from nre_localization.geometry.cameras import Camera  # noqa: E402

CAMERA = Camera.pinhole(500.0, 500.0, 319.5, 239.5, 640, 480)
MB = 2.0**20


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


class Memory:
    """Per-phase CUDA memory peaks (``max_memory_allocated`` / ``_reserved``, reset per phase)."""

    def __init__(self, dev: torch.device) -> None:
        self.dev = dev
        self.on = dev.type == "cuda"
        self.phases: dict[str, dict[str, float]] = {}

    def start(self) -> None:
        if self.on:
            torch.cuda.synchronize(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)

    def lap(self, phase: str) -> None:
        if not self.on:
            return
        torch.cuda.synchronize(self.dev)
        self.phases[phase] = {
            "peak_allocated_mb": torch.cuda.max_memory_allocated(self.dev) / MB,
            "peak_reserved_mb": torch.cuda.max_memory_reserved(self.dev) / MB,
            "allocated_after_mb": torch.cuda.memory_allocated(self.dev) / MB,
        }
        torch.cuda.reset_peak_memory_stats(self.dev)

    def summary(self, before_mb: float) -> dict:
        if not self.on:
            return {}
        return {
            "allocated_before_mb": before_mb,
            "peak_allocated_mb": max(p["peak_allocated_mb"] for p in self.phases.values()),
            "peak_reserved_mb": max(p["peak_reserved_mb"] for p in self.phases.values()),
            "phases": self.phases,
        }


def bench_solves(
    scene: PlantedScene,
    cfg: SolverConfig,
    dev: torch.device,
    repeats: int,
    warmup: int,
    mem: Memory | None = None,
) -> dict:
    out: dict = {}
    prior = se3.se3_exp(
        torch.tensor([0.01, -0.01, 0.02, 0.002, -0.002, 0.001], dtype=torch.float64)
    )
    prior = (prior @ scene.T_cam_world).to(dev)
    for name, pr in (("global", None), ("tracking", prior)):
        first = None
        for _ in range(warmup):
            _, t = _timed_solve(scene, pr, cfg, dev)
            first = t["wall"] if first is None else first
        samples, rms, paths, reliable = [], [], set(), 0
        res = None
        for _ in range(repeats):
            res, t = _timed_solve(scene, pr, cfg, dev)
            samples.append(t)
            rms.append(_rms(scene, res.T_cam_world))
            paths.add(res.path)
            reliable += int(res.reliable)
        out[name] = {
            "stages": _summary(samples),
            "first_call_s": first,
            "rms_fine_cells_median": statistics.median(rms),
            "paths": sorted(paths),
            "reliable_fraction": reliable / repeats,
            "T": None if res is None else res.T_cam_world.tolist(),
        }
        if mem is not None:
            mem.lap(name)
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
    first = None
    with torch.no_grad():
        coarse = lm.build_coarse_maps(scene.query, points, cfg, alive)
        cinfo = lm.coarse_info_maps(coarse, 2 * gnc_radius(cfg.coarse_sigmas) + 1, alive=alive)
        xyz = points.xyz.float()
        for _ in range(warmup):
            _sync(dev)
            t0 = time.perf_counter()
            _msac(coarse, cinfo, xyz, CAMERA, cfg, n, "bench_msac")
            _sync(dev)
            first = time.perf_counter() - t0 if first is None else first
        ts, rms = [], []
        T = None
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
        "first_call_s": first,
        "rms_fine_cells_median": statistics.median(rms),
        "T": None if T is None else T.cpu().tolist(),
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


_NODE_TYPES = (
    "KERNEL",
    "MEMCPY",
    "MEMSET",
    "HOST",
    "GRAPH",
    "EMPTY",
    "WAIT_EVENT",
    "EVENT_RECORD",
    "MEM_ALLOC",
    "MEM_FREE",
    "CONDITIONAL",
)


def count_graph_nodes(dot_file: str) -> dict[str, int]:
    """Node types of one ``cudaGraphDebugDotPrint`` file (``KERNEL``, ``MEMSET``, ...)."""
    text = Path(dot_file).read_text(errors="replace")
    counts: Counter[str] = Counter()
    for m in re.finditer(r'^\s*"?(\w+_node_\d+)"?\s*\[(.*?)\];?\s*$', text, re.M | re.S):
        body = m.group(2)
        hit = re.search(r"\b(" + "|".join(_NODE_TYPES) + r")\b", body)
        counts[hit.group(1) if hit else "other"] += 1
    counts["nodes"] = sum(counts.values())
    counts["kernel_mentions"] = text.count("KERNEL")  # raw fallback if the format differs
    return dict(counts)


def _scene(n: int, args: argparse.Namespace, dev: torch.device, seed: int) -> PlantedScene:
    return make_planted_scene(
        CAMERA,
        n,
        coarse_stride=args.coarse_stride,
        dim_coarse=args.dim_coarse,
        dim_fine=args.dim_fine,
        seed=seed,
        device=dev,
    )


def run_variant(
    variant: str,
    args: argparse.Namespace,
    dev: torch.device,
    repeats: int,
    t_start: float,
) -> dict:
    """All sizes (and the window scaling) of one variant; see the module docstring."""
    stages = variant.endswith("_stages")  # one graph per stage: per-stage timings
    kind = variant.removesuffix("_stages")
    is_compile = kind in ("compile", "compile_gnc")
    base = dict(
        single_graph=not stages,
        fine_window=args.fine_window,
        msac_hypotheses=args.hypotheses,
        cuda_graphs=not args.no_graphs,
        half_correlation=not args.no_half,
        compile_gnc=is_compile,
        compile_msac=kind == "compile",
        compile_maps=kind == "compile",
        linear_solver=args.linear_solver,
    )
    cfg = SolverConfig(**base)
    out: dict = {
        "config": dict(vars(cfg)),
        "sizes": {},
        "window_scaling": {},
        "skipped": [],
        "graph_nodes": {},
    }
    sizes_arg = args.compile_sizes if is_compile else args.sizes
    windows_arg = args.compile_windows if is_compile else args.windows
    sizes = [int(s) for s in sizes_arg.split(",") if s]
    for n in sizes:
        if time.perf_counter() - t_start > args.budget_s:
            out["skipped"].append(f"N={n} (budget {args.budget_s} s reached)")
            print(f"[{variant}] skipping N={n}: time budget reached", flush=True)
            continue
        scene = _scene(n, args, dev, seed=n)
        dump_dir = None
        before = 0.0
        if dev.type == "cuda":
            # Memory *for this N*: drop the previous sizes' graphs (and their pool) first.
            graphs.clear()
            torch.cuda.synchronize(dev)
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(dev) / MB
            if n == args.graph_nodes_n:
                dump_dir = tempfile.mkdtemp(prefix=f"nre_graphs_{variant}_")
                graphs.debug_dump_to(dump_dir)
        compiled.reset()
        mem = Memory(dev)
        mem.start()
        t_size = time.perf_counter()
        entry = bench_solves(scene, cfg, dev, repeats, args.warmup, mem)
        mcfg = SolverConfig(**dict(base, msac_hypotheses=args.msac_hypotheses))
        entry["msac"] = bench_msac(scene, mcfg, dev, repeats, args.warmup)
        mem.lap("msac")
        entry["size_wall_s"] = time.perf_counter() - t_size
        if dev.type == "cuda":
            entry["memory"] = mem.summary(before)
            entry["peak_gpu_memory_mb"] = entry["memory"]["peak_allocated_mb"]
            entry["peak_gpu_reserved_mb"] = entry["memory"]["peak_reserved_mb"]
            entry["graphs_captured"] = len(graphs.status()["captured"])
        if is_compile:
            entry["compile"] = compiled.status()
        if dump_dir is not None:
            graphs.debug_dump_to(None)
            for stage, path in graphs.status()["dumps"].items():
                try:
                    out["graph_nodes"][stage] = count_graph_nodes(path)
                except OSError as err:
                    out["graph_nodes"][stage] = {"error": str(err)}
            shutil.rmtree(dump_dir, ignore_errors=True)
            out["graph_nodes_n"] = n
        out["sizes"][str(n)] = entry
        g, t, m = entry["global"], entry["tracking"], entry["msac"]
        for name in ("global", "tracking"):
            st = entry[name]["stages"]
            print(
                f"[{variant}] N={n:5d} {name:8s} stage p50 ms: "
                + ", ".join(f"{k} {v['p50_ms']:.2f}" for k, v in st.items()),
                flush=True,
            )
        line = (
            f"[{variant}] N={n:5d} global p50 {g['stages']['wall']['p50_ms']:8.2f} ms "
            f"(rms {g['rms_fine_cells_median']:.3f}) | tracking p50 "
            f"{t['stages']['wall']['p50_ms']:7.2f} ms | msac {m['hypotheses']} hyp p50 "
            f"{m['p50_ms']:7.2f} ms"
        )
        if "memory" in entry:
            line += (
                f" | peak alloc {entry['peak_gpu_memory_mb']:.0f} MB, reserved "
                f"{entry['peak_gpu_reserved_mb']:.0f} MB"
            )
        if is_compile:
            line += f" | compile {entry['compile']['compile_seconds_total']:.1f} s"
        print(line, flush=True)
    windows = [int(s) for s in windows_arg.split(",") if s]
    if windows:
        scene = _scene(args.window_n, args, dev, seed=7)
        for w in windows:
            if time.perf_counter() - t_start > args.budget_s:
                out["skipped"].append(f"window {w} (budget {args.budget_s} s reached)")
                continue
            wcfg = SolverConfig(**dict(base, fine_window=w))
            e = bench_solves(scene, wcfg, dev, max(3, repeats // 2), args.warmup)
            out["window_scaling"][str(w)] = e
            print(
                f"[{variant}] window {w:2d}: global p50 "
                f"{e['global']['stages']['wall']['p50_ms']:8.2f} ms, tracking p50 "
                f"{e['tracking']['stages']['wall']['p50_ms']:7.2f} ms, fine_maps p50 "
                f"{e['tracking']['stages'].get('fine_maps', {}).get('p50_ms', math.nan):6.2f} ms",
                flush=True,
            )
    if dev.type == "cuda":
        gs = graphs.status()
        out["cuda_graphs"] = {k: v for k, v in gs.items() if k != "dumps"}
        print(f"[{variant}] CUDA graphs captured:", ", ".join(gs["captured_stages"]) or "NONE")
        if gs["failed_stages"]:
            print("!" * 78)
            print(f"[{variant}] CUDA-GRAPH CAPTURE FAILED for:", flush=True)
            for k, v in gs["failed_stages"].items():
                print(f"  {k}: {v}", flush=True)
            print("!" * 78, flush=True)
        elif not args.no_graphs:
            print(f"[{variant}] CUDA graphs: no capture failures", flush=True)
    if is_compile:
        st = compiled.status()
        out["compile_failed"] = st["failed"]
        if st["failed"]:
            print(f"[{variant}] TORCH.COMPILE FAILED (ran eagerly): {st['failed']}", flush=True)
    if out["graph_nodes"]:
        kern = {k: v.get("KERNEL", v.get("kernel_mentions")) for k, v in out["graph_nodes"].items()}
        print(f"[{variant}] kernels per captured graph at N={args.graph_nodes_n}: {kern}")
    return out


def profile_kernels(
    n: int, args: argparse.Namespace, dev: torch.device, comp: bool = False
) -> dict:
    """Per-kernel device time of one global solve, one tracking solve and one MSAC run (5000
    hypotheses) at ``n`` points, CUDA graphs off (every kernel launched and traced): kernel
    count, summed device time and the 12 costliest kernels per path. Summed device time far below
    the graph replay's wall time means the path is launch-bound (kernel count), not compute-bound.
    """
    from torch.profiler import ProfilerActivity, profile

    scene = _scene(n, args, dev, seed=n)
    cfg = SolverConfig(fine_window=args.fine_window, cuda_graphs=False, compile_gnc=comp)
    mcfg = SolverConfig(
        fine_window=args.fine_window,
        cuda_graphs=False,
        msac_hypotheses=args.msac_hypotheses,
        compile_gnc=comp,
    )
    prior = (
        se3.se3_exp(torch.tensor([0.01, -0.01, 0.02, 0.002, -0.002, 0.001], dtype=torch.float64))
        @ scene.T_cam_world
    ).to(dev)
    with torch.no_grad():
        coarse = lm.build_coarse_maps(scene.query, scene.points, mcfg, None)
        cinfo = lm.coarse_info_maps(coarse, 2 * gnc_radius(mcfg.coarse_sigmas) + 1, alive=None)
        xyz = scene.points.xyz.float()
    runs = {
        "global": lambda: solve(scene.query, scene.points, CAMERA, None, cfg),
        "tracking": lambda: solve(scene.query, scene.points, CAMERA, prior, cfg),
        "msac_5000": lambda: _msac(coarse, cinfo, xyz, CAMERA, mcfg, n, "profile_msac"),
    }
    out: dict = {}
    for name, fn in runs.items():
        with torch.no_grad():
            for _ in range(2):
                fn()
            _sync(dev)
            act = ProfilerActivity.CUDA if dev.type == "cuda" else ProfilerActivity.CPU
            with profile(activities=[act]) as prof:
                fn()
                _sync(dev)
        rows = [e for e in prof.key_averages() if e.device_type.name == act.name]

        def own_us(e: object) -> float:
            key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
            return float(getattr(e, key))

        total_us = sum(own_us(e) for e in rows)
        count = sum(e.count for e in rows)
        top = sorted(rows, key=lambda e: -own_us(e))[:25]
        out[name] = {
            "kernels": count,
            "device_time_ms": total_us / 1e3,
            "top": [{"name": e.key[:90], "count": e.count, "ms": own_us(e) / 1e3} for e in top],
        }
        print(
            f"[profile] N={n} {name}: {count} kernels, device time {total_us / 1e3:.2f} ms; top: "
            + "; ".join(
                f"{t['name'][:40]} x{t['count']} {t['ms']:.3f}" for t in out[name]["top"][:6]
            ),
            flush=True,
        )
    return out


def _max_diff(a: list | None, b: list | None) -> float | None:
    if a is None or b is None:
        return None
    f64 = torch.float64
    return float((torch.tensor(a, dtype=f64) - torch.tensor(b, dtype=f64)).abs().max())


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
    ap.add_argument(
        "--linear-solver",
        default="cholesky",
        choices=["cholesky", "gauss_jordan"],
        help="6x6 solves in the GNC / Newton steps (SolverConfig.linear_solver)",
    )
    ap.add_argument(
        "--profile-n", type=int, default=0, help="CUDA: per-kernel profile at this N (0: off)"
    )
    ap.add_argument(
        "--profile-compile",
        action="store_true",
        help="also profile with SolverConfig.compile_gnc (the compiled units' kernels)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    ap.add_argument("--no-graphs", action="store_true", help="disable CUDA graphs")
    ap.add_argument("--no-half", action="store_true", help="fp32 correlation on CUDA")
    ap.add_argument(
        "--variants", default="eager", help="comma-separated: eager, compile (see the docstring)"
    )
    ap.add_argument("--compile", action="store_true", help="shorthand for --variants compile")
    ap.add_argument("--compile-sizes", default="1000,4000", help="sizes of the compile variant")
    ap.add_argument("--compile-windows", default="", help="window sizes of the compile variant")
    ap.add_argument(
        "--graph-nodes-n",
        type=int,
        default=1000,
        help="CUDA: count the nodes of every graph captured at this N (0: off)",
    )
    ap.add_argument(
        "--budget-s", type=float, default=1e9, help="skip remaining sizes after this many seconds"
    )
    ap.add_argument("--check", action="store_true", help="CUDA only: CPU-vs-CUDA pose check first")
    args = ap.parse_args()

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    variants = ["compile"] if args.compile else [v for v in args.variants.split(",") if v]
    known = ("eager", "compile", "compile_gnc")
    if any(v.removesuffix("_stages") not in known for v in variants):
        print(f"unknown variant in {variants}", file=sys.stderr)
        return 2
    repeats = args.repeats or (30 if dev.type == "cuda" else 7)
    t_start = time.perf_counter()
    report: dict = {
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "image": [CAMERA.width, CAMERA.height],
        "coarse_stride": args.coarse_stride,
        "fine_stride": 2,
        "dims": [args.dim_coarse, args.dim_fine],
        "args": {k: str(v) for k, v in vars(args).items()},
        "variants": {},
    }
    if dev.type == "cuda":
        get_ws = getattr(torch._C, "_cuda_getCublasWorkspaceSize", None)
        report["cublas_workspace_bytes"] = get_ws() if get_ws is not None else None
    if args.check and dev.type == "cuda":
        report["cpu_cuda_check"] = cpu_cuda_check(dev)
        print("cpu/cuda check:", json.dumps(report["cpu_cuda_check"]), flush=True)
        graphs.clear()
    if args.profile_n and dev.type == "cuda":
        report["kernel_profile"] = profile_kernels(args.profile_n, args, dev)
        graphs.clear()
        if args.profile_compile:
            report["kernel_profile_compile_gnc"] = profile_kernels(
                args.profile_n, args, dev, comp=True
            )
            graphs.clear()
    for v in variants:
        t0 = time.perf_counter()
        report["variants"][v] = run_variant(v, args, dev, repeats, t_start)
        report["variants"][v]["wall_s"] = time.perf_counter() - t0
        print(f"[{v}] variant wall time {report['variants'][v]['wall_s']:.1f} s", flush=True)
    # Backwards-compatible top level: the first variant's results.
    first = report["variants"][variants[0]]
    report["config"] = first["config"]
    report["sizes"] = first["sizes"]
    report["window_scaling"] = first["window_scaling"]
    for cname in ("compile", "compile_gnc"):
        if "eager" not in report["variants"] or cname not in report["variants"]:
            continue
        ev, cv = report["variants"]["eager"]["sizes"], report["variants"][cname]["sizes"]
        for n, ce in cv.items():
            if n not in ev:
                continue
            ce["vs_eager_max_abs_diff"] = {
                "global": _max_diff(ce["global"]["T"], ev[n]["global"]["T"]),
                "tracking": _max_diff(ce["tracking"]["T"], ev[n]["tracking"]["T"]),
                "msac": _max_diff(ce["msac"]["T"], ev[n]["msac"]["T"]),
            }
            print(f"[{cname}] N={n} pose difference vs eager: {ce['vs_eager_max_abs_diff']}")
    report["wall_s"] = time.perf_counter() - t_start
    text = json.dumps(report, indent=1, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out} (total {report['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
