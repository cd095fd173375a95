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

import torch

from nre_localization.geometry.cells import bilinear_sample, cells_inside, pixel_to_cell
from nre_localization.training.loss import (
    LevelStats,
    dense_nre_loss,
    window_nre_loss,
    window_origins,
)


@dataclass(frozen=True)
class LossConfig:
    fine_window: int = 32  # fine cells per window side (64 px at stride 2)
    fine_max_offset: int = 8  # random displacement of the window centre from the truth (cells)
    fine_weight: float = 1.0  # total = coarse + fine_weight * fine
    chunk: int = 512  # points per logits chunk


def _level(
    src_map: torch.Tensor,
    dst_map: torch.Tensor,
    src_px: torch.Tensor,
    dst_px: torch.Tensor,
    stride: int,
    window: int | None,
    cfg: LossConfig,
    gen: torch.Generator,
) -> LevelStats:
    """Loss of one direction at one level. Maps ``[D, Hm, Wm]``; pixels ``[N, 2]`` (x, y)."""
    _, hm, wm = dst_map.shape
    src_cells = pixel_to_cell(src_px, stride)
    dst_cells = pixel_to_cell(dst_px, stride)
    keep = cells_inside(dst_cells, hm, wm) & cells_inside(src_cells, *src_map.shape[1:])
    if window is not None:
        keep &= torch.tensor(hm >= window and wm >= window, device=keep.device)
    if not bool(keep.any()):
        return LevelStats(src_map.sum() * 0.0, 0, 0)
    desc = bilinear_sample(src_map, src_cells[keep])
    if window is None:
        return dense_nre_loss(desc, dst_map, dst_cells[keep], cfg.chunk)
    origins = window_origins(dst_cells[keep], window, hm, wm, cfg.fine_max_offset, gen)
    return window_nre_loss(desc, dst_map, dst_cells[keep], origins, window, cfg.chunk)


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
    (visible in both). Returns summed :class:`LevelStats` for "coarse" and "fine".
    """
    b = pts_a.shape[0]
    stats = {
        "coarse": LevelStats(pts_a.new_zeros(()), 0, 0),
        "fine": LevelStats(pts_a.new_zeros(()), 0, 0),
    }
    for i in range(b):
        v = valid[i]
        pa, pb = pts_a[i][v], pts_b[i][v]
        for level, stride, window in (
            ("coarse", coarse_stride, None),
            ("fine", fine_stride, cfg.fine_window),
        ):
            map_a, map_b = outputs[level][i], outputs[level][b + i]
            for s_map, d_map, s_px, d_px in ((map_a, map_b, pa, pb), (map_b, map_a, pb, pa)):
                st = _level(s_map, d_map, s_px, d_px, stride, window, cfg, gen)
                acc = stats[level]
                stats[level] = LevelStats(
                    acc.loss_sum + st.loss_sum, acc.n + st.n, acc.n_correct + st.n_correct
                )
    return stats


def pairs_to_tensors(
    batch: list[dict], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collate :func:`training.pairs.make_pair` dicts -> images ``[2B, 3, H, W]`` float in [0, 1]
    (all A then all B), pts_a / pts_b ``[B, N, 2]``, valid ``[B, N]``, on ``device``."""
    imgs = [torch.from_numpy(p["image_a"]) for p in batch] + [
        torch.from_numpy(p["image_b"]) for p in batch
    ]
    images = torch.stack(imgs).to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
    pts_a = torch.stack([torch.from_numpy(p["pts_a"]) for p in batch]).to(device)
    pts_b = torch.stack([torch.from_numpy(p["pts_b"]) for p in batch]).to(device)
    valid = torch.stack([torch.from_numpy(p["valid"]) for p in batch]).to(device)
    return images, pts_a, pts_b, valid
