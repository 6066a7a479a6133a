"""Activation health: saturated, dead and zero units, and the mean and std of activations.

:class:`ActivationMonitor` hooks a model's activation modules (by default every ``nn.Tanh``,
``nn.Sigmoid``, ``nn.ReLU``, ``nn.LeakyReLU`` and ``nn.GELU``, and the output sequence of every
``nn.RNN``, ``nn.LSTM`` and ``nn.GRU``) and, on monitored steps, measures each one's output:

- ``saturated_frac`` (bounded outputs): the fraction of elements in the flat tails, where the
  gradient vanishes: ``|y| > saturation`` for tanh-like outputs (``nn.Tanh``, a tanh ``nn.RNN``,
  the h_t of ``nn.LSTM`` and ``nn.GRU``), ``y > saturation`` or ``y < 1 - saturation`` for
  ``nn.Sigmoid`` (0.99: below 0.01 or above 0.99);
- ``dead_frac`` (ReLU family: ``nn.ReLU``, ``nn.LeakyReLU``, ``nn.GELU``, a relu ``nn.RNN``):
  the fraction of units (features, along the last dimension) never positive for any element
  of the step's forwards (for ``nn.ReLU``: exactly zero throughout);
- ``zero_frac``: the fraction of elements exactly zero; ``mean`` and ``std`` (population) of
  the elements.

An ``nn.LSTM`` with ``proj_size`` has unbounded outputs: no ``saturated_frac``. A packed
sequence counts its real elements only. Several forwards in one step (micro-batches, a module
called twice) are pooled; a unit is dead only if it is dead in all of them (a module reused
with different widths in one step gets no ``dead_frac`` for that step). Forwards run with
autograd off (evaluation under ``torch.no_grad()``) are not counted.

Which step is monitored: as in :class:`~gradwandb.BPTTMonitor`, a forward belongs to
the optimizer step that follows it, read from ``clock`` (``lambda: tracker.step``) or else from
the records the monitor is called with; the record of step ``s`` reports what the forwards of
step ``s`` captured, when ``every(s)`` is true.

Cost (where the host syncs happen). A step that is not monitored costs each hooked module one
hook call that compares a step index and returns. On a monitored step each forward of a watched
module adds a few reductions of its output on the device (``var_mean``, one or two counts, and
for the ReLU family a per-unit ``any``) and a few scalar updates of the step's accumulators;
fp16/bf16 outputs are first widened to float32 (one copy). Nothing is read back until the
record of that step: :meth:`ActivationMonitor.__call__` moves every module's accumulators to the
host in one transfer (:func:`gradwandb.live.stats.kernels.to_host`), the monitor's one sync; a step
with nothing to report makes none.

The hooks are :class:`~gradwandb.live.capture.ModuleHook` s: ``torch.save(model)``,
``copy.deepcopy`` and pickling store them as inert no-ops.

>>> import torch, gradwandb
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
>>> sink = gradwandb.MemorySink()
>>> tracker = gradwandb.watch(model, opt, sink=sink)
>>> monitor = ActivationMonitor(model, every=1, keys=tracker.keys, clock=lambda: tracker.step)
>>> tracker.add_observer(monitor.attach())
>>> model(torch.randn(8, 3)).sum().backward()
>>> opt.step()
>>> sorted(k for k in sink.last() if k.startswith("act/"))
['act/1/dead_frac', 'act/1/mean', 'act/1/std', 'act/1/zero_frac']
>>> monitor.remove(); tracker.remove()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.hooks import RemovableHandle

from gradwandb.keys import (
    DEAD_FRAC,
    MEAN,
    SATURATED_FRAC,
    STD,
    ZERO_FRAC,
    Keys,
    act_key,
)
from gradwandb.live.capture import ModuleHook
from gradwandb.live.monitors.base import ModuleMonitor, Tap, key_name
from gradwandb.live.record import StepRecord
from gradwandb.live.schedules import ScheduleLike
from gradwandb.live.sinks import Value
from gradwandb.live.stats import kernels as S

__all__ = ["ActivationMonitor", "kind_of"]

Kind = Literal["tanh", "sigmoid", "relu", "linear"]
WATCHED = (nn.Tanh, nn.Sigmoid, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.RNN, nn.LSTM, nn.GRU)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def kind_of(module: nn.Module) -> Kind | None:
    """What the module's output is: ``tanh``-bounded, ``sigmoid``, ``relu`` family, ``linear``
    (an LSTM with ``proj_size``), or None when the module is not one this monitor watches.

    >>> kind_of(nn.LSTM(2, 3)), kind_of(nn.RNN(2, 3, nonlinearity="relu")), kind_of(nn.Linear(2, 2))
    ('tanh', 'relu', None)
    """
    if isinstance(module, (nn.Tanh, nn.GRU)):
        return "tanh"
    if isinstance(module, nn.LSTM):
        return "linear" if module.proj_size else "tanh"
    if isinstance(module, nn.RNN):
        return "tanh" if module.nonlinearity == "tanh" else "relu"
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    if isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.GELU)):
        return "relu"
    return None


@dataclass
class _Tap:
    """One hooked module and what it accumulated (on its device) for the step monitored."""

    path: str
    name: str  # in keys
    module: nn.Module
    kind: Kind
    step: int | None = None
    count: int = 0  # elements seen (host)
    mean: Tensor | None = None  # float64, pooled mean
    m2: Tensor | None = None  # float64, pooled sum of squared deviations
    zeros: Tensor | None = None  # int64 count
    saturated: Tensor | None = None  # int64 count (tanh and sigmoid)
    alive: Tensor | None = None  # bool per unit: positive somewhere (relu family)
    mixed: bool = False  # the unit count changed within the step: no dead_frac

    def reset(self, step: int | None) -> None:
        self.step = step
        self.count = 0
        self.mean = self.m2 = self.zeros = self.saturated = self.alive = None
        self.mixed = False

    def add(self, y: Tensor, saturation: float) -> None:
        """Pool one forward's output ``y`` (detached, floating, non-empty) into the step."""
        if y.dtype in _LOW_PRECISION:
            y = y.float()
        n = y.numel()
        var, mean = torch.var_mean(y, correction=0)
        mean, m2 = mean.double(), var.double() * n
        zeros = torch.count_nonzero(y == 0)
        if self.mean is None or self.m2 is None or self.zeros is None:
            self.mean, self.m2, self.zeros = mean, m2, zeros
        else:  # Chan et al.: exact pooling of two groups' means and squared deviations
            total = self.count + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
            self.zeros = self.zeros + zeros
        self.count += n
        if self.kind in ("tanh", "sigmoid"):
            if self.kind == "tanh":
                sat = torch.count_nonzero(y.abs() > saturation)
            else:
                sat = torch.count_nonzero((y > saturation) | (y < 1.0 - saturation))
            self.saturated = sat if self.saturated is None else self.saturated + sat
        if self.kind == "relu" and not self.mixed:
            alive = (y.reshape(-1, y.shape[-1]) if y.dim() else y.reshape(1, 1)).gt(0).any(0)
            if self.alive is None:
                self.alive = alive
            elif self.alive.shape == alive.shape:
                self.alive = self.alive | alive
            else:
                self.mixed, self.alive = True, None

    def device_stats(self) -> Tensor:
        """[mean, m2, zeros, (saturated | dead units)] as one float64 tensor on the device."""
        assert self.mean is not None and self.m2 is not None and self.zeros is not None
        parts = [self.mean, self.m2, self.zeros.double()]
        if self.saturated is not None:
            parts.append(self.saturated.double())
        if self.alive is not None:
            parts.append(self.alive.numel() - self.alive.sum(dtype=torch.float64))
        return torch.stack(parts)

    def measures(self, host: list[float]) -> dict[str, float]:
        """``{stat: value}`` of the step from the host copy of :meth:`device_stats`."""
        mean, m2, zeros, *rest = host
        n = self.count
        out = {ZERO_FRAC: zeros / n, MEAN: mean, STD: math.sqrt(max(m2, 0.0) / n)}
        if self.saturated is not None:
            out[SATURATED_FRAC] = rest.pop(0) / n
        if self.alive is not None:
            out[DEAD_FRAC] = rest.pop(0) / self.alive.numel()
        return out


