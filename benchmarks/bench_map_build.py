#!/usr/bin/env python3
"""Time map building end to end (points + network descriptors) on a COLMAP / TUM / 7-Scenes source.

Prints one JSON object: total seconds, triangulation seconds, descriptor stage seconds and images
per minute (network + sampling only), point / observation counts, device. Default source: all 25
images of Strecha Herz-Jesus-P25 at 1152x768 (target: under 2 minutes on a 2-core CPU).

    python benchmarks/bench_map_build.py                   # CPU (2 threads)
    python benchmarks/bench_map_build.py --device cuda      # GPU host (torch/NumPy/OpenCV only)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--source",
        type=Path,
        default=ROOT / ".." / "shared" / "data" / "strecha" / "Herz-Jesus-P25",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights", type=Path)
    p.add_argument("--out", type=Path, help="also write the map here")
    args = p.parse_args(argv)
    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from nre_localization.localizer import resolve_device
    from nre_localization.maps.builder import BuildConfig, build_map, load_scene
    from nre_localization.maps.format import save_map
    from nre_localization.model.network import load_default_model, load_model

    dev = resolve_device(args.device)
    model = load_model(args.weights, dev) if args.weights else load_default_model(dev)
    if dev.type == "cuda":  # warm-up (kernel selection) outside the timing
        with torch.inference_mode():
            model(torch.zeros(1, 3, 768, 1152, device=dev))
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    scene = load_scene(args.source)
    m, stats = build_map(scene, model, BuildConfig(device=str(dev)))
    total = time.perf_counter() - t0
    if args.out:
        save_map(m, args.out)
    cam = next(iter(scene.cameras.values()))
    out = {
        "source": str(args.source),
        "images": stats.n_images,
        "image_size": f"{cam.width}x{cam.height}",
        "points": stats.n_points,
        "observations": stats.n_observations,
        "points_from": stats.points_from,
        "total_s": round(total, 2),
        "points_s": round(stats.timings.get("points", 0.0), 2),
        "descriptors_s": round(stats.timings.get("descriptors", 0.0), 2),
        "descriptor_images_per_minute": round(stats.images_per_minute or 0.0, 1),
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"cpu ({args.threads} threads)",
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
