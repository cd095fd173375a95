"""NRE training loop: bf16 autocast, time-budgeted chunks, checkpoint/resume, optional DDP.

Runs are chopped into chunks of a few minutes (``max_minutes``); the learning-rate schedule follows
the cumulative *training time* over a planned total (``plan_minutes``), so any chopping gives the
same schedule. A checkpoint is the model as a loadable weights file (``ckpt_last.safetensors``, also
valid for :func:`model.network.load_model`) plus ``ckpt_last_optim.pt`` (AdamW state, step, time).

Outputs under ``out``: ``ckpt_last*.{safetensors,pt}``, ``log.csv`` (training, every
``log_every`` steps), ``val.csv`` (validation), ``log.jsonl`` (both), ``summary.json``.

Data (``data``, tools/make_training_data.py): ``photos/{train,val}`` (real photographs) and, where
present, ``textures/{train,val}`` (photographed materials for the 3D scenes' surfaces). Each step's
pairs mix homographic pairs, card scenes and room scenes (``PairConfig.p_scene`` / ``p_room``).

Several GPUs (``torchrun --nproc_per_node N``): DistributedDataParallel, NCCL on CUDA and gloo on
CPU; ``batch`` pairs *per process* (the effective batch is ``N * batch``; the learning rate is not
scaled with N); every process has its own loader workers (``workers``) whose random streams are
seeded by (seed, rank, worker, resume step), so ranks never draw the same pairs; only rank 0
validates, logs and writes checkpoints.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from nre_localization.model.network import DescriptorNet, load_model, save_weights
from nre_localization.training.pairs import (
    PairConfig,
    Photo,
    PhotoLike,
    list_photos,
    make_pair,
    read_photo,
)
from nre_localization.training.scenes import make_room_pair, make_scene_pair
from nre_localization.training.step import (
    LossConfig,
    batch_losses,
    batch_to_device,
    collate_pairs,
    pairs_to_tensors,
)


@dataclass
class TrainConfig:
    data: str = ".traindata"  # folder with photos/train and photos/val
    out: str = "build/train"
    init: str = "weights/nre_default.safetensors"  # starting weights (pretrained init)
    resume: str | None = None  # ckpt_last.safetensors of an earlier chunk
    max_minutes: float = 8.0  # wall-clock budget of this process (stops cleanly before)
    plan_minutes: float = 24.0  # total training time the LR schedule spans (over all chunks)
    max_steps: int = 10**9
    batch: int = 12  # pairs per GPU per step
    lr: float = 4e-4
    lr_scale_mult: float = 10.0  # LR multiplier of the two log-temperature scalars
    weight_decay: float = 1e-4
    warmup_steps: int = 200  # after a fresh optimizer
    workers: int = 8  # loader workers per process
    # batches from the workers as shared-memory tensors (pinned, async copies); False: NumPy
    # arrays through pipes (hosts whose /dev/shm is small: tools/device_train.sh checks)
    shm_batches: bool = True
    ckpt_every: int = 500
    ckpt_minutes: float = 0.0  # also checkpoint every this many wall-clock minutes (0 = off)
    log_every: int = 25
    val_every: int = 500
    val_pairs: int = 48
    val_room_pairs: int = (
        24  # room-scene validation pairs on the held-out photos/textures (0 = off)
    )
    # restart the cosine schedule at the resumed step (warm restart over plan_minutes of *this*
    # run's training time, short warm-up) instead of continuing the cumulative one
    restart_schedule: bool = False
    restart_warmup_steps: int = 50
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA
    # Frozen low-level layers (generic pretrained filters): no backward through the high-resolution
    # layers, several times faster steps. MobileNetV2 blocks [0, freeze_coarse) of the coarse trunk
    # (7 = everything up to stride 8) and the stride-1 block of the fine encoder.
    freeze_coarse: int = 7
    freeze_fine_block1: bool = True
    pair: PairConfig = field(default_factory=PairConfig)
    loss: LossConfig = field(default_factory=LossConfig)


class PairStream(IterableDataset):
    """Endless random pairs from the training photos (and textures); seeded by (seed, worker),
    where ``seed`` already holds the rank and the resume step."""

    def __init__(
        self,
        files: list[Path],
        cfg: PairConfig,
        seed: list[int],
        textures: list[Path] | None = None,
    ) -> None:
        self.files, self.cfg, self.seed = files, cfg, seed
        self.textures = textures or []

    def __iter__(self):  # noqa: ANN204 (a generator of pair dicts)
        info = get_worker_info()
        wid = info.id if info is not None else 0
        if info is not None:  # one thread per worker: the workers already fill the cores
            cv2.setNumThreads(1)
            torch.set_num_threads(1)
        rng = np.random.default_rng([*self.seed, wid])
        photos = [Photo(read_photo(f)) for f in self.files]
        textures = [Photo(read_photo(f)) for f in self.textures]
        while True:
            t0 = time.perf_counter()
            pair = sample_pair(photos, rng, self.cfg, textures)
            pair["gen_ms"] = 1e3 * (time.perf_counter() - t0)  # loader diagnostics (log.csv)
            yield pair


def sample_pair(
    photos: list[PhotoLike],
    rng: np.random.Generator,
    cfg: PairConfig,
    textures: list[PhotoLike] | None = None,
) -> dict:
    """A room-scene pair with probability ``cfg.p_room``, a card-scene pair with ``cfg.p_scene``,
    else a homographic pair. A sample that fails (degenerate random geometry) is replaced by
    another one, never raised into training."""
    for _ in range(20):
        try:
            u = rng.random()
            if u < cfg.p_room:
                pair = make_room_pair(photos, textures or [], rng, cfg)
            elif u < cfg.p_room + cfg.p_scene:
                pair = make_scene_pair(photos, rng, cfg)
            else:
                pair = make_pair(photos[int(rng.integers(len(photos)))], rng, cfg)
        except (cv2.error, ValueError, np.linalg.LinAlgError, FloatingPointError):
            continue
        if pair is not None and pair["valid"].mean() > 0.1:
            return pair
    return make_pair(photos[int(rng.integers(len(photos)))], rng, cfg)


def _synced(device: torch.device, sync: bool) -> float:
    """``time.time()``, after a CUDA synchronisation when ``sync`` (timing probes only)."""
    if sync and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.time()


def _dist_info() -> tuple[int, int, int]:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    return 0, 1, 0


def legacy_pairs(cfg: PairConfig) -> PairConfig:
    """``cfg`` on the original rendering path (bit-identical pairs to the first runs' code)."""
    return replace(cfg, fast=False, min_src_per_px=0.0)


def make_val_set(
    data: Path,
    cfg: PairConfig,
    n: int,
    seed: int = 1234,
    scenes: bool = False,
    kind: str | None = None,
) -> list[dict]:
    """Fixed validation pairs from the held-out photos (deterministic for a given seed).

    ``kind`` "homography" (default): homographic pairs; "scenes" (or ``scenes=True``): card-scene
    pairs. Both are rendered on the legacy path (:func:`legacy_pairs`) from ``photos/val``, so they
    are the very pairs of every earlier run (curves compare across data and code changes).
    "room": room-scene pairs (fast path) from ``photos/val`` and ``textures/val`` (if present).
    """
    kind = kind or ("scenes" if scenes else "homography")
    files = list_photos(data / "photos" / "val")
    photos = [read_photo(f) for f in files]
    rng = np.random.default_rng(seed)
    if kind == "homography":
        leg = legacy_pairs(cfg)
        return [make_pair(photos[i % len(photos)], rng, leg) for i in range(n)]
    out: list[dict] = []
    if kind == "scenes":
        leg = legacy_pairs(cfg)
        while len(out) < n:
            pair = make_scene_pair(photos, rng, leg)
            if pair is not None and pair["valid"].mean() > 0.1:
                out.append(pair)
        return out
    if kind != "room":
        raise ValueError(f"unknown validation kind {kind!r}")
    tdir = data / "textures" / "val"
    textures = [Photo(read_photo(f)) for f in list_photos(tdir)] if tdir.is_dir() else []
    pyr = [Photo(p) for p in photos]
    fast = replace(cfg, fast=True)
    for _ in range(50 * n):
        if len(out) >= n:
            break
        pair = make_room_pair(pyr, textures, rng, fast)
        if pair is not None and pair["valid"].mean() > 0.1:
            out.append(pair)
    return out


@torch.no_grad()
def evaluate(
    net: DescriptorNet, val: list[dict], cfg: TrainConfig, device: torch.device
) -> dict[str, float]:
    """Validation loss and acc@1cell (argmax within 1 cell) per level."""
    net.eval()
    gen = torch.Generator().manual_seed(99)
    tot = {"coarse": [0.0, 0, 0], "fine": [0.0, 0, 0]}
    for s in range(0, len(val), cfg.batch):
        images, pa, pb, v = pairs_to_tensors(val[s : s + cfg.batch], device)
        with torch.autocast(device.type, torch.bfloat16, enabled=cfg.amp and device.type == "cuda"):
            out = net(images)
        st = batch_losses(out, pa, pb, v, net.coarse_stride, net.fine_stride, cfg.loss, gen)
        for k, x in st.items():
            tot[k][0] += float(x.loss_sum)
            tot[k][1] += x.n
            tot[k][2] += x.n_correct
    net.train()
    res: dict[str, float] = {}
    for k, (ls, n, c) in tot.items():
        res[f"val_loss_{k}"] = ls / max(n, 1)
        res[f"val_acc_{k}"] = c / max(n, 1)
    return res


def _validate(
    net: DescriptorNet, sets: dict[str, list[dict]], cfg: TrainConfig, device: torch.device
) -> dict[str, float]:
    """Every validation set: homographic (``val_*``), card scenes (``val3d_*``), rooms
    (``valroom_*``)."""
    res: dict[str, float] = {}
    for prefix, pairs in sets.items():
        if pairs:
            res.update(
                {
                    k.replace("val_", prefix + "_"): v
                    for k, v in evaluate(net, pairs, cfg, device).items()
                }
            )
    return res


def freeze_low_level(net: DescriptorNet, coarse_blocks: int, fine_block1: bool) -> int:
    """Set ``requires_grad=False`` on the first coarse blocks / the fine block1; returns the count
    of frozen parameters (their BatchNorm statistics are frozen anyway)."""
    mods: list[torch.nn.Module] = [net.coarse.features[i] for i in range(coarse_blocks)]
    if fine_block1:
        mods.append(net.fine.block1)
    n = 0
    for m in mods:
        for p in m.parameters():
            p.requires_grad_(False)
            n += p.numel()
    return n


def _lr_factor(
    train_s: float, step_in_run: int, cfg: TrainConfig, fresh_optim: bool, origin_s: float = 0.0
) -> float:
    """Cosine from 1 to 0.05 over ``plan_minutes`` of training time since ``origin_s`` (0, or the
    resumed time with ``restart_schedule``), with a linear warm-up after a fresh optimizer (or a
    short one at a restart)."""
    frac = min((train_s - origin_s) / max(cfg.plan_minutes * 60.0, 1.0), 1.0)
    f = 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * frac))
    warm = cfg.warmup_steps if fresh_optim else (cfg.restart_warmup_steps if origin_s > 0 else 0)
    if step_in_run < warm:
        f *= (step_in_run + 1) / warm
    return f