class ActivationMonitor(ModuleMonitor):
    """Saturated, dead and zero fractions and the mean and std of a model's activations.

    Args:
        model: the model (an ``nn.Module``).
        every: measure the activations on these steps (an int n: steps 0, n, 2n, ...; a
            ``step -> bool``; None: never).
        modules: only these module paths (from ``named_modules()``, e.g. ``["net.1"]``); each
            must be one of the watched types. Default: every watched module.
        saturation: the threshold of ``saturated_frac``, in (0.5, 1): ``|y| >`` it for tanh-like
            outputs, ``y >`` it or ``y < 1 -`` it for sigmoid.
        keys: the tracker's :class:`~gradwandb.keys.Keys`, so a tagged tracker gets tagged keys.
        clock: returns the index of the optimizer step the next forward belongs to, e.g.
            ``lambda: tracker.step``; without it the monitor follows the records it is given.

    Call :meth:`attach` to hook the modules, add the monitor as an observer
    (``tracker.add_observer(monitor)``), and :meth:`remove` when done.

    Keys, on monitored steps (``<module>`` is the module's path, e.g. ``net.1``, or the model's
    class name in lower case for the model itself; a tagged ``keys`` inserts its tag after the
    first ``/``): ``act/<module>/zero_frac``, ``mean``, ``std``; ``saturated_frac`` for bounded
    outputs; ``dead_frac`` for the ReLU family. The record of the step gets the measures too
    (``record.activations[<module>] = {stat: value}``, and ``record.module_types``).
    """

    _consequence = "activation monitoring is switched off"
    _what = "activation"
    _listed = "watchable"
    _example = "net.1"

    def __init__(
        self,
        model: nn.Module,
        *,
        every: ScheduleLike | None = 10,
        modules: Sequence[str] | None = None,
        saturation: float = 0.99,
        keys: Keys = Keys(),  # noqa: B008  (frozen, immutable)
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._check_model(model)
        if isinstance(saturation, bool) or not isinstance(saturation, (int, float)):
            raise TypeError(f"saturation must be a number in (0.5, 1), got {saturation!r}")
        if not 0.5 < saturation < 1.0:
            raise ValueError(
                "saturation must be in (0.5, 1), the |y| above which a tanh output counts as "
                f"saturated (e.g. 0.99), got {saturation}"
            )
        self._start(model, keys, every, clock)
        self.saturation = float(saturation)
        self._latest: dict[str, dict[str, float]] = {}  # module -> stat -> value, last step
        self._taps: list[_Tap] = [
            _Tap(path, key_name(path, m), m, _kind(m)) for path, m in self._find(model, modules)
        ]

    # -- what it watches ----------------------------------------------------------------------

    def _watches(self, module: nn.Module) -> bool:
        return kind_of(module) is not None

    def _none_found(self, model: nn.Module) -> str:
        return (
            f"{type(model).__name__} has no nn.Tanh, nn.Sigmoid, nn.ReLU, nn.LeakyReLU, "
            "nn.GELU, nn.RNN, nn.LSTM or nn.GRU module, which is what ActivationMonitor "
            "watches (functional calls such as torch.relu cannot be hooked); pass a model "
            "that contains one"
        )

    def _unwatchable(
        self, model: nn.Module, path: str, module: nn.Module, watched: list[str]
    ) -> str | None:
        if kind_of(module) is not None:
            return None
        return (
            f"module {path!r} is a {type(module).__name__}, not an activation or recurrent "
            f"module ActivationMonitor watches; those of {type(model).__name__} are {watched}"
        )

    # -- the forward hook ---------------------------------------------------------------------

    def _hooks(self, tap: Tap) -> list[RemovableHandle]:
        assert isinstance(tap, _Tap)
        return [tap.module.register_forward_hook(ModuleHook(self._hook(tap)))]

    def _hook(self, tap: _Tap) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            step = self._guard(self._monitored_step)
            if step is not None:
                self._guard(lambda: self._capture(tap, step, out))

        return hook

    def _capture(self, tap: _Tap, step: int, out: Any) -> None:
        y = out[0] if isinstance(out, tuple) else out  # recurrent: the output sequence
        if isinstance(y, PackedSequence):
            y = y.data
        if not isinstance(y, Tensor) or not y.is_floating_point() or y.numel() == 0:
            return
        if tap.step != step:
            tap.reset(step)  # data of an earlier step that was never reported: dropped
        with torch.no_grad():
            tap.add(y.detach(), self.saturation)

    # -- the observer -------------------------------------------------------------------------

    def latest(self, module: str, stat: str) -> float | None:
        """The value of ``stat`` for ``module`` at the last step reported, if it had one.

        >>> ActivationMonitor(torch.nn.Tanh()).latest("tanh", SATURATED_FRAC) is None
        True
        """
        return self._latest.get(module, {}).get(stat)

    def _report(self, record: StepRecord) -> dict[str, Value]:
        """The ``act/...`` keys of the step, with ``record.activations`` and
        ``record.module_types`` filled for the modules measured; one transfer to the host."""
        ready = [t for t in self._taps if t.step == record.step and t.count]
        if not ready:
            return {}
        host = S.to_host({str(i): t.device_stats() for i, t in enumerate(ready)})
        row: dict[str, Value] = {}
        latest: dict[str, dict[str, float]] = {}
        for i, tap in enumerate(ready):
            measures = tap.measures(host[str(i)])
            tap.reset(None)
            for stat, value in measures.items():
                row[act_key(self.keys, tap.name, stat)] = value
            latest[tap.name] = measures
            record.activations[tap.name] = dict(measures)
            record.module_types[tap.name] = type(tap.module).__name__
        self._latest = latest
        return row


def _kind(module: nn.Module) -> Kind:
    kind = kind_of(module)
    assert kind is not None  # _find keeps only the modules kind_of knows
    return kind
