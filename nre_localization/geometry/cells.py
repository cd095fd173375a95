"""Pixel <-> feature-cell conventions and bilinear sampling (the single place they are defined).

Pixels follow OpenCV: the centre of the top-left pixel is (0, 0); x to the right, y down.
A descriptor map of stride ``s`` has cell (row i, col j) centred on pixel
``((j + 0.5) * s - 0.5, (i + 0.5) * s - 0.5)``; so pixel -> cell is ``c = (p + 0.5) / s - 0.5``.
Cell coordinates are continuous: (0, 0) is the centre of the first cell.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_to_cell(pixels: torch.Tensor, stride: float) -> torch.Tensor:
    """Pixels ``[..., 2]`` (x, y) -> continuous cell coordinates ``[..., 2]`` at ``stride``."""
    return (pixels + 0.5) / stride - 0.5


def cell_to_pixel(cells: torch.Tensor, stride: float) -> torch.Tensor:
    """Continuous cell coordinates ``[..., 2]`` (x, y) -> pixels ``[..., 2]``."""
    return (cells + 0.5) * stride - 0.5


def bilinear_sample(feature_map: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Sample ``feature_map [D, H, W]`` at continuous cells ``[N, 2]`` (x, y) -> ``[N, D]``.

    Cell (0, 0) is the centre of ``feature_map[:, 0, 0]``. Samples outside the map use border
    values; callers that care must mask them with :func:`cells_inside`.
    """
    d, h, w = feature_map.shape
    # grid_sample with align_corners=True maps -1 -> centre of cell 0, +1 -> centre of cell W-1.
    gx = cells[:, 0] / max(w - 1, 1) * 2.0 - 1.0
    gy = cells[:, 1] / max(h - 1, 1) * 2.0 - 1.0
    grid = torch.stack([gx, gy], dim=-1).to(feature_map.dtype).view(1, 1, -1, 2)
    out = F.grid_sample(
        feature_map.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    return out.view(d, -1).transpose(0, 1)


def cells_inside(cells: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boolean ``[N]``: cell coordinates ``[N, 2]`` that lie within the map's cell centres."""
    x, y = cells[..., 0], cells[..., 1]
    return (x >= 0) & (y >= 0) & (x <= width - 1) & (y <= height - 1)
