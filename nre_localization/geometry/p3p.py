"""Batched minimal P3P solver (all solutions), branch-free for GPUs.

Formulation of Persson & Nordberg, "Lambda Twist: An Accurate Fast Robust Perspective Three Point
(P3P) Solver", ECCV 2018, implemented here with fixed tensor shapes:

With unit bearings ``y_i`` and unknown depths ``Lambda = (l1, l2, l3)``, the camera-frame points are
``l_i y_i`` and rigidity gives three conics ``Lambda^T M_ij Lambda = a_ij = |x_i - x_j|^2`` with
``M_ij`` having ones on the diagonal entries ``i, j`` and ``-y_i.y_j`` on the off-diagonal pair.
Two homogeneous combinations ``D1 = a23 M12 - a12 M23``, ``D2 = a23 M13 - a13 M23`` are zero on every
solution; a real root ``gamma`` of ``det(D1 + gamma D2) = 0`` (a cubic) makes ``D0 = D1 + gamma D2``
a degenerate conic, i.e. a pair of planes through the origin. For each plane, the homogeneous
conic ``a13 M12 - a12 M13`` restricted to it gives two rays, and ``M12`` fixes the scale: up to
four solutions. A few Newton steps on the three conics polish the depths, and the pose follows
from the two triads ``(x1 - x2, x1 - x3, cross)`` -> ``(p1 - p2, p1 - p3, cross)``.

Among the (up to three) real cubic roots we keep the one whose degenerate conic is most clearly a
*real* plane pair (indefinite on the plane orthogonal to its null vector).
"""

from __future__ import annotations

import math

import torch

