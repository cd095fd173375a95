"""GNC-IRLS pose refinement on information maps (eq. 9), with fixed tensor shapes.

Smoothed cost at scale ``sigma`` (cells):
``E_sigma(T) = - sum_n sum_q a_n(q) k(q - p_n(T))`` with the *normalised* Gaussian
``k(d) = exp(-|d|^2 / 2 sigma^2) / (2 pi sigma^2)`` and ``a = ln|Omega'| - L >= 0`` (information).
Because ``-k`` is concave in ``|d|^2``, its tangent majorises it (majorise-minimise): each
iteration solves the weighted least squares
``(sum_n W_n J_n^T J_n + lambda D) xi = sum_n J_n^T r_n`` with ``W_n = sum_q a k / sigma^2`` and
``r_n = sum_q (a k / sigma^2) (q - p_n)``, ``J_n`` the ``2x6`` cell Jacobian of the reprojection for
``T <- exp(xi) T`` (float64 normal equations, Levenberg-Marquardt damping ``D = diag``).
A step is kept when it lowers ``E_sigma``; ``lambda`` halves on success and doubles on failure.
Graduated non-convexity: ``sigma`` walks down a schedule; a level ends when the relative decrease
falls below ``tol`` or after ``level_iterations`` steps, and the cost is then *recomputed* at the
new ``sigma`` (never compared across scales). The loop runs a fixed number of iterations (a frozen
state after convergence), without host synchronisation, so it can be captured in a CUDA graph.

The window of cells read around each reprojection has radius ``ceil(2.5 sigma_max)``; maps are
zero-padded (``pad >= 2 radius + 1``) so no bounds checks are needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nre_localization.engine.loss_maps import InfoMaps
from nre_localization.geometry.cameras import Camera

__all__ = ["GncProblem", "GncState", "evaluate", "gnc_iterate", "gnc_radius", "gnc_start"]

_FAR = -1.0e6  # window coordinate given to invalid reprojections (lands in the zero padding)


def gnc_radius(sigmas: tuple[float, ...]) -> int:
    """Half-size (cells) of the window read around each reprojection."""
    return max(1, math.ceil(2.5 * max(sigmas)))


@dataclass
class GncProblem:
    """Static inputs: ``xyz [N, 3]`` float32 world points, information maps, the *cell* camera
    (:meth:`Camera.cell_camera` at the maps' stride: it projects to cell coordinates), schedule."""

    xyz: torch.Tensor
    maps: InfoMaps
    camera: Camera
    sigmas: torch.Tensor  # [L] float32
    radius: int

    def __post_init__(self) -> None:
        if self.maps.pad < 2 * self.radius + 1:
            raise ValueError("information maps need pad >= 2 * radius + 1")


@dataclass
class EvalTerms:
    """Terms of one evaluation: ``cost`` (scalar f64), normal matrix ``A [6, 6]`` and vector
    ``b [6]`` (f64); per point ``W [N]``, ``J [N, 2, 6]`` (f32, cells) and, on request, the exact
    per-point Hessian ``Hp [N, 2, 2]`` of the smoothed cost w.r.t. the reprojection."""

    cost: torch.Tensor
    A: torch.Tensor
    b: torch.Tensor
    W: torch.Tensor
    J: torch.Tensor
    Hp: torch.Tensor | None


@dataclass
class _Consts:
    """Device constants built once per loop (fill kernels only: fine inside a graph capture)."""

    off: torch.Tensor  # [K] int64 window offsets -r..r
    lo: torch.Tensor  # [2] float32 clamp bounds of window centres
    hi: torch.Tensor
    f: torch.Tensor | None  # [2] focal (cells), PINHOLE only
    c: torch.Tensor | None  # [2] principal point (cells), PINHOLE only
    jmap: torch.Tensor | None  # [8, 12] monomials -> Jacobian entries, PINHOLE only
    eye3: torch.Tensor  # float64 identities
    eye6: torch.Tensor


def _consts(problem: GncProblem) -> _Consts:
    maps = problem.maps
    dev = problem.xyz.device
    r = problem.radius
    hwin = int(maps.data.shape[1]) - 2 * maps.pad
    wwin = int(maps.data.shape[2]) - 2 * maps.pad
    lo = torch.full((2,), -r - 1.0, device=dev)
    hi = torch.full((2,), float(wwin + r), device=dev)
    hi[1] = float(hwin + r)
    off = torch.arange(-r, r + 1, device=dev)
    eye3 = torch.eye(3, dtype=torch.float64, device=dev)
    eye6 = torch.eye(6, dtype=torch.float64, device=dev)
    cam = problem.camera
    if cam.model != "PINHOLE":
        return _Consts(off, lo, hi, None, None, None, eye3, eye6)
    f = torch.full((2,), cam.fx, device=dev)
    f[1] = cam.fy
    c = torch.full((2,), cam.cx, device=dev)
    c[1] = cam.cy
    # Monomials m = [1/z, x/z, y/z, x y, 1 + x^2, 1 + y^2, x, y] (x, y normalised) -> J rows
    # J_x = fx [1/z, 0, -x/z, -x y, 1 + x^2, -y],  J_y = fy [0, 1/z, -y/z, -(1 + y^2), x y, x]
    # for the left perturbation dX = v + w x X.
    jm = torch.zeros((8, 12), device=dev)
    fx, fy = cam.fx, cam.fy
    for (mi, col), val in {
        (0, 0): fx, (1, 2): -fx, (3, 3): -fx, (4, 4): fx, (7, 5): -fx,
        (0, 7): fy, (2, 8): -fy, (5, 9): -fy, (3, 10): fy, (6, 11): fy,
    }.items():  # fmt: skip
        jm[mi, col] = val
    return _Consts(off, lo, hi, f, c, jm, eye3, eye6)


def _project(
    problem: GncProblem, T: torch.Tensor, k: _Consts
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cells ``[N, 2]``, cell Jacobians ``[N, 2, 6]`` and validity ``[N]`` at pose ``T``.

    Invalid points may carry any finite Jacobian: their weights are zero downstream.
    """
    P = T[:3].to(torch.float32)
    Xc = torch.addmm(P[:, 3], problem.xyz, P[:, :3].t())
    if k.jmap is None or k.c is None or k.f is None:
        cells, J, valid = problem.camera.project_jacobian(Xc)
        return cells, J, valid
    z = Xc[:, 2]
    valid = z > 1e-6
    iz = torch.where(valid, z.reciprocal(), 0.0)
    xy = Xc[:, :2] * iz[:, None]
    cells = torch.addcmul(k.c, xy, k.f)
    mono = torch.cat(
        [iz[:, None], xy * iz[:, None], (xy[:, 0] * xy[:, 1])[:, None], 1.0 + xy * xy, xy], 1
    )
    J = (mono @ k.jmap).view(-1, 2, 6)
    return cells, J, valid


def evaluate(
    problem: GncProblem,
    T: torch.Tensor,
    sigma: torch.Tensor,
    hessian: bool = False,
    consts: _Consts | None = None,
) -> EvalTerms:
    """Smoothed cost and IRLS normal equations at pose ``T [4, 4]`` (f64) and scale ``sigma`` (0-d)."""
    k_ = _consts(problem) if consts is None else consts
    maps = problem.maps
    n = problem.xyz.shape[0]
    kk = 2 * problem.radius + 1
    pad = maps.pad
    wp = int(maps.data.shape[2])

    cells, J, valid = _project(problem, T, k_)
    local = torch.where(valid[:, None], cells - maps.origin, _FAR)
    # Window [c - r, c + r]; far points are clamped to a window lying wholly in the zero padding.
    centre = torch.clamp(torch.round(local), k_.lo, k_.hi).long()
    q = (centre + pad)[:, :, None] + k_.off  # [N, 2, K] padded cell indices
    d = (q - pad).to(local.dtype) - local[:, :, None]  # [N, 2, K]  (q - p)
    g = torch.exp(d * d * (-0.5 / (sigma * sigma)))
    idx = q[:, 1, :, None] * wp + q[:, 0, None, :]
    a = torch.gather(maps.data.view(n, -1), 1, idx.view(n, -1)).view(n, kk, kk)
    # W_qn = a k / sigma^2 with the normalised kernel k = g_x g_y / (2 pi sigma^2).
    tw = a * (g[:, 1, :, None] * g[:, 0, None, :]) * (1.0 / (2.0 * math.pi * sigma**4))
    marg = torch.stack([tw.sum(1), tw.sum(2)], 1)  # [N, 2, K]: x and y marginals
    W = marg[:, 0].sum(1)
    res = (marg * d).sum(2)  # [N, 2] = sum_q W_qn (q - p_n)
    cost = (W.sum() * (-sigma * sigma)).to(torch.float64)

    J64 = J.to(torch.float64)
    Jf = J64.reshape(-1, 6)
    A = (J64 * W.to(torch.float64)[:, None, None]).reshape(-1, 6).t() @ Jf
    b = Jf.t() @ res.to(torch.float64).reshape(-1)
    Hp = None
    if hessian:
        J = J * valid.to(J.dtype)[:, None, None]
        sxx = (marg[:, 0] * d[:, 0] ** 2).sum(1)
        syy = (marg[:, 1] * d[:, 1] ** 2).sum(1)
        sxy = ((tw * d[:, 0, None, :]).sum(2) * d[:, 1]).sum(1)
        inv_s2 = 1.0 / (sigma * sigma)
        Hp = torch.stack(
            [
                torch.stack([W - sxx * inv_s2, -sxy * inv_s2], -1),
                torch.stack([-sxy * inv_s2, W - syy * inv_s2], -1),
            ],
            -2,
        )
    return EvalTerms(cost=cost, A=A, b=b, W=W, J=J, Hp=Hp)


def _solve6(A: torch.Tensor, b: torch.Tensor, method: str = "cholesky") -> torch.Tensor:
    """Solve the SPD (damped) 6x6 system in float64 without host synchronisation.

    ``method="cholesky"``: LAPACK/cuSOLVER; ``"gauss_jordan"``: six unrolled elimination steps in
    plain tensor ops (no library call: always capturable in a CUDA graph). A failed solve gives
    non-finite steps, whose candidate pose the loop then rejects (its cost compares False).
    """
    if method == "cholesky":
        L, _ = torch.linalg.cholesky_ex(A)
        return torch.cholesky_solve(b[:, None], L)[:, 0]
    m = torch.cat([A, b[:, None]], 1)  # [6, 7]
    eye = torch.eye(6, dtype=A.dtype, device=A.device)
    for j in range(6):
        piv = m[j] / m[j, j]  # SPD + damping: no pivoting needed
        m = m - (m[:, j : j + 1] - eye[:, j : j + 1]) * piv[None, :]
    return m[:, 6]


def _apply_exp(xi: torch.Tensor, T: torch.Tensor, eye3: torch.Tensor) -> torch.Tensor:
    """``se3_exp(xi) @ T`` for one twist (f64), branch-free.

    Rodrigues with ``theta = sqrt(|w|^2 + tiny)``: for tiny angles the coefficients lose relative
    precision but multiply terms of order ``theta^2``, so the result stays exact to rounding.
    """
    v, w = xi[:3], xi[3:]
    th2 = w.dot(w)
    th = torch.sqrt(th2 + 1e-300)
    sn, cs = torch.sin(th), torch.cos(th)
    a = sn / th
    b = (1.0 - cs) / (th2 + 1e-300)
    c = (th - sn) / (th2 * th + 1e-300)
    K = torch.linalg.cross(w.expand(3, 3), eye3, dim=-1).t()  # hat(w): column j = w x e_j
    coef = torch.stack([torch.stack([cs, a, b]), torch.stack([1.0 - c * th2, b, c])])  # [2, 3]
    basis = torch.stack([eye3, K, torch.outer(w, w)]).view(3, 9)
    RV = (coef @ basis).view(
        2, 3, 3
    )  # R = cos I + a K + b w w^T; V = (1 - c th^2) I + b K + c w w^T
    top = torch.cat([RV[0], (RV[1] @ v)[:, None]], 1) @ T  # [R_xi | t_xi] @ T
    return torch.cat([top, T[3:]], 0)


@dataclass
class GncState:
    """Loop state (all tensors, fixed shapes)."""

    T: torch.Tensor  # [4, 4] f64
    cost: torch.Tensor  # f64 0-d, at the current sigma
    A: torch.Tensor
    b: torch.Tensor
    lam: torch.Tensor  # f64 0-d
    level: torch.Tensor  # int64 0-d
    it_level: torch.Tensor  # int64 0-d
    refresh: torch.Tensor  # bool 0-d: next iteration re-evaluates T at the (new) sigma
    done: torch.Tensor  # bool 0-d
    iterations: torch.Tensor  # int64 0-d: iterations that did work


def gnc_start(T: torch.Tensor, lambda_init: float) -> GncState:
    """Initial state: the first iteration evaluates ``T`` at the first sigma."""
    dev = T.device
    f64 = torch.float64
    return GncState(
        T=T.to(f64),
        cost=torch.zeros((), dtype=f64, device=dev),
        A=torch.eye(6, dtype=f64, device=dev),
        b=torch.zeros(6, dtype=f64, device=dev),
        lam=torch.full((), lambda_init, dtype=f64, device=dev),
        level=torch.zeros((), dtype=torch.int64, device=dev),
        it_level=torch.zeros((), dtype=torch.int64, device=dev),
        refresh=torch.ones((), dtype=torch.bool, device=dev),
        done=torch.zeros((), dtype=torch.bool, device=dev),
        iterations=torch.zeros((), dtype=torch.int64, device=dev),
    )


def _step(
    problem: GncProblem,
    consts: _Consts,
    st: tuple[torch.Tensor, ...],
    level_iterations: int,
    tol: float,
    lambda_init: float,
    linear_solver: str,
) -> tuple[torch.Tensor, ...]:
    """One GNC-IRLS iteration on the state tuple ``(T, cost, A, b, lam, level, it_level, refresh,
    done, used)`` (see the module docstring)."""
    T, cost, A, b, lam, level, it_level, refresh, done, used = st
    n_levels = int(problem.sigmas.shape[0])
    eye6, eye3 = consts.eye6, consts.eye3
    sigma = torch.gather(problem.sigmas, 0, level.view(1))[0]  # no host sync
    damp = A * (1.0 + lam * eye6) + 1e-12 * eye6  # Levenberg-Marquardt: (1 + lambda) diagonal
    hold = refresh | done
    xi = _solve6(damp, b, linear_solver) * (~hold).to(torch.float64)
    Tc = _apply_exp(xi, T, eye3)
    ev = evaluate(problem, Tc, sigma, consts=consts)
    accept = (refresh | (ev.cost < cost)) & ~done
    small = accept & ~refresh & (cost - ev.cost < tol * cost.abs())
    it_level = torch.where(refresh, 0, it_level + 1)
    level_end = ~hold & (small | (it_level >= level_iterations))
    T = torch.where(accept, Tc, T)
    cost = torch.where(accept, ev.cost, cost)
    A = torch.where(accept, ev.A, A)
    b = torch.where(accept, ev.b, b)
    lam_next = torch.where(accept, lam * 0.5, lam * 2.0).clamp(1e-9, 1e9)
    lam = torch.where(refresh, lambda_init, torch.where(done, lam, lam_next))
    used = used + (~done).to(used.dtype)
    last = level >= n_levels - 1
    done = done | (level_end & last)
    refresh = level_end & ~last
    level = level + refresh.to(level.dtype)
    return T, cost, A, b, lam, level, it_level, refresh, done, used


_COMPILED: dict[str, object] = {}


def _compiled_step() -> object:
    """``torch.compile`` of :func:`_step` (Inductor fuses the per-iteration elementwise work)."""
    if "step" not in _COMPILED:
        _COMPILED["step"] = torch.compile(_step, dynamic=False)
    return _COMPILED["step"]


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
    """Run ``iterations`` GNC-IRLS iterations (see the module docstring).

    ``early_exit`` (CPU only: it synchronises) stops once the state is frozen; results are the
    same as running all iterations. ``compile_step`` runs each iteration through ``torch.compile``
    (opt-in: needs a working Inductor backend; compiles once per shape).
    """
    consts = _consts(problem)
    step = _compiled_step() if compile_step else _step
    st = (state.T, state.cost, state.A, state.b, state.lam, state.level, state.it_level,
          state.refresh, state.done, state.iterations)  # fmt: skip
    for _ in range(iterations):
        if early_exit and bool(st[8]):
            break
        st = step(problem, consts, st, level_iterations, tol, lambda_init, linear_solver)  # type: ignore[operator]
    return GncState(*st)
