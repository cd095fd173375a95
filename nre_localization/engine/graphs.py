"""CUDA-graph capture and replay of fixed-shape engine stages, with an eager fallback.

A stage is a pure function of tensors (Python constants baked in, all part of the cache ``key``).
The first call for a key captures it (after a warm-up on a side stream); later calls copy their
inputs into the captured buffers and replay. Any failure to capture is remembered per key and
the stage runs eagerly from then on (:func:`status` reports it, and a warning is printed once per
key). Shapes vary per frame only through the number of points, which the solver pads to power-of-two
buckets, so few graphs exist.

All graphs of a device share one memory pool. This is safe because (1) stages replay one after
the other on one stream, never concurrently; (2) every graph's static inputs and outputs stay
referenced by its cache entry, so what one capture reuses from another is only scratch memory
(freed within that capture); (3) :func:`call` returns *copies* of the static outputs, so a result
outlives the next replay of its graph (with ``copy_outputs=False`` the caller gets the static
outputs themselves and must copy them before the next replay: the solver's single-graph path
copies them to the host at once). Static *input* buffers are shared between graphs too (see
:func:`_static_inputs`): each replay copies its inputs in first. Peak memory is then the live static buffers plus the
largest single stage's scratch, not the sum over stages. Constants the stage read from
:mod:`nre_localization.engine.consts` are kept alive with the graph. Every warm-up runs on one
persistent side stream per device (not a fresh stream per capture: cuBLAS keeps a workspace per
stream it has seen, which with the device's 32 pooled streams added up to ~1 GiB).

Compiled stages (``SolverConfig.compile_*``, :mod:`nre_localization.engine.compiled`) need no
special handling: the two warm-up runs trace and compile them for the captured shapes, and the
capture records the generated kernels.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

from nre_localization.engine import consts

__all__ = [
    "Padded",
    "bucket_size",
    "call",
    "clear",
    "debug_dump_to",
    "failed",
    "materialize",
    "new_epoch",
    "status",
]


@dataclass(frozen=True)
class Padded:
    """A graph input given with fewer rows than its static buffer: ``tensor [m, ...]`` fills rows
    ``[0, m)`` of a ``[rows, ...]`` buffer whose other rows are zero. The solver passes its
    per-point inputs this way: one copy into the captured buffer instead of padding them into a
    new tensor first (three host-side launches fewer per input, which count on the tracking
    path)."""

    tensor: torch.Tensor
    rows: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.rows, *self.tensor.shape[1:])


Input = torch.Tensor | Padded


def materialize(inputs: tuple[Input, ...]) -> tuple[torch.Tensor, ...]:
    """The inputs as plain tensors (``Padded`` ones padded with zero rows)."""
    out = []
    for x in inputs:
        if isinstance(x, Padded):
            t = x.tensor
            extra = x.rows - int(t.shape[0])
            x = torch.cat([t, t.new_zeros((extra, *t.shape[1:]))]) if extra > 0 else t
        out.append(x)
    return tuple(out)


@dataclass
class _Entry:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]
    keep: tuple[torch.Tensor, ...]  # constants the graph reads


_CACHE: dict[Hashable, _Entry] = {}
_POOLS: dict[int | None, Any] = {}  # torch.cuda.graph_pool_handle() per device
# One warm-up stream per device for every capture. A fresh torch.cuda.Stream() per capture would
# cycle through the device's pool of 32 streams, and cuBLAS keeps a workspace (32 MiB on sm90)
# for every (handle, stream) pair it has run on, never freed: up to ~1 GiB of allocated memory.
_STREAMS: dict[int | None, Any] = {}
_INPUTS: dict[tuple[object, ...], torch.Tensor] = {}  # shared static inputs (_static_inputs)
# Static input buffer (by id) -> (source tensor, its version) it was last filled from, this epoch.
_FILLED: dict[int, tuple[weakref.ReferenceType[torch.Tensor], int]] = {}
# Static input buffer (by id) -> rows that may be non-zero (absent: all of them), for Padded fills.
_ROWS: dict[int, int] = {}
_FAILED: dict[Hashable, str] = {}
_REPLAYS: dict[str, int] = {}
_DUMP: dict[str, Any] = {"dir": None, "files": {}}  # see debug_dump_to


def bucket_size(n: int, minimum: int = 64) -> int:
    """Padded point count: the next power of two ``>= n`` (at least ``minimum``)."""
    b = minimum
    while b < n:
        b *= 2
    return b


def clear() -> None:
    """Drop every captured graph (frees their memory pools)."""
    _CACHE.clear()
    _FAILED.clear()
    _REPLAYS.clear()
    _POOLS.clear()
    _INPUTS.clear()
    _FILLED.clear()
    _ROWS.clear()


def new_epoch() -> None:
    """Forget which sources the static input buffers were filled from (the solver calls it at the
    start of every solve). Within an epoch :func:`call` skips the copy into a static input buffer
    that already holds the same source tensor object at the same version counter: the stages of
    one solve pass the same points and maps to several graphs, whose shared buffers (see
    :func:`_static_inputs`) then get them once. Across epochs every input is copied again, so a
    caller's tensor written behind autograd's back (DLPack, a NumPy view) is never stale."""
    _FILLED.clear()


def _fill(dst: torch.Tensor, x: Input) -> None:
    """``dst.copy_(x)`` unless ``dst`` already holds ``x`` (this epoch, same version); a
    :class:`Padded` input fills the leading rows and zeroes the rows a previous fill left."""
    src = x.tensor if isinstance(x, Padded) else x
    # Inference tensors (made under torch.inference_mode, as the Localizer's features are) have
    # no version counter: they are always copied.
    tracked = not src.is_inference()
    last = _FILLED.get(id(dst))
    if tracked and last is not None and last[0]() is src and last[1] == src._version:
        return
    if isinstance(x, Padded):
        m = int(src.shape[0])
        dst[:m].copy_(src)
        used = _ROWS.get(id(dst), int(dst.shape[0]))
        if used > m:
            dst[m:used].zero_()
        _ROWS[id(dst)] = m
    else:
        dst.copy_(src)
        _ROWS.pop(id(dst), None)
    if not tracked:
        _FILLED.pop(id(dst), None)
        return
    try:
        _FILLED[id(dst)] = (weakref.ref(src), src._version)
    except TypeError:  # not weak-referenceable: always copied
        _FILLED.pop(id(dst), None)


def debug_dump_to(directory: str | None) -> None:
    """Dump every graph captured from now on as a DOT file into ``directory`` (``None``: stop);
    :func:`status` lists them under ``dumps`` (stage name -> file). For benchmarks: the node
    types (kernels, memsets, copies) of each captured stage."""
    _DUMP["dir"] = directory
    _DUMP["files"] = {}


def failed(key: Hashable) -> bool:
    """Whether capturing ``key`` (for any input shapes) failed before (it then runs eagerly)."""
    return any(isinstance(k, tuple) and k[0] == key for k in _FAILED)


def status() -> dict[str, object]:
    """Captured keys, failures (key -> error), replay counts per stage name, and the stage names
    captured / failed (``captured_stages``, ``failed_stages``)."""
    return {
        "captured": [str(k) for k in _CACHE],
        "failed": {str(k): v for k, v in _FAILED.items()},
        "replays": dict(_REPLAYS),
        "captured_stages": sorted({_name(k) for k in _CACHE}),
        "failed_stages": {_name(k): v for k, v in _FAILED.items()},
        "dumps": dict(_DUMP["files"]),
    }


def call(
    key: Hashable,
    fn: Callable[..., tuple[torch.Tensor, ...]],
    inputs: tuple[Input, ...],
    warmup: int = 2,
    copy_outputs: bool = True,
) -> tuple[torch.Tensor, ...]:
    """``fn(*inputs)`` through a CUDA graph cached under ``key`` (eager if capture failed).

    ``fn`` must only read its arguments and Python constants, must not synchronise with the host,
    and returns a tuple of tensors. Returned tensors are fresh copies (``copy_outputs=False``:
    the graph's own output buffers, valid until its next replay - for a caller that copies them
    to the host at once). The cache key is extended with the inputs' shapes and dtypes, so a
    stage called with another point bucket or map size captures a graph of its own instead of
    replaying one of the wrong shape. Inputs may be :class:`Padded`.
    """
    key = (key, tuple((tuple(x.shape), _dtype(x)) for x in inputs))
    entry = _CACHE.get(key)
    if entry is None:
        if key in _FAILED:
            return fn(*materialize(inputs))
        static_in = _static_inputs(inputs)
        try:
            side = _STREAMS.get(static_in[0].device.index)
            if side is None:
                side = _STREAMS[static_in[0].device.index] = torch.cuda.Stream(
                    device=static_in[0].device
                )
            side.wait_stream(torch.cuda.current_stream(static_in[0].device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    fn(*static_in)
            torch.cuda.current_stream(static_in[0].device).wait_stream(side)
            dev = static_in[0].device
            pool = _POOLS.get(dev.index)
            if pool is None:
                pool = _POOLS[dev.index] = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            dump = _DUMP["dir"]
            if dump is not None:
                with contextlib.suppress(Exception):  # a diagnostic: never fails the capture
                    graph.enable_debug_mode()
            with torch.cuda.graph(graph, pool=pool):
                static_out = fn(*static_in)
            if dump is not None:
                _dump(graph, f"{_name(key)}_{len(_DUMP['files'])}", dump)
            entry = _Entry(graph, static_in, tuple(static_out), consts.live())
            _CACHE[key] = entry
        except Exception as err:  # noqa: BLE001 - any capture problem means: run eagerly
            _FAILED[key] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print(
                f"nre_localization: CUDA-graph capture of stage {_name(key)!r} failed, running it "
                f"eagerly: {_FAILED[key]}",
                file=sys.stderr,
                flush=True,
            )
            torch.cuda.synchronize()
            return fn(*materialize(inputs))
    for dst, src in zip(entry.inputs, inputs, strict=True):
        _fill(dst, src)
    entry.graph.replay()
    name = _name(key)
    _REPLAYS[name] = _REPLAYS.get(name, 0) + 1
    if not copy_outputs:
        return entry.outputs
    return tuple(o.clone() for o in entry.outputs)


def _dtype(x: Input) -> torch.dtype:
    return x.tensor.dtype if isinstance(x, Padded) else x.dtype


def _static_inputs(inputs: tuple[Input, ...]) -> tuple[torch.Tensor, ...]:
    """Static input buffers for a new graph, shared between graphs: the ``k``-th input of a given
    device, shape and dtype of every graph is the same (contiguous) buffer.

    Safe because every replay first copies its own inputs into its buffers (so a buffer holds what
    the graph being replayed expects, whoever wrote it before), graphs replay one at a time and
    never write their inputs, and within one graph distinct inputs get distinct buffers. The
    stages of a solve pass the same big tensors (fine maps, coarse maps) to several graphs, which
    then need one copy instead of one each."""
    seen: dict[tuple[object, ...], int] = {}
    out = []
    for x in inputs:
        t = x.tensor if isinstance(x, Padded) else x
        sig = (t.device.type, t.device.index, tuple(x.shape), t.dtype)
        k = seen.get(sig, 0)
        seen[sig] = k + 1
        buf = _INPUTS.get((*sig, k))
        if buf is None:
            buf = _INPUTS[(*sig, k)] = torch.zeros(x.shape, dtype=t.dtype, device=t.device)
            _ROWS[id(buf)] = 0
        _fill(buf, x)
        out.append(buf)
    return tuple(out)


def _dump(graph: torch.cuda.CUDAGraph, name: str, directory: str) -> None:
    path = f"{directory}/{name}.dot"
    try:
        graph.debug_dump(path)
    except Exception as err:  # noqa: BLE001 - a diagnostic only
        _DUMP["files"][name] = f"error: {type(err).__name__}: {err}"
        return
    _DUMP["files"][name] = path


def _name(key: Hashable) -> str:
    while isinstance(key, tuple) and key:
        key = key[0]
    return str(key)
