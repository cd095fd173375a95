"""CUDA-graph readiness of the solver's stages, checked on the CPU (no GPU needed).

Every stage the solver hands to ``graphs.call`` on CUDA is recorded during a CPU solve run as on
the GPU (points padded to a bucket), then replayed with its inputs on the ``meta`` device: once as
the warm-up (constants get cached, as before a real capture) and once inside ``CaptureCheck``,
which records host->device copies, CPU tensors, host synchronisations and data-dependent shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

import pytest
import torch

from nre_localization.engine import graphs
from nre_localization.engine import solver as S
from nre_localization.engine.graph_check import CaptureCheck
from nre_localization.engine.synthetic import make_planted_scene
from nre_localization.engine.types import SolverConfig
from nre_localization.geometry.cameras import Camera

CAM = Camera.pinhole(250.0, 250.0, 159.5, 119.5, 320, 240)
OPENCV = Camera("OPENCV", 320, 240, (250.0, 255.0, 161.0, 118.0, -0.15, 0.03, 0.001, -0.001))
Record = tuple[
    tuple[Hashable, ...], Callable[..., tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _record_stages(
    monkeypatch: pytest.MonkeyPatch, cam: Camera, method: str, single: bool = False
) -> list[Record]:
    """Run a global and a tracking solve on the CPU along the graph path (one graph per stage,
    or per path with ``single``); return the stages."""
    rec: list[Record] = []

    def run(key, fn, inputs, config, copy_outputs=True):  # noqa: ANN001, ANN202 - as S._run
        inputs = graphs.materialize(inputs)
        if config.cuda_graphs:
            rec.append((key, fn, inputs))
        return fn(*inputs)

    scene = make_planted_scene(cam, 200, seed=5, dim_fine=64)
    cfg = SolverConfig(msac_hypotheses=256, tracking_fallback=False, single_graph=single)
    solve = S.solve_re if method == "re" else S.solve
    plain = solve(scene.query, scene.points, cam, None, cfg)
    monkeypatch.setattr(S, "_run", run)
    # As on CUDA: graphs wherever the config asks (the single-graph path runs its stages inside
    # its own graph with cuda_graphs=False, which must then not be recorded as graphs).
    monkeypatch.setattr(S, "_use_graphs", lambda dev, config: config.cuda_graphs)
    res = solve(scene.query, scene.points, cam, None, cfg)
    # The graph path (points padded to 256, fixed-shape branches) gives the same answer.
    assert res.reliable, res.reasons
    assert (res.T_cam_world - plain.T_cam_world).abs().max() < 1e-6
    assert res.n_informative == plain.n_informative
    solve(scene.query, scene.points, cam, res.T_cam_world, cfg)
    return rec


def _check(fn: Callable[..., object], *inputs: torch.Tensor) -> CaptureCheck:
    meta = tuple(x.to("meta") for x in inputs)
    fn(*meta)  # warm-up, outside the check (as graphs.call does before capturing)
    with CaptureCheck() as chk:
        fn(*meta)
    return chk


@pytest.mark.parametrize(("cam", "method"), [(CAM, "nre"), (OPENCV, "nre"), (CAM, "re")])
def test_every_stage_is_capture_safe(
    monkeypatch: pytest.MonkeyPatch, cam: Camera, method: str
) -> None:
    rec = _record_stages(monkeypatch, cam, method)
    names = {str(k[0]) for k, _, _ in rec}
    argmax_coarse = method == "re" or SolverConfig().coarse_refinement == "argmax"
    level = "re" if argmax_coarse else method  # the coarse level's maps (MSAC + coarse GNC)
    expected = {"coarse_maps", "fine_maps", "finalize", f"msac_{level}", f"coarse_{level}"}
    assert expected | {f"fine_{method}"} <= names
    cfg = SolverConfig()
    for key, fn, inputs in rec:
        chk = _check(fn, *inputs)
        assert not chk.violations, f"stage {key[0]}: {chk.violations[:3]}"
        if cam.model != "PINHOLE":
            continue
        # Launch-count guards (every op is a kernel, ~2 us, in the captured graphs); measured
        # counts in brackets, thresholds a few percent above.
        if key[0] in (f"coarse_{method}", f"fine_{method}"):
            # GNC: ~47 kernels per slot (global 10 slots [475; was 578, 531], tracking 5 [230]).
            slots = cfg.fine_iterations if chk.ops > 300 else cfg.tracking_iterations
            assert chk.ops <= 49 * slots, (key[0], chk.ops)
        if key[0] == f"newton_fine_{method}":
            # Newton: ~65 kernels per evaluation (global 11 [698; was 886, 763], tracking 7
            # [438]).
            assert chk.ops <= 66 * (cfg.polish_iterations + 1), (key[0], chk.ops)
        if key[0] == f"msac_{method}":
            # Vectorised P3P, cached RNG tables, padded-map argmax refinement, one projection
            # GEMM for all poses [449; was 922, 599, 451].
            assert chk.ops <= 470, (key[0], chk.ops)
        if key[0] == "finalize":
            # One evaluation (no normal equations) + batched covariance/verdict terms [82; was
            # 170, 130, 99, 93].
            assert chk.ops <= 86, (key[0], chk.ops)


def test_path_kernel_totals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole-solve launch counts (sum over the captured stages) of both paths: global
    [2289; was 3240, 2662, 2306] and tracking [860; was 1564, 1377, 875]."""
    rec = _record_stages(monkeypatch, CAM, "nre")
    # The recorder lists the global solve's stages first, then the tracking solve's.
    split = next(i for i, (k, _, _) in enumerate(rec) if i > 0 and str(k[0]) == "coarse_maps")
    glob = sum(_check(fn, *inp).ops for _, fn, inp in rec[:split])
    track = sum(_check(fn, *inp).ops for _, fn, inp in rec[split:])
    assert glob <= 2360, glob
    assert track <= 890, track


