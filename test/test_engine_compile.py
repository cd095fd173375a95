"""The opt-in torch.compile path (engine/compiled.py) and the formulations it traces.

- The Inductor-friendly formulations (``gnc.fusing()``) run eagerly give the same poses as the
  default ones (cheap: no compiler).
- Compiled solves (Inductor on the CPU: needs a C++ compiler) give the same poses as eager ones,
  every unit compiles whole (``fullgraph``), and a second solve compiles nothing new.
- A unit that cannot be compiled runs eagerly and is reported; ``const`` tables become literals
  while tracing (no guard on the constant cache, so later constants cause no recompilation).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from nre_localization.engine import compiled as C
from nre_localization.engine import gnc
from nre_localization.engine.consts import const
from nre_localization.engine.rng import _hash_uniform, hash_uniform
from nre_localization.engine.solver import solve
from nre_localization.engine.synthetic import make_planted_scene
from nre_localization.engine.types import SolverConfig
from nre_localization.geometry.cameras import Camera

PINHOLE = Camera.pinhole(250.0, 250.0, 159.5, 119.5, 320, 240)
OPENCV = Camera("OPENCV", 320, 240, (250.0, 255.0, 161.0, 118.0, -0.15, 0.03, 0.001, -0.001))
needs_cxx = pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
    reason="Inductor's CPU backend needs a C++ compiler",
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("cam", [PINHOLE, OPENCV], ids=lambda c: c.model)
def test_fused_formulations_match_eager(monkeypatch: pytest.MonkeyPatch, cam: Camera) -> None:
    scene = make_planted_scene(cam, 300, seed=11, noise_px=0.2)
    ref = solve(scene.query, scene.points, cam)
    ref_t = solve(scene.query, scene.points, cam, ref.T_cam_world)
    monkeypatch.setattr(gnc, "fusing", lambda: True)
    res = solve(scene.query, scene.points, cam)
    res_t = solve(scene.query, scene.points, cam, ref.T_cam_world)
    assert res.reliable and res_t.reliable
    assert _diff(res.T_cam_world, ref.T_cam_world) < 2e-5
    assert _diff(res_t.T_cam_world, ref_t.T_cam_world) < 2e-5
    assert res.n_informative == ref.n_informative
    rel = _diff(res.covariance, ref.covariance) / float(ref.covariance.abs().max())
    assert rel < 1e-3


def test_solve6_unrolled_and_retract_fused() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    A = a @ a.T + 0.1 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    assert _diff(gnc._solve6_unrolled(A, b), torch.linalg.solve(A, b)) < 1e-9
    assert not torch.isfinite(gnc._solve6_unrolled(-A, b)).all()  # not PD: NaN, rejected step
    xi = torch.randn(6, generator=g, dtype=torch.float64) * 0.3
    T = torch.eye(4, dtype=torch.float64)
    T[:3, 3] = torch.tensor([0.5, -1.0, 3.0], dtype=torch.float64)
    scene = make_planted_scene(PINHOLE, 20, seed=1)
    prob = gnc.GncProblem(
        scene.points.xyz,
        _dummy_maps(),
        PINHOLE.cell_camera(2),
        (1.0,),
        1,
    )
    k = gnc._consts(prob)
    assert _diff(gnc._retract_fused(xi, T), gnc._retract(xi, T, k)) < 1e-12


def _dummy_maps():  # noqa: ANN202
    from nre_localization.engine.loss_maps import InfoMaps

    return InfoMaps(torch.zeros(20, 9, 9), torch.zeros(20, 2), 3, 240, 320, 2, 11.0)


def test_hash_uniform_is_cached_and_unchanged() -> None:
    a = hash_uniform((100, 32), 3, 1, "cpu", torch.float64)
    b = hash_uniform((100, 32), 3, 1, "cpu", torch.float64)
    assert a is b  # built once: no kernels when a captured stage asks again
    assert torch.equal(a, _hash_uniform((100, 32), 3, 1, "cpu", torch.float64))


def test_compile_failure_falls_back_to_eager() -> None:
    def branchy(x: torch.Tensor) -> torch.Tensor:
        if float(x.sum()) > 0:  # a host read: fullgraph refuses it
            return x * 2
        return x

    fn = C.compiled(branchy, "test_branchy")
    x = torch.ones(3)
    assert torch.equal(fn(x), x * 2)
    assert "test_branchy" in C.status()["failed"]


def test_const_is_a_literal_while_tracing() -> None:
    """No guard on the constant cache: creating other constants later recompiles nothing."""
    from torch._dynamo.utils import counters

    def f(x: torch.Tensor) -> torch.Tensor:
        return x * const([1.0, 2.0, 7.5], torch.float32, x.device) + const(
            0.25, torch.float32, "cpu"
        )

    cf = torch.compile(f, backend="eager", dynamic=False, fullgraph=True)
    x = torch.ones(3)
    torch._dynamo.reset()
    counters.clear()
    out = cf(x)
    const([9.0, 9.5], torch.float32, "cpu")  # the cache changes between the calls
    assert torch.equal(cf(x), out)
    assert torch.equal(out, f(x))
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
@needs_cxx
@pytest.mark.parametrize("only_gnc", [False, True])
def test_compiled_solve_matches_eager(only_gnc: bool) -> None:
    """GNC slots, Newton steps, finalisation, MSAC and fine maps compiled by Inductor (CPU):
    same poses as eager up to float summation order (measured 1e-7 on bench_engine's N = 1000
    scene, 1.2e-5 here: the fused reductions add in another order and the loops stop one
    near-tied step apart, as CPU vs CUDA do), nothing falls back, and a second solve compiles
    nothing new."""
    cam = PINHOLE
    scene = make_planted_scene(cam, 150, seed=4, noise_px=0.3, dim_fine=64)
    base = dict(msac_hypotheses=128, tracking_fallback=False)
    whole = not only_gnc  # compile_gnc alone compiles MSAC's scoring instead of the whole stage
    cfg = SolverConfig(**base, compile_gnc=True, compile_msac=whole, compile_maps=whole)
    ref = solve(scene.query, scene.points, cam, None, SolverConfig(**base))
    ref_t = solve(scene.query, scene.points, cam, ref.T_cam_world, SolverConfig(**base))
    C.reset()
    res = solve(scene.query, scene.points, cam, None, cfg)
    res_t = solve(scene.query, scene.points, cam, ref.T_cam_world, cfg)
    st = C.status()
    units = {"gnc_slot", "newton_terms", "newton_step", "finalize"}
    units |= {"msac_scoring"} if only_gnc else {"msac", "fine_maps"}
    failed = {k: v for k, v in st["failed"].items() if k in units}  # type: ignore[attr-defined]
    assert failed == {}, failed
    assert units <= set(st["calls"]), st["calls"]  # (compiled here or by an earlier test)
    assert _diff(res.T_cam_world, ref.T_cam_world) < 5e-5
    assert _diff(res_t.T_cam_world, ref_t.T_cam_world) < 5e-5
    assert res.reliable and res_t.reliable
    compiles = dict(st["compiles"])  # type: ignore[call-overload]
    again = solve(scene.query, scene.points, cam, None, cfg)
    assert C.status()["compiles"] == compiles  # guards hold: no recompilation
    assert _diff(again.T_cam_world, res.T_cam_world) == 0.0


def test_gauss_jordan_linear_solver_matches_cholesky() -> None:
    """``SolverConfig.linear_solver="gauss_jordan"`` (no library call in the eager GNC / Newton
    steps) gives the Cholesky poses on the planted scenes (damped SPD systems): each solve agrees
    to ~1e-12, the loops' accept / convergence tests on near-tied costs can then stop a step apart
    (measured 1.4e-5 here, as the fused formulations above)."""
    for cam in (PINHOLE, OPENCV):
        scene = make_planted_scene(cam, 300, seed=11, noise_px=0.2)
        ref = solve(scene.query, scene.points, cam)
        gj = solve(scene.query, scene.points, cam, None, SolverConfig(linear_solver="gauss_jordan"))
        assert _diff(gj.T_cam_world, ref.T_cam_world) < 5e-5
        assert abs(gj.cost_ratio - ref.cost_ratio) < 1e-5
        assert gj.n_informative == ref.n_informative and gj.reliable == ref.reliable
        ref_t = solve(scene.query, scene.points, cam, ref.T_cam_world)
        cfg = SolverConfig(linear_solver="gauss_jordan")
        gj_t = solve(scene.query, scene.points, cam, ref.T_cam_world, cfg)
        assert _diff(gj_t.T_cam_world, ref_t.T_cam_world) < 5e-5
    g = torch.Generator().manual_seed(3)
    for _ in range(20):  # damped normal matrices of very different scales per axis
        a = torch.randn(40, 6, generator=g, dtype=torch.float64) * torch.logspace(0, 4, 6)
        A = a.T @ a
        A = A + 1e-3 * torch.diag(A.diagonal())
        b = torch.randn(6, generator=g, dtype=torch.float64)
        x = torch.linalg.solve(A, b)
        for method in ("gauss_jordan", "cholesky"):
            rel = _diff(gnc._solve6(A, b, method), x) / float(x.abs().max())
            assert rel < 1e-8, (method, rel)


def test_linear_solver_auto_resolves_per_device() -> None:
    """The default ``linear_solver="auto"`` is the Cholesky solver on the CPU (bit-identical poses)
    and an unknown name is a configuration error."""
    from nre_localization.errors import ConfigError

    assert SolverConfig().linear_solver == "auto"
    scene = make_planted_scene(PINHOLE, 200, seed=5, noise_px=0.2)
    auto = solve(scene.query, scene.points, PINHOLE)
    chol = solve(scene.query, scene.points, PINHOLE, None, SolverConfig(linear_solver="cholesky"))
    assert torch.equal(auto.T_cam_world, chol.T_cam_world)
    with pytest.raises(ConfigError):
        SolverConfig(linear_solver="lu")
