"""Counter-based random numbers that are identical on CPU and CUDA (and capturable in graphs).

A 32-bit integer hash (xorshift-multiply rounds) of ``(seed, stream, index)``, computed with int64
tensor arithmetic that never overflows: same bits on every device, no generator state.
"""

from __future__ import annotations

import torch

from nre_localization.engine.consts import cached

__all__ = ["hash_uniform"]

_MASK32 = 0xFFFFFFFF


def _mulmod32(x: torch.Tensor, m: int) -> torch.Tensor:
    """``(x * m) mod 2^32`` for ``0 <= x < 2^32`` without int64 overflow."""
    lo = x * (m & 0xFFFF)
    hi = ((x * (m >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _hash32_int(x: int) -> int:
    """:func:`_hash32` of a Python int (same bits; computed on the host, no kernels)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def hash_uniform(
    shape: tuple[int, ...], seed: int, stream: int, device: torch.device | str, dtype: torch.dtype
) -> torch.Tensor:
    """Uniform numbers in the open interval ``(0, 1)`` of ``shape``; deterministic in ``(seed,
    stream)`` and the element's flat index, independent of the device.

    The numbers depend on nothing but these Python values, so they are computed once per
    ``(shape, seed, stream, dtype, device)`` and cached (:func:`consts.cached`): a captured graph
    reads them and launches no kernel for them. The result is shared: do not modify it in place.
    """
    key = ("hash_uniform", tuple(int(s) for s in shape), int(seed), int(stream), dtype)
    return cached(key, device, lambda: _hash_uniform(shape, seed, stream, device, dtype))


def _hash_uniform(
    shape: tuple[int, ...], seed: int, stream: int, device: torch.device | str, dtype: torch.dtype
) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    idx = torch.arange(n, device=device, dtype=torch.int64)
    key = _hash32_int((seed * 0x9E3779B1 + stream * 0x85EBCA77) & _MASK32)  # host: no kernels
    h = _hash32((_hash32(idx ^ key) + key) & _MASK32)
    u = ((h >> 9).to(torch.float64) + 0.5) / float(1 << 23)  # exact in float32, never 0 or 1
    return u.to(dtype).view(shape)