@pytest.mark.parametrize(("cam", "method"), [(CAM, "nre"), (OPENCV, "nre"), (CAM, "re")])
def test_single_graph_paths_are_capture_safe(
    monkeypatch: pytest.MonkeyPatch, cam: Camera, method: str
) -> None:
    """With ``single_graph`` each path is one stage (the same answer as the plain solve, checked
    in ``_record_stages``), capture-safe, with the launch count of its per-stage sum."""
    rec = _record_stages(monkeypatch, cam, method, single=True)
    assert [str(k[0]) for k, _, _ in rec] == ["solve_global", "solve_tracking"]
    ops = []
    for key, fn, inputs in rec:
        chk = _check(fn, *inputs)
        assert not chk.violations, f"stage {key[0]}: {chk.violations[:3]}"
        ops.append(chk.ops)
    if cam.model == "PINHOLE" and method == "nre":
        # test_path_kernel_totals plus the in-graph input check and padding mask, and the fine
        # window truncation's floor (2 ops per fine evaluation) [2338, 914]
        assert ops[0] <= 2400 and ops[1] <= 940, ops


def test_fused_formulations_are_capture_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Inductor-friendly formulations (taken while torch.compile traces) pass the same
    capture check when run eagerly."""
    from nre_localization.engine import gnc

    rec = _record_stages(monkeypatch, CAM, "nre")
    monkeypatch.setattr(gnc, "fusing", lambda: True)
    for key, fn, inputs in rec:
        chk = _check(fn, *inputs)
        assert not chk.violations, f"stage {key[0]}: {chk.violations[:3]}"


def test_msac_scoring_peak_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """MSAC with 5000 hypotheses at N = 1024 (bucket): scoring temporaries are freed as soon as
    used [measured 135 MB, independent of N; 327 MB when they were kept to the end]."""
    from nre_localization.engine import loss_maps as lm
    from nre_localization.engine.gnc import gnc_radius

    cam = Camera.pinhole(500.0, 500.0, 319.5, 239.5, 640, 480)
    scene = make_planted_scene(cam, 1000, seed=2, dim_fine=16, dim_coarse=32)
    cfg = SolverConfig(msac_hypotheses=5000)
    pts = S._pad_points(scene.points, 1024)
    alive = torch.arange(1024) < 1000
    coarse = lm.build_coarse_maps(scene.query, pts, cfg, alive)
    cinfo = lm.coarse_info_maps(coarse, 2 * gnc_radius(cfg.coarse_sigmas) + 1, alive=alive)
    rec: list[tuple[Callable[..., tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]] = []

    def run(key, fn, inputs, config):  # noqa: ANN001, ANN202 - same signature as S._run
        rec.append((fn, inputs))
        return fn(*inputs)

    monkeypatch.setattr(S, "_run", run)
    monkeypatch.setattr(S, "_use_graphs", lambda dev, config: True)
    S._msac(coarse, cinfo, pts.xyz, cam, cfg, 1000, "x")
    chk = _check(*rec[0][:1], *rec[0][1])
    assert not chk.violations
    assert chk.peak_bytes < 150e6, chk.peak_bytes / 1e6


def test_capture_check_catches_host_copies_and_syncs() -> None:
    """Each pattern that broke (or would break) a capture is reported."""
    x = torch.ones(8)

    def setitem(t: torch.Tensor) -> tuple[torch.Tensor]:
        k = torch.zeros(3, device=t.device)
        k[0] = 2.0  # on CUDA: a 0-d CPU tensor copied in
        return (t[:3] * k,)

    def literal(t: torch.Tensor) -> tuple[torch.Tensor]:
        return (t[:2] * torch.tensor([1.0, 2.0], device=t.device),)

    def no_device(t: torch.Tensor) -> tuple[torch.Tensor]:
        return (t + torch.arange(8).to(t.device),)  # created on the CPU, then copied

    def to_device(t: torch.Tensor) -> tuple[torch.Tensor]:
        return (t * torch.full((), 2.0).to(t.device),)

    def sync(t: torch.Tensor) -> tuple[torch.Tensor]:
        return (t * float(t.sum()),)

    def clean(t: torch.Tensor) -> tuple[torch.Tensor]:
        k = torch.arange(8, device=t.device, dtype=t.dtype)
        return (torch.where(t > 0, t * 2.0 + k, 0.0).clamp(0, 5),)

    for fn in (setitem, literal, no_device, to_device):
        assert _check(fn, x).violations, fn.__name__
    with pytest.raises(RuntimeError):  # meta refuses to read values; the check also records it
        _check(sync, x)
    assert _check(clean, x).violations == []


def test_capture_check_counts_memory() -> None:
    def big(t: torch.Tensor) -> tuple[torch.Tensor]:
        a = t[:, None] * t[None, :]  # 1000 x 1000 float32: 4 MB, freed before the next
        b = a.sum(0)
        del a
        c = t[:, None] + t[None, :]
        return (b + c.sum(0),)

    chk = _check(big, torch.ones(1000))
    assert 4e6 <= chk.peak_bytes < 8.5e6


class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: 'capture' records the stage function and
    its static buffers, 'replay' recomputes it from the static inputs' current contents into the
    static outputs (what a real replay does)."""

    stage: Callable[..., tuple[torch.Tensor, ...]] | None = None  # set while capturing

    def __init__(self) -> None:
        self.fn = _FakeGraph.stage

    def enable_debug_mode(self) -> None:
        pass

    def replay(self) -> None:
        from nre_localization.engine import graphs

        entry = next(e for e in graphs._CACHE.values() if e.graph is self)
        assert self.fn is not None
        for o, n in zip(entry.outputs, self.fn(*entry.inputs), strict=True):
            o.copy_(n)


