"""CPU-side check that a stage can be captured in a CUDA graph (no GPU needed).

Run the stage once normally (its warm-up: constants get built and cached, as
:func:`nre_localization.engine.graphs.call` does before capturing), then again with every input on
the ``meta`` device inside :class:`CaptureCheck`. On ``meta`` any host synchronisation or
data-dependent shape raises; the check additionally records what ``meta`` silently allows but a
capture refuses, i.e. host -> device copies:

- ``torch.tensor`` / ``as_tensor`` / ``from_numpy`` / ``Tensor.new_tensor`` (host data copied in);
- ``t[...] = <Python number>`` on a non-CPU tensor (on CUDA a 0-d CPU tensor is copied in);
- any operation mixing a CPU tensor with device tensors, or creating a CPU tensor (a factory such
  as ``torch.arange(n)`` without ``device=``), or copying between CPU and the device;
- operations that read device values on the host (``item``, ``nonzero``, ``unique``, ...).

It also tracks the bytes of live tensors the stage creates (``peak_bytes``): on ``meta`` they are
exactly the sizes the CUDA caching allocator would be asked for (before its rounding).
"""

from __future__ import annotations

import contextlib
import traceback
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["CaptureCheck"]

_SYNC_OPS = {
    "aten::_local_scalar_dense",
    "aten::item",
    "aten::nonzero",
    "aten::nonzero_static",
    "aten::is_nonzero",
    "aten::equal",
    "aten::allclose",
    "aten::masked_select",
    "aten::unique_consecutive",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::repeat_interleave",
    "aten::_assert_async",
}
_COPY_OPS = {"aten::copy_", "aten::_to_copy", "aten::lift_fresh", "aten::lift_fresh_copy"}


def _where() -> str:
    """The innermost stack frame inside ``nre_localization`` (where the offending call is)."""
    for fr in reversed(traceback.extract_stack()[:-2]):
        if "nre_localization" in fr.filename and "graph_check" not in fr.filename:
            return f"{fr.filename.rsplit('nre_localization', 1)[-1]}:{fr.lineno} {fr.line}"
    return "?"


class CaptureCheck(TorchDispatchMode):
    """Records capture-breaking operations (see the module docstring) in ``violations``."""

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []
        self.ops = 0  # non-view operations (a proxy for kernel launches)
        self.live_bytes = 0
        self.peak_bytes = 0
        self._seen: set[int] = set()
        self._patched: list[tuple[Any, str, Any]] = []

    # ------------------------------------------------------------------ host-copy entry points
    def _flag(self, what: str) -> None:
        self.violations.append(f"{what} at {_where()}")

    def __enter__(self) -> CaptureCheck:
        check = self

        def wrap(owner: Any, name: str, test: Callable[..., bool] | None = None) -> None:
            orig = getattr(owner, name)

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if test is None or test(*args, **kwargs):
                    check._flag(f"host->device copy via {name}")
                return orig(*args, **kwargs)

            self._patched.append((owner, name, owner.__dict__.get(name)))
            setattr(owner, name, wrapper)

        def setitem_scalar(t: torch.Tensor, _idx: Any, value: Any) -> bool:
            return t.device.type != "cpu" and not isinstance(value, torch.Tensor)

        for name in ("tensor", "as_tensor", "from_numpy"):
            wrap(torch, name)
        wrap(torch.Tensor, "new_tensor")
        wrap(torch.Tensor, "__setitem__", setitem_scalar)
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for owner, name, orig in reversed(self._patched):
            if orig is None:
                delattr(owner, name)  # it was inherited
            else:
                setattr(owner, name, orig)
        self._patched.clear()

    # ------------------------------------------------------------------ every dispatched op
    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        name = func._schema.name
        if name in _SYNC_OPS:
            self._flag(f"host synchronisation ({name})")
        flat, _ = tree_flatten((args, kwargs or {}))
        tens = [a for a in flat if isinstance(a, torch.Tensor)]
        cpu = [a for a in tens if a.device.type == "cpu"]
        dev = [a for a in tens if a.device.type != "cpu"]
        if cpu and dev and (name in _COPY_OPS or any(a.dim() > 0 for a in cpu)):
            self._flag(f"CPU tensor used with device tensors ({name})")
        out = func(*args, **(kwargs or {}))
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if (dev or not cpu) and any(o.device.type == "cpu" for o in outs):
            self._flag(f"tensor created on the CPU ({name})")
        rets = func._schema.returns
        is_view = bool(rets) and rets[0].alias_info is not None
        if not is_view:
            self.ops += 1
            for o in outs:
                self._track(o)
        return out

    def _track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = id(st)
        if key in self._seen:
            return
        nbytes = st.nbytes()
        self._seen.add(key)
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

        def release(k: int = key, b: int = nbytes) -> None:
            self._seen.discard(k)
            self.live_bytes -= b

        with contextlib.suppress(TypeError):  # not weak-referenceable: counted as never freed
            weakref.finalize(st, release)
