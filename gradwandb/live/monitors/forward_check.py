"""The forward check: which module's output first went NaN/Inf, in the order the modules ran.

A NaN or Inf made in the forward pass (``sqrt`` of a negative, ``log`` of 0, an ``exp`` that
overflows) poisons every gradient of the step at once, so the gradients alone cannot say where
it was born. :class:`ForwardCheck` hooks every module of the model on the steps it checks and
flags each output on the device by its min and max (finite exactly when every element is);
the first flag that is false names the module. What it puts in the record (a FILL-stage
monitor, read by the rules of :mod:`~gradwandb.live.diagnosis.rules.forward`):
``record.activations[<module>][forward_nonfinite]`` for that module only, with
:data:`~gradwandb.keys.FORWARD_MADE` (it made the NaN/Inf),
:data:`~gradwandb.keys.FORWARD_WEIGHTS` (its own weights already held NaN/Inf) or
:data:`~gradwandb.keys.FORWARD_INPUT` (the model's input did; the module is the model), and
the same under ``act/<module>/forward_nonfinite`` in the row.

Which steps are checked: those of ``every`` (the tracker passes the ``activations_every``
schedule), and the step right after a record whose gradients held NaN/Inf, while no origin has
been named (with ``guard=True`` the weights stay finite, so that step shows where the NaN is
born again; without it the update of the bad step may have written NaN weights, which the
check then reports as such).

Cost (where the host syncs happen). On a step that is not checked: one forward pre-hook on the
model that compares a step index (no module hooks are installed). On a checked step: a hook on
every module, and per module output one ``aminmax`` pass on the device (a NaN/Inf element
makes the min or max NaN/Inf; cheaper than ``isfinite(out).all()``, which writes a mask the
size of the output), the two ends kept on the device; no host sync. One ``isfinite`` over all
the ends at the end of the step. The flags reach the host in the tracker's one transfer of
that step, through :attr:`ForwardCheck.statistic` (two numbers: whether any output was
non-finite and the index of the first). Only a step with a non-finite output reads more (the
named module's weights, to tell which case it is), and only flags of a step checked after a
non-finite gradient that the tracker did not log are read on their own (one sync).

The hooks are :class:`~gradwandb.live.capture.ModuleHook` s: ``torch.save(model)``,
``copy.deepcopy`` and pickling store them as inert no-ops.

>>> import torch, gradwandb
>>> class Root(torch.nn.Module):
...     def forward(self, x):
...         return torch.sqrt(x - 1.0)
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), Root(), torch.nn.Linear(2, 1))
>>> _ = torch.nn.init.zeros_(model[0].weight), torch.nn.init.zeros_(model[0].bias)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
>>> check = ForwardCheck(model, every=1)
>>> tracker = gradwandb.watch(model, opt, sink=gradwandb.MemorySink(),
...                           statistics=[check.statistic])
>>> check.clock = lambda: tracker.step
>>> tracker.add_observer(check.attach())
>>> model(torch.ones(4, 2)).sum().backward()
>>> opt.step()
>>> check.origin
(0, '1')
>>> check.remove(); tracker.remove()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.hooks import RemovableHandle

from gradwandb import keys as K
from gradwandb.keys import Keys, act_key
from gradwandb.live.capture import ModuleHook
from gradwandb.live.monitors.base import ModuleMonitor, Tap, key_name
from gradwandb.live.record import StepRecord
from gradwandb.live.schedules import ScheduleLike
from gradwandb.live.sinks import Value
from gradwandb.live.stats import kernels as S
from gradwandb.live.stats.statistic import GradientView, Statistic

__all__ = ["ForwardCheck"]

STATISTIC = "forward_check"  # the name of the check's statistic (it logs no key of its own)


@dataclass
class _Tap:
    """One module of the model."""

    path: str
    name: str  # in keys
    module: nn.Module

    def reset(self, step: int | None) -> None:
        return None


class ForwardCheck(ModuleMonitor):
    """Names the first module whose output went NaN/Inf on the steps it checks.

    Args:
        model: the model (an ``nn.Module``); every module in it is checked.
        every: check on these steps (an int n: steps 0, n, 2n, ...; a ``step -> bool``; None:
            only the step after a non-finite gradient).
        keys: the tracker's :class:`~gradwandb.keys.Keys`.
        clock: returns the index of the optimizer step the next forward belongs to, e.g.
            ``lambda: tracker.step``; without it the check follows the records it is given.

    Pass :attr:`statistic` to the tracker (``statistics=[check.statistic]``) so the flags
    travel in its transfer, add the check as an observer (``tracker.add_observer(
    check.attach())``), and :meth:`remove` it when done. :attr:`origin` is the last
    ``(step, module)`` named, or None.
    """

    _consequence = "the forward check is switched off"
    _what = "checked"
    _listed = "checked"
    _example = "net.1"

    def __init__(
        self,
        model: nn.Module,
        *,
        every: ScheduleLike | None = None,
        keys: Keys = Keys(),  # noqa: B008  (frozen, immutable)
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._check_model(model)
        self._start(model, keys, every, clock)
        self._taps: list[_Tap] = [
            _Tap(path, key_name(path, m), m) for path, m in model.named_modules()
        ]
        self._module_handles: list[RemovableHandle] = []
        self._armed: int | None = None  # a step to check after a non-finite gradient
        self._step: int | None = None  # the step whose flags are being collected
        self._order: list[int] = []  # tap index of each output tensor, in the order they ran
        self._ends: list[Tensor] = []  # per output tensor: its (min, max), on the device
        self._inputs: list[Tensor] = []  # per input tensor of the model: its (min, max)
        self._host: tuple[int, list[float], list[int]] | None = None  # from the transfer
        self.origin: tuple[int, str] | None = None
        self.statistic = Statistic(STATISTIC, self._device, tier="log", finalize=self._read)

    @property
    def clock(self) -> Callable[[], int] | None:
        """The step clock (settable once the tracker exists)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], int] | None) -> None:
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning the step index, got {clock!r}")
        self._clock = clock

    # -- what it watches ----------------------------------------------------------------------

    def _watches(self, module: nn.Module) -> bool:
        return True

    def _none_found(self, model: nn.Module) -> str:
        return f"{type(model).__name__} has no modules"  # never: the model is one

    # -- hooks: one gate on the model; the module hooks only on checked steps -----------------

    def attach(self) -> ForwardCheck:
        """Put the gate on the model (a second call does nothing)."""
        if not self._handles:
            gate = self.model.register_forward_pre_hook(ModuleHook(self._gate))
            self._handles = [gate]
        return self

    def remove(self) -> None:
        """Take every hook out and drop the flags."""
        self._unhook()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._clear(None)

    def _hooks(self, tap: Tap) -> list[RemovableHandle]:
        raise NotImplementedError  # the module hooks come and go with the checked steps

    def _checked_step(self) -> int | None:
        if self._shield.failed or not torch.is_grad_enabled():
            return None
        step = self._clock() if self._clock is not None else self._next
        return step if step == self._armed or self._every(step) else None

    def _gate(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        step = self._guard(self._checked_step)
        if step is None:
            if self._module_handles:
                self._guard(self._unhook)
            return
        self._guard(lambda: self._open(step, args))

    def _open(self, step: int, args: tuple[Any, ...]) -> None:
        if self._step != step:
            self._clear(step)  # flags of an earlier step that was never read: dropped
        if not self._module_handles:
            for index, tap in enumerate(self._taps):
                hook = ModuleHook(self._hook(index))
                self._module_handles.append(tap.module.register_forward_hook(hook))
        self._inputs += _ends(args)

    def _unhook(self) -> None:
        for handle in self._module_handles:
            handle.remove()
        self._module_handles = []

    def _hook(self, index: int) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if self._step is None or self._shield.failed:
                return
            ends = self._guard(lambda: _ends(out))
            if ends:
                self._order += [index] * (len(ends) // 2)
                self._ends += ends

        return hook

    def _clear(self, step: int | None) -> None:
        self._step = step
        self._order, self._ends, self._inputs = [], [], []

    # -- the flags to the host ----------------------------------------------------------------

    def _summary(self) -> Tensor | None:
        """[any output non-finite, index of the first, any input non-finite] on the device: a
        NaN/Inf element makes a tensor's min or max NaN/Inf, so the check of every output is
        one ``isfinite`` over the stacked ends."""
        if not self._ends and not self._inputs:
            return None
        bad_out = _bad(self._ends)
        bad_in = _bad(self._inputs).any()
        first = torch.argmax(bad_out.to(torch.uint8))
        return torch.stack([bad_out.any().double(), first.double(), bad_in.double()])

    def _device(self, view: GradientView) -> Tensor | None:
        if self._step != view.step:
            return None
        return self._guard(self._summary)

    def _read(self, values: list[float], view: GradientView, record: StepRecord) -> None:
        self._host = (view.step, values, list(self._order))

    # -- the observer -------------------------------------------------------------------------

    def _report(self, record: StepRecord) -> dict[str, Value]:
        host, self._host = self._host, None
        step = record.step
        checked = host is not None and host[0] == step
        if host is None or host[0] != step:
            host = None
            if self._step is not None and self._step == self._armed and self._step <= step:
                summary = self._summary()  # a checked step the tracker did not log: one sync
                if summary is not None:
                    values = S.to_host({"check": summary})["check"]
                    host = (self._step, values, list(self._order))
        if self._step is not None and self._step <= step:
            self._clear(None)  # the hooks stay for a checked next step; the gate decides
        row: dict[str, Value] = {}
        if host is not None:
            row = self._origin(record, *host)
        bad = record.nonfinite_tensors > 0 or not math.isfinite(record.global_norm)
        if bad and not checked and self.origin is None:
            self._armed = step + 1  # the next forward shows where the NaN/Inf is born
        return row

    def _origin(
        self, record: StepRecord, step: int, values: list[float], order: list[int]
    ) -> dict[str, Value]:
        any_bad, first, input_bad = values
        if input_bad:
            tap, code = self._taps[0], K.FORWARD_INPUT
        elif any_bad and int(first) < len(order):
            tap = self._taps[order[int(first)]]
            own = list(tap.module.parameters(recurse=False))
            finite = all(bool(torch.isfinite(p).all()) for p in own)  # a bad step only
            code = K.FORWARD_MADE if finite else K.FORWARD_WEIGHTS
        else:
            return {}
        self.origin = (step, tap.name)
        record.activations.setdefault(tap.name, {})[K.FORWARD_NONFINITE] = code
        record.module_types[tap.name] = type(tap.module).__name__
        return {act_key(self.keys, tap.name, K.FORWARD_NONFINITE): code}


def _tensors(out: Any) -> Iterator[Tensor]:
    """The floating-point tensors of a module's output (or input): a tensor, a packed
    sequence's data, or those inside tuples, lists and dicts (one level deep per level)."""
    if isinstance(out, Tensor):
        if out.is_floating_point() or out.is_complex():
            yield out
    elif isinstance(out, PackedSequence):
        yield from _tensors(out.data)
    elif isinstance(out, (tuple, list)):
        for item in out:
            yield from _tensors(item)
    elif isinstance(out, dict):
        for item in out.values():
            yield from _tensors(item)


def _ends(out: Any) -> list[Tensor]:
    """The min and max of each non-empty tensor of ``out``, 0-dim tensors on the device, two
    per tensor (one ``aminmax`` pass each, no sync): finite exactly when every element is."""
    ends: list[Tensor] = []
    with torch.no_grad():
        for t in _tensors(out):
            if t.numel():
                flat = t.detach().reshape(-1)
                if flat.is_complex():
                    flat = torch.view_as_real(flat).reshape(-1)
                ends += torch.aminmax(flat)
    return ends


def _bad(ends: list[Tensor]) -> Tensor:
    """Bool [n]: which of the n (min, max) pairs is not finite (one isfinite for them all)."""
    if not ends:
        return torch.zeros(1, dtype=torch.bool)
    wide = [e if e.dtype in (torch.float32, torch.float64) else e.float() for e in ends]
    pairs: Tensor = ~torch.isfinite(torch.stack(wide).view(-1, 2)).all(dim=1)
    return pairs