@pytest.mark.parametrize("single", [False, True])
def test_graph_cache_with_shared_inputs_gives_eager_results(
    monkeypatch: pytest.MonkeyPatch, single: bool
) -> None:
    """graphs.call on the CPU with a fake CUDA-graph API: global and tracking solves (and the
    tracking fallback) through captured-and-replayed stages that share static input buffers equal
    the plain CPU solves, on the first (capture) and later (replay) calls."""
    import contextlib

    @contextlib.contextmanager
    def fake_graph(g: _FakeGraph, pool: object = None):  # noqa: ANN202
        yield

    real_call = graphs.call

    def call(key, fn, inputs, warmup=2, copy_outputs=True):  # noqa: ANN001, ANN202
        _FakeGraph.stage = fn  # a graph created now replays this stage
        return real_call(key, fn, inputs, warmup, copy_outputs)

    class _Stream:
        def __init__(self, device: object = None) -> None:
            pass

        def wait_stream(self, other: object) -> None:
            pass

    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    monkeypatch.setattr(graphs, "call", call)
    monkeypatch.setattr(S, "_use_graphs", lambda dev, config: config.cuda_graphs)
    graphs.clear()
    scene = make_planted_scene(CAM, 200, seed=5, dim_fine=64)
    cfg = SolverConfig(msac_hypotheses=256, single_graph=single)
    ref = S.solve(scene.query, scene.points, CAM, None, cfg)
    prior = ref.T_cam_world
    ref_t = S.solve(scene.query, scene.points, CAM, prior, cfg)
    far = torch.eye(4, dtype=torch.float64)  # a wrong prior: tracking fails, global runs
    far[:3, 3] = torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64)
    far = far @ prior
    ref_f = S.solve(scene.query, scene.points, CAM, far, cfg)
    monkeypatch.setattr(
        S,
        "_run",
        lambda key, fn, inputs, config, copy_outputs=True: (
            call(key, fn, inputs, copy_outputs=copy_outputs)
            if config.cuda_graphs
            else fn(*graphs.materialize(inputs))
        ),
    )
    try:
        for _ in range(2):  # capture, then replay
            g = S.solve(scene.query, scene.points, CAM, None, cfg)
            t = S.solve(scene.query, scene.points, CAM, prior, cfg)
            f = S.solve(scene.query, scene.points, CAM, far, cfg)
            assert (g.T_cam_world - ref.T_cam_world).abs().max() < 1e-6
            assert (t.T_cam_world - ref_t.T_cam_world).abs().max() < 1e-6
            assert (f.T_cam_world - ref_f.T_cam_world).abs().max() < 1e-6
            assert f.path == ref_f.path
        st = graphs.status()
        assert not st["failed"], st["failed"]
        assert st["replays"], st
        # Features made under torch.inference_mode (as the Localizer's): inference tensors
        # have no version counter; their copy into the static buffers must still work.
        with torch.inference_mode():
            qi = S.QueryFeatures(
                scene.query.coarse.clone(), scene.query.fine.clone(), scene.query.coarse_stride, 2
            )
            pi = S.MapPoints(*(t.clone() for t in (scene.points.xyz, scene.points.desc_coarse,
                                                    scene.points.desc_fine)))  # fmt: skip
            assert qi.fine.is_inference()
            gi = S.solve(qi, pi, CAM, None, cfg)
            ti = S.solve(qi, pi, CAM, prior, cfg)
        assert (gi.T_cam_world - ref.T_cam_world).abs().max() < 1e-6
        assert (ti.T_cam_world - ref_t.T_cam_world).abs().max() < 1e-6
        if single:  # one graph per path
            assert {k[0][0] for k in graphs._CACHE} == {"solve_global", "solve_tracking"}
        else:  # static inputs are shared: fewer buffers than graph inputs
            n_inputs = sum(len(e.inputs) for e in graphs._CACHE.values())
            assert len(graphs._INPUTS) < n_inputs
    finally:
        graphs.clear()


