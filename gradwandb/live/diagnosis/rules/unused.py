"""**unused** (warning): a trainable watched parameter that gets no gradient.

A parameter is missing from ``record.names`` when its ``.grad`` is None at the step: it did
not take part in the loss (an unused head or branch), or its path to the loss was cut
(``.detach()``, ``torch.no_grad()``, ``.data``). Reported after ``unused_after`` consecutive
per-layer records without a gradient, unless it is frozen (``requires_grad=False``: on
purpose, not a finding). A parameter that comes back resets its count.

It needs the full watched list (:class:`~gradwandb.live.diagnosis.Diagnoser`'s ``watched``)
and, to tell frozen from unused, ``trainable(name)``. O(watched) per per-layer record;
nothing on the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gradwandb.live.diagnosis.emit import Emitter
from gradwandb.live.diagnosis.state import Streak
from gradwandb.live.diagnosis.thresholds import Thresholds
from gradwandb.live.record import StepRecord


class UnusedRule:
    """A streak per watched parameter of per-layer records without its gradient."""

    def __init__(
        self,
        thresholds: Thresholds,
        watched: Sequence[str],
        trainable: Callable[[str], bool] | None,
    ) -> None:
        self.thresholds = thresholds
        self._watched = list(dict.fromkeys(watched))
        self._trainable = trainable
        self._missing: dict[str, Streak] = {}
        self._had: set[str] = set()  # parameters that had a gradient at least once

    def __call__(self, record: StepRecord, out: Emitter) -> None:
        """Judge a record with per-layer norms."""
        if not self._watched:
            return
        present = set(record.names)
        self._had |= present
        k = self.thresholds.unused_after
        for name in self._watched:
            if name in present or (self._trainable is not None and not self._trainable(name)):
                self._missing.pop(name, None)  # used, or frozen on purpose
                continue
            streak = self._missing.get(name)
            if streak is None:
                streak = self._missing[name] = Streak()
            lasting = streak.hit(record.step)
            if lasting < k:
                continue
            if not out.fresh("unused", name):
                continue
            when = "no longer gets" if name in self._had else "has never received"
            why = (
                "although it requires grad: it is unused in the forward, or cut off from the "
                "loss by .detach() (or torch.no_grad(), .data)"
                if self._trainable is not None
                else "(if it is not frozen on purpose, it is unused in the forward, or cut off "
                "from the loss by .detach())"
            )
            text = (
                f"'{name}' {when} a gradient: none in {lasting} per-layer records since step "
                f"{streak.since}, {why}"
            )
            out.emit("unused", "warning", name, streak.since, float(lasting), text)
