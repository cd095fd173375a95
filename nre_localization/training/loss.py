"""NRE training loss (paper eq. 10) and the argmax validation metric.

For a point with descriptor ``h`` (sampled in the source image) and ground-truth continuous cell
``x`` in the target map ``H`` (``[D, Hm, Wm]``), the correspondence map is
``C = softmax(h . H)`` over the map (or a window of it) and the loss is the soft-target
cross-entropy ``-sum_corners w_c(x) log C(c)`` with the four bilinear weights of ``x``.
Logits are formed in the input dtype (bf16 under autocast) and soft-maxed in float32 with
``log_softmax``. Points are processed in chunks to bound the ``N x Hm x Wm`` logits.

Cells follow geometry/cells.py: continuous cell (0, 0) is the centre of ``H[:, 0, 0]``.
Points whose target cell is not inside the map's cell centres are excluded (callers also exclude
occluded / out-of-view points with ``valid``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LevelStats:
    """Sums over points (divide by ``n`` for means)."""

    loss_sum: torch.Tensor  # scalar, differentiable
    n: int  # points used
    n_correct: int  # argmax within 1 cell (Euclidean) of the truth

    @property
    def loss(self) -> torch.Tensor:
        return self.loss_sum / max(self.n, 1)


def corners(cells: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous cells ``[N, 2]`` (inside the map) -> flat indices ``[N, 4]``, weights ``[N, 4]``."""
    x, y = cells[:, 0], cells[:, 1]
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0l, y0l = x0.long(), y0.long()
    # x1 may equal width when x == width - 1 exactly; its weight is then 0, clamp the index.
    idx = torch.stack(
        [
            y0l * width + x0l,
            y0l * width + (x0l + 1).clamp(max=width - 1),
            (y0l + 1) * width + x0l,
            (y0l + 1) * width + (x0l + 1).clamp(max=width - 1),
        ],
        dim=1,
    )
    wts = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=1)
    return idx, wts


def dense_nre_loss(
    desc: torch.Tensor, target_map: torch.Tensor, cells: torch.Tensor, chunk: int = 1024
) -> LevelStats:
    """Eq. 10 over the whole target map.

    desc ``[N, D]`` source descriptors; target_map ``[D, Hm, Wm]``; cells ``[N, 2]`` (x, y)
    continuous ground-truth cells in the target map, all inside ``[0, Wm-1] x [0, Hm-1]``.
    """
    d, hm, wm = target_map.shape
    flat = target_map.reshape(d, hm * wm)
    total = desc.new_zeros((), dtype=torch.float32)
    correct = 0
    for s in range(0, desc.shape[0], chunk):
        c = cells[s : s + chunk]
        logp = F.log_softmax((desc[s : s + chunk] @ flat).float(), dim=1)  # [n, Hm*Wm]
        idx, wts = corners(c.float(), wm)
        total = total - (logp.gather(1, idx.clamp(max=hm * wm - 1)) * wts).sum()
        with torch.no_grad():
            am = logp.argmax(dim=1)
            pred = torch.stack([am % wm, am // wm], dim=1).float()
            correct += int(((pred - c).norm(dim=1) <= 1.0).sum())
    return LevelStats(total, int(desc.shape[0]), correct)


def window_origins(
    cells: torch.Tensor, size: int, height: int, width: int, max_offset: int, gen: torch.Generator
) -> torch.Tensor:
    """Top-left cell ``[N, 2]`` (x, y, long) of ``size x size`` windows that contain each truth cell,
    displaced from centred by a uniform integer offset in ``[-max_offset, max_offset]``, clamped
    inside the map (requires ``size <= height, width`` and ``max_offset < size / 2 - 1``)."""
    off = torch.randint(-max_offset, max_offset + 1, cells.shape, generator=gen).to(cells.device)
    o = cells.round().long() - size // 2 + off
    ox = o[:, 0].clamp(0, width - size)
    oy = o[:, 1].clamp(0, height - size)
    return torch.stack([ox, oy], dim=1)


def window_nre_loss(
    desc: torch.Tensor,
    target_map: torch.Tensor,
    cells: torch.Tensor,
    origins: torch.Tensor,
    size: int,
    chunk: int = 512,
) -> LevelStats:
    """Eq. 10 with the softmax restricted to a ``size x size`` window per point (fine level).

    desc ``[N, D]``; target_map ``[D, Hm, Wm]``; cells ``[N, 2]`` truth cells (inside the window of
    each point, see :func:`window_origins`); origins ``[N, 2]`` window top-left cells.
    """
    d, hm, wm = target_map.shape
    flat = target_map.reshape(d, hm * wm)
    r = torch.arange(size, device=desc.device)
    total = desc.new_zeros((), dtype=torch.float32)
    correct = 0
    for s in range(0, desc.shape[0], chunk):
        o = origins[s : s + chunk]
        gy = (o[:, 1, None] + r[None]).unsqueeze(2)  # [n, size, 1]
        gx = (o[:, 0, None] + r[None]).unsqueeze(1)  # [n, 1, size]
        idx = (gy * wm + gx).reshape(o.shape[0], size * size)  # [n, size*size]
        # Full correlation by one matmul, then pick each point's window: much cheaper (forward and
        # backward) than gathering [n, size*size, D] descriptor windows.
        logits = (desc[s : s + chunk] @ flat).gather(1, idx).float()
        logp = F.log_softmax(logits, dim=1)
        local = cells[s : s + chunk].float() - o.float()
        cidx, wts = corners(local, size)
        total = total - (logp.gather(1, cidx.clamp(max=size * size - 1)) * wts).sum()
        with torch.no_grad():
            am = logp.argmax(dim=1)
            pred = torch.stack([am % size, am // size], dim=1).float()
            correct += int(((pred - local).norm(dim=1) <= 1.0).sum())
    return LevelStats(total, int(desc.shape[0]), correct)
