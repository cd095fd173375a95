#!/usr/bin/env python3
"""Forward latency of the descriptor network (both levels) and half-precision agreement.

For each variant (fp32 eager; fp16 / bf16 with BN folding + channels-last; the same under a CUDA
graph; optionally torch.compile) it reports p50 / p90 milliseconds per forward of one image
(default 640x480) and, for reduced precision, the agreement with fp32: mean / minimum cosine
similarity of the descriptors per cell and the fraction of coarse cells whose nearest neighbour in a
second image is unchanged (near-ties within 1e-3 count as unchanged). Needs only torch (+ safetensors for the weights).

    .venv/bin/python benchmarks/bench_model.py --device cpu --iters 10
    python3 benchmarks/bench_model.py --device cuda --out build/bench_model.json   # GPU host
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nre_localization.model.inference import FastDescriptorNet  # noqa: E402
from nre_localization.model.network import (  # noqa: E402
    DescriptorNet,
    default_weights_path,
    load_model,
)

# Agreement tolerances of reduced precision vs fp32 (checked, reported as "ok").
MIN_MEAN_COS = 0.999
MIN_NN_AGREE = 0.98
NN_TIE_REL = 1e-3  # fp16 carries ~11 significant bits: 2^-10 ~ 1e-3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, x: torch.Tensor, iters: int, warmup: int, device: torch.device) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn(x)
    _sync(device)
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn(x)
        _sync(device)
        out.append((time.perf_counter() - t) * 1000.0)
    return out


def _pct(v: list[float], q: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _agreement(ref: dict, got: dict, ref2: dict, got2: dict) -> dict[str, float]:
    """Cosine similarity per cell and coarse nearest-neighbour agreement of ``got`` vs ``ref``.

    ``coarse_nn_agree``: fraction of coarse cells of image 1 whose nearest neighbour among the
    cells of image 2 is the same cell. ``coarse_nn_agree_tol`` (the checked figure) also accepts a
    different neighbour whose fp32 score is within ``NN_TIE_REL`` of the best fp32 score (relative
    to the largest possible score, ``scale^2``): a near-tie that reduced precision cannot resolve
    and that changes no loss map beyond the same tolerance.
    """
    res: dict[str, float] = {}
    for k in ("coarse", "fine"):
        cos = torch.nn.functional.cosine_similarity(ref[k].float(), got[k].float(), dim=1)
        res[f"{k}_mean_cos"] = float(cos.mean())
        res[f"{k}_min_cos"] = float(cos.min())
    d1, d2 = ref["coarse"][0].float().flatten(1), ref2["coarse"][0].float().flatten(1)
    g1, g2 = got["coarse"][0].float().flatten(1), got2["coarse"][0].float().flatten(1)
    s_ref = d1.T @ d2  # [cells 1, cells 2] fp32 scores
    best, nn_ref = s_ref.max(1)
    nn_got = (g1.T @ g2).argmax(1)
    picked = s_ref.gather(1, nn_got[:, None])[:, 0]
    full = float(d1.norm(dim=0).max() * d2.norm(dim=0).max())
    res["coarse_nn_agree"] = float((nn_ref == nn_got).float().mean())
    res["coarse_nn_agree_tol"] = float((best - picked <= NN_TIE_REL * full).float().mean())
    res["ok"] = float(
        res["coarse_mean_cos"] >= MIN_MEAN_COS
        and res["fine_mean_cos"] >= MIN_MEAN_COS
        and res["coarse_nn_agree_tol"] >= MIN_NN_AGREE
    )
    return res


def _test_images(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two real overlapping frames (demo_data/tum_fr2_desk, resized to ``h x w``) when readable,
    else two deterministic synthetic fields (smooth random colours + texture)."""
    ims: list[torch.Tensor] = []
    frames = sorted((ROOT / "demo_data" / "tum_fr2_desk" / "rgb").glob("*.jpg"))
    if len(frames) >= 2:
        try:
            import cv2

            for f in frames[:2]:
                bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
                rgb = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)[:, :, ::-1].copy()
                t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
                ims.append(t.to(device))
            return ims[0], ims[1]
        except ImportError:
            ims = []
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        low = torch.rand(1, 3, h // 16 + 1, w // 16 + 1, generator=g)
        x = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)
        x = x + 0.15 * torch.rand(1, 3, h, w, generator=g)
        ims.append(x.clamp(0, 1).to(device))
    return ims[0], ims[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--weights", default=None, help="safetensors (default: shipped weights)")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    ap.add_argument("--compile", action="store_true", help="also try torch.compile (slow start)")
    ap.add_argument("--out", default=None, help="write results as JSON here")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    path = Path(a.weights) if a.weights else default_weights_path()
    net = load_model(path, device) if path.is_file() else DescriptorNet().to(device).eval()
    x, x2 = _test_images(a.height, a.width, device)
    with torch.inference_mode():
        ref, ref2 = net(x), net(x2)
    iters = a.iters if device.type == "cuda" else min(a.iters, 20)
    warm = a.warmup if device.type == "cuda" else 2

    variants: list[tuple[str, object]] = [("fp32_eager", net)]
    if device.type == "cuda":
        variants += [
            ("fp32_fold_tf32", FastDescriptorNet(net, torch.float32, channels_last=True)),
            ("fp16_fold_cl", FastDescriptorNet(net, torch.float16)),
            ("bf16_fold_cl", FastDescriptorNet(net, torch.bfloat16)),
            ("fp16_fold_cl_graph", FastDescriptorNet(net, torch.float16, cuda_graph=True)),
            ("bf16_fold_cl_graph", FastDescriptorNet(net, torch.bfloat16, cuda_graph=True)),
        ]
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        variants += [
            ("fp32_fold", FastDescriptorNet(net, torch.float32, channels_last=False)),
            ("fp32_fold_cl", FastDescriptorNet(net, torch.float32, channels_last=True)),
        ]
    if a.compile:
        fast = FastDescriptorNet(net, torch.float16 if device.type == "cuda" else torch.float32)
        fast.net = torch.compile(fast.net, mode="max-autotune-no-cudagraphs")  # type: ignore[assignment]
        variants.append(("compiled", fast))

    results = []
    for name, fn in variants:
        try:
            with torch.inference_mode():
                ms = _time(fn, x, iters, warm, device)  # type: ignore[arg-type]
                got, got2 = fn(x), fn(x2)  # type: ignore[operator]
            row = {"variant": name, "p50_ms": _pct(ms, 0.5), "p90_ms": _pct(ms, 0.9)}
            row.update(_agreement(ref, got, ref2, got2))
        except Exception as err:  # report and keep going (e.g. compile unavailable)
            row = {"variant": name, "error": f"{type(err).__name__}: {err}"[:300]}
        results.append(row)
        print(json.dumps(row), flush=True)

    info = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "image": [a.height, a.width],
        "weights": str(path) if path.is_file() else "random init",
        "fingerprint": net.fingerprint(),
        "coarse": list(ref["coarse"].shape),
        "fine": list(ref["fine"].shape),
        "params": sum(p.numel() for p in net.parameters()),
        "results": results,
    }
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(info, indent=1) + "\n")
    ok = [r for r in results if "p50_ms" in r and r.get("ok", 0) == 1.0]
    best = min(ok, key=lambda r: r["p50_ms"]) if ok else None
    print(
        f"device {info['device']}: best {best['variant']} p50 {best['p50_ms']:.2f} ms"
        if best
        else "no variant passed the agreement check"
    )


if __name__ == "__main__":
    main()
