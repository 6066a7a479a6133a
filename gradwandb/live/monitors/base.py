"""The lifecycle the per-module monitors share (activations, through time): hook handles, the
step clock that says which optimizer step a forward belongs to, removal, and context use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch.utils.hooks import RemovableHandle

from gradwandb.live.schedules import ScheduleLike, as_schedule

_M = TypeVar("_M", bound="ModuleMonitor")


class ModuleMonitor:
    """Base of the monitors that hook modules of a model and report as tracker observers.

    A subclass sets ``_taps`` (objects with a ``path``, a ``module`` and ``reset(step)``) and
    implements :meth:`attach`, which fills ``_handles``.
    """

    _taps: Sequence[Any]

    def _check_model(self, model: object) -> None:
        """Raise, naming the monitor, unless ``model`` is an nn.Module."""
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"{type(self).__name__} needs the model (an nn.Module), "
                f"got {model!r} ({type(model).__name__})"
            )

    def _start_clock(self, every: ScheduleLike | None, clock: Callable[[], int] | None) -> None:
        self._every = as_schedule("every", every)
        self._clock = clock
        self._next = 0  # step of the next forward, as the records tell (without a clock)
        self._handles: list[RemovableHandle] = []
        self._failed = False

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
        raise NotImplementedError

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

    def _monitored_step(self) -> int | None:
        """The step this forward belongs to, if it is monitored; else None. Cheap."""
        if self._failed or not torch.is_grad_enabled():
            return None
        step = self._clock() if self._clock is not None else self._next
        return step if self._every(step) else None
