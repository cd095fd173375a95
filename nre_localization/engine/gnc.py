"""GNC-IRLS pose refinement on information maps (eq. 9): a fixed schedule of fused iterations.

Smoothed cost at scale ``sigma`` (cells):
``E_sigma(T) = - sum_n sum_q a_n(q) k(q - p_n(T))`` with the *normalised* Gaussian
``k(d) = exp(-|d|^2 / 2 sigma^2) / (2 pi sigma^2)`` and ``a = ln|Omega'| - L >= 0`` (information).
Because ``-k`` is concave in ``|d|^2``, its tangent majorises it (majorise-minimise): each
iteration solves the weighted least squares
``(sum_n W_n J_n^T J_n + lambda D) xi = sum_n J_n^T r_n`` with ``W_n = sum_q a k / sigma^2`` and
``r_n = sum_q (a k / sigma^2) (q - p_n)``, ``J_n`` the ``2x6`` cell Jacobian of the reprojection for
a left perturbation ``T <- exp(xi) T`` (float64 normal equations, Levenberg-Marquardt damping
``D = diag``). The step is applied with the Cayley retraction (a rotation that agrees with
``exp(xi)`` to first order), and kept when it lowers ``E_sigma``; ``lambda`` halves on success and
doubles on failure.

Graduated non-convexity on a *static* schedule (known in Python, so a CUDA graph can hold the whole
loop and every sigma is a baked constant): slot 0 evaluates the start pose at ``sigma_0``; then each
level runs ``level_iterations`` steps. A level whose relative decrease falls below ``tol`` is
*converged*: its remaining steps are masked (nothing changes; no early exit on the GPU, the CPU
skips them). The last step of a level evaluates the candidate at ``sigma_l`` and both the candidate
and the current pose at ``sigma_{l+1}`` in one batched evaluation, so the next level starts with
its cost at its own sigma (never compared across scales) without a separate refresh iteration.
``iterations`` caps the number of slots.

One evaluation is a few dozen kernels whatever ``N``: the projection and its Jacobian come from one
GEMM on the monomials of ``(x, y, 1, 1/z)`` (PINHOLE), the ``K x K`` window sums from two batched
GEMMs on separable Gaussian factors, and ``A``, ``b`` and the cost from one float64 GEMM.

The window of cells read around each reprojection has radius ``ceil(2.5 sigma_max)``; maps are
zero-padded (``pad >= 2 radius + 1``) so no bounds checks are needed.

Each slot (:func:`_slot`) and each Newton step (:func:`_newton_step`) is a unit that
``torch.compile`` can take whole (``compile_step``). While it traces (:func:`fusing`), the
evaluation, the 6x6 solve, the retraction and the PSD projection switch to formulations made of
elementwise products and short reductions (no small GEMMs, no cuSOLVER call), which Inductor fuses
into a dozen or so kernels per slot instead of ~50 eager ones; results agree to float rounding. The
sums over all points stay GEMMs (a reduction to a few dozen outputs fused with its producers runs
on too few thread blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nre_localization.engine.consts import const
from nre_localization.engine.loss_maps import InfoMaps
from nre_localization.geometry.cameras import Camera

__all__ = [
    "GncProblem",
    "fusing",
    "GncState",
    "evaluate",
    "gnc_iterate",
    "gnc_radius",
    "gnc_schedule",
    "gnc_start",
    "newton_polish",
]

_FAR = -1.0e6  # window coordinate given to invalid reprojections (lands in the zero padding)
_Z_MIN = 1e-6  # metres: points closer to the camera plane are invalid (as geometry.cameras)
_F32, _F64 = torch.float32, torch.float64


def fusing() -> bool:
    """Whether to use the Inductor-friendly formulations (elementwise products and reductions
    instead of small GEMMs and library solves): True while ``torch.compile`` traces. A function of
    its own so that tests can run those formulations eagerly (capture check, same results)."""
    return torch.compiler.is_compiling()


def gnc_radius(sigmas: tuple[float, ...]) -> int:
    """Half-size (cells) of the window read around each reprojection."""
    return max(1, math.ceil(2.5 * max(sigmas)))


def gnc_schedule(n_levels: int, level_iterations: int) -> list[tuple[str, int]]:
    """The full slot schedule ``[(kind, level)]``: ``("init", 0)``, then ``level_iterations``
    slots per level, the last of each level but the final one of kind ``"end"``."""
    slots = [("init", 0)]
    for lvl in range(n_levels):
        for i in range(level_iterations):
            last = i == level_iterations - 1 and lvl < n_levels - 1
            slots.append(("end" if last else "step", lvl))
    return slots


@dataclass
class GncProblem:
    """Static inputs: ``xyz [N, 3]`` float32 world points, information maps, the *cell* camera
    (:meth:`Camera.cell_camera` at the maps' stride: it projects to cell coordinates), the sigma
    schedule (cells; a tuple, or a CPU tensor read once here) and the window radius.

    ``floor`` (nats, >= 0): the optimised information is ``max(0, a - floor)``, i.e. the maps
    truncated at ``ln|Omega'| - floor`` instead of ``ln|Omega'|`` (``SolverConfig.fine_truncation``:
    the fine level truncates at its window's size); costs and curvatures reported by the
    finalisation read the maps with ``floor = 0``."""

    xyz: torch.Tensor
    maps: InfoMaps
    camera: Camera
    sigmas: tuple[float, ...] | torch.Tensor
    radius: int
    floor: float = 0.0
    levels: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.maps.pad < 2 * self.radius + 1:
            raise ValueError("information maps need pad >= 2 * radius + 1")
        s = self.sigmas
        vals = s.detach().cpu().tolist() if isinstance(s, torch.Tensor) else list(s)
        self.levels = tuple(float(v) for v in vals)
        if not self.levels:
            raise ValueError("need at least one sigma level")


@dataclass
class EvalTerms:
    """Terms of one evaluation: ``cost`` (scalar f64), normal matrix ``A [6, 6]`` and vector
    ``b [6]`` (f64); per point ``W [N]``, ``J [N, 2, 6]`` (f32, cells; zero for invalid points) and,
    on request, the exact per-point Hessian ``Hp [N, 2, 2]`` of the smoothed cost w.r.t. the
    reprojection."""

    cost: torch.Tensor
    A: torch.Tensor
    b: torch.Tensor
    W: torch.Tensor
    J: torch.Tensor
    Hp: torch.Tensor | None


@dataclass
class _Consts:
    """Cached device constants of one problem (see :mod:`nre_localization.engine.consts`)."""

    off: torch.Tensor  # [K] f32 window offsets -r..r
    off2d: torch.Tensor  # [K*K] f32 flat padded-window offsets of the window cells (integers)
    wvec: torch.Tensor  # [2, K*K] f32 rows 1, padded width: flat index of a window centre
    lo: torch.Tensor  # [2] f32 clamp bounds of window centres
    hi: torch.Tensor
    cmat: torch.Tensor | None  # [16, 14] monomials of (x, y, 1, 1/z) -> cells, J (PINHOLE)
    eye6: torch.Tensor  # f64 [6, 6]
    eps6: torch.Tensor  # f64 1e-12 I
    ret_u: torch.Tensor  # [4, 6] f64: xi -> (0, w / 2)
    e0: torch.Tensor  # [4] f64 (1, 0, 0, 0)
    ret_c: torch.Tensor  # [17, 16] f64: outer(u, u) -> Cayley numerator of [R | 0; 0 1], norm
    ret_v: torch.Tensor  # [16, 6] f64: xi -> translation column
    half: torch.Tensor  # f64 0.5, 2.0, 4.0: lambda factors
    two: torch.Tensor
    four: torch.Tensor
    true: torch.Tensor  # bool 0-d
    zero32: torch.Tensor  # f32 0-d 0
    zero64: torch.Tensor  # f64 0-d 0


def _pinhole_cmat(cam: Camera) -> list[list[float]]:
    """``[16, 14]``: outer products of ``s = (x, y, 1, 1/z)`` (flat ``4 i + j``) -> cells
    ``(fx x + cx, fy y + cy)`` and the left-perturbation Jacobian rows
    ``fx [1/z, 0, -x/z, -x y, 1 + x^2, -y]``, ``fy [0, 1/z, -y/z, -(1 + y^2), x y, x]``."""
    fx, fy, cx, cy = cam.fx, cam.fy, cam.cx, cam.cy
    m = [[0.0] * 14 for _ in range(16)]

    def o(i: int, j: int) -> int:
        return 4 * i + j

    m[o(0, 2)][0], m[o(2, 2)][0] = fx, cx
    m[o(1, 2)][1], m[o(2, 2)][1] = fy, cy
    jx, jy = 2, 8
    m[o(2, 3)][jx + 0] = fx
    m[o(0, 3)][jx + 2] = -fx
    m[o(0, 1)][jx + 3] = -fx
    m[o(2, 2)][jx + 4], m[o(0, 0)][jx + 4] = fx, fx
    m[o(1, 2)][jx + 5] = -fx
    m[o(2, 3)][jy + 1] = fy
    m[o(1, 3)][jy + 2] = -fy
    m[o(2, 2)][jy + 3], m[o(1, 1)][jy + 3] = -fy, -fy
    m[o(0, 1)][jy + 4] = fy
    m[o(0, 2)][jy + 5] = fy
    return m


def _cayley_tables() -> tuple[list[list[float]], list[list[float]], list[list[float]]]:
    """Tables of :func:`_retract`: ``u = (1, h)`` with ``h = w / 2``; the numerator
    ``(1 - |h|^2) I + 2 h h^T + 2 hat(h)`` of the Cayley rotation, ``M[3, 3] = |u|^2`` and a last row
    ``|u|^2`` (so that dividing by it gives ``[R | 0; 0 1]``); the translation ``v`` in column 3."""
    ret_u = [[0.0] * 6 for _ in range(4)]
    for i in range(3):
        ret_u[i + 1][3 + i] = 0.5
    c = [[0.0] * 16 for _ in range(17)]

    def o(a: int, b: int) -> int:
        return 4 * a + b

    for i in range(3):
        for j in range(3):
            row = 4 * i + j
            c[row][o(i + 1, j + 1)] += 2.0
            if i == j:
                c[row][o(0, 0)] += 1.0
                for m in range(1, 4):
                    c[row][o(m, m)] -= 1.0
    # 2 hat(h): (0,1) = -h2, (0,2) = h1, (1,0) = h2, (1,2) = -h0, (2,0) = -h1, (2,1) = h0
    for (i, j), (m, sgn) in {
        (0, 1): (2, -1.0), (0, 2): (1, 1.0), (1, 0): (2, 1.0),
        (1, 2): (0, -1.0), (2, 0): (1, -1.0), (2, 1): (0, 1.0),
    }.items():  # fmt: skip
        c[4 * i + j][o(0, m + 1)] += 2.0 * sgn
    for m in range(4):
        c[15][o(m, m)] = 1.0
        c[16][o(m, m)] = 1.0
    ret_v = [[0.0] * 6 for _ in range(16)]
    for i in range(3):
        ret_v[4 * i + 3][i] = 1.0
    return ret_u, c, ret_v


_CAYLEY = _cayley_tables()


def _consts(problem: GncProblem) -> _Consts:
    maps = problem.maps
    dev = problem.xyz.device
    r, pad = problem.radius, maps.pad
    wp = int(maps.data.shape[2])
    hwin, wwin = maps.window
    k = 2 * r + 1
    off2d = [(pad - r + i) * wp + (pad - r + j) for i in range(k) for j in range(k)]
    cam = problem.camera
    cmat = const(_pinhole_cmat(cam), _F32, dev) if cam.model == "PINHOLE" else None
    eye6 = [[float(i == j) for j in range(6)] for i in range(6)]
    ret_u, ret_c, ret_v = _CAYLEY
    return _Consts(
        off=const([float(i) for i in range(-r, r + 1)], _F32, dev),
        off2d=const([float(v) for v in off2d], _F32, dev),
        wvec=const([[1.0] * (k * k), [float(wp)] * (k * k)], _F32, dev),
        lo=const([-r - 1.0, -r - 1.0], _F32, dev),
        hi=const([float(wwin + r), float(hwin + r)], _F32, dev),
        cmat=cmat,
        eye6=const(eye6, _F64, dev),
        eps6=const([[1e-12 * v for v in row] for row in eye6], _F64, dev),
        ret_u=const(ret_u, _F64, dev),
        e0=const([1.0, 0.0, 0.0, 0.0], _F64, dev),
        ret_c=const(ret_c, _F64, dev),
        ret_v=const(ret_v, _F64, dev),
        half=const(0.5, _F64, dev),
        two=const(2.0, _F64, dev),
        four=const(4.0, _F64, dev),
        true=const(True, torch.bool, dev),
        zero32=const(0.0, _F32, dev),
        zero64=const(0.0, _F64, dev),
    )


@dataclass
class _Eval:
    M: torch.Tensor  # [B, 7, 8] f64: A = M[:6, :6], b = M[:6, 6], cost = M[6, 7]
    cost: torch.Tensor  # [B] f64 (a view of M[:, 6, 7])
    sums: torch.Tensor  # [B, N, C, C] window sums, scaled by 1 / (2 pi sigma^4): see _eval
    J: torch.Tensor  # [B, N, 2, 6] f32
    J64: torch.Tensor  # [B, N, 2, 6] f64 (the same, as used in M)
    valid: torch.Tensor  # [B, N] bool
    cells: torch.Tensor  # [B, N, 2] f32 full-map cells of the reprojections (garbage if invalid)
    z: torch.Tensor  # [B, N] f32 camera-frame depths (metres)


def _sigma_consts(sigmas: tuple[float, ...], dev: torch.device) -> tuple[torch.Tensor, ...]:
    """Per-pose constants of :func:`_eval` ``[B, 1, 1, 1]`` f32: the Gaussian exponent factor
    ``-1 / (2 sigma^2)``, the log of the square root of the kernel normalisation
    ``1 / (2 pi sigma^4)`` (folded into each axis' 1-D factor, so the window sums come out scaled)
    and the cost factor ``-sigma^2 / 2`` (folded into the normal equations' last row)."""
    cexp = const([[[[-0.5 / (sg * sg)]]] for sg in sigmas], _F32, dev)
    hlog = const([[[[-0.5 * math.log(2.0 * math.pi * sg**4)]]] for sg in sigmas], _F32, dev)
    ccost = const([[[[-0.5 * sg * sg]]] for sg in sigmas], _F32, dev)
    return cexp, hlog, ccost


def _eval(
    problem: GncProblem,
    k: _Consts,
    xyz_h: torch.Tensor,
    T: torch.Tensor,
    sigmas: tuple[float, ...],
    hessian: bool = False,
    normal: bool = True,
) -> _Eval:
    """Evaluate poses ``T [B, 4, 4]`` (f64) at scales ``sigmas`` (``B`` Python floats).

    ``normal=False`` skips the normal equations: ``M`` and ``cost`` are then a 0-d placeholder
    (not to be read) and ``J64`` is ``J`` cast (the finalisation needs no ``M``).

    ``xyz_h [N, 4]`` homogeneous world points. ``sums[b, n, p, q] = s sum_ij gy_p(i) a(i, j)
    gx_q(j)`` with ``g_0 = g``, ``g_1 = g d``, ``g_2 = g d^2`` (``d = q - p`` per axis, ``g`` the
    unnormalised 1-D Gaussian) and ``s = 1 / (2 pi sigma^4)`` (``sqrt(s)`` folded into each
    axis' factor): ``W = sums[0, 0]``, ``r = (sums[0, 1], sums[1, 0])``. The normal equations
    ``M = L^T R`` come from one float64 GEMM with rows ``L = (J, -sigma^2 / 2)`` and
    ``R = (W J, r, W)`` per point and axis, so ``M[6, 7]`` is the cost.
    """
    if fusing():
        return _eval_fused(problem, k, xyz_h, T, sigmas, hessian, normal)
    maps = problem.maps
    dev = xyz_h.device
    n, nb = int(xyz_h.shape[0]), int(T.shape[0])
    kk = 2 * problem.radius + 1
    Xh = torch.matmul(xyz_h, T.to(_F32).transpose(1, 2))  # [B, N, 4] = (X, Y, Z, 1)
    if k.cmat is not None:
        z = Xh[..., 2]
        valid = z > _Z_MIN
        s = Xh / z.clamp_min(_Z_MIN)[..., None]  # (x, y, 1, 1/z)
        G = torch.matmul((s[..., :, None] * s[..., None, :]).view(nb, n, 16), k.cmat)
        cells, J = G[..., :2], G[..., 2:].view(nb, n, 2, 6)
    else:
        cells, J, valid = problem.camera.project_jacobian(Xh[..., :3])
    local = torch.where(valid[..., None], cells - maps.origin, const(_FAR, _F32, dev))
    # Window [c - r, c + r]; far points are clamped to a window lying wholly in the zero padding.
    cen = torch.clamp(torch.round(local), k.lo, k.hi)
    d = (cen - local)[..., None] + k.off  # [B, N, 2, K]: q - p
    cexp, hlog, ccost = _sigma_consts(sigmas, dev)
    g = torch.exp(torch.addcmul(hlog, d.square(), cexp))  # sqrt(s) exp(-d^2 / 2 sigma^2)
    gd = g * d
    comps = [g, gd, gd * d] if hessian else [g, gd]
    c = len(comps)
    V = torch.stack(comps, 3)  # [B, N, 2 axes, C, K]
    # Flat window indices [B, N, K*K] in one GEMM: small integers, exact in float32 (and TF32).
    idx = torch.addmm(k.off2d, cen.reshape(nb * n, 2), k.wvec).long().view(nb, n, -1)
    a = maps.data.view(1, n, -1).expand(nb, n, -1).gather(2, idx)
    if problem.floor > 0:
        a = (a - problem.floor).clamp_min_(0.0)
    vx = V[:, :, 0].reshape(nb * n, c, kk)
    vy = V[:, :, 1].reshape(nb * n, c, kk)
    t1 = torch.bmm(a.view(nb * n, kk, kk), vx.transpose(1, 2))  # [BN, K, C]
    sums = torch.bmm(vy, t1).view(nb, n, c, c)
    if not normal:
        return _Eval(k.zero64, k.zero64, sums, J, J.to(_F64), valid, cells, Xh[..., 2])
    W = sums[..., 0, 0]
    # (sums[0, 1], sums[1, 0]): flat entries 1 and c of each c x c block (a view, no kernel).
    res = sums.view(nb, n, c * c)[..., 1 : 2 * c - 1 : c - 1]  # [B, N, 2]
    Wc = W[..., None, None].expand(nb, n, 2, 1)
    # L = (J, -sigma^2 / 2) and R = (W J, r, W) side by side: one cat, one cast, one GEMM.
    LR = torch.cat([J, ccost.expand(nb, n, 2, 1), J * Wc, res[..., None], Wc], -1).to(_F64)
    LR2 = LR.view(nb, 2 * n, 15)
    M = torch.matmul(LR2[..., :7].transpose(1, 2), LR2[..., 7:])
    return _Eval(
        M=M,
        cost=M[:, 6, 7],
        sums=sums,
        J=J,
        J64=LR[..., :6],
        valid=valid,
        cells=cells,
        z=Xh[..., 2],
    )


def _eval_fused(
    problem: GncProblem,
    k: _Consts,
    xyz_h: torch.Tensor,
    T: torch.Tensor,
    sigmas: tuple[float, ...],
    hessian: bool = False,
    normal: bool = True,
) -> _Eval:
    """:func:`_eval` written for Inductor (used while ``torch.compile`` traces): the projection,
    the window sums and the normal equations as elementwise products and reductions (which
    Inductor fuses with their producers into a few kernels) instead of the small GEMMs that keep
    the eager kernel count low. Same results up to float rounding."""
    maps = problem.maps
    dev = xyz_h.device
    n, nb = int(xyz_h.shape[0]), int(T.shape[0])
    kk = 2 * problem.radius + 1
    wp = int(maps.data.shape[2])
    # [B, N, 4] = (X, Y, Z, 1): a length-4 sum (unrolled by Inductor).
    Xh = (xyz_h[None, :, None, :] * T.to(_F32)[:, None, :, :]).sum(-1)
    cam = problem.camera
    if cam.model == "PINHOLE":
        z = Xh[..., 2]
        valid = z > _Z_MIN
        iz = 1.0 / z.clamp_min(_Z_MIN)
        x, y = Xh[..., 0] * iz, Xh[..., 1] * iz
        fx, fy = cam.fx, cam.fy
        cells = torch.stack([fx * x + cam.cx, fy * y + cam.cy], -1)
        zero = torch.zeros_like(x)
        jx = [iz, zero, -x * iz, -x * y, 1.0 + x * x, -y]
        jy = [zero, iz, -y * iz, -(1.0 + y * y), x * y, x]
        J = torch.stack([torch.stack(jx, -1) * fx, torch.stack(jy, -1) * fy], -2)
    else:
        cells, J, valid = cam.project_jacobian(Xh[..., :3])
    local = torch.where(valid[..., None], cells - maps.origin, _FAR)
    cen = torch.clamp(torch.round(local), k.lo, k.hi)
    d = (cen - local)[..., None] + k.off  # [B, N, 2, K]: q - p
    cexp, hlog, ccost = _sigma_consts(sigmas, dev)
    g = torch.exp(d.square() * cexp + hlog)
    gd = g * d
    comps = [g, gd, gd * d] if hessian else [g, gd]
    c = len(comps)
    V = torch.stack(comps, 2)  # [B, N, C, 2 axes, K]
    vx, vy = V[:, :, :, 0], V[:, :, :, 1]  # [B, N, C, K]
    idx = (k.off2d + cen[..., :1] + cen[..., 1:] * float(wp)).long()  # [B, N, K*K]
    a = maps.data.view(1, n, -1).expand(nb, n, -1).gather(2, idx).view(nb, n, 1, 1, kk, kk)
    if problem.floor > 0:
        a = (a - problem.floor).clamp_min(0.0)
    prod = a * vy.view(nb, n, c, 1, kk, 1) * vx.view(nb, n, 1, c, 1, kk)
    sums = prod.sum((-1, -2))  # [B, N, C, C]
    if not normal:
        return _Eval(k.zero64, k.zero64, sums, J, J.to(_F64), valid, cells, Xh[..., 2])
    W = sums[..., 0, 0]
    res = torch.stack([sums[..., 0, 1], sums[..., 1, 0]], -1)  # [B, N, 2]
    Wc = W[..., None, None].expand(nb, n, 2, 1)
    L = torch.cat([J, ccost.expand(nb, n, 2, 1)], -1).to(_F64)  # [B, N, 2, 7]
    R = torch.cat([J * Wc, res[..., None], Wc], -1).to(_F64)  # [B, N, 2, 8]
    # The reduction over points as a (cuBLAS) batched GEMM: written as a broadcast product and a
    # sum, Inductor fused it with its producers into one reduction kernel with only 7 x 8 x B
    # rows, 30-120 us per evaluation on an H200 (a third of the compiled global solve's device
    # time); the GEMM reads the materialised L and R once (~10 us).
    M = torch.matmul(L.view(nb, 2 * n, 7).transpose(1, 2), R.view(nb, 2 * n, 8))  # [B, 7, 8]
    return _Eval(
        M=M,
        cost=M[:, 6, 7],
        sums=sums,
        J=J,
        J64=L[..., :6],
        valid=valid,
        cells=cells,
        z=Xh[..., 2],
    )


def _homogeneous(xyz: torch.Tensor) -> torch.Tensor:
    return F.pad(xyz.to(_F32), (0, 1), value=1.0)


def evaluate(
    problem: GncProblem,
    T: torch.Tensor,
    sigma: float | torch.Tensor,
    hessian: bool = False,
    consts: _Consts | None = None,
) -> EvalTerms:
    """Smoothed cost and IRLS normal equations at pose ``T [4, 4]`` (f64) and scale ``sigma``
    (a float; a tensor is read on the host)."""
    k = _consts(problem) if consts is None else consts
    sg = float(sigma)
    ev = _eval(problem, k, _homogeneous(problem.xyz), T.to(_F64)[None], (sg,), hessian)
    sums = ev.sums[0]
    W = sums[:, 0, 0]
    J = ev.J[0] * ev.valid[0].to(_F32)[:, None, None]
    Hp = None
    if hessian:
        inv_s2 = 1.0 / (sg * sg)
        sxx, syy, sxy = sums[:, 0, 2], sums[:, 2, 0], sums[:, 1, 1]
        Hp = torch.stack(
            [
                torch.stack([W - sxx * inv_s2, -sxy * inv_s2], -1),
                torch.stack([-sxy * inv_s2, W - syy * inv_s2], -1),
            ],
            -2,
        )
    M = ev.M[0]
    return EvalTerms(cost=ev.cost[0], A=M[:6, :6], b=M[:6, 6], W=W, J=J, Hp=Hp)


def _solve6(
    A: torch.Tensor, b: torch.Tensor, method: str = "cholesky", eye6: torch.Tensor | None = None
) -> torch.Tensor:
    """Solve the SPD (damped) 6x6 system in float64 without host synchronisation.

    ``method="cholesky"``: LAPACK/cuSOLVER; ``"gauss_jordan"``: six unrolled elimination steps in
    plain tensor ops (no library call: always capturable in a CUDA graph). A failed solve gives
    non-finite steps, whose candidate pose the loop then rejects (its cost compares False).
    """
    if fusing():
        return _solve6_unrolled(A, b)
    if method == "cholesky":
        L, _ = torch.linalg.cholesky_ex(A)
        return torch.cholesky_solve(b[:, None], L)[:, 0]
    eye = torch.eye(6, dtype=A.dtype, device=A.device) if eye6 is None else eye6
    m = torch.cat([A, b[:, None]], 1)  # [6, 7]
    for j in range(6):
        piv = m[j] / m[j, j]  # SPD + damping: no pivoting needed
        m = torch.addcmul(m, m[:, j : j + 1] - eye[:, j : j + 1], piv, value=-1.0)
    return m[:, 6]


def _solve6_unrolled(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cholesky factorisation and both substitutions written out on the 21 + 6 scalars (used
    while ``torch.compile`` traces: Inductor fuses the whole solve into a kernel or two; eagerly it
    would be ~150 kernels). A matrix that is not positive definite gives NaN (rejected step)."""
    L: list[list[torch.Tensor]] = [[A[0, 0]] * 6 for _ in range(6)]
    inv: list[torch.Tensor] = []
    for j in range(6):
        s = A[j, j]
        for p in range(j):
            s = s - L[j][p] * L[j][p]
        inv.append(torch.rsqrt(s))
        for i in range(j + 1, 6):
            t = A[i, j]
            for p in range(j):
                t = t - L[i][p] * L[j][p]
            L[i][j] = t * inv[j]
    y: list[torch.Tensor] = []
    for i in range(6):  # L y = b
        t = b[i]
        for p in range(i):
            t = t - L[i][p] * y[p]
        y.append(t * inv[i])
    x: list[torch.Tensor] = [b[0]] * 6
    for i in reversed(range(6)):  # L^T x = y
        t = y[i]
        for p in range(i + 1, 6):
            t = t - L[p][i] * x[p]
        x[i] = t * inv[i]
    return torch.stack(x)


def _retract_fused(xi: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """:func:`_retract` as scalar formulas (used while ``torch.compile`` traces; fused)."""
    h0, h1, h2 = xi[3] * 0.5, xi[4] * 0.5, xi[5] * 0.5
    hh = h0 * h0 + h1 * h1 + h2 * h2
    s = 1.0 / (1.0 + hh)
    a = 1.0 - hh
    rows = [
        [(a + 2.0 * h0 * h0) * s, 2.0 * (h0 * h1 - h2) * s, 2.0 * (h0 * h2 + h1) * s],
        [2.0 * (h1 * h0 + h2) * s, (a + 2.0 * h1 * h1) * s, 2.0 * (h1 * h2 - h0) * s],
        [2.0 * (h2 * h0 - h1) * s, 2.0 * (h2 * h1 + h0) * s, (a + 2.0 * h2 * h2) * s],
    ]
    out = [r[0] * T[0] + r[1] * T[1] + r[2] * T[2] + xi[i] * T[3] for i, r in enumerate(rows)]
    return torch.stack([*out, T[3]])


def _jhj(J: torch.Tensor, Hp: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_n J_n^T Hp_n J_n`` (``J [N, 2, 6]``, ``Hp [N, 2, 2]``, f64) ``+ eps``: two GEMMs
    eagerly, elementwise products and one reduction while ``torch.compile`` traces."""
    n = int(J.shape[0])
    if fusing():
        HJ = (Hp[:, :, :, None] * J[:, None, :, :]).sum(2)  # [N, 2, 6] (length-2 sum)
        out = J.reshape(2 * n, 6).T @ HJ.reshape(2 * n, 6)  # a GEMM: see _eval_fused's M
        return out if eps is None else out + eps
    HJ = torch.bmm(Hp, J).view(2 * n, 6)
    if eps is None:
        return J.view(2 * n, 6).T @ HJ
    return torch.addmm(eps, J.view(2 * n, 6).T, HJ)


def _retract(xi: torch.Tensor, T: torch.Tensor, k: _Consts) -> torch.Tensor:
    """``C(xi) @ T`` with ``C = [R_cayley(w) | v; 0 1]`` (f64, 6 kernels, branch-free).

    ``R = ((1 - |h|^2) I + 2 h h^T + 2 hat(h)) / (1 + |h|^2)``, ``h = w / 2``: an exact rotation by
    ``2 atan(|w| / 2)`` about ``w``, equal to ``exp(hat(w))`` to first order.
    """
    if fusing():
        return _retract_fused(xi, T)
    u = torch.addmv(k.e0, k.ret_u, xi)  # (1, w / 2)
    g = torch.mv(k.ret_c, torch.outer(u, u).view(16))
    C = torch.addmv(g[:16] / g[16], k.ret_v, xi).view(4, 4)
    return C @ T


@dataclass
class GncState:
    """Loop state: tensors of fixed shapes plus the (Python) position in the static schedule.

    ``T [4, 4]`` f64; ``cost`` (0-d f64) and ``M [7, 8]`` (f64 normal equations, see
    :func:`_eval`) at the current level's sigma; ``lam`` (0-d f64); ``active`` (0-d bool: the
    current level has not converged); ``slot``: schedule slots done; ``level``: current level;
    ``iterations``: slots run (evaluations, including the initial one); ``done``: the whole schedule
    has run.
    """

    T: torch.Tensor
    cost: torch.Tensor
    M: torch.Tensor
    lam: torch.Tensor
    active: torch.Tensor
    slot: int = 0
    level: int = 0
    iterations: int = 0
    done: bool = False

    @property
    def A(self) -> torch.Tensor:
        return self.M[:6, :6]

    @property
    def b(self) -> torch.Tensor:
        return self.M[:6, 6]


def gnc_start(T: torch.Tensor, lambda_init: float) -> GncState:
    """Initial state: the first slot evaluates ``T`` at the first sigma."""
    dev = T.device
    return GncState(
        T=T.to(_F64),
        cost=torch.zeros((), dtype=_F64, device=dev),
        M=torch.zeros((7, 8), dtype=_F64, device=dev),
        lam=torch.full((), lambda_init, dtype=_F64, device=dev),
        active=torch.ones((), dtype=torch.bool, device=dev),
    )


def _slot(
    problem: GncProblem,
    k: _Consts,
    xyz_h: torch.Tensor,
    kind: str,
    sig: tuple[float, ...],
    tol: float,
    linear_solver: str,
    lam0: torch.Tensor,
    T: torch.Tensor,
    cost: torch.Tensor,
    M: torch.Tensor,
    lam: torch.Tensor,
    active: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """One slot of the schedule: state ``(T, cost, M, lam, active)`` -> the next state.

    ``kind``: ``"init"`` evaluates ``T`` at ``sig[0]`` and starts a level (``lam = lam0``, active);
    ``"step"`` is one damped step at ``sig[0]``; ``"end"`` is a level's last step at ``sig[0]``
    that also evaluates the candidate and the current pose at ``sig[1]`` (one batched evaluation)
    and starts the next level. A unit of :func:`nre_localization.engine.compiled.compiled`.
    """
    if kind == "init":
        ev = _eval(problem, k, xyz_h, T[None], sig[:1])
        return T, ev.cost[0], ev.M[0], lam0, k.true
    A = M[:6, :6]
    damp = torch.addcmul(A, torch.addcmul(k.eps6, A, k.eye6), lam)  # A + lam diag(A)
    xi = _solve6(damp, M[:6, 6], linear_solver, k.eye6)
    Tc = _retract(xi, T, k)
    if kind == "step":
        ev = _eval(problem, k, xyz_h, Tc[None], sig[:1])
        cnew = ev.cost[0]
        accept = (cnew < cost) & active
        small = accept & (cnew > cost * (1.0 + tol))
        T = torch.where(accept, Tc, T)
        M = torch.where(accept, ev.M[0], M)  # the cost is M[6, 7]
        # lambda halves or doubles; it is only read while active (else every step fails), and a
        # static schedule of a few steps per level keeps it far from under- or overflow.
        lam = lam * torch.where(accept, k.half, k.two)
        return T, M[6, 7], M, lam, active ^ small
    both = torch.stack([Tc, Tc, T])
    ev = _eval(problem, k, xyz_h, both, (sig[0], sig[1], sig[1]))
    accept = (ev.cost[0] < cost) & active
    T = torch.where(accept, Tc, T)
    M = torch.where(accept, ev.M[1], ev.M[2])
    return T, M[6, 7], M, lam0, k.true


def gnc_iterate(
    problem: GncProblem,
    state: GncState,
    iterations: int,
    level_iterations: int,
    tol: float,
    lambda_init: float,
    early_exit: bool = False,
    linear_solver: str = "cholesky",
    compile_step: bool = False,
) -> GncState:
    """Run the next ``iterations`` slots of the schedule (see the module docstring).

    ``early_exit`` (CPU only: it reads the convergence flag on the host) skips the evaluations of
    converged levels; results are the same as running every slot. ``compile_step`` runs each slot
    (solve, retraction, evaluation, accept/reject) through ``torch.compile``
    (:mod:`nre_localization.engine.compiled`; opt-in: needs a working Inductor backend).
    """
    k = _consts(problem)
    sig = problem.levels
    full = gnc_schedule(len(sig), level_iterations)
    todo = full[state.slot : state.slot + max(0, iterations)]
    slot_fn = _slot
    if compile_step:
        from nre_localization.engine.compiled import compiled

        slot_fn = compiled(_slot, "gnc_slot")
    xyz_h = _homogeneous(problem.xyz)
    lam0 = const(float(lambda_init), _F64, problem.xyz.device)
    st: tuple[torch.Tensor, ...] = (state.T.to(_F64), state.cost, state.M, state.lam, state.active)
    level = state.level
    for kind, lvl in todo:
        if kind == "init":
            st = slot_fn(problem, k, xyz_h, "init", sig[:1], tol, linear_solver, lam0, *st)
            level = 0
            continue
        if early_exit and not bool(st[4]):
            if kind == "end":  # converged level: only evaluate the pose at the next sigma
                nxt = (sig[lvl + 1],)
                st = slot_fn(problem, k, xyz_h, "init", nxt, tol, linear_solver, lam0, *st)
                level = lvl + 1
            continue
        sg = sig[lvl : lvl + 2] if kind == "end" else (sig[lvl],)
        st = slot_fn(problem, k, xyz_h, kind, sg, tol, linear_solver, lam0, *st)
        if kind == "end":
            level = lvl + 1
    slot = state.slot + len(todo)
    T, cost, M, lam, active = st
    return GncState(
        T=T,
        cost=cost,
        M=M,
        lam=lam,
        active=active,
        slot=slot,
        level=level,
        iterations=state.iterations + len(todo),
        done=slot >= len(full),
    )


def _psd_point_hessians(
    sums: torch.Tensor, sigma: float, dev: torch.device, exact: bool = True
) -> torch.Tensor:
    """Exact ``2x2`` Hessians of the smoothed per-point cost w.r.t. the reprojection, projected to
    PSD: window sums ``[N, 3, 3]`` (scaled, see :func:`_eval`) -> ``[N, 2, 2]`` f64.

    ``H = W I - S / sigma^2`` (``W``, ``S`` the scaled weight and second-moment sums); eigenvalues
    ``mean +- rad`` clamped at 0 with the same eigenvectors: ``H+ = a I + c (H - mean I)``.
    ``exact=False``: the majoriser's ``W I`` (same kernels)."""
    n = int(sums.shape[0])
    sc = 1.0  # the sums come scaled by 1 / (2 pi sigma^4)
    q = sc / (sigma * sigma)
    if fusing():  # the same as scalar formulas (fused by Inductor)
        s = sums.reshape(n, 9).to(_F64)
        mean = sc * s[:, 0] - 0.5 * q * (s[:, 2] + s[:, 6]) if exact else sc * s[:, 0]
        dv = 0.5 * q * (s[:, 6] - s[:, 2]) if exact else torch.zeros_like(mean)
        h01 = -q * s[:, 4] if exact else torch.zeros_like(mean)
        rad = torch.sqrt(dv * dv + h01 * h01)
        l1, l2 = (mean + rad).clamp_min(0.0), (mean - rad).clamp_min(0.0)
        a, c = 0.5 * (l1 + l2), 0.5 * (l1 - l2) / rad.clamp_min(1e-300)
        return torch.stack([a + c * dv, c * h01, c * h01, a - c * dv], -1).view(n, 2, 2)
    cmat = [[0.0] * 3 for _ in range(9)]  # flat (y power, x power) -> (mean, dev, h01)
    cmat[0][0] = sc
    if exact:
        cmat[2][0], cmat[6][0] = -0.5 * q, -0.5 * q
        cmat[2][1], cmat[6][1] = -0.5 * q, 0.5 * q
        cmat[4][2] = -q
    P = sums.reshape(n, 9).to(_F64) @ const(cmat, _F64, dev)
    rad = torch.linalg.vector_norm(P[:, 1:], dim=1)
    lam = torch.addcmul(P[:, :1], rad[:, None], const([1.0, -1.0], _F64, dev)).clamp_min(0.0)
    ac = lam @ const([[0.5, 0.5], [0.5, -0.5]], _F64, dev)  # (a, (l1 - l2) / 2)
    c = ac[:, 1] / rad.clamp_min(1e-300)
    Z = torch.cat([ac[:, :1], P[:, 1:] * c[:, None]], 1)
    rows = [[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, -1.0], [0.0, 1.0, 1.0, 0.0]]
    return (Z @ const(rows, _F64, dev)).view(n, 2, 2)


def _newton_terms(
    problem: GncProblem, k: _Consts, xyz_h: torch.Tensor, sg: float, Tb: torch.Tensor
) -> torch.Tensor:
    """Packed Newton state ``[95]`` f64 of pose ``Tb``: ``(H + eps I, diag(A), T, b, cost)`` (one
    ``where`` keeps or rejects all of it); see :func:`newton_polish`."""
    ev = _eval(problem, k, xyz_h, Tb[None], (sg,), True)
    J = torch.where(ev.valid[0][:, None, None], ev.J64[0], k.zero64)  # [N, 2, 6]
    Hp = _psd_point_hessians(ev.sums[0], sg, xyz_h.device)
    H = _jhj(J, Hp, k.eps6)
    M = ev.M[0]
    parts = [H.view(36), (M[:6, :6] * k.eye6).view(36), Tb.view(16), M[:6, 6], ev.cost]
    return torch.cat(parts)


def _newton_unpack(st: torch.Tensor) -> tuple[torch.Tensor, ...]:
    H, D, T, b = st[:36].view(6, 6), st[36:72].view(6, 6), st[72:88].view(4, 4), st[88:94]
    return H, D, T, b, st[94]


def _newton_step(
    problem: GncProblem,
    k: _Consts,
    xyz_h: torch.Tensor,
    sg: float,
    tol: float,
    linear_solver: str,
    st: torch.Tensor,
    lam: torch.Tensor,
    active: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One damped Newton step on the packed state: ``(st, lam, active)`` -> the next ones."""
    H, D, T, b, cost = _newton_unpack(st)
    xi = _solve6(torch.addcmul(H, D, lam), b, linear_solver, k.eye6)  # H + lam diag(A)
    sn = _newton_terms(problem, k, xyz_h, sg, _retract(xi, T, k))
    cn = sn[94]
    accept = (cn < cost) & active
    small = accept & (cn > cost * (1.0 + tol))
    st = torch.where(accept, sn, st)
    # lambda is only read while active (an inactive loop rejects every step; overflow to inf
    # there is harmless); while active it stays within lambda_init * 4^(+-iterations).
    lam = lam * torch.where(accept, k.half, k.four)
    return st, lam, active ^ small  # small implies accept implies active


def newton_polish(
    problem: GncProblem,
    T: torch.Tensor,
    iterations: int,
    tol: float,
    lambda_init: float,
    early_exit: bool = False,
    linear_solver: str = "cholesky",
    compile_step: bool = False,
) -> torch.Tensor:
    """Damped Newton steps on the smoothed cost at the last sigma of ``problem``: ``T [4, 4]`` f64
    -> refined ``T`` (f64). Static loop of ``iterations`` evaluations (CUDA-graph safe).

    Curvature: ``H = sum_n J_n^T H_n+ J_n`` with ``H_n+`` the PSD-projected exact ``2x2`` Hessian
    of the point's smoothed cost (the majoriser's ``W_n I`` overestimates it on broad maps, so its
    steps are short); gradient ``-b`` from the same evaluation. Damping ``lambda diag(A)`` (``A``
    the majoriser's normal matrix: positive wherever a point carries information); a step is kept
    when it lowers the cost (``lambda`` halves, else quadruples); a relative decrease below ``tol``
    stops the loop (the remaining steps are masked; the CPU skips them with ``early_exit``).
    ``compile_step`` runs the first evaluation and each step through ``torch.compile``.
    """
    k = _consts(problem)
    sg = problem.levels[-1]
    xyz_h = _homogeneous(problem.xyz)
    terms_fn, step_fn = _newton_terms, _newton_step
    if compile_step:
        from nre_localization.engine.compiled import compiled

        terms_fn = compiled(_newton_terms, "newton_terms")
        step_fn = compiled(_newton_step, "newton_step")
    st = terms_fn(problem, k, xyz_h, sg, T.to(_F64))
    lam = const(float(lambda_init), _F64, problem.xyz.device)
    active = k.true
    for _ in range(max(0, iterations - 1)):
        if early_exit and not bool(active):
            break
        st, lam, active = step_fn(problem, k, xyz_h, sg, tol, linear_solver, st, lam, active)
    return _newton_unpack(st)[2]
