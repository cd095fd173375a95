"""Device constants built once, outside any CUDA-graph capture, and reused by the captured stages.

A captured stage may not copy host data to the GPU (``torch.tensor(...)`` of Python numbers, a CPU
tensor moved with ``.to(device)``, ``t[i] = 3.0`` on a CUDA tensor: all are host->device copies,
which fail during capture). Stages therefore take their small constant tables (window offsets,
projection monomial maps, clamp bounds, sigma coefficients) from :func:`const`, which builds each
table on the target device the first time it is asked for (the graph's eager warm-up, outside the
capture) and returns the cached tensor afterwards (no kernel, no copy). The cache is keyed by the
values, dtype and device; it holds at most ``_MAX`` entries (least recently used dropped; a
captured graph keeps its own references, see :func:`live`).

Inside a region traced by ``torch.compile`` the cache is bypassed: the table becomes a literal of the
compiled graph (Inductor builds it on the device once, at compile time, and folds scalars into the
kernels), so the compiled code neither copies from the host per call nor guards on this cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch

__all__ = ["cached", "clear", "const", "live"]

_MAX = 512
_CACHE: OrderedDict[Hashable, torch.Tensor] = OrderedDict()

Nested = float | int | bool | Sequence["Nested"]


def _freeze(values: Nested) -> Hashable:
    if isinstance(values, (list, tuple)):
        return tuple(_freeze(v) for v in values)
    return values


def const(values: Nested, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A (cached, read-only by convention) tensor of ``values`` on ``device``.

    The first call per ``(values, dtype, device)`` copies from the host; later calls return the
    same tensor. Callers must not modify it in place.
    """
    dev = torch.device(device)
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=dev)
    key = (_freeze(values), dtype, dev.type, dev.index)
    t = _CACHE.get(key)
    if t is not None:
        _CACHE.move_to_end(key)
        return t
    t = torch.tensor(values, dtype=dtype, device=dev)
    _CACHE[key] = t
    if len(_CACHE) > _MAX:
        _CACHE.popitem(last=False)
    return t


def cached(
    key: Hashable, device: torch.device | str, build: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """A device tensor that depends only on Python values (``key``), built by ``build()`` on the
    first call (the stage's warm-up, outside any capture) and returned from the cache afterwards:
    no kernels in the captured graph. Kept alive like :func:`const` (see :func:`live`); callers
    must not modify it in place. While ``torch.compile`` traces, ``build()`` is traced instead."""
    if torch.compiler.is_compiling():
        return build()
    dev = torch.device(device)
    full = ("cached", key, dev.type, dev.index)
    t = _CACHE.get(full)
    if t is not None:
        _CACHE.move_to_end(full)
        return t
    t = build()
    _CACHE[full] = t
    if len(_CACHE) > _MAX:
        _CACHE.popitem(last=False)
    return t


def clear() -> None:
    """Drop every cached constant."""
    _CACHE.clear()


def live() -> tuple[torch.Tensor, ...]:
    """References to every cached constant (a captured graph holds them so none is freed while
    the graph may still read it)."""
    return tuple(_CACHE.values())