__all__ = ["p3p"]


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for small matrices (inner dimension of a few). On the GPU and while
    ``torch.compile`` traces: a broadcast product and a short sum (two elementwise kernels, or
    fused by Inductor with their neighbours); a batched GEMM of thousands of 3x3 float64 products
    is a cuBLAS tensor-core kernel that wastes almost all of its tiles (~50 us each on an H100,
    0.7 ms of the MSAC stage's 2.9 ms before this). On the CPU: one matmul."""
    if a.is_cuda or torch.compiler.is_compiling():
        return (a[..., :, :, None] * b[..., None, :, :]).sum(-2)
    return a @ b


def _cubic_real_roots(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, one: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real roots of ``g^3 + a g^2 + b g + c`` -> ``(roots [..., 3], valid [..., 3])``.

    ``one``: a 0-d tensor holding 1 (fill values without a scalar-tensor kernel each).

    Depressed cubic ``t^3 + p t + q`` (``g = t - a/3``); three real roots by the trigonometric
    form, one by Cardano; two Newton steps on the original cubic polish them.
    """
    a3 = a / 3.0
    p3 = torch.addcmul(b, a3, a3, value=-3.0) / 3.0  # p / 3
    h = torch.addcmul(c, a3, torch.addcmul(b, a3, a3, value=-2.0), value=-1.0) / 2.0  # q / 2
    disc = torch.addcmul(h * h, p3 * p3, p3)  # q^2/4 + p^3/27
    three = disc < 0  # three distinct real roots (then p < 0)
    # Trigonometric form: t_k = 2 sqrt(-p/3) cos(acos(3q / (p m)) / 3 - 2 pi k / 3).
    pn = torch.where(three, p3, -one)  # (any p < 0 where unused)
    s = torch.sqrt(-pn)
    th = torch.acos((h / (pn * s)).clamp(-1.0, 1.0)) / 3.0
    k = torch.linspace(0.0, 4.0 * math.pi / 3.0, 3, dtype=a.dtype, device=a.device)
    t3 = (2.0 * s)[..., None] * torch.cos(th[..., None] - k)
    # Cardano (one real root): cbrt(-q/2 + sd) + cbrt(-q/2 - sd).
    sd = torch.sqrt(disc.clamp_min(0.0))
    u = torch.stack([sd, -sd], -1) - h[..., None]
    t1 = (torch.sign(u) * u.abs().pow(1.0 / 3.0)).sum(-1)
    g = torch.where(three[..., None], t3, t1[..., None]) - a3[..., None]
    aa, bb, cc = a[..., None], b[..., None], c[..., None]
    a2 = 2.0 * aa
    for _ in range(2):  # Newton polish
        f = torch.addcmul(cc, torch.addcmul(bb, g + aa, g), g)
        df = torch.addcmul(bb, torch.add(a2, g, alpha=3.0), g)
        g = torch.where(df.abs() > 1e-30, g - f / df, g)
    valid = torch.stack([torch.ones_like(three), three, three], dim=-1)
    return g, valid


def _cofactors(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cofactor matrix (row ``i`` = ``r_{i+1} x r_{i+2}``) and determinant of ``m [..., 3, 3]``.

    ``adj(m) = cof^T``; the determinant is ``r0 . (r1 x r2)`` (closed form, no LU).
    """
    cof = torch.linalg.cross(m.roll(-1, -2), m.roll(-2, -2), dim=-1)
    return cof, (cof[..., 0, :] * m[..., 0, :]).sum(-1)


def _det3(m: torch.Tensor) -> torch.Tensor:
    """Determinant of ``[..., 3, 3]`` as ``r0 . (r1 x r2)`` (closed form, no LU)."""
    return (m[..., 0, :] * torch.linalg.cross(m[..., 1, :], m[..., 2, :], dim=-1)).sum(-1)


def _unit(v: torch.Tensor) -> torch.Tensor:
    """``v [..., 3]`` scaled to unit length (zero vectors stay zero)."""
    return v / torch.linalg.norm(v, dim=-1, keepdim=True).clamp_min(1e-300)


def _orthonormal_basis(n: torch.Tensor) -> torch.Tensor:
    """Rows ``(u, w) [..., 2, 3]``: unit vectors orthogonal to unit ``n [..., 3]`` and each other."""
    ax = n.abs().argmin(-1, keepdim=True)
    e = torch.zeros_like(n).scatter_(-1, ax, 1.0)
    u = _unit(torch.linalg.cross(n, e, dim=-1))
    return torch.stack([u, torch.linalg.cross(n, u, dim=-1)], -2)


def _factor_form(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Factor ``a s^2 + 2 b s t + c t^2`` (``q [..., 2, 2]`` = ``[[a, b], [., c]]``) into lines.

    Returns ``(coef [..., 2, 2], ok [...])`` where row ``k`` is ``(alpha, beta)`` with
    ``alpha s + beta t = 0`` one of the two lines (``k = 0``: ``+sqrt(disc)``); ``ok`` is False
    when the form is not indefinite. Both algebraically equivalent representations are computed
    and the larger one kept.
    """
    a, b, c = q[..., 0, 0], q[..., 0, 1], q[..., 1, 1]
    disc = torch.addcmul(b * b, a, c, value=-1.0)
    scale = torch.addcmul(torch.addcmul(a * a, b, b), c, c)
    ok = disc > 1e-14 * scale
    s = torch.sqrt(disc.clamp_min(0.0))
    pm = torch.stack([s, -s], -1)  # [..., 2 signs]
    bb = b[..., None]
    r1 = torch.stack([a[..., None].expand_as(pm), bb - pm], -1)  # [..., 2, 2]
    r2 = torch.stack([bb + pm, c[..., None].expand_as(pm)], -1)
    use1 = (r1 * r1).sum(-1) >= (r2 * r2).sum(-1)
    return torch.where(use1[..., None], r1, r2), ok


def p3p(
    bearings: torch.Tensor, points: torch.Tensor, refine_steps: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve P3P for a batch of triplets.

    Args:
        bearings: ``[B, 3, 3]`` bearing vectors (rows; camera frame; normalised here).
        points: ``[B, 3, 3]`` corresponding world points (rows, metres).
        refine_steps: Newton steps on the depths.

    Returns:
        ``R [B, 4, 3, 3]``, ``t [B, 4, 3]`` (world -> camera: ``x_cam = R x + t``) and
        ``valid [B, 4]``. Invalid slots hold the identity. Computation is in float64; the
        outputs are float64. Degenerate triplets (collinear or coincident points, parallel bearings)
        give no valid solution.

    Every stage works on whole tensors (all roots, planes, rays at once) with few kernels: the
    function is launched inside a CUDA graph where each tensor op costs a kernel launch.
    """
    dt = torch.float64
    eye = torch.eye(3, dtype=dt, device=bearings.device)
    one, zero0 = eye[0, 0], eye[0, 1]  # 0-d fill values (views: no kernels)
    y = _unit(bearings.to(dt))
    x = points.to(dt)
    gram = _mm(y, y.transpose(-1, -2))  # [B, 3, 3]; off-diagonal: cosines c_ij
    c12, c13, c23 = gram[:, 0, 1], gram[:, 0, 2], gram[:, 1, 2]
    dx = x[:, :, None] - x[:, None]  # [B, 3, 3, 3]: x_i - x_j
    sq = (dx * dx).sum(-1)  # [B, 3, 3]: squared distances
    d12, d13 = dx[:, 0, 1], dx[:, 0, 2]
    a12, a13, a23 = sq[:, 0, 1], sq[:, 0, 2], sq[:, 1, 2]
    cr = torch.linalg.cross(d12, d13, dim=-1)
    amax = sq.amax((-1, -2))
    # Collinear / coincident world points; (almost) parallel bearing vectors.
    cos3 = torch.stack([c12, c13, c23], -1)  # [B, 3] pairs (12, 13, 23)
    good = ((cr * cr).sum(-1) > 1e-10 * a12 * a13) & (amax > 0) & (cos3 < 1 - 1e-12).all(-1)
    # Normalise scales (distances) so thresholds are scale-free.
    sc = torch.where(amax > 0, amax, one)
    an = torch.stack([a12, a13, a23], -1) / sc[:, None]  # [B, 3] pairs (12, 13, 23)
    a12n = an[:, 0]

    # The three conic matrices M_ij [B, 3 pairs, 3, 3]: ones on diagonal entries i, j, -c_ij on
    # the off-diagonal pair: the mask outer(v_k, v_k) (v_k = 1 - e_(missing index)) of 2I - G.
    v = 1.0 - eye.flip(0)  # [3 pairs, 3]
    mask = v[:, :, None] * v[:, None, :]  # [3, 3, 3]
    mats = torch.where(eye.bool(), one, -gram)[:, None] * mask  # [B, 3, 3, 3]
    # D1 = a23 M12 - a12 M23, D2 = a23 M13 - a13 M23, H = a13 M12 - a12 M13 in one product.
    zero = torch.zeros_like(a12n)
    na = -an
    coef = torch.stack(
        [an[:, 2], zero, na[:, 0], zero, an[:, 2], na[:, 1], an[:, 1], na[:, 0], zero], -1
    ).view(-1, 3, 3)
    dmat = _mm(coef, mats.reshape(-1, 3, 9)).view(-1, 3, 3, 3)
    D12 = dmat[:, :2]  # D1, D2
    hmat = dmat[:, 2]

    # det(D1 + g D2) = k3 g^3 + k2 g^2 + k1 g + k0 via cofactors (adj = cof^T).
    cof, dets = _cofactors(D12)  # [B, 2, 3, 3], [B, 2] = (k0, k3)
    mixed = (cof[:, :, None] * D12[:, None]).sum((-1, -2))  # [B, 2, 2]; (0,1) = k1, (1,0) = k2
    kk = torch.stack([dets[:, 0], mixed[:, 0, 1], mixed[:, 1, 0], dets[:, 1]], -1)
    kabs = kk.abs()
    k3 = kk[:, 3]
    good &= kabs[:, 3] > 1e-12 * kabs.amax(-1)
    kn = kk[:, :3] / torch.where(kabs[:, 3] > 0, k3, one)[:, None]
    roots, rvalid = _cubic_real_roots(kn[:, 2], kn[:, 1], kn[:, 0], one)  # [B, 3]

    # Degenerate conic for each root; null vector from the largest cross product of its rows.
    D0 = torch.addcmul(dmat[:, None, 0], roots[..., None, None], dmat[:, None, 1])  # [B, 3, 3, 3]
    cands = torch.cat(
        [
            torch.linalg.cross(D0[..., 0:1, :].expand(-1, -1, 2, -1), D0[..., 1:, :], dim=-1),
            torch.linalg.cross(D0[..., 1:2, :], D0[..., 2:, :], dim=-1),
        ],
        -2,
    )  # [B, 3 roots, 3 cands, 3]: r0 x r1, r0 x r2, r1 x r2
    best = (cands * cands).sum(-1).argmax(-1)
    n = _unit(torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 3))[..., 0, :])
    uw = _orthonormal_basis(n)  # [B, 3, 2, 3]
    quw = _mm(_mm(uw, D0), uw.transpose(-1, -2))  # [B, 3, 2, 2]: the form on the plane
    # Prefer the root whose restricted form is most clearly indefinite.
    fro2 = (D0 * D0).sum((-1, -2)).clamp_min(1e-300)
    qb = quw[..., 0, 1]
    indef = torch.addcmul(qb * qb, quw[..., 0, 0], quw[..., 1, 1], value=-1.0) / fro2
    indef = torch.where(rvalid & torch.isfinite(indef), indef, -one)
    kbest = indef.argmax(-1)[:, None, None, None].expand(-1, 1, 2, -1)  # [B, 1, 2, .]
    uw = torch.gather(uw, 1, kbest.expand(-1, -1, -1, 3))[:, 0]  # [B, 2, 3]
    quw = torch.gather(quw, 1, kbest.expand(-1, -1, -1, 2))[:, 0]  # [B, 2, 2]
    lines, lok = _factor_form(quw)  # [B, 2, 2]: alpha (Lambda.u) + beta (Lambda.w) = 0
    good &= lok
    normals = _unit(_mm(lines, uw))  # [B, 2, 3]

    # On each plane, a13 M12 - a12 M13 vanishes on two rays.
    ef = _orthonormal_basis(normals)  # [B, 2, 2, 3]
    ehf = _mm(_mm(ef.reshape(-1, 4, 3), hmat).view(ef.shape), ef.transpose(-1, -2))  # [B,2,2,2]
    rays_coef, rok = _factor_form(ehf)
    # Direction on the ray: alpha s + beta t = 0 -> (s, t) = (beta, -alpha): alpha (-f) + beta e.
    fe = torch.stack([-ef[:, :, 1], ef[:, :, 0]], -2)  # [B, 2, 2, 3]
    dirs = _mm(rays_coef, fe).reshape(-1, 4, 3)  # [B, 4, 3]
    m12 = mats[:, 0]
    q12 = (_mm(dirs, m12) * dirs).sum(-1)
    lam = dirs * torch.sqrt((a12n[:, None] / q12.clamp_min(1e-300)).clamp_min(0.0))[..., None]
    lam = torch.where(lam.sum(-1, keepdim=True) < 0, -lam, lam)  # depths positive
    sol_ok = (good[:, None] & rok)[:, :, None].expand(-1, 2, 2).reshape(-1, 4) & (q12 > 0)

    # Newton polish of the depths on the three conics Lambda^T M_k Lambda = a_k (3x3 systems by
    # cofactors); the Jacobian rows are 2 M_k Lambda.
    mats_s = mats[:, None]  # [B, 1, 3, 3, 3]
    an_s = an[:, None]  # [B, 1, 3]

    def conic(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ml = (mats_s * lam[:, :, None, None, :]).sum(-1)  # [B, 4, 3 conics, 3]: M_k Lambda
        return (ml * lam[:, :, None]).sum(-1) - an_s, ml

    for _ in range(refine_steps):
        r, ml = conic(lam)
        cofj, det = _cofactors(2.0 * ml)
        okd = det.abs() > 1e-12
        step = _mm(r[..., None, :], cofj)[..., 0, :] / torch.where(okd, det, one)[..., None]
        lam = torch.where(okd[..., None], lam - step, lam)

    res, _ = conic(lam)
    # (NaN fails lam > 0; an infinite depth gives an infinite residual.)
    sol_ok &= (lam > 0).all(-1) & (res.abs().amax(-1) < 1e-6)

    # Pose from the two triads; depths back to metric scale.
    P = (lam * torch.sqrt(sc)[:, None, None])[..., None] * y[:, None]  # [B, 4, 3 points, 3]
    pd = P[..., 0:1, :] - P[..., 1:, :]  # [B, 4, 2, 3]: p1 - p2, p1 - p3
    p12, p13 = pd[..., 0, :], pd[..., 1, :]
    Y = torch.stack([p12, p13, torch.linalg.cross(p12, p13, dim=-1)], -1)  # [B, 4, 3, 3] columns
    Xt = torch.cat([dx[:, 0, 1:], cr[:, None]], -2)  # [B, 3, 3] rows d12, d13, cross
    # R X = Y with X = Xt^T: X^-1 = adj(X) / det = cof(Xt) / det(Xt).
    cofx, detx = _cofactors(Xt)
    Xinv = cofx / torch.where(detx.abs() > 0, detx, one)[:, None, None]
    R = _mm(Y.view(-1, 12, 3), Xinv).view(Y.shape)
    t = P[..., 0, :] - (R * x[:, None, None, 0]).sum(-1)
    orth = (_mm(R.transpose(-1, -2), R) - eye).abs().amax((-1, -2))  # NaN / inf fail too
    sol_ok &= (orth < 1e-6) & (_det3(R) > 0) & torch.isfinite(t).all(-1)
    R = torch.where(sol_ok[..., None, None], R, eye)
    t = torch.where(sol_ok[..., None], t, zero0)
    return R, t, sol_ok
