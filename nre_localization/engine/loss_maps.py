"""NRE loss maps: coarse dense maps, fine maps in local windows, and the bilinear NRE cost.

Definitions (../shared/docs/nre-method.md, eq. 7): for map point ``n`` with descriptor ``h_n`` and a
query map ``H`` of ``|Omega| = H*W`` cells, ``C_n = softmax(h_n . H)`` and the loss map is
``L_n(q) = min(ln|Omega'|, -log C_n(q))`` with ``|Omega'| = |Omega| + 1`` (outlier state).

The engine stores the non-negative *information* ``a_n(q) = ln|Omega'| - L_n(q) =
max(0, ln|Omega'| + log C_n(q))`` instead of ``L``: it is zero on truncated cells, so windows
and padding are simply zero, and the cost of a point is ``ln|Omega'| - a_n(p)``.

Cell coordinates follow :mod:`nre_localization.geometry.cells` (cell (0, 0) is the centre of the
first cell; ``c = (pixel + 0.5) / stride - 0.5``); ``(x, y)`` order everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nre_localization.engine.consts import cached, const
from nre_localization.engine.types import MapPoints, QueryFeatures, SolverConfig

__all__ = [
    "CoarseMaps",
    "InfoMaps",
    "argmax_cells",
    "bilinear_info",
    "build_coarse_maps",
    "build_fine_maps",
    "coarse_info_maps",
    "nre_cost",
    "window_argmax_cells",
]


@dataclass
class CoarseMaps:
    """Dense coarse correspondence maps.

    ``logp [N, Hc, Wc]`` float32 log-probabilities (one softmax over all cells); ``entropy [N]``
    (nats; ``+inf`` for dead/padding points); ``argmax [N]`` flat cell index; ``log_omega`` is
    ``ln(Hc*Wc + 1)``.
    """

    logp: torch.Tensor
    entropy: torch.Tensor
    argmax: torch.Tensor
    stride: int
    log_omega: float

    @property
    def height(self) -> int:
        return int(self.logp.shape[1])

    @property
    def width(self) -> int:
        return int(self.logp.shape[2])


@dataclass
class InfoMaps:
    """Per-point information windows ``a = ln|Omega'| - L >= 0`` (zero = truncated).

    ``data [N, h + 2 pad, w + 2 pad]`` float32, zero in the padding; window cell ``(i, j)`` of point
    ``n`` is full-map cell ``origin[n] + (j, i)``; ``origin [N, 2]`` float32 ``(x, y)``.
    ``map_height x map_width`` is the full map (cells): reprojections outside it cost exactly
    ``log_omega``. Coarse maps are one window covering the whole map (origin 0); fine maps are
    ``fine_window``-sided windows, the sparse storage of their non-truncated cells.
    """

    data: torch.Tensor
    origin: torch.Tensor
    pad: int
    map_height: int
    map_width: int
    stride: int
    log_omega: float
    dense: bool = False  # one window over the whole map at origin 0 (coarse maps)

    @property
    def window(self) -> tuple[int, int]:
        """Unpadded window size ``(h, w)`` in cells."""
        return int(self.data.shape[1]) - 2 * self.pad, int(self.data.shape[2]) - 2 * self.pad

    def nnz(self) -> int:
        """Number of non-truncated cells stored (syncs on CUDA)."""
        return int((self.data > 0).sum())

    def to_sparse(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Non-truncated cells: ``(point index [K], full-map cell (x, y) [K, 2], info [K])``."""
        n, i, j = torch.nonzero(self.data > 0, as_tuple=True)
        cells = self.origin[n] + torch.stack([j - self.pad, i - self.pad], -1).to(self.origin.dtype)
        return n, cells, self.data[n, i, j]


