"""The user's own clipping, seen where it happens, so gradwandb's numbers stay pre-clip.

Most training scripts clip by hand between ``backward()`` and ``optimizer.step()`` with
``torch.nn.utils.clip_grad_norm_`` (so do Accelerate, the Hugging Face Trainer and
Lightning), which runs before anything an optimizer hook could see. While at least one
tracker is active, this module routes torch's clipping functions through gradwandb:

- ``torch.nn.utils.clip_grad_norm_``: the statistics are taken first, from the per-tensor
  norms torch's own algorithm computes (the same kernels, in the same order, so the value it
  returns is exactly torch's and the step still costs one norm pass), then torch scales the
  gradients; the tracker logs the coefficient torch applied, ``min(1, max_norm/(total+1e-6))``.
  A ``max_norm`` of infinity (how the Hugging Face Trainer measures the norm when it does not
  clip) only measures: the statistics are taken, no clip is reported.
- ``torch.nn.utils.clip_grads_with_norm_`` (also what a ``clip_grad_norm_`` imported before
  ``watch`` calls inside): the statistics are taken before the scaling.
- ``torch.nn.utils.clip_grad_value_``: the statistics are taken before it; its coefficient
  is the global norm after over before.
- ``GradScaler.unscale_``: a change gradwandb knows of, so it is not reported as unseen.

When every tracker is gone the original functions are put back. A listener is anything with
the methods of :class:`Listener`; trackers are held weakly.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.nn.utils import clip_grad as _torch_clip
from torch.utils._foreach_utils import (
    _device_has_foreach_support,
    _group_tensors_by_device_and_dtype,
    _has_foreach_support,
)


class Listener(Protocol):
    """What a tracker offers the clipping functions."""

    def wants(self, params: Sequence[Tensor]) -> bool:
        """Whether any of ``params`` is watched (and the tracker is active)."""
        ...

    def before_clip(self, grads: Sequence[Tensor], norms: Sequence[Tensor] | None) -> None:
        """The gradients are about to be clipped; ``norms`` are their L2 norms if known."""
        ...

    def after_clip(self, coef: Tensor, threshold: float) -> None:
        """The clip scaled the gradients by ``coef`` (0-dim, on the device)."""
        ...

    def grads_changed(self) -> None:
        """A known in-place change of the gradients happened (``GradScaler.unscale_``)."""
        ...


_LISTENERS: list[weakref.ref[Any]] = []
_ORIGINALS: dict[str, Any] = {}


def _listeners(params: Sequence[Tensor]) -> list[Listener]:
    alive = [ref() for ref in _LISTENERS]
    return [listener for listener in alive if listener is not None and listener.wants(params)]


def _as_list(parameters: Any) -> list[Tensor]:
    return [parameters] if isinstance(parameters, Tensor) else list(parameters)


def _torch_norms(grads: Sequence[Tensor], foreach: bool | None) -> tuple[list[Tensor], Tensor]:
    """Per-gradient L2 norms (in ``grads`` order) and the total, as torch's clip computes them.

    The same grouping, kernels and stacking order as ``torch.nn.utils.get_total_norm``, so the
    total is bit-identical to what ``clip_grad_norm_`` would return.
    """
    tensors: list[Tensor | None] = list(grads)
    grouped = _group_tensors_by_device_and_dtype([tensors], with_indices=True)
    first_device = grads[0].device
    in_order: list[Tensor] = []
    by_index: dict[int, Tensor] = {}
    for (device, _), ([group], indices) in grouped.items():
        device_grads = [g for g in group if g is not None]
        if (foreach is None and _has_foreach_support(device_grads, device)) or (
            foreach and _device_has_foreach_support(device)
        ):
            norms = list(torch._foreach_norm(device_grads, 2.0))
        elif foreach:
            raise RuntimeError(
                f"foreach=True was passed, but can't use the foreach API on {device.type} tensors"
            )
        else:
            norms = [torch.linalg.vector_norm(g, 2.0) for g in device_grads]
        in_order.extend(norms)
        by_index.update(zip(indices, norms, strict=True))
    total = torch.linalg.vector_norm(torch.stack([n.to(first_device) for n in in_order]), 2.0)
    return [by_index[i] for i in range(len(grads))], total


@torch.no_grad()
def clip_grad_norm_(
    parameters: Any,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_``, with the statistics taken before it scales."""
    original = _ORIGINALS["clip_grad_norm_"]
    params = _as_list(parameters)
    listeners = _listeners(params)
    grads = [p.grad for p in params if p.grad is not None]
    exact = float(norm_type) == 2.0 and not error_if_nonfinite and grads
    if not listeners or not exact or any(g.is_sparse for g in grads):
        for listener in listeners:
            listener.before_clip(grads, None)
        total: Tensor = original(params, max_norm, norm_type, error_if_nonfinite, foreach)
    else:
        norms, total = _torch_norms(grads, foreach)
        for listener in listeners:
            listener.before_clip(grads, norms)
        _ORIGINALS["_clip_grads_with_norm_"](params, max_norm, total, foreach)
    if math.isinf(float(max_norm)):  # only measures (the HF Trainer's max_grad_norm=0): no clip
        return total
    coef = torch.clamp(float(max_norm) / (total + 1e-6), max=1.0)
    for listener in listeners:
        listener.after_clip(coef, float(max_norm))
    return total