def test_static_inputs_are_copied_once_per_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within one epoch (one solve) a static input buffer that already holds the same source
    tensor (same version) is not copied again; a new version or a new epoch copies it."""

    graphs.clear()
    copies: list[int] = []
    real_copy = torch.Tensor.copy_

    def counting_copy(self: torch.Tensor, src: torch.Tensor, *a: object) -> torch.Tensor:
        copies.append(1)
        return real_copy(self, src, *a)

    buf = torch.empty(4)
    src = torch.arange(4.0)
    monkeypatch.setattr(torch.Tensor, "copy_", counting_copy)
    try:
        graphs.new_epoch()
        graphs._fill(buf, src)
        graphs._fill(buf, src)  # same tensor, same version: skipped
        assert len(copies) == 1
        src.add_(1.0)  # in-place change: copied again
        graphs._fill(buf, src)
        assert len(copies) == 2
        other = src.clone()
        graphs._fill(buf, other)  # another tensor: copied
        assert len(copies) == 3
        graphs.new_epoch()
        graphs._fill(buf, other)  # a new solve copies every input again
        assert len(copies) == 4
    finally:
        monkeypatch.undo()
        graphs.clear()
    assert torch.equal(buf, src)


def test_single_graph_path_rejects_bad_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The single-graph path checks finiteness inside its graph: bad inputs still raise the
    detailed InputError (after the replay), good ones do not."""
    from nre_localization.errors import InputError

    monkeypatch.setattr(S, "_use_graphs", lambda dev, config: config.cuda_graphs)
    monkeypatch.setattr(
        S, "_run", lambda key, fn, inputs, config, **kw: fn(*graphs.materialize(inputs))
    )
    scene = make_planted_scene(CAM, 100, seed=3, dim_fine=32)
    cfg = SolverConfig(msac_hypotheses=128)
    ok = S.solve(scene.query, scene.points, CAM, None, cfg)
    assert ok.reliable
    tracked = S.solve(scene.query, scene.points, CAM, ok.T_cam_world, cfg)
    bad = scene.points.desc_fine.clone()
    bad[7, 3] = math.nan
    pts = S.MapPoints(scene.points.xyz, scene.points.desc_coarse, bad)
    with pytest.raises(InputError, match="desc_fine"):
        S.solve(scene.query, pts, CAM, None, cfg)
    nan_prior = ok.T_cam_world.clone()
    nan_prior[0, 3] = math.nan
    with pytest.raises(InputError, match="finite"):
        S.solve(scene.query, scene.points, CAM, nan_prior, cfg)
    skew = ok.T_cam_world.clone()
    skew[0, 0] *= 1.1
    with pytest.raises(InputError, match="orthonormal"):
        S.solve(scene.query, scene.points, CAM, skew, cfg)
    # Device tensors (here the fine features) are checked inside the graph, then raise.
    feats = scene.query.fine.clone()
    feats[0, 5, 5] = math.inf
    q = S.QueryFeatures(scene.query.coarse, feats, scene.query.coarse_stride, 2)
    with pytest.raises(InputError, match="NaN or Inf"):
        S.solve(q, scene.points, CAM, ok.T_cam_world, cfg)
    # Still good after bad frames.
    again = S.solve(scene.query, scene.points, CAM, ok.T_cam_world, cfg)
    assert again.reliable and torch.equal(again.T_cam_world, tracked.T_cam_world)