def _flat_hwc_scaled(fmap: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``[D, H, W]`` -> ``[H*W, D]`` contiguous in ``dtype`` (scaled as :func:`_scaled`)."""
    d = fmap.shape[0]
    x, s = _scaled(fmap.reshape(d, -1), dtype)
    return x.t().contiguous(), s


def _corr_dtype(device: torch.device, config: SolverConfig) -> torch.dtype:
    return torch.float16 if (device.type == "cuda" and config.half_correlation) else torch.float32


def _scaled(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x / s).to(dtype)`` and ``s = max|x|`` (0-d float32 tensor; 1 for float32 = no scaling).

    In fp16 every element is then <= 1 and a dot product <= D: no overflow whatever the descriptor
    norms; scores are rescaled by ``s_a s_b`` in float32.
    """
    if dtype == torch.float32:
        return x.to(dtype), torch.ones((), dtype=torch.float32, device=x.device)
    s = x.detach().abs().amax().to(torch.float32).clamp_min(1e-20)
    return (x / s).to(dtype), s


def build_coarse_maps(
    query: QueryFeatures,
    points: MapPoints,
    config: SolverConfig,
    alive: torch.Tensor | None = None,
) -> CoarseMaps:
    """Coarse dense log-probability maps, in chunks of ``config.point_chunk`` points.

    ``alive [N]`` bool marks real points (False for padding); dead points get ``entropy = inf``.
    """
    dc, hc, wc = query.coarse.shape
    dev = query.coarse.device
    dt = _corr_dtype(dev, config)
    hmap, sh = _scaled(query.coarse.reshape(dc, hc * wc), dt)
    desc, sd = _scaled(points.desc_coarse, dt)
    scale = sh * sd
    n = points.desc_coarse.shape[0]
    logp = torch.empty((n, hc * wc), dtype=torch.float32, device=dev)
    ent = torch.empty((n,), dtype=torch.float32, device=dev)
    # On the CPU smaller chunks stay in cache (fresh large buffers cost page faults there); on the
    # GPU every chunk is a few more kernels.
    chunk = config.point_chunk if dev.type != "cpu" else min(config.point_chunk, 1024)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        scores = (desc[s:e] @ hmap).float() * scale
        lp = torch.log_softmax(scores, dim=-1)
        logp[s:e] = lp
        ent[s:e] = -(lp.exp() * lp).sum(-1)
    if alive is not None:
        ent = torch.where(alive, ent, torch.full_like(ent, math.inf))
    return CoarseMaps(
        logp=logp.view(n, hc, wc),
        entropy=ent,
        argmax=logp.argmax(-1),
        stride=query.coarse_stride,
        log_omega=math.log(hc * wc + 1),
    )


def coarse_info_maps(
    coarse: CoarseMaps, pad: int, alive: torch.Tensor | None = None, onehot: bool = False
) -> InfoMaps:
    """Coarse information maps ``max(0, ln|Omega'| + log C)`` zero-padded by ``pad`` cells.

    ``onehot=True`` gives the RE baseline (eq. 11): ``ln|Omega'|`` at the argmax cell, 0 elsewhere.
    """
    n, hc, wc = coarse.logp.shape
    if onehot:
        info = torch.zeros((n, hc * wc), dtype=torch.float32, device=coarse.logp.device)
        info.scatter_(1, coarse.argmax[:, None], coarse.log_omega)
        info = info.view(n, hc, wc)
    else:
        info = (coarse.logp + coarse.log_omega).clamp_min(0.0)
    if alive is not None:
        info = info * alive[:, None, None].to(info.dtype)
    return InfoMaps(
        data=F.pad(info, (pad, pad, pad, pad)),
        origin=torch.zeros((n, 2), dtype=torch.float32, device=info.device),
        pad=pad,
        map_height=hc,
        map_width=wc,
        stride=coarse.stride,
        log_omega=coarse.log_omega,
        dense=True,
    )


def argmax_cells(coarse: CoarseMaps, refine: bool = True) -> torch.Tensor:
    """Argmax of each coarse map as continuous cell coordinates ``[N, 2]`` ``(x, y)``.

    ``refine``: probability-weighted centroid over the 3x3 neighbourhood (inside the map) for a
    sub-cell estimate.
    """
    n, hc, wc = coarse.logp.shape
    dev = coarse.logp.device
    iy = torch.div(coarse.argmax, wc, rounding_mode="floor")
    ix = coarse.argmax - iy * wc
    base = torch.stack([ix, iy], -1).to(torch.float32)
    if not refine:
        return base
    # The 3x3 neighbourhood from the map padded by one cell of probability 0 (log -inf): no bounds
    # checks. Centre in the padded map: (iy + 1) (wc + 2) + ix + 1 = argmax + 2 iy + wc + 3.
    lp = F.pad(coarse.logp, (1, 1, 1, 1), value=-math.inf).view(n, -1)
    centre = torch.add(coarse.argmax, iy, alpha=2) + (wc + 3)
    offs = [dy * (wc + 2) + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    p = torch.gather(lp, 1, centre[:, None] + const(offs, torch.int64, dev)).exp()  # [N, 9]
    # (mass, sum p dx, sum p dy) in one small GEMM.
    moments = [[1.0, float(dx), float(dy)] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    m = p @ const(moments, torch.float32, dev)
    return base + m[:, 1:] / m[:, :1].clamp_min(1e-30)


def _window_origin(centres: torch.Tensor, window: int) -> torch.Tensor:
    """Integer-valued window origins ``[N, 2]`` so that the window is centred on ``centres``."""
    return torch.floor(centres - (window - 1) / 2.0 + 0.5)


def _coarse_log_mass(
    coarse: CoarseMaps, origin: torch.Tensor, window: int, fine_stride: int
) -> torch.Tensor:
    """``log`` of the coarse probability mass over each fine window ``[N]``.

    The window covers pixels ``[o s_f - .5, (o + w) s_f - .5)`` per axis; each coarse cell's mass is
    spread uniformly over its ``s_c x s_c`` pixel block, so the mass is
    ``sum_ij P(i, j) f_y(i) f_x(j)`` with ``f`` the covered fraction of the cell's extent.
    """
    n, hc, wc = coarse.logp.shape
    sc, sf = float(coarse.stride), float(fine_stride)
    k = math.ceil(window * sf / sc) + 1
    lo = origin * sf - 0.5  # [N, 2] pixel edges
    hi = (origin + window) * sf - 0.5
    j0 = torch.floor(origin * sf / sc)  # coarse cell holding the window's first pixel edge
    ks = torch.arange(k, device=origin.device, dtype=origin.dtype)
    j = j0[:, :, None] + ks  # [N, 2, K]
    cell_lo = j * sc - 0.5
    frac = torch.minimum(hi[:, :, None], cell_lo + sc) - torch.maximum(lo[:, :, None], cell_lo)
    frac = (frac / sc).clamp_min(0.0)
    inb = torch.stack([(j[:, 0] >= 0) & (j[:, 0] < wc), (j[:, 1] >= 0) & (j[:, 1] < hc)], 1)
    frac = frac * inb
    jl = j.clamp_min(0).long()
    jx, jy = jl[:, 0].clamp_max(wc - 1), jl[:, 1].clamp_max(hc - 1)
    flat = (jy[:, :, None] * wc + jx[:, None, :]).view(n, k * k)
    p = torch.gather(coarse.logp.view(n, -1), 1, flat).exp().view(n, k, k)
    mass = (p * frac[:, 1, :, None] * frac[:, 0, None, :]).sum((1, 2))
    return torch.log(mass.clamp(1e-30, 1.0))


def _window_scores_gather(
    table: torch.Tensor,
    desc: torch.Tensor,
    origin: torch.Tensor,
    w: int,
    hf: int,
    wf: int,
    chunk: int,
) -> torch.Tensor:
    """Scores ``[n, w, w]`` (``table``'s dtype) by gathering each window's descriptors (GPU
    path; at most ``chunk`` points' gathered descriptors at a time)."""
    n, df = desc.shape
    ar = torch.arange(w, device=desc.device)
    # Flat table rows of every window cell, all points at once (few kernels: not per chunk).
    xs = (origin[:, 0, None] + ar).clamp(0, wf - 1)
    ys = (origin[:, 1, None] + ar).clamp(0, hf - 1)
    flat = (ys[:, :, None] * wf + xs[:, None, :]).view(n, w * w)
    outs = []
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        d = table.index_select(0, flat[s:e].reshape(-1)).view(e - s, w * w, df)
        outs.append(torch.bmm(d, desc[s:e, :, None]))
        del d
    # Scores in the table's dtype (the caller converts them once).
    return (outs[0] if len(outs) == 1 else torch.cat(outs)).view(n, w, w)


# Largest dense fine-correlation map ``[N, Hf*Wf]`` (elements) built by :func:`_window_scores_dense`
# (fp16: 192 MB); beyond it the windows are gathered (:func:`_window_scores_gather`). At 640x480
# (fine 320x240) this is up to 1250 points: the tracking path's usual point counts.
_DENSE_MAX_ELEMENTS = 96 * 2**20


def _window_scores_dense(
    fine: torch.Tensor, desc: torch.Tensor, origin: torch.Tensor, w: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``[n, w, w]`` (float32, before the scale) and the scale: one GEMM of every point
    against the whole fine map, then each window read out of it. On the GPU this is one
    tensor-core GEMM (~20 GFLOP at N = 1024, 640x480) instead of gathering ``N w^2`` descriptor
    rows (~76 MB at fp16) and a batched matrix-vector product: less memory traffic, no transpose
    of the feature map."""
    df, hf, wf = fine.shape
    n = desc.shape[0]
    fmap, sf = _scaled(fine.reshape(df, hf * wf), dtype)
    d, sd = _scaled(desc, dtype)
    full = d @ fmap  # [n, Hf*Wf]
    ar = torch.arange(w, device=desc.device)
    xs = (origin[:, 0, None] + ar).clamp(0, wf - 1)
    ys = (origin[:, 1, None] + ar).clamp(0, hf - 1)
    flat = (ys[:, :, None] * wf + xs[:, None, :]).view(n, w * w)
    return full.gather(1, flat).view(n, w, w).float(), sf * sd


def _window_scores_tiled(
    fmap: torch.Tensor, desc: torch.Tensor, origin: torch.Tensor, w: int, tile: int = 24
) -> torch.Tensor:
    """Scores ``[n, w, w]`` by one GEMM per map tile (CPU path: no per-point window copies).

    ``fmap [Df, Hf, Wf]`` as given (no full-map transpose). Points are grouped by the tile holding
    their window origin; each group multiplies its descriptors with the ``(tile + w - 1)^2`` cells
    its windows can touch, then gathers.
    """
    n, df = desc.shape
    _, hf, wf = fmap.shape
    ar = torch.arange(w)
    out = torch.empty((n, w, w), dtype=torch.float32)
    ntx = (wf + tile - 1) // tile
    oc = torch.stack([origin[:, 0].clamp(0, wf - 1), origin[:, 1].clamp(0, hf - 1)], -1)
    tid = torch.div(oc[:, 1], tile, rounding_mode="floor") * ntx + torch.div(
        oc[:, 0], tile, rounding_mode="floor"
    )
    order = torch.argsort(tid)
    tids, counts = torch.unique_consecutive(tid[order], return_counts=True)
    s = 0
    for t_, c in zip(tids.tolist(), counts.tolist(), strict=True):
        idx = order[s : s + c]
        s += c
        ty, tx = divmod(t_, ntx)
        y0, x0 = ty * tile, tx * tile
        y1, x1 = min(hf, y0 + tile + w - 1), min(wf, x0 + tile + w - 1)
        sub = fmap[:, y0:y1, x0:x1].reshape(df, -1)
        scores = desc[idx] @ sub  # [c, rh * rw]
        rw = x1 - x0
        yy = (origin[idx, 1, None] + ar - y0).clamp(0, y1 - y0 - 1)
        xx = (origin[idx, 0, None] + ar - x0).clamp(0, rw - 1)
        out[idx] = scores.gather(1, (yy[:, :, None] * rw + xx[:, None, :]).view(c, -1)).view(
            c, w, w
        )
    return out


def build_fine_maps(
    query: QueryFeatures,
    points: MapPoints,
    coarse: CoarseMaps | None,
    centres: torch.Tensor,
    valid: torch.Tensor,
    pad: int,
    config: SolverConfig,
    alive: torch.Tensor | None = None,
    onehot: bool = False,
    compact: bool | None = None,
) -> InfoMaps:
    """Fine information windows around ``centres [N, 2]`` (fine-cell coordinates).

    Inside the ``w x w`` window (``w = config.fine_window``) the fine scores ``h_n . H_f`` get a
    local softmax, scaled by the coarse probability mass ``M_n`` of the window (coarse-mass
    renormalisation), and are truncated at ``ln|Omega'_fine| = ln(Hf*Wf + 1)``:
    ``a = max(0, ln|Omega'_f| + log M_n + log_softmax_window)``. Cells outside the window are
    truncated (``a = 0``). Points with ``valid = False`` get an all-zero window, and so do points
    whose window is wholly truncated (``M_n <= 1/|Omega'_f|``), which the CPU path skips.
    ``onehot=True`` (RE baseline): ``ln|Omega'_f|`` at the window's argmax, 0 elsewhere (needs no
    coarse maps). ``compact`` (default: on the CPU) computes only the needed windows, by tiled
    GEMMs; otherwise (fixed shapes, no host sync: the GPU path) every window is read out of a
    dense correlation map up to ``_DENSE_MAX_ELEMENTS``, and gathered beyond.
    """
    df, hf, wf = query.fine.shape
    dev = query.fine.device
    w = config.fine_window
    n = points.desc_fine.shape[0]
    log_omega = math.log(hf * wf + 1)
    dt = _corr_dtype(dev, config)
    origin = _window_origin(centres.to(torch.float32), w)
    origin = torch.where(valid[:, None], origin, -1e6)
    if onehot or coarse is None:
        log_mass = torch.zeros((n,), dtype=torch.float32, device=dev)
    else:
        log_mass = _coarse_log_mass(coarse, origin, w, query.fine_stride)
    need = valid & (log_mass + log_omega > 0)
    if alive is not None:
        need = need & alive
    data = torch.zeros((n, w + 2 * pad, w + 2 * pad), dtype=torch.float32, device=dev)
    if compact is None:
        compact = dev.type == "cpu"
    if compact:
        sel = torch.nonzero(need)[:, 0]
        if sel.numel() == 0:
            return InfoMaps(data, origin, pad, hf, wf, query.fine_stride, log_omega)
        o = origin[sel].long()
        scores = _window_scores_tiled(query.fine.float(), points.desc_fine[sel].float(), o, w)
    else:
        sel = None
        o = origin.long()
        if n * hf * wf <= _DENSE_MAX_ELEMENTS:
            raw, scale = _window_scores_dense(query.fine, points.desc_fine, o, w, dt)
            scores = raw * scale
        else:
            table, st = _flat_hwc_scaled(query.fine, dt)
            desc, sd = _scaled(points.desc_fine, dt)
            # Bounded memory: at most ~2^24 gathered descriptor elements per chunk.
            chunk = max(1, min(config.point_chunk, (1 << 24) // (w * w * df)))
            # float32 from here (a 0-d float32 factor would not promote fp16 scores).
            scores = _window_scores_gather(table, desc, o, w, hf, wf, chunk).float() * (st * sd)
    ar = torch.arange(w, device=dev)
    xs, ys = o[:, 0, None] + ar, o[:, 1, None] + ar
    ok = ((ys >= 0) & (ys < hf))[:, :, None] & ((xs >= 0) & (xs < wf))[:, None, :]
    scores = torch.where(ok, scores, -math.inf)
    m = scores.shape[0]
    if onehot:
        am = scores.view(m, -1).argmax(-1)
        info = torch.zeros((m, w * w), dtype=torch.float32, device=dev)
        info.scatter_(1, am[:, None], log_omega)
        info = info.view(m, w, w) * ok
    else:
        lsm = torch.log_softmax(scores.view(m, -1), dim=-1).view(m, w, w)
        lm = log_mass if sel is None else log_mass[sel]
        info = (lsm + lm[:, None, None] + log_omega).clamp_min(0.0)
        info = torch.where(ok, info, 0.0)
    if sel is None:
        data[:, pad : pad + w, pad : pad + w] = info * need[:, None, None]
    else:
        data[sel, pad : pad + w, pad : pad + w] = info
    return InfoMaps(
        data=data,
        origin=origin,
        pad=pad,
        map_height=hf,
        map_width=wf,
        stride=query.fine_stride,
        log_omega=log_omega,
    )


def window_argmax_cells(maps: InfoMaps) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-map cell ``[N, 2]`` of each window's largest information, and ``has [N]`` (any > 0)."""
    n = maps.data.shape[0]
    h, w = maps.window
    inner = maps.data[:, maps.pad : maps.pad + h, maps.pad : maps.pad + w].reshape(n, -1)
    best, am = inner.max(-1)
    iy = torch.div(am, w, rounding_mode="floor")
    ix = am - iy * w
    return maps.origin + torch.stack([ix, iy], -1).to(maps.origin.dtype), best > 0


def bilinear_info(
    maps: InfoMaps, cells: torch.Tensor, valid: torch.Tensor, index: torch.Tensor | None = None
) -> torch.Tensor:
    """Bilinearly interpolated information at full-map cells ``[..., N, 2]`` -> ``[..., N]``.

    Zero (i.e. cost ``ln|Omega'|`` exactly) for invalid projections (behind the camera, ...), for
    cells outside the full map (beyond the first/last cell centres) and for cells outside the
    point's zero-padded window. ``index [N]`` (optional) says which maps the ``N`` points use
    (default: all maps, in order).
    """
    hp, wp = int(maps.data.shape[1]), int(maps.data.shape[2])
    dev, dt = cells.device, cells.dtype
    # Temporaries are dropped as soon as they are used (``del``): MSAC scores thousands of poses
    # at once, and each [..., N, 4] int64 temporary is then tens of MB of peak memory.
    if maps.dense:
        # One window over the whole map at origin 0: inside the map (between the first and last
        # cell centres) is inside the window.
        hi = const([maps.map_width - 1.0, maps.map_height - 1.0], dt, dev)
        inside = valid & ((cells >= 0) & (cells <= hi)).all(-1)
        lxy = torch.where(inside[..., None], cells + maps.pad, const(0.0, dt, dev))
    else:
        origin = maps.origin if index is None else maps.origin[index]
        # Padded-window coordinates; a reprojection outside its own (zero-padded) window is
        # truncated (fine windows are local: without this it would read a neighbouring window's
        # cells). Masked points read cell (0, 0) of the padding (zero) and are masked anyway.
        w = cells - origin + maps.pad  # [..., N, 2]
        # Inside the full map (between the first and last cell centres) and inside the window,
        # one comparison pass over (cx, cy, wx, wy).
        hi = const(
            [maps.map_width - 1.0, maps.map_height - 1.0, wp - 2.0, hp - 2.0], dt, dev
        )  # exact integers
        cw = torch.cat([cells, w], -1)
        inside = valid & ((cw >= 0) & (cw <= hi)).all(-1)
        del cw
        lxy = torch.where(inside[..., None], w, const(0.0, dt, dev))
        del w
    l0 = torch.floor(lxy)
    frac = lxy - l0
    del lxy
    il = l0.long()
    del l0
    base = il[..., 1] * wp + il[..., 0]
    del il
    if index is None:  # each map's first flat index: a cached constant (no kernels)
        nm = int(maps.data.shape[0])
        base = base + cached(
            ("map_base", nm, hp * wp), dev, lambda: torch.arange(nm, device=dev) * (hp * wp)
        )
    else:
        base = base + index * (hp * wp)
    # The four corners in one gather: (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1).
    corners = base[..., None] + const([0, 1, wp, wp + 1], torch.int64, dev)
    del base
    v = torch.take(maps.data.view(-1), corners)  # [..., N, 4]
    del corners
    v0, v1 = v[..., 0::2], v[..., 1::2]  # x0 / x0 + 1 columns of rows (y0, y0 + 1)
    tb = v0 + frac[..., :1] * (v1 - v0)  # (top, bottom)
    del v, v0, v1
    top, bot = tb[..., 0], tb[..., 1]
    return (top + frac[..., 1] * (bot - top)) * inside


def nre_cost(
    maps: InfoMaps, cells: torch.Tensor, valid: torch.Tensor, index: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-point NRE ``[..., N]`` at full-map cells ``[..., N, 2]``: ``ln|Omega'| - a(p)``."""
    return maps.log_omega - bilinear_info(maps, cells, valid, index)
