"""Opt-in ``torch.compile`` (Inductor) of the engine's hot loops, with an eager fallback.

``SolverConfig.compile_gnc`` runs the GNC slots, the Newton polish steps, the finalisation's
evaluation and MSAC's hypothesis scoring through :func:`compiled`; ``SolverConfig.compile_msac``
the whole MSAC-P3P stage. On the
GPU Inductor fuses each unit's elementwise work into a few Triton kernels; on the CPU into C++
loops. The units are compiled with

- ``dynamic=False``: every point bucket, map size and sigma gets its own specialised code (the
  solver pads points to power-of-two buckets, so there are few);
- ``fullgraph=True``: a unit that cannot be traced whole is not compiled at all (eager fallback);
- ``allow_buffer_reuse=False``: Inductor's static buffer reuse miscompiled the GNC loop (a buffer
  reused while a view of it, a ``stack`` slice, was still live: the pose came back as zeros, torch
  2.13 CPU; the class of pytorch/pytorch#100314). The caching allocator still recycles the freed
  blocks, so this costs no memory.

Capture in CUDA graphs: :func:`nre_localization.engine.graphs.call` runs a stage twice before it
captures it, so every compiled unit is traced, compiled and run with the captured shapes before
the capture; inside the capture only the generated kernels launch (no compilation, no host copy:
:func:`nre_localization.engine.consts.const` turns tables into compile-time constants while
tracing). Replays do not run Python at all, so dynamo's guards cost nothing there.

A failing compilation is remembered per unit name, reported once on stderr and by :func:`status`,
and the unit runs eagerly from then on. :func:`status` also reports the seconds spent in calls
that compiled (tracing + Inductor + the first run), per unit name: the start-up cost.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["compiled", "reset", "status"]

F = TypeVar("F", bound=Callable[..., Any])

_WRAPPED: dict[Callable[..., Any], Callable[..., Any]] = {}
_FAILED: dict[str, str] = {}
_SECONDS: dict[str, float] = {}
_COMPILES: dict[str, int] = {}
_CALLS: dict[str, int] = {}
_OPTIONS = {"allow_buffer_reuse": False}


def _frames() -> int:
    """Dynamo's counters of compiled frames and graphs (they grow only while compiling)."""
    try:
        from torch._dynamo.utils import counters

        return int(sum(counters["stats"].values())) + int(sum(counters["frames"].values()))
    except Exception:  # noqa: BLE001 - bookkeeping only
        return 0


def _raise_limits() -> None:
    """Each unit is one code object specialised per shape and sigma: allow many variants."""
    cfg = torch._dynamo.config
    for name, value in (
        ("recompile_limit", 512),
        ("cache_size_limit", 512),  # the name before torch 2.6
        ("accumulated_recompile_limit", 8192),
        ("accumulated_cache_size_limit", 8192),
    ):
        if hasattr(cfg, name):
            setattr(cfg, name, max(int(getattr(cfg, name)), value))


def compiled(fn: F, name: str) -> F:
    """``fn`` through ``torch.compile`` (see the module docstring); ``name`` keys the status."""
    if name in _FAILED:
        return fn
    cf = _WRAPPED.get(fn)
    if cf is None:
        try:
            _raise_limits()
            cf = torch.compile(fn, dynamic=False, fullgraph=True, options=dict(_OPTIONS))
        except Exception as err:  # noqa: BLE001 - no usable torch.compile: eager
            _fail(name, err)
            return fn
        if getattr(fn, "__closure__", None) is None:  # closures are per call: not kept
            _WRAPPED[fn] = cf

    def call(*args: Any, **kwargs: Any) -> Any:
        if name in _FAILED:
            return fn(*args, **kwargs)
        before = _frames()
        t0 = time.perf_counter()
        try:
            out = cf(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compiler problem means: run eagerly
            _fail(name, err)
            return fn(*args, **kwargs)
        _CALLS[name] = _CALLS.get(name, 0) + 1
        if _frames() != before:  # this call compiled (first call or a new specialisation)
            _SECONDS[name] = _SECONDS.get(name, 0.0) + time.perf_counter() - t0
            _COMPILES[name] = _COMPILES.get(name, 0) + 1
        return out

    return call  # type: ignore[return-value]


def _fail(name: str, err: BaseException) -> None:
    text = str(err).strip()
    msg = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
    _FAILED[name] = msg[:500]
    print(
        f"nre_localization: torch.compile of {name!r} failed, running it eagerly: {msg}",
        file=sys.stderr,
        flush=True,
    )


def status() -> dict[str, object]:
    """``compile_seconds`` (per unit: calls that compiled, total), ``compiles`` (count per unit),
    ``calls`` and ``failed`` (unit -> error)."""
    return {
        "compile_seconds": dict(_SECONDS),
        "compile_seconds_total": sum(_SECONDS.values()),
        "compiles": dict(_COMPILES),
        "calls": dict(_CALLS),
        "failed": dict(_FAILED),
    }


def reset(counters_only: bool = True) -> None:
    """Clear the counters (and, with ``counters_only=False``, the failures and dynamo's caches)."""
    _SECONDS.clear()
    _COMPILES.clear()
    _CALLS.clear()
    if not counters_only:
        _FAILED.clear()
        _WRAPPED.clear()
        torch._dynamo.reset()
