#!/usr/bin/env python3
"""Descriptor accuracy of one or more weight files on held-out homographic pairs.

Pairs come from the validation photos of the training set (``<data>/photos/val``, never trained on),
with a fixed seed, under three protocols: ``clean`` (homographies only), ``robot`` (plus the training
degradations: exposure, blur, motion blur, noise, JPEG) and ``scene3d_robot`` (piecewise-planar 3D
scenes with parallax and occlusion, training/scenes.py, with the same degradations). Reported per level: NRE loss (eq. 10; fine
level on 32x32 windows) and acc@1 = fraction of points whose correspondence-map argmax lies within one
cell of the truth.

    .venv/bin/python tools/eval_descriptors.py weights/nre_default.safetensors [other.safetensors]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from nre_localization.model.network import load_model  # noqa: E402
from nre_localization.training.loop import TrainConfig, evaluate, make_val_set  # noqa: E402
from nre_localization.training.pairs import PairConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--data", default=".traindata")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="JSON results")
    a = ap.parse_args()
    torch.set_num_threads(2)
    device = torch.device(a.device)
    cfg = TrainConfig(batch=4)
    sets = {
        "clean": make_val_set(Path(a.data), replace(PairConfig(), photometric=False), a.pairs),
        "robot": make_val_set(Path(a.data), PairConfig(), a.pairs),
        "scene3d_robot": make_val_set(Path(a.data), PairConfig(), a.pairs, scenes=True),
    }
    results = []
    for w in a.weights:
        net = load_model(w, device)
        for name, val in sets.items():
            row = {"weights": w, "fingerprint": net.fingerprint(), "protocol": name}
            row.update({k: round(v, 4) for k, v in evaluate(net, val, cfg, device).items()})
            row.update(coarse_scale=round(net.coarse_scale, 3), fine_scale=round(net.fine_scale, 3))
            results.append(row)
            print(json.dumps(row), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
