"""Capture: the hooks that tell the tracker a real optimizer step is happening.

The heartbeat is the optimizer's ``step`` (:class:`OptimizerSteps`): it runs once per real
step, after gradient accumulation and after ``GradScaler.unscale_``, so the gradients it sees
are the ones the optimizer consumes (the user's own clipping is seen earlier, where it
happens: :mod:`gradwandb.live.user_clip`). Without an optimizer the fallback heartbeat is the
end of each backward pass (a callback queued on the autograd engine by the first parameter
whose gradient lands).

Removing a hook while torch iterates its hook table corrupts that iteration, so a hook that
has to go from inside its own call is made inert first and taken out by :meth:`HookSet.remove`.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
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

    def pop(self, name: str) -> RemovableHandle:
        """Take one handle out of the set (the caller removes it)."""
        return self._handles.pop(name)

    def remove(self, keep: str | None = None) -> None:
        """Remove everything, except the handle called ``keep`` (the hook now running)."""
        for name in [n for n in self._handles if n != keep]:
            self._handles.pop(name).remove()
        while self._undo:
            self._undo.pop()()


class OptimizerSteps:
    """The heartbeat with optimizers: ``begin`` before and ``end`` after each real step.

    Each optimizer's ``step`` is wrapped on the instance (:func:`wrap_method`), so a subclass
    whose ``step`` calls ``super().step()`` is one step, not two (torch's own step hooks fire
    once per class in that case). With a closure (LBFGS, frameworks that run the forward and
    backward inside ``step``), ``begin`` runs after the closure's first call, on the gradient
    it produced. With several optimizers stepping the same backward, one step spans them:
    ``begin`` before the first, ``end`` once each has stepped (or when one steps again).
    A step that raises is dropped (``abort``), never half logged.
    """

    def __init__(
        self,
        hooks: HookSet,
        optimizers: Sequence[torch.optim.Optimizer],
        begin: Callable[[], None],
        end: Callable[[], None],
        abort: Callable[[], None],
    ) -> None:
        self._begin, self._end, self._abort = begin, end, abort
        self._count = len(optimizers)
        self._stepped: set[int] = set()
        self._inside = False
        self.begun = False
        for optimizer in optimizers:
            wrap_method(hooks, optimizer, "step", self._around(id(optimizer)))

    def _around(self, key: int) -> Callable[..., Any]:
        def around(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if self._inside:  # a step from inside a step: already counted
                return original(*args, **kwargs)
            if key in self._stepped:  # this optimizer again before the others: a new step
                self._close()
            args, kwargs, has_closure = self._with_closure(args, kwargs)
            if not has_closure:
                self._open()
            self._inside = True
            try:
                out = original(*args, **kwargs)
            except BaseException:
                self._stepped.clear()
                self.begun = False
                self._abort()
                raise
            finally:
                self._inside = False
            self._stepped.add(key)
            if len(self._stepped) >= self._count:
                self._close()
            return out

        return around

    def _open(self) -> None:
        if not self.begun:
            self.begun = True
            self._begin()

    def _close(self) -> None:
        self._stepped.clear()
        if self.begun:
            self.begun = False
            self._end()

    def _with_closure(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], bool]:
        closure = kwargs.get("closure", args[0] if args else None)
        if not callable(closure):
            return args, kwargs, False

        def measured() -> Any:
            loss = closure()
            self._open()  # the first call's gradient is the one the step starts from
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": measured}, True
        return (measured, *args[1:]), kwargs, True


class BackwardEnd:
    """Calls ``callback`` once at the end of every backward pass that reaches a parameter.

    A backward that raises never reaches its end; :meth:`reset` (called before each forward)
    makes the next one count again, so a failed backward costs that step only.
    """

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

    def reset(self) -> None:
        """Forget a backward that never finished."""
        self._queued = False

    def refresh(self, params: Sequence[nn.Parameter]) -> None:
        """Hook every parameter that requires grad and is not hooked yet."""
        for p in params:
            name = f"grad{id(p)}"
            if p.requires_grad and name not in self._hooks:
                handle = p.register_post_accumulate_grad_hook(self._landed)  # type: ignore[no-untyped-call]
                self._hooks.add(name, handle)


class ModuleHook:
    """A hook gradwandb puts on a user's module; ``torch.save(model)``, ``copy.deepcopy`` and
    pickling (DataParallel, multiprocessing) store it as an inert no-op, so the copy carries
    no live hook and no reference to the tracker.

    >>> import copy
    >>> hook = ModuleHook(lambda *args: print("live"))
    >>> hook(), copy.deepcopy(hook)()
    live
    (None, None)
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (InertHook, ())


class InertHook:
    """What a :class:`ModuleHook` becomes in a saved or copied model: it does nothing."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None


def wrap_method(hooks: HookSet, obj: Any, name: str, around: Callable[..., Any]) -> None:
    """Route ``obj.name(*a, **k)`` through ``around(original, *a, **k)`` until removal.

    Only this instance is touched (a bound method shadowing the class's), and removal restores
    it, so the object behaves as before once the tracker is gone. The wrapper is a real bound
    method, so code that inspects ``obj.step.__func__`` (torch's LR schedulers, which wrap
    ``optimizer.step`` themselves, before or after) keeps working; a scheduler's mark on the
    method it wrapped is kept.
    """
    original = getattr(obj, name)

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return around(original, *args, **kwargs)

    if hasattr(original, "_wrapped_by_lr_sched"):  # torch's LR scheduler wrapped it before us
        method._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
    bound = types.MethodType(method, obj)
    setattr(obj, name, bound)

    def undo() -> None:
        if obj.__dict__.get(name) is bound:
            delattr(obj, name)

    hooks.on_remove(undo)


def learn_run_order(
    hooks: HookSet, model: nn.Module, learned: Callable[[list[nn.Module]], None]
) -> None:
    """Call ``learned(modules)`` once, after the model's first forward, with its submodules in
    the order they first ran (the modules that did not run are left out).

    One forward pre-hook per submodule, all removed after that forward: a one-time cost.
    """
    order: dict[int, nn.Module] = {}
    names: list[str] = []

    def ran(module: nn.Module, args: Any) -> None:
        order.setdefault(id(module), module)

    def done(module: nn.Module, args: Any, out: Any) -> None:
        for name in names:
            if name in hooks:
                hooks.pop(name).remove()
        learned(list(order.values()))

    for i, sub in enumerate(model.modules()):
        names.append(f"order{i}")
        hooks.add(names[-1], sub.register_forward_pre_hook(ModuleHook(ran)))
    names.append("order-done")
    hooks.add(names[-1], model.register_forward_hook(ModuleHook(done)))


def scale_inside_step(optimizers: Sequence[torch.optim.Optimizer]) -> Tensor | None:
    """The loss scale still on the gradients when a fused optimizer steps, or None.

    ``GradScaler.step`` does not unscale for an optimizer that unscales inside its own step
    (``Adam(fused=True)`` and the like): it sets ``optimizer.grad_scale`` for the step to
    divide by, after gradwandb has measured. Without a prior ``scaler.unscale_`` the gradients
    are then still scaled, and the statistics must divide by this tensor (on the device, no
    sync). None when the gradients are already unscaled, or no fused step is under way.

    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    >>> scale_inside_step([opt]) is None
    True
    >>> opt.grad_scale = torch.tensor(1024.0)
    >>> float(scale_inside_step([opt]))
    1024.0
    """
    for optimizer in optimizers:
        scale = getattr(optimizer, "grad_scale", None)
        if isinstance(scale, Tensor):
            return scale
    return None