def test_padded_inputs_fill_leading_rows_and_clear_the_rest() -> None:
    """A Padded input fills the leading rows of its static buffer; rows a previous (longer)
    fill wrote are zeroed; materialize pads the same way."""
    graphs.clear()
    buf = torch.zeros(4, 2)
    graphs._ROWS[id(buf)] = 0
    try:
        graphs.new_epoch()
        graphs._fill(buf, graphs.Padded(torch.ones(3, 2), 4))
        assert torch.equal(buf, torch.tensor([[1.0, 1], [1, 1], [1, 1], [0, 0]]))
        graphs._fill(buf, graphs.Padded(torch.full((1, 2), 2.0), 4))
        assert torch.equal(buf, torch.tensor([[2.0, 2], [0, 0], [0, 0], [0, 0]]))
        graphs._fill(buf, torch.full((4, 2), 3.0))  # a full fill: every row may be non-zero
        graphs._fill(buf, graphs.Padded(torch.ones(2, 2), 4))
        assert torch.equal(buf, torch.tensor([[1.0, 1], [1, 1], [0, 0], [0, 0]]))
        (m,) = graphs.materialize((graphs.Padded(torch.ones(2, 2), 4),))
        assert torch.equal(m, buf)
    finally:
        graphs.clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_single_graph_bad_inputs_on_cuda() -> None:
    """tools/cuda_smoke.py: bad inputs raise after a real replay, the context survives."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "cuda_smoke.py"
    spec = importlib.util.spec_from_file_location("cuda_smoke", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.run_checks(torch.device("cuda"))
