"""Planted-map scenes: synthetic descriptor maps whose loss maps peak where we choose.

Used by the tests and the benchmark so that they run the real loss-map code. Construction:

- query descriptor maps (coarse and fine): an independent random unit vector per cell;
- a point's descriptor at one level is solved (ridge least squares) so that its scores on the cells
  near each mode centre ``mu_m`` (cell coordinates, sub-cell) are ``beta_m - |q - mu_m|^2 /
  (2 std^2)`` (down to ``beta_m - 6``): the top of the correspondence map is a Gaussian of standard
  deviation ``std`` cells, i.e. the loss map is locally quadratic with a known curvature. Other cells
  get random scores (a background);
- inliers: one mode at the true reprojection plus Gaussian pixel noise ``noise_px``; outliers: one
  mode at a random pixel; bimodal points: a second mode ``bimodal_distance_px`` away, stronger than
  the true one by ``bimodal_ratio`` (so the argmax picks the wrong mode).

Everything is generated on the CPU from ``seed`` (bit-identical inputs for CPU and CUDA runs) and
moved to ``device``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nre_localization.engine.types import MapPoints, QueryFeatures
from nre_localization.geometry import se3
from nre_localization.geometry.cameras import Camera
from nre_localization.geometry.cells import pixel_to_cell

__all__ = ["PlantedScene", "make_planted_scene", "random_pose"]


@dataclass
class PlantedScene:
    """A planted scene: inputs of :func:`nre_localization.engine.solver.solve` and the truth.

    ``true_pixels [N, 2]`` reprojections under ``T_cam_world``; ``peak_pixels [N, 2]`` where the
    (strongest) planted mode sits; ``inlier [N]`` bool (peak at the truth + noise);
    ``wrong_mode [N]`` bool (bimodal point whose argmax is not the truth).
    """

    query: QueryFeatures
    points: MapPoints
    camera: Camera
    T_cam_world: torch.Tensor
    true_pixels: torch.Tensor
    peak_pixels: torch.Tensor
    inlier: torch.Tensor
    wrong_mode: torch.Tensor


def random_pose(
    gen: torch.Generator, max_angle: float = math.pi, centre_box: float = 5.0
) -> torch.Tensor:
    """A random world->camera pose ``[4, 4]`` float64 (rotation angle up to ``max_angle``)."""
    axis = torch.randn(3, generator=gen, dtype=torch.float64)
    axis = axis / axis.norm()
    angle = torch.rand((), generator=gen, dtype=torch.float64) * max_angle
    r_wc = se3.so3_exp(axis * angle)
    c = (torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1) * centre_box
    T_wc = se3.make_pose(r_wc, c)
    return se3.se3_inverse(T_wc)


def _unit_map(gen: torch.Generator, d: int, h: int, w: int) -> torch.Tensor:
    m = torch.randn((d, h, w), generator=gen)
    return m / m.norm(dim=0, keepdim=True)


def _plant(
    fmap: torch.Tensor,
    centres: list[torch.Tensor],
    betas: list[torch.Tensor],
    std: float,
    depth: float = 6.0,
) -> torch.Tensor:
    """Descriptors ``[N, D]`` whose scores near each mode are a quadratic bump.

    Target score at cell ``q`` near mode ``mu`` (peak ``beta``): ``beta - |q - mu|^2 / (2 std^2)``,
    i.e. a Gaussian correspondence distribution of standard deviation ``std`` cells, on the cells
    where it is within ``depth`` of the peak (``e^-depth`` of the peak probability: the rest of the
    mass is negligible). The descriptor is the ridge least-squares solution
    ``h = H_K (H_K^T H_K + eps I)^-1 c`` over those cells ``K`` (exact when ``|K| << D``); other cells
    get random scores with standard deviation about ``|h| / sqrt(D)``.
    """
    d, h, w = fmap.shape
    r = math.ceil(std * math.sqrt(2.0 * depth))
    off = torch.arange(-r, r + 1, dtype=torch.float64)
    table = fmap.reshape(d, -1).t().to(torch.float64)
    n = centres[0].shape[0]
    idx_all, tgt_all, ok_all = [], [], []
    for mu, beta in zip(centres, betas, strict=True):
        mu = mu.to(torch.float64)
        base = torch.round(mu)
        qx = base[:, 0, None] + off
        qy = base[:, 1, None] + off
        d2 = (qy[:, :, None] - mu[:, 1, None, None]) ** 2 + (
            qx[:, None, :] - mu[:, 0, None, None]
        ) ** 2
        drop = d2 / (2 * std**2)
        tgt = beta.to(torch.float64)[:, None, None] - drop
        ok = ((qy >= 0) & (qy < h))[:, :, None] & ((qx >= 0) & (qx < w))[:, None, :]
        ok = ok & (beta[:, None, None] > 0) & (drop <= depth)
        flat = (qy.clamp(0, h - 1)[:, :, None] * w + qx.clamp(0, w - 1)[:, None, :]).long()
        idx_all.append(flat.view(n, -1))
        tgt_all.append(tgt.view(n, -1))
        ok_all.append(ok.view(n, -1))
    idx = torch.cat(idx_all, 1)
    tgt = torch.cat(tgt_all, 1)
    ok = torch.cat(ok_all, 1).to(torch.float64)
    hk = table[idx] * ok[:, :, None]  # [N, K, D]
    gram = hk @ hk.transpose(1, 2) + 1e-6 * torch.eye(idx.shape[1], dtype=torch.float64)
    coef = torch.linalg.solve(gram, (tgt * ok)[:, :, None])  # [N, K, 1]
    return (hk.transpose(1, 2) @ coef)[..., 0].to(torch.float32)


def make_planted_scene(
    camera: Camera,
    n_points: int,
    *,
    coarse_stride: int = 16,
    fine_stride: int = 2,
    dim_coarse: int = 128,
    dim_fine: int = 256,
    outlier_fraction: float = 0.5,
    noise_px: float = 0.3,
    beta_coarse: float = 12.0,
    beta_fine: float = 16.0,
    std_coarse: float = 0.5,
    std_fine: float = 0.5,
    bimodal_fraction: float = 0.0,
    bimodal_distance_px: tuple[float, float] = (8.0, 14.0),
    bimodal_ratio: float = 1.3,
    depth_range: tuple[float, float] = (2.0, 8.0),
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> PlantedScene:
    """Build a planted scene for ``camera`` (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    T = random_pose(gen)
    wimg, himg = camera.width, camera.height
    margin = 2.0
    u = torch.rand((n_points, 2), generator=gen, dtype=torch.float64)
    pix = torch.stack(
        [margin + u[:, 0] * (wimg - 1 - 2 * margin), margin + u[:, 1] * (himg - 1 - 2 * margin)], -1
    )
    depth = depth_range[0] + torch.rand(n_points, generator=gen, dtype=torch.float64) * (
        depth_range[1] - depth_range[0]
    )
    X_cam = camera.unproject(pix) * depth[:, None]
    T_wc = se3.se3_inverse(T)
    xyz = X_cam @ T_wc[:3, :3].T + T_wc[:3, 3]
    true_pix, _ = camera.project_world(xyz, T)

    n_out = int(round(outlier_fraction * n_points))
    perm = torch.randperm(n_points, generator=gen)
    inlier = torch.ones(n_points, dtype=torch.bool)
    inlier[perm[:n_out]] = False
    noise = torch.randn((n_points, 2), generator=gen, dtype=torch.float64) * noise_px
    rnd = torch.rand((n_points, 2), generator=gen, dtype=torch.float64)
    rnd_pix = torch.stack([rnd[:, 0] * (wimg - 1), rnd[:, 1] * (himg - 1)], -1)
    peak = torch.where(inlier[:, None], true_pix + noise, rnd_pix)

    # Bimodal: among inliers, a second (stronger) mode near the truth.
    n_bi = int(round(bimodal_fraction * n_points))
    wrong = torch.zeros(n_points, dtype=torch.bool)
    inl_idx = torch.nonzero(inlier)[:, 0]
    if n_bi > 0:
        sel = inl_idx[torch.randperm(inl_idx.numel(), generator=gen)[:n_bi]]
        wrong[sel] = True
    ang = torch.rand(n_points, generator=gen, dtype=torch.float64) * 2 * math.pi
    dist = bimodal_distance_px[0] + torch.rand(n_points, generator=gen, dtype=torch.float64) * (
        bimodal_distance_px[1] - bimodal_distance_px[0]
    )
    second = peak + torch.stack([torch.cos(ang), torch.sin(ang)], -1) * dist[:, None]

    hc, wc = math.ceil(himg / coarse_stride), math.ceil(wimg / coarse_stride)
    hf, wf = math.ceil(himg / fine_stride), math.ceil(wimg / fine_stride)
    coarse = _unit_map(gen, dim_coarse, hc, wc)
    fine = _unit_map(gen, dim_fine, hf, wf)
    descs = []
    for fmap, stride, beta, width in (
        (coarse, coarse_stride, beta_coarse, std_coarse),
        (fine, fine_stride, beta_fine, std_fine),
    ):
        mu1 = pixel_to_cell(peak, stride).float()
        b1 = torch.full((n_points,), beta, dtype=torch.float32)
        if n_bi > 0:
            mu2 = pixel_to_cell(second, stride).float()
            b2 = torch.where(wrong, torch.full_like(b1, beta * bimodal_ratio), torch.zeros_like(b1))
            descs.append(_plant(fmap, [mu1, mu2], [b1, b2], width))
        else:
            descs.append(_plant(fmap, [mu1], [b1], width))
    strongest = torch.where(wrong[:, None], second, peak)
    dev = torch.device(device)
    return PlantedScene(
        query=QueryFeatures(coarse.to(dev), fine.to(dev), coarse_stride, fine_stride),
        points=MapPoints(xyz.float().to(dev), descs[0].to(dev), descs[1].to(dev)),
        camera=camera,
        T_cam_world=T,
        true_pixels=true_pix,
        peak_pixels=strongest,
        inlier=inlier,
        wrong_mode=wrong,
    )
