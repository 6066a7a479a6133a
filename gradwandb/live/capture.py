"""Capture: the hooks that tell the tracker a real optimizer step is happening.

The heartbeat is the optimizer's step pre-hook: it fires once per real step, after gradient
accumulation and after ``GradScaler.unscale_``, so the gradients it sees are the ones the
optimizer consumes. Without an optimizer the fallback heartbeat is the end of each backward
pass (a callback queued on the autograd engine by the first parameter whose gradient lands).

Removing a hook while torch iterates its hook table corrupts that iteration, so a hook that
has to go from inside its own call is made inert first and taken out by :meth:`HookSet.remove`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class HookSet:
    """Handles and undo actions, removed together."""

    def __init__(self) -> None:
        self._handles: dict[str, RemovableHandle] = {}
        self._undo: list[Callable[[], None]] = []

    def add(self, name: str, handle: RemovableHandle) -> None:
        self._handles[name] = handle

    def on_remove(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def __contains__(self, name: str) -> bool:
        return name in self._handles

    def remove(self, keep: str | None = None) -> None:
        """Remove everything, except the handle called ``keep`` (the hook now running)."""
        for name in [n for n in self._handles if n != keep]:
            self._handles.pop(name).remove()
        while self._undo:
            self._undo.pop()()


def on_optimizer_step(
    hooks: HookSet,
    optimizer: torch.optim.Optimizer,
    pre: Callable[[], None],
    post: Callable[[], None],
) -> None:
    """Call ``pre`` before and ``post`` after every ``optimizer.step()`` that really runs."""
    hooks.add("pre", optimizer.register_step_pre_hook(lambda opt, args, kwargs: pre()))
    hooks.add("post", optimizer.register_step_post_hook(lambda opt, args, kwargs: post()))


class BackwardEnd:
    """Calls ``callback`` once at the end of every backward pass that reaches a parameter."""

    def __init__(self, hooks: HookSet, callback: Callable[[], None]) -> None:
        self._hooks = hooks
        self._callback = callback
        self._queued = False

    def _landed(self, param: torch.Tensor) -> None:
        if self._queued:
            return
        self._queued = True
        torch.autograd.Variable._execution_engine.queue_callback(self._fire)

    def _fire(self) -> None:
        self._queued = False
        self._callback()

    def refresh(self, params: Sequence[nn.Parameter]) -> None:
        """Hook every parameter that requires grad and is not hooked yet."""
        for i, p in enumerate(params):
            name = f"grad{i}"
            if p.requires_grad and name not in self._hooks:
                handle = p.register_post_accumulate_grad_hook(self._landed)  # type: ignore[no-untyped-call]
                self._hooks.add(name, handle)


def wrap_method(hooks: HookSet, obj: Any, name: str, around: Callable[..., Any]) -> None:
    """Route ``obj.name(*a, **k)`` through ``around(original, *a, **k)`` until removal.

    Only this instance is touched (an attribute shadowing the class's method), and removal
    restores it, so the object behaves as before once the tracker is gone.
    """
    original = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return around(original, *args, **kwargs)

    setattr(obj, name, wrapper)

    def undo() -> None:
        if obj.__dict__.get(name) is wrapper:
            delattr(obj, name)

    hooks.on_remove(undo)
