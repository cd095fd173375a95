#!/usr/bin/env python3
"""Where the host time of a solve goes (CUDA): cProfile over repeated tracking and global solves
on a planted scene, plus the per-call cost of a few host-side pieces.

On the GPU the solve's device part is one graph replay, so the rest of the wall time is Python
and launch overhead: this script says which functions it is spent in (cumulative time per call,
profiler overhead included, so read it as proportions) and times, without the profiler, one
trivial CUDA op, the result's host-side finalisation and a whole solve.

    python3 benchmarks/profile_host.py --n 1000 --out build/host.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nre_localization.engine import solver as S  # noqa: E402
from nre_localization.engine.synthetic import make_planted_scene  # noqa: E402
from nre_localization.engine.types import SolverConfig  # noqa: E402
from nre_localization.geometry import se3  # noqa: E402
from nre_localization.geometry.cameras import Camera  # noqa: E402

CAMERA = Camera.pinhole(500.0, 500.0, 319.5, 239.5, 640, 480)


def _per_call_us(fn, repeats: int, dev: torch.device) -> float:  # noqa: ANN001
    for _ in range(5):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return 1e6 * (time.perf_counter() - t0) / repeats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    scene = make_planted_scene(
        CAMERA, args.n, seed=args.n, dim_fine=128, dim_coarse=128, coarse_stride=16, device=dev
    )
    cfg = SolverConfig()
    xi = torch.tensor([0.01, -0.01, 0.02, 0.002, -0.002, 0.001], dtype=torch.float64)
    prior_cpu = se3.se3_exp(xi) @ scene.T_cam_world.cpu()
    report: dict = {"device": str(dev), "n": args.n, "repeats": args.repeats}
    if dev.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(dev)
        x = torch.zeros(16, device=dev)
        report["trivial_cuda_op_us"] = _per_call_us(lambda: x.add_(1.0), 2000, dev)
    for name, prior in (("tracking_prior_cpu", prior_cpu), ("global", None)):
        with torch.no_grad():

            def one(prior: torch.Tensor | None = prior) -> S.PoseResult:
                return S.solve(scene.query, scene.points, CAMERA, prior, cfg)

            res = one()
            report[f"{name}_us"] = _per_call_us(one, args.repeats, dev)
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.repeats):
                one()
            prof.disable()
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf).sort_stats("cumulative")
        st.print_stats(35)
        report[f"{name}_profile"] = buf.getvalue()
        report[f"{name}_path"] = res.path
        print(f"== {name}: {report[f'{name}_us']:.0f} us per solve ({res.path})", flush=True)
        print("\n".join(buf.getvalue().splitlines()[:60]), flush=True)
    packed = torch.cat(
        [
            torch.eye(6, dtype=torch.float64).reshape(-1) * 1e4,
            torch.eye(4, dtype=torch.float64).reshape(-1),
            torch.tensor([100.0, 50.0, 3.0], dtype=torch.float64),
        ]
    )
    report["finalize_host_us"] = _per_call_us(
        lambda: S._finalize_host(packed, cfg, 1000, 10.0, "tracking", "nre"),
        1000,
        torch.device("cpu"),
    )
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("_profile")}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