def train(cfg: TrainConfig, export: str | None = None) -> dict[str, float]:
    """Run one chunk of training; returns the final summary (also written to summary.json)."""
    t_start = time.time()
    rank, world, local_rank = _dist_info()
    if world > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    torch.set_flush_denormal(True)  # CPU: denormals in autograd made steps 10x slower
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = Path(cfg.out)
    data = Path(cfg.data)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if world > 1:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        backend = dist.get_backend()
        print(f"rank {rank}/{world} (local {local_rank}): {device} {name}, {backend}", flush=True)

    start_from = cfg.resume or cfg.init
    net = load_model(start_from, "cpu").to(device)
    net.train()
    step, train_s = 0, 0.0
    optim_state = None
    if cfg.resume:
        opt_path = Path(cfg.resume).with_name(Path(cfg.resume).stem + "_optim.pt")
        if opt_path.is_file():
            blob = torch.load(opt_path, map_location="cpu", weights_only=False)
            optim_state, step, train_s = blob["optim"], blob["step"], blob["train_s"]
    frozen = freeze_low_level(net, cfg.freeze_coarse, cfg.freeze_fine_block1)
    scales = [net.coarse_log_scale, net.fine_log_scale]
    others = [
        p for n, p in net.named_parameters() if p.requires_grad and not n.endswith("log_scale")
    ]
    opt = torch.optim.AdamW(
        [
            {"params": others, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
            {"params": scales, "lr": cfg.lr * cfg.lr_scale_mult, "weight_decay": 0.0},
        ]
    )
    base_lrs = [cfg.lr, cfg.lr * cfg.lr_scale_mult]
    fresh = optim_state is None
    if optim_state is not None:
        try:
            opt.load_state_dict(optim_state)
        except ValueError:  # other frozen set than the checkpoint's run: restart AdamW, warm up
            fresh = True
            if rank == 0:
                print("optimizer state does not match the trainable set: fresh optimizer")
    if rank == 0:
        n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
        print(f"trainable parameters {n_train}, frozen {frozen}", flush=True)
    model: torch.nn.Module = net
    if world > 1:
        # gradient_as_bucket_view: gradients live in the all-reduce buckets (no copy, no stride
        # mismatch warnings for the depthwise kernels)
        model = torch.nn.parallel.DistributedDataParallel(
            net,
            device_ids=[local_rank] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,
        )

    files = list_photos(data / "photos" / "train")
    tdir = data / "textures" / "train"
    textures = list_photos(tdir) if tdir.is_dir() else []
    stream = PairStream(files, cfg.pair, seed=[cfg.seed, rank, step], textures=textures)
    loader = DataLoader(
        stream,
        batch_size=cfg.batch,
        num_workers=cfg.workers,
        collate_fn=functools.partial(collate_pairs, as_numpy=not cfg.shm_batches),
        pin_memory=device.type == "cuda" and cfg.shm_batches,
        persistent_workers=cfg.workers > 0,
        prefetch_factor=3 if cfg.workers > 0 else None,
        # spawn, not fork: a forked child deadlocks on the parent's OpenMP / OpenCV thread pools
        multiprocessing_context="spawn" if cfg.workers > 0 else None,
    )
    val_sets: dict[str, list[dict]] = {}
    if rank == 0:
        print(
            f"world {world}, device {device}, {len(files)} photos, {len(textures)} textures, "
            f"{cfg.workers} loader workers per process, batch {cfg.batch} per process",
            flush=True,
        )
        val_sets = {
            "val": make_val_set(data, cfg.pair, cfg.val_pairs),
            "val3d": make_val_set(data, cfg.pair, cfg.val_pairs // 2, kind="scenes"),
        }
        if cfg.val_room_pairs > 0:
            val_sets["valroom"] = make_val_set(
                data, cfg.pair, cfg.val_room_pairs, seed=4321, kind="room"
            )
    origin_s = train_s if cfg.restart_schedule else 0.0
    t_ckpt = time.time()
    gen = torch.Generator().manual_seed(cfg.seed + step + 17 * rank)
    logs = _Logs(out) if rank == 0 else None
    budget_s = cfg.max_minutes * 60.0
    reserve_s = 25.0  # final validation + checkpoint
    run_steps = 0
    acc_hist: dict[str, list[float]] = {k: [] for k in ("loss_c", "loss_f", "acc_c", "acc_f")}
    last_val: dict[str, float] = {}
    t_chunk = time.time()
    if logs is not None:
        last_val = _validate(net, val_sets, cfg, device)
        logs.val(step, train_s, last_val)
    it = iter(loader)
    times: dict[str, float] = {}
    while run_steps < cfg.max_steps:
        stop = time.time() - t_start > budget_s - reserve_s
        if world > 1:
            flag = torch.tensor([1.0 if stop else 0.0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item() > 0)
        if stop:
            break
        t0 = time.time()
        try:
            batch = next(it)
        except Exception as err:  # a loader worker died: keep what was trained so far
            print(f"data loader failed ({type(err).__name__}: {err}); saving, stopping", flush=True)
            break
        images, pa, pb, v = batch_to_device(batch, device)
        t_data = time.time() - t0
        probe = logs is not None and (step + 1) % cfg.log_every == 0  # synced timing breakdown
        f = _lr_factor(train_s, run_steps, cfg, fresh, origin_s)
        for g, base in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = base * f
        with torch.autocast(device.type, torch.bfloat16, enabled=cfg.amp and device.type == "cuda"):
            outputs = model(images)
        t_fwd = _synced(device, probe)
        st = batch_losses(outputs, pa, pb, v, net.coarse_stride, net.fine_stride, cfg.loss, gen)
        loss = st["coarse"].loss + cfg.loss.fine_weight * st["fine"].loss
        t_loss = _synced(device, probe)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        t_bwd = _synced(device, probe)
        if probe:
            times = {
                "data_s": t_data,
                "gen_ms_pair": float(np.mean(np.asarray(batch.get("gen_ms", 0.0)))),
                "fwd_s": t_fwd - t0 - t_data,
                "loss_s": t_loss - t_fwd,
                "bwd_s": t_bwd - t_loss,
            }
        step += 1
        run_steps += 1
        train_s += time.time() - t0
        acc_hist["loss_c"].append(float(st["coarse"].loss.detach()))
        acc_hist["loss_f"].append(float(st["fine"].loss.detach()))
        acc_hist["acc_c"].append(st["coarse"].n_correct / max(st["coarse"].n, 1))
        acc_hist["acc_f"].append(st["fine"].n_correct / max(st["fine"].n, 1))
        if logs is not None and step % cfg.log_every == 0:
            row = {k: float(np.mean(x)) for k, x in acc_hist.items()}
            row.update(
                lr=opt.param_groups[0]["lr"],
                coarse_scale=net.coarse_scale,
                fine_scale=net.fine_scale,
                steps_per_s=run_steps / max(time.time() - t_chunk, 1e-6),
                **times,
            )
            logs.train(step, train_s, row)
            acc_hist = {k: [] for k in acc_hist}
        if logs is not None and step % cfg.val_every == 0:
            last_val = _validate(net, val_sets, cfg, device)
            logs.val(step, train_s, last_val)
        due = cfg.ckpt_minutes > 0 and time.time() - t_ckpt > cfg.ckpt_minutes * 60.0
        if rank == 0 and (step % cfg.ckpt_every == 0 or due):
            save_checkpoint(net, opt, step, train_s, out, cfg)
            t_ckpt = time.time()

    # Stop the loader workers now (not at interpreter exit, where workers still busy with a pair
    # abort): the final validation and checkpoint below need no more batches.
    # A worker that aborts while being stopped (seen on a 2 x H200 run: "terminate called without
    # an active exception" in the workers, then the loader's SIGCHLD handler raised inside
    # shutdown and the final checkpoint was never written) loses nothing: no batch is needed now.
    shutdown = getattr(it, "_shutdown_workers", None)
    if callable(shutdown):
        try:
            shutdown()
        except RuntimeError as err:
            print(f"rank {rank}: loader shutdown: {err} (ignored: training is over)", flush=True)
    del it
    summary: dict[str, float] = {}
    if rank == 0:
        if step % cfg.val_every != 0 or not last_val:
            last_val = _validate(net, val_sets, cfg, device)
            assert logs is not None
            logs.val(step, train_s, last_val)
        save_checkpoint(net, opt, step, train_s, out, cfg)
        summary = {
            "step": step,
            "train_minutes": train_s / 60.0,
            "run_steps": run_steps,
            "coarse_scale": net.coarse_scale,
            "fine_scale": net.fine_scale,
            **last_val,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        if export:
            save_weights(net, export, _meta(step, train_s, cfg, last_val))
        print(json.dumps(summary), flush=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _meta(step: int, train_s: float, cfg: TrainConfig, val: dict[str, float]) -> dict[str, str]:
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "train_step": str(step),
        "train_seconds": f"{train_s:.1f}",
        "train_device": dev,
        "train_config": json.dumps(asdict(cfg), default=str),
        "val": json.dumps(val),
    }


def save_checkpoint(
    net: DescriptorNet,
    opt: torch.optim.Optimizer,
    step: int,
    train_s: float,
    out: Path,
    cfg: TrainConfig,
) -> None:
    """``out/ckpt_last.safetensors`` (loadable model) + ``out/ckpt_last_optim.pt``, atomically."""
    save_weights(net, out / "ckpt_last.safetensors", _meta(step, train_s, cfg, {}))
    tmp = out / "ckpt_last_optim.pt.tmp"
    torch.save({"optim": opt.state_dict(), "step": step, "train_s": train_s}, tmp)
    os.replace(tmp, out / "ckpt_last_optim.pt")


class _Logs:
    def __init__(self, out: Path) -> None:
        self.out = out

    def _csv(self, name: str, row: dict[str, float]) -> None:
        path = self.out / name
        new = not path.is_file()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        with (self.out / "log.jsonl").open("a") as f:
            f.write(json.dumps({"kind": name.split(".")[0], **row}) + "\n")

    def train(self, step: int, train_s: float, row: dict[str, float]) -> None:
        self._csv("log.csv", {"step": step, "train_s": round(train_s, 1), **row})
        print(
            f"step {step} t={train_s:.0f}s " + " ".join(f"{k}={v:.4g}" for k, v in row.items()),
            flush=True,
        )

    def val(self, step: int, train_s: float, row: dict[str, float]) -> None:
        self._csv("val.csv", {"step": step, "train_s": round(train_s, 1), **row})
        print(f"VAL step {step} " + " ".join(f"{k}={v:.4f}" for k, v in row.items()), flush=True)
