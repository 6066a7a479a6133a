"""What the per-module monitors share (activations, through time): finding the modules, hook
handles, the step clock that says which optimizer step a forward belongs to, the error shield,
the observer entry point, removal, and context use.

A monitor is a tracker observer of the :data:`~gradwandb.live.record.FILL` stage: called with
the record of a logged step, it returns its keys for the row and writes its measures into the
record, for the diagnosis (which runs later in the same step) to read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol, TypeVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradwandb.keys import Keys
from gradwandb.live.record import FILL, StepRecord
from gradwandb.live.schedules import ScheduleLike, as_schedule
from gradwandb.live.shield import Shield
from gradwandb.live.sinks import Value

_M = TypeVar("_M", bound="ModuleMonitor")
_T = TypeVar("_T")


class Tap(Protocol):
    """One hooked module: its path in the model, its name in keys, and the step's data."""

    path: str
    name: str
    module: nn.Module

    def reset(self, step: int | None) -> None:
        """Drop what was captured; ``step`` is the step of what comes next (None: none)."""


class ModuleMonitor:
    """Base of the monitors that hook modules of a model and report as tracker observers.

    A subclass says what it watches (:meth:`_watches`, :meth:`_none_found`,
    :meth:`_unwatchable`, and the words of the errors: ``_what``, ``_listed``, ``_example``),
    sets ``_taps`` from :meth:`_find`, puts its hooks on one tap in :meth:`_hooks`, and reports
    a step in :meth:`_report`. Calling the monitor with a record (:meth:`__call__`) advances
    the step clock and runs :meth:`_report` through the monitor's
    :class:`~gradwandb.live.shield.Shield`; the hooks run their bodies through :meth:`_guard`,
    the same shield: the first error of ours warns once and switches
    the whole monitor off.
    """

    stage: ClassVar[int] = FILL
    _consequence: ClassVar[str] = "monitoring is switched off"  # what the shield's warning says
    _what: ClassVar[str] = "watched"  # "pass None to watch every <what> module"
    _listed: ClassVar[str] = "watched"  # "its <listed> modules are [...]" after a bad path
    _example: ClassVar[str] = "net.1"  # a module path in the errors' examples
    _taps: Sequence[Tap]

    # -- what a subclass says -------------------------------------------------------------

    def _watches(self, module: nn.Module) -> bool:
        """True for a module this monitor watches by default."""
        raise NotImplementedError

    def _none_found(self, model: nn.Module) -> str:
        """The error when ``model`` holds no module this monitor watches by default."""
        raise NotImplementedError

    def _unwatchable(
        self, model: nn.Module, path: str, module: nn.Module, watched: list[str]
    ) -> str | None:
        """The error for a module named in ``modules`` that cannot be watched; None: it can."""
        return None

    def _hooks(self, tap: Tap) -> list[RemovableHandle]:
        """Hook one tap's module; the handles."""
        raise NotImplementedError

    def _report(self, record: StepRecord) -> dict[str, Value]:
        """The keys of step ``record.step`` (empty: nothing), writing the measures into it."""
        raise NotImplementedError

    # -- set-up ---------------------------------------------------------------------------

    def _check_model(self, model: object) -> None:
        """Raise, naming the monitor, unless ``model`` is an nn.Module."""
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"{type(self).__name__} needs the model (an nn.Module), "
                f"got {model!r} ({type(model).__name__})"
            )

    def _start(
        self,
        model: nn.Module,
        keys: Keys,
        every: ScheduleLike | None,
        clock: Callable[[], int] | None,
    ) -> None:
        """Check and keep what every monitor takes; start the step clock and the shield."""
        if not isinstance(keys, Keys):
            raise TypeError(f"keys must be a gradwandb.Keys (the tracker's), got {keys!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning the step index, got {clock!r}")
        self.model = model
        self.keys = keys
        self._every = as_schedule("every", every)
        self._clock = clock
        self._next = 0  # step of the next forward, as the records tell (without a clock)
        self._handles: list[RemovableHandle] = []
        self._shield = Shield(f"gradwandb.{type(self).__name__}", self._consequence)

    def _find(self, model: nn.Module, paths: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
        """The modules to watch, as (path, module) in model order: every one :meth:`_watches`
        when ``paths`` is None, else those named (checked, with errors that list the choice)."""
        found = [(p, m) for p, m in model.named_modules() if self._watches(m)]
        if paths is None:
            if not found:
                raise ValueError(self._none_found(model))
            return found
        if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
            raise TypeError(
                f"modules must be a list of module paths, e.g. [{self._example!r}], got {paths!r}"
            )
        if not paths:
            raise ValueError(f"modules is empty: pass None to watch every {self._what} module")
        every_module = dict(model.named_modules())
        watched = [p or "''" for p, _ in found]
        chosen: list[tuple[str, nn.Module]] = []
        for path in paths:
            if path not in every_module:
                raise ValueError(
                    f"module path {path!r} is not in {type(model).__name__}; its {self._listed} "
                    f"modules are {watched}"
                )
            module = every_module[path]
            error = self._unwatchable(model, path, module, watched)
            if error is not None:
                raise ValueError(error)
            chosen.append((path, module))
        return chosen

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def modules(self) -> list[str]:
        """The watched module paths, in model order."""
        return [t.path for t in self._taps]

    @property
    def attached(self) -> bool:
        """True between :meth:`attach` and :meth:`remove`."""
        return bool(self._handles)

    def attach(self: _M) -> _M:
        """Hook the modules (again after :meth:`remove`; a second call does nothing)."""
        if not self._handles:
            for tap in self._taps:
                self._handles += self._hooks(tap)
        return self

    def remove(self) -> None:
        """Take every hook out and drop captured data."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for tap in self._taps:
            tap.reset(None)

    def __enter__(self: _M) -> _M:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"<gradwandb.{type(self).__name__} {self.modules} {state}>"

    # -- hooks and the observer -----------------------------------------------------------

    def _guard(self, body: Callable[[], _T]) -> _T | None:
        """Run ``body`` through the shield: None once the monitor is off (or if it fails now)."""
        return self._shield.run(body)

    def _monitored_step(self) -> int | None:
        """The step this forward belongs to, if it is monitored; else None. Cheap."""
        if self._shield.failed or not torch.is_grad_enabled():
            return None
        step = self._clock() if self._clock is not None else self._next
        return step if self._every(step) else None

    def __call__(self, record: StepRecord) -> dict[str, Value] | None:
        """This monitor's keys of step ``record.step``, or None; its measures join ``record``."""
        self._next = record.step + 1
        row = self._shield.run(lambda: self._report(record))
        return row or None


def key_name(path: str, module: nn.Module) -> str:
    """A module's name in keys: its path, or its class name in lower case for the model itself.

    >>> key_name("encoder", nn.GRU(2, 2)), key_name("", nn.GRU(2, 2))
    ('encoder', 'gru')
    """
    return path or type(module).__name__.lower()


def log10_abs(x: float) -> float:
    """log10 |x|, with -inf for 0 and NaN and +inf passed through (what the heatmaps draw).

    >>> log10_abs(100.0), log10_abs(0.0), log10_abs(float("inf"))
    (2.0, -inf, inf)
    """
    if math.isnan(x):
        return math.nan
    if x == 0.0:
        return -math.inf
    if math.isinf(x):
        return math.inf
    return math.log10(abs(x))
