"""One NRE training/validation step on a batch of image pairs with exact correspondences.

Both directions are used (A -> B and B -> A): the source descriptor of a point is bilinearly sampled
in its source map at the point's cell (as the map builder samples keyframe descriptors), the target is
the point's true cell in the other image.

* coarse: softmax over the whole target coarse map (stride 16);
* fine: softmax over a ``window x window`` block of the target fine map (stride 2) that contains the
  truth at a random offset from its centre, mirroring the engine's windowed fine stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nre_localization.geometry.cells import bilinear_sample, cells_inside, pixel_to_cell
from nre_localization.training.loss import LevelStats, corners, window_origins


@dataclass(frozen=True)
class LossConfig:
    fine_window: int = 32  # fine cells per window side (64 px at stride 2)
    fine_max_offset: int = 8  # random displacement of the window centre from the truth (cells)
    fine_weight: float = 1.0  # total = coarse + fine_weight * fine
    max_logits: int = 1 << 27  # fine level: full-correlation logits computed at once (memory)


def _level_batched(
    src_maps: torch.Tensor,
    dst_maps: torch.Tensor,
    src_px: torch.Tensor,
    dst_px: torch.Tensor,
    valid: torch.Tensor,
    stride: int,
    window: int | None,
    cfg: LossConfig,
    gen: torch.Generator,
) -> LevelStats:
    """Eq. 10 for M (source, target) map pairs at once.

    src_maps, dst_maps ``[M, D, Hm, Wm]``; src_px, dst_px ``[M, N, 2]`` pixels (x, y); valid ``[M, N]``.
    Invalid points are carried with zero weight (fixed shapes, no per-pair Python work on the GPU).
    """
    m, d, hm, wm = dst_maps.shape
    n = src_px.shape[1]
    src_cells = pixel_to_cell(src_px, stride)
    dst_cells = pixel_to_cell(dst_px, stride)
    keep = valid & cells_inside(dst_cells, hm, wm) & cells_inside(src_cells, *src_maps.shape[2:])
    if window is not None and (hm < window or wm < window):
        keep = torch.zeros_like(keep)
    limit = torch.tensor([wm - 1, hm - 1], dtype=dst_cells.dtype, device=dst_cells.device)
    truth = torch.minimum(dst_cells.clamp(min=0), limit)  # valid for indexing; masked if not kept
    desc = torch.stack([bilinear_sample(src_maps[i], src_cells[i]) for i in range(m)])  # [M, N, D]
    flat = dst_maps.reshape(m, d, hm * wm)
    if window is None:
        logits = torch.bmm(desc, flat)  # [M, N, Hm*Wm]
        local, size = truth, wm
    else:
        origins = window_origins(truth.reshape(-1, 2), window, hm, wm, cfg.fine_max_offset, gen)
        origins = origins.view(m, n, 2)
        r = torch.arange(window, device=desc.device)
        gy = (origins[..., 1, None] + r).unsqueeze(-1)  # [M, N, S, 1]
        gx = (origins[..., 0, None] + r).unsqueeze(-2)  # [M, N, 1, S]
        idx = (gy * wm + gx).reshape(m, n, window * window)
        # full correlation by matmul, then each point's window (cheap forward and backward);
        # maps are processed a few at a time to bound the [c, N, Hm*Wm] logits
        step = max(1, cfg.max_logits // max(n * hm * wm, 1))
        logits = torch.cat(
            [
                torch.bmm(desc[i : i + step], flat[i : i + step]).gather(2, idx[i : i + step])
                for i in range(0, m, step)
            ]
        )
        local, size = truth - origins.to(truth.dtype), window
    logp = F.log_softmax(logits.float(), dim=2)
    cidx, wts = corners(local.reshape(-1, 2).float(), size)
    cap = logp.shape[2] - 1
    picked = logp.gather(2, cidx.clamp(max=cap).view(m, n, 4))
    per_point = -(picked * wts.view(m, n, 4)).sum(-1)  # [M, N]
    w = keep.to(per_point.dtype)
    loss_sum = (per_point * w).sum()
    with torch.no_grad():
        am = logp.argmax(dim=2)
        pred = torch.stack([am % size, am // size], dim=-1).to(local.dtype)
        hit = ((pred - local).norm(dim=-1) <= 1.0) & keep
        n_used, n_hit = torch.stack([keep.sum(), hit.sum()]).tolist()
    return LevelStats(loss_sum, int(n_used), int(n_hit))


def batch_losses(
    outputs: dict[str, torch.Tensor],
    pts_a: torch.Tensor,
    pts_b: torch.Tensor,
    valid: torch.Tensor,
    coarse_stride: int,
    fine_stride: int,
    cfg: LossConfig,
    gen: torch.Generator,
) -> dict[str, LevelStats]:
    """NRE losses of a batch whose network outputs are ``outputs`` for ``cat([A, B])``.

    pts_a, pts_b ``[B, N, 2]`` pixels (x, y) of the same points in A and B; valid ``[B, N]`` bool
    (visible in both). Both directions are stacked (A -> B then B -> A). Returns summed
    :class:`LevelStats` for "coarse" and "fine".
    """
    b = pts_a.shape[0]
    src_px = torch.cat([pts_a, pts_b])
    dst_px = torch.cat([pts_b, pts_a])
    v = torch.cat([valid, valid])
    stats = {}
    for level, stride, window in (
        ("coarse", coarse_stride, None),
        ("fine", fine_stride, cfg.fine_window),
    ):
        maps = outputs[level]  # [2B, D, Hm, Wm]: A maps then B maps
        swapped = torch.cat([maps[b:], maps[:b]])
        stats[level] = _level_batched(maps, swapped, src_px, dst_px, v, stride, window, cfg, gen)
    return stats


def collate_pairs(batch: list[dict], as_numpy: bool = False) -> dict:
    """:func:`training.pairs.make_pair` dicts -> CPU tensors: ``images`` uint8 ``[2B, H, W, 3]``
    (all A then all B), ``pts_a`` / ``pts_b`` ``[B, N, 2]``, ``valid`` ``[B, N]``. Run in the loader
    workers: tensors travel through shared memory (/dev/shm) and can be pinned; ``as_numpy`` keeps
    NumPy arrays (pickled through a pipe: for hosts with a small /dev/shm)."""
    out = {
        "images": np.stack([p["image_a"] for p in batch] + [p["image_b"] for p in batch]),
        "pts_a": np.stack([p["pts_a"] for p in batch]),
        "pts_b": np.stack([p["pts_b"] for p in batch]),
        "valid": np.stack([p["valid"] for p in batch]),
    }
    if all("gen_ms" in p for p in batch):  # worker-side generation time per pair (diagnostics)
        out["gen_ms"] = np.array([float(p["gen_ms"]) for p in batch])
    if as_numpy:
        return out
    return {k: torch.from_numpy(v) for k, v in out.items()}


def batch_to_device(
    batch: dict, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A :func:`collate_pairs` batch -> images ``[2B, 3, H, W]`` float in [0, 1], pts_a, pts_b,
    valid on ``device`` (uint8 is copied, the float conversion runs on the device)."""
    t = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
    images = t["images"].to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
    pts_a = t["pts_a"].to(device, non_blocking=True)
    pts_b = t["pts_b"].to(device, non_blocking=True)
    valid = t["valid"].to(device, non_blocking=True)
    return images, pts_a, pts_b, valid


def pairs_to_tensors(
    batch: list[dict], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collate :func:`training.pairs.make_pair` dicts -> images ``[2B, 3, H, W]`` float in [0, 1]
    (all A then all B), pts_a / pts_b ``[B, N, 2]``, valid ``[B, N]``, on ``device``."""
    return batch_to_device(collate_pairs(batch), device)
