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


def _cubic_real_roots(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real roots of ``g^3 + a g^2 + b g + c`` -> ``(roots [..., 3], valid [..., 3])``."""
    p = b - a * a / 3.0
    q = 2.0 * a * a * a / 27.0 - a * b / 3.0 + c
    disc = q * q / 4.0 + p * p * p / 27.0
    three = disc < 0  # three distinct real roots (then p < 0)
    # Trigonometric form.
    pn = torch.where(three, p, -torch.ones_like(p))
    m = 2.0 * torch.sqrt(-pn / 3.0)
    arg = (3.0 * q / (pn * m)).clamp(-1.0, 1.0)
    th = torch.acos(arg) / 3.0
    k = torch.arange(3, dtype=a.dtype, device=a.device) * (2.0 * math.pi / 3.0)
    t3 = m[..., None] * torch.cos(th[..., None] - k)
    # Cardano (one real root).
    sd = torch.sqrt(disc.clamp_min(0.0))
    u1, u2 = -q / 2.0 + sd, -q / 2.0 - sd
    t1 = torch.sign(u1) * u1.abs().pow(1.0 / 3.0) + torch.sign(u2) * u2.abs().pow(1.0 / 3.0)
    t = torch.where(three[..., None], t3, t1[..., None].expand_as(t3))
    g = t - a[..., None] / 3.0
    aa, bb, cc = a[..., None], b[..., None], c[..., None]
    for _ in range(2):  # Newton polish
        f = ((g + aa) * g + bb) * g + cc
        df = (3.0 * g + 2.0 * aa) * g + bb
        ok = df.abs() > 1e-30
        g = torch.where(ok, g - f / torch.where(ok, df, torch.ones_like(df)), g)
    valid = torch.stack([torch.ones_like(three), three, three], dim=-1)
    return g, valid


def _det3(m: torch.Tensor) -> torch.Tensor:
    """Determinant of ``[..., 3, 3]`` as ``r0 . (r1 x r2)`` (closed form, no LU)."""
    return (m[..., 0, :] * torch.linalg.cross(m[..., 1, :], m[..., 2, :], dim=-1)).sum(-1)


def _orthonormal_pair(n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit vectors ``[..., 3]`` orthogonal to unit ``n [..., 3]`` and to each other."""
    ax = n.abs().argmin(-1, keepdim=True)
    e = torch.zeros_like(n).scatter_(-1, ax, 1.0)
    u = torch.linalg.cross(n, e, dim=-1)
    u = u / torch.linalg.norm(u, dim=-1, keepdim=True).clamp_min(1e-300)
    w = torch.linalg.cross(n, u, dim=-1)
    return u, w


def _quad_form(m: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x^T m y`` over the last dims: ``m [..., 3, 3]``, ``x, y [..., 3]`` -> ``[...]``."""
    return (x * (m @ y[..., None])[..., 0]).sum(-1)


def _factor_form(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Factor ``a s^2 + 2 b s t + c t^2`` into two linear forms.

    Returns ``(coef [..., 2, 2], ok [...], disc [...])`` where row ``k`` is ``(alpha, beta)`` with
    ``alpha s + beta t = 0`` one of the two lines; ``ok`` is False when the form is not indefinite.
    Both algebraically equivalent representations are computed and the larger one kept.
    """
    disc = b * b - a * c
    scale = a * a + b * b + c * c
    ok = disc > 1e-14 * scale
    s = torch.sqrt(disc.clamp_min(0.0))
    rows = []
    for sign in (1.0, -1.0):
        r1 = torch.stack([a, b - sign * s], -1)
        r2 = torch.stack([b + sign * s, c], -1)
        use1 = (r1 * r1).sum(-1) >= (r2 * r2).sum(-1)
        rows.append(torch.where(use1[..., None], r1, r2))
    return torch.stack(rows, -2), ok, disc


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
    """
    dt = torch.float64
    y = bearings.to(dt)
    y = y / torch.linalg.norm(y, dim=-1, keepdim=True).clamp_min(1e-300)
    x = points.to(dt)
    y1, y2, y3 = y[:, 0], y[:, 1], y[:, 2]
    x1, x2, x3 = x[:, 0], x[:, 1], x[:, 2]
    c12, c13, c23 = (y1 * y2).sum(-1), (y1 * y3).sum(-1), (y2 * y3).sum(-1)
    d12, d13, d23 = x1 - x2, x1 - x3, x2 - x3
    a12, a13, a23 = (d12 * d12).sum(-1), (d13 * d13).sum(-1), (d23 * d23).sum(-1)
    cr = torch.linalg.cross(d12, d13, dim=-1)
    amax = torch.maximum(torch.maximum(a12, a13), a23)
    # Collinear / coincident world points; (almost) parallel bearing vectors.
    good = ((cr * cr).sum(-1) > 1e-10 * a12 * a13) & (amax > 0)
    good &= (c12 < 1 - 1e-12) & (c13 < 1 - 1e-12) & (c23 < 1 - 1e-12)
    # Normalise scales (distances) so thresholds are scale-free.
    sc = torch.where(amax > 0, amax, torch.ones_like(amax))
    a12n, a13n, a23n = a12 / sc, a13 / sc, a23 / sc

    one, zero = torch.ones_like(c12), torch.zeros_like(c12)

    def sym(
        d0: torch.Tensor,
        d1: torch.Tensor,
        d2: torch.Tensor,
        o01: torch.Tensor,
        o02: torch.Tensor,
        o12: torch.Tensor,
    ) -> torch.Tensor:
        return torch.stack(
            [
                torch.stack([d0, o01, o02], -1),
                torch.stack([o01, d1, o12], -1),
                torch.stack([o02, o12, d2], -1),
            ],
            -2,
        )

    m12 = sym(one, one, zero, -c12, zero, zero)
    m13 = sym(one, zero, one, zero, -c13, zero)
    m23 = sym(zero, one, one, zero, zero, -c23)
    D1 = a23n[:, None, None] * m12 - a12n[:, None, None] * m23
    D2 = a23n[:, None, None] * m13 - a13n[:, None, None] * m23

    # det(D1 + g D2) = c3 g^3 + c2 g^2 + c1 g + c0 via adjugates (columns = cross products of rows).
    def adj(m: torch.Tensor) -> torch.Tensor:
        r0, r1, r2 = m[..., 0, :], m[..., 1, :], m[..., 2, :]
        cols = [
            torch.linalg.cross(r1, r2, dim=-1),
            torch.linalg.cross(r2, r0, dim=-1),
            torch.linalg.cross(r0, r1, dim=-1),
        ]
        return torch.stack(cols, -1)

    adj1, adj2 = adj(D1), adj(D2)
    k0 = _det3(D1)
    k3 = _det3(D2)
    k1 = (adj1 * D2.transpose(-1, -2)).sum((-1, -2))
    k2 = (adj2 * D1.transpose(-1, -2)).sum((-1, -2))
    kmax = torch.stack([k0.abs(), k1.abs(), k2.abs(), k3.abs()], -1).amax(-1)
    good &= k3.abs() > 1e-12 * kmax
    k3s = torch.where(k3.abs() > 0, k3, torch.ones_like(k3))
    roots, rvalid = _cubic_real_roots(k2 / k3s, k1 / k3s, k0 / k3s)  # [B, 3]

    # Degenerate conic for each root; null vector from the largest cross product of its rows.
    D0 = D1[:, None] + roots[..., None, None] * D2[:, None]  # [B, 3, 3, 3]
    r0, r1, r2 = D0[..., 0, :], D0[..., 1, :], D0[..., 2, :]
    cands = torch.stack(
        [
            torch.linalg.cross(r0, r1, dim=-1),
            torch.linalg.cross(r0, r2, dim=-1),
            torch.linalg.cross(r1, r2, dim=-1),
        ],
        -2,
    )  # [B, 3, 3 cands, 3]
    best = (cands * cands).sum(-1).argmax(-1)
    n = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 3))[..., 0, :]
    n = n / torch.linalg.norm(n, dim=-1, keepdim=True).clamp_min(1e-300)
    u, w = _orthonormal_pair(n)
    qa, qb, qc = _quad_form(D0, u, u), _quad_form(D0, u, w), _quad_form(D0, w, w)
    # Prefer the root whose restricted form is most clearly indefinite.
    fro2 = (D0 * D0).sum((-1, -2)).clamp_min(1e-300)
    indef = (qb * qb - qa * qc) / fro2
    indef = torch.where(rvalid & torch.isfinite(indef), indef, torch.full_like(indef, -1.0))
    kbest = indef.argmax(-1)  # [B]

    def pick(t: torch.Tensor) -> torch.Tensor:
        idx = kbest.view(-1, *([1] * (t.dim() - 1))).expand(-1, 1, *t.shape[2:])
        return torch.gather(t, 1, idx)[:, 0]

    u, w, qa, qb, qc = pick(u), pick(w), pick(qa), pick(qb), pick(qc)
    lines, lok, _ = _factor_form(qa, qb, qc)  # [B, 2, 2]: alpha (Lambda.u) + beta (Lambda.w) = 0
    good &= lok
    normals = lines[..., 0:1] * u[:, None] + lines[..., 1:2] * w[:, None]  # [B, 2, 3]
    normals = normals / torch.linalg.norm(normals, dim=-1, keepdim=True).clamp_min(1e-300)

    # On each plane, a13 M12 - a12 M13 vanishes on two rays.
    e, f = _orthonormal_pair(normals)  # [B, 2, 3]
    hmat = (a13n[:, None, None] * m12 - a12n[:, None, None] * m13)[:, None]  # [B, 1, 3, 3]
    ha, hb, hc = _quad_form(hmat, e, e), _quad_form(hmat, e, f), _quad_form(hmat, f, f)
    rays_coef, rok, _ = _factor_form(ha, hb, hc)  # [B, 2 planes, 2 rays, 2]
    # Direction on the ray: alpha s + beta t = 0 -> (s, t) = (beta, -alpha).
    s_, t_ = rays_coef[..., 1], -rays_coef[..., 0]
    dirs = s_[..., None] * e[:, :, None] + t_[..., None] * f[:, :, None]  # [B, 2, 2, 3]
    dirs = dirs.reshape(-1, 4, 3)
    q12 = _quad_form(m12[:, None], dirs, dirs)
    scale = torch.sqrt((a12n[:, None] / q12.clamp_min(1e-300)).clamp_min(0.0))
    lam = dirs * scale[..., None]
    lam = torch.where(lam.sum(-1, keepdim=True) < 0, -lam, lam)  # depths positive
    sol_ok = good[:, None] & rok[:, :, None].expand(-1, 2, 2).reshape(-1, 4) & (q12 > 0)

    # Newton polish of the depths on the three conics (3x3 systems by adjugate).
    a_vec = torch.stack([a12n, a13n, a23n], -1)[:, None]  # [B, 1, 3]
    cs = torch.stack([c12, c13, c23], -1)[:, None]
    for _ in range(refine_steps):
        l1, l2, l3 = lam.unbind(-1)
        r = (
            torch.stack(
                [
                    l1 * l1 + l2 * l2 - 2 * cs[..., 0] * l1 * l2,
                    l1 * l1 + l3 * l3 - 2 * cs[..., 1] * l1 * l3,
                    l2 * l2 + l3 * l3 - 2 * cs[..., 2] * l2 * l3,
                ],
                -1,
            )
            - a_vec
        )
        zz = torch.zeros_like(l1)
        jac = torch.stack(
            [
                torch.stack([2 * l1 - 2 * cs[..., 0] * l2, 2 * l2 - 2 * cs[..., 0] * l1, zz], -1),
                torch.stack([2 * l1 - 2 * cs[..., 1] * l3, zz, 2 * l3 - 2 * cs[..., 1] * l1], -1),
                torch.stack([zz, 2 * l2 - 2 * cs[..., 2] * l3, 2 * l3 - 2 * cs[..., 2] * l2], -1),
            ],
            -2,
        )
        det = _det3(jac)
        okd = det.abs() > 1e-12
        step = (adj(jac) @ r[..., None])[..., 0] / torch.where(okd, det, torch.ones_like(det))[
            ..., None
        ]
        lam = torch.where(okd[..., None], lam - step, lam)

    l1, l2, l3 = lam.unbind(-1)
    res = (
        torch.stack(
            [
                l1 * l1 + l2 * l2 - 2 * cs[..., 0] * l1 * l2,
                l1 * l1 + l3 * l3 - 2 * cs[..., 1] * l1 * l3,
                l2 * l2 + l3 * l3 - 2 * cs[..., 2] * l2 * l3,
            ],
            -1,
        )
        - a_vec
    )
    sol_ok &= (lam > 0).all(-1) & (res.abs().amax(-1) < 1e-6) & torch.isfinite(lam).all(-1)

    # Pose from the two triads; depths back to metric scale.
    lam = lam * torch.sqrt(sc)[:, None, None]
    P = lam[..., None] * y[:, None]  # [B, 4, 3 points, 3]
    p12, p13 = P[..., 0, :] - P[..., 1, :], P[..., 0, :] - P[..., 2, :]
    Y = torch.stack([p12, p13, torch.linalg.cross(p12, p13, dim=-1)], -1)  # columns
    X = torch.stack([d12, d13, cr], -1)[:, None]  # [B, 1, 3, 3]
    detx = _det3(X)
    Xinv = adj(X) / torch.where(detx.abs() > 0, detx, torch.ones_like(detx))[..., None, None]
    R = Y @ Xinv
    t = P[..., 0, :] - (R @ x1[:, None, :, None])[..., 0]
    orth = (R.transpose(-1, -2) @ R - torch.eye(3, dtype=dt, device=R.device)).abs().amax((-1, -2))
    sol_ok &= (orth < 1e-6) & (_det3(R) > 0) & torch.isfinite(R).all((-1, -2))
    sol_ok &= torch.isfinite(t).all(-1)
    eye = torch.eye(3, dtype=dt, device=R.device).expand_as(R)
    R = torch.where(sol_ok[..., None, None], R, eye)
    t = torch.where(sol_ok[..., None], t, torch.zeros_like(t))
    return R, t, sol_ok
