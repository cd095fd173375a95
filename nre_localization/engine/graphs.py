"""CUDA-graph capture and replay of fixed-shape engine stages, with an eager fallback.

A stage is a pure function of tensors (Python constants baked in, all part of the cache ``key``).
The first call for a key captures it (after a warm-up on a side stream); later calls copy their
inputs into the captured buffers and replay. Any failure to capture is remembered per key and
the stage runs eagerly from then on (:func:`status` reports it, and a warning is printed once per
key). Shapes vary per frame only through the number of points, which the solver pads to power-of-two
buckets, so few graphs exist.

All graphs of a device share one memory pool: stages replay one after the other on one stream, and
every graph's static inputs and outputs stay referenced by its cache entry, so what one capture
reuses from another is only scratch memory. Peak memory is then the live static buffers plus the
largest single stage's scratch, not the sum over stages. Constants the stage read from
:mod:`nre_localization.engine.consts` are kept alive with the graph.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

from nre_localization.engine import consts

__all__ = ["bucket_size", "call", "clear", "failed", "status"]


@dataclass
class _Entry:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]
    keep: tuple[torch.Tensor, ...]  # constants the graph reads


_CACHE: dict[Hashable, _Entry] = {}
_POOLS: dict[int | None, Any] = {}  # torch.cuda.graph_pool_handle() per device
_FAILED: dict[Hashable, str] = {}
_REPLAYS: dict[str, int] = {}


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
    }


def call(
    key: Hashable,
    fn: Callable[..., tuple[torch.Tensor, ...]],
    inputs: tuple[torch.Tensor, ...],
    warmup: int = 2,
) -> tuple[torch.Tensor, ...]:
    """``fn(*inputs)`` through a CUDA graph cached under ``key`` (eager if capture failed).

    ``fn`` must only read its arguments and Python constants, must not synchronise with the host,
    and returns a tuple of tensors. Returned tensors are fresh copies. The cache key is extended
    with the inputs' shapes and dtypes, so a stage called with another point bucket or map size
    captures a graph of its own instead of replaying one of the wrong shape.
    """
    key = (key, tuple((tuple(x.shape), x.dtype) for x in inputs))
    entry = _CACHE.get(key)
    if entry is None:
        if key in _FAILED:
            return fn(*inputs)
        static_in = tuple(x.clone() for x in inputs)
        try:
            side = torch.cuda.Stream(device=static_in[0].device)
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
            with torch.cuda.graph(graph, pool=pool):
                static_out = fn(*static_in)
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
            return fn(*inputs)
    for dst, src in zip(entry.inputs, inputs, strict=True):
        dst.copy_(src)
    entry.graph.replay()
    name = _name(key)
    _REPLAYS[name] = _REPLAYS.get(name, 0) + 1
    return tuple(o.clone() for o in entry.outputs)


def _name(key: Hashable) -> str:
    while isinstance(key, tuple) and key:
        key = key[0]
    return str(key)