@torch.no_grad()
def clip_grads_with_norm_(
    parameters: Any, max_norm: float, total_norm: Tensor, foreach: bool | None = None
) -> None:
    """``torch.nn.utils.clip_grads_with_norm_``, with the statistics taken before it scales."""
    params = _as_list(parameters)
    listeners = _listeners(params)
    grads = [p.grad for p in params if p.grad is not None]
    for listener in listeners:
        listener.before_clip(grads, None)
    _ORIGINALS["_clip_grads_with_norm_"](params, max_norm, total_norm, foreach)
    if listeners and not math.isinf(float(max_norm)):
        coef = torch.clamp(float(max_norm) / (total_norm + 1e-6), max=1.0)
        for listener in listeners:
            listener.after_clip(coef, float(max_norm))


@torch.no_grad()
def clip_grad_value_(parameters: Any, clip_value: float, foreach: bool | None = None) -> None:
    """``torch.nn.utils.clip_grad_value_``, with the statistics taken before it clamps."""
    params = _as_list(parameters)
    listeners = _listeners(params)
    grads = [p.grad for p in params if p.grad is not None]
    if not listeners or not grads:
        _ORIGINALS["clip_grad_value_"](params, clip_value, foreach)
        return
    _, before = _torch_norms(grads, None)
    for listener in listeners:
        listener.before_clip(grads, None)
    _ORIGINALS["clip_grad_value_"](params, clip_value, foreach)
    _, after = _torch_norms(grads, None)
    coef = torch.where(before > 0, after / before.clamp_min(1e-30), torch.ones_like(before))
    for listener in listeners:
        listener.after_clip(coef, float(clip_value))


def _unscale_(scaler: Any, optimizer: Any) -> None:
    _ORIGINALS["unscale_"](scaler, optimizer)
    for ref in _LISTENERS:
        listener = ref()
        if listener is not None:
            listener.grads_changed()


# Where each function lives, and the replacement routed through here.
_TARGETS: tuple[tuple[Any, str, str, Callable[..., Any]], ...] = (
    (torch.nn.utils, "clip_grad_norm_", "clip_grad_norm_", clip_grad_norm_),
    (_torch_clip, "clip_grad_norm_", "clip_grad_norm_", clip_grad_norm_),
    (torch.nn.utils, "clip_grads_with_norm_", "_clip_grads_with_norm_", clip_grads_with_norm_),
    (_torch_clip, "_clip_grads_with_norm_", "_clip_grads_with_norm_", clip_grads_with_norm_),
    (torch.nn.utils, "clip_grad_value_", "clip_grad_value_", clip_grad_value_),
    (_torch_clip, "clip_grad_value_", "clip_grad_value_", clip_grad_value_),
    (torch.amp.GradScaler, "unscale_", "unscale_", _unscale_),
)


def _install() -> None:
    for owner, attribute, original, replacement in _TARGETS:
        _ORIGINALS.setdefault(original, getattr(owner, attribute))
        setattr(owner, attribute, replacement)


def _uninstall() -> None:
    for owner, attribute, original, replacement in _TARGETS:
        if getattr(owner, attribute) is replacement:
            setattr(owner, attribute, _ORIGINALS[original])


def listen(listener: Listener) -> Callable[[], None]:
    """Route torch's clipping through ``listener`` until the returned undo is called."""
    _LISTENERS[:] = [ref for ref in _LISTENERS if ref() is not None]
    if not _LISTENERS:
        _install()
    ref = weakref.ref(listener)
    _LISTENERS.append(ref)

    def undo() -> None:
        _LISTENERS[:] = [r for r in _LISTENERS if r is not ref and r() is not None]
        if not _LISTENERS:
            _uninstall()

    return undo


def listeners() -> list[Listener]:
    """The live listeners (trackers) now; torch's own functions are put back when none is."""
    _LISTENERS[:] = [ref for ref in _LISTENERS if ref() is not None]
    if not _LISTENERS:
        _uninstall()
    return [listener for ref in _LISTENERS if (listener := ref()) is not None]


def installed() -> bool:
    """Whether torch's clipping functions are routed through gradwandb right now."""
    return getattr(torch.nn.utils, "clip_grad_norm_", None) is clip_grad_norm_
