"""**flow** (error): log10 of the ratio of the latest to the earliest layer's gradient (forward
order; weights only unless ``flow_ignore_bias=False``; mean abs(g) where the record has it,
else the norm) at or over ``flow_decades`` for ``sustain`` consecutive per-layer records.

An exactly-zero earliest layer is the dead rule's case, not a weak flow.

:class:`GapRule` looks inside the stack: a middle layer decades below both its neighbours,
by mean abs(g) or by norm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradwandb import keys as K
from gradwandb.live.diagnosis.emit import Emitter, g
from gradwandb.live.diagnosis.state import Streak
from gradwandb.live.diagnosis.thresholds import Thresholds
from gradwandb.live.record import StepRecord

_FLOOR = 1e-30  # norms below this count as this in the flow ratio (keeps it finite)


def end_of(
    names: Sequence[str], measure: Sequence[float], skip_bias: bool, *, forward: bool
) -> int | None:
    """Index of the earliest (or latest) layer that can end the flow ratio; a short scan."""
    order = range(len(names)) if forward else range(len(names) - 1, -1, -1)
    for i in order:
        if math.isfinite(measure[i]) and not (skip_bias and K.is_bias(names[i])):
            return i
    return None


class FlowRule:
    """The ratio of the latest to the earliest layer's gradient, sustained."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._streak = Streak()

    @property
    def blocked(self) -> bool:
        """The ratio has been over the limit for ``sustain`` per-layer records, up to now."""
        return self._streak.count >= self.thresholds.sustain

    def __call__(self, record: StepRecord, out: Emitter, health: dict[str, float]) -> None:
        """Judge a record with per-layer norms."""
        t, streak = self.thresholds, self._streak
        measure, label = record.norm, "norm"
        if len(record.mean_abs) == len(record.names):
            measure, label = record.mean_abs, "mean abs(g)"
        first = end_of(record.names, measure, t.flow_ignore_bias, forward=True)
        last = end_of(record.names, measure, t.flow_ignore_bias, forward=False)
        if first is None or last is None or first >= last:
            streak.miss()
            return
        early, late = measure[first], measure[last]
        # an exactly-zero end is a dead layer (the dead rule's case), not a weak flow;
        # nothing flowing at either end gives no ratio
        if early == 0.0 or (early <= _FLOOR and late <= _FLOOR):
            streak.miss()
            return
        ratio = math.log10(max(late, _FLOOR) / max(early, _FLOOR))
        health[K.H_FLOW_RATIO] = ratio
        if ratio < t.flow_decades:
            streak.miss()
            return
        lasting = streak.hit(record.step)
        if lasting < t.sustain:
            return
        name, latest = record.names[first], record.names[last]
        out.emit(
            "flow",
            "error",
            name,
            streak.since,
            ratio,
            lambda: (
                f"gradient {label} shrinks {ratio:.1f} decades from the latest layer "
                f"'{latest}' ({g(late)}) back to the earliest '{name}' ({g(early)}), for "
                f"{lasting} per-layer records since step {streak.since}"
            ),
            remedy="vanishing",
        )


class GapRule:
    """**flow** (error) inside the stack: a middle layer ``flow_gap_decades`` or more below
    both its neighbours (the nearest weights before and after it in forward order; biases
    skipped unless ``flow_ignore_bias=False``), by mean abs(g) or by norm (either one is
    enough), for ``sustain`` consecutive per-layer records. The ends are the ratio rule's."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._streaks: dict[str, Streak] = {}
        self.blocked = False  # a gap has lasted ``sustain`` records, up to now

    def __call__(self, record: StepRecord, out: Emitter) -> None:
        """Judge a record with per-layer norms."""
        t = self.thresholds
        self.blocked = False
        chosen = [
            i for i, n in enumerate(record.names) if not (t.flow_ignore_bias and K.is_bias(n))
        ]
        measures = [(record.norm, "norm")]
        if len(record.mean_abs) == len(record.names):
            measures.insert(0, (record.mean_abs, "mean abs(g)"))
        gaps: dict[int, tuple[float, str, float, float, float]] = {}
        for values, label in measures:
            for pos in range(1, len(chosen) - 1):
                before, i, after = chosen[pos - 1], chosen[pos], chosen[pos + 1]
                x, a, b = values[i], values[before], values[after]
                if not (math.isfinite(x) and math.isfinite(a) and math.isfinite(b)):
                    continue
                if x == 0.0 or min(a, b) <= _FLOOR:  # a dead layer is the dead rule's
                    continue
                gap = math.log10(min(a, b) / x)
                if gap >= t.flow_gap_decades and (i not in gaps or gap > gaps[i][0]):
                    gaps[i] = (gap, label, x, a, b)
        for name in [n for i, n in enumerate(record.names) if i not in gaps]:
            self._streaks.pop(name, None)
        for i, (gap, label, x, a, b) in gaps.items():
            name = record.names[i]
            streak = self._streaks.setdefault(name, Streak())
            lasting = streak.hit(record.step)
            if lasting < t.sustain:
                continue
            self.blocked = True
            if not out.fresh("flow", name):
                continue
            pos = chosen.index(i)
            left, right = record.names[chosen[pos - 1]], record.names[chosen[pos + 1]]
            out.emit(
                "flow",
                "error",
                name,
                streak.since,
                gap,
                f"gradient {label} of '{name}' ({g(x)}) is {gap:.1f} decades below both its "
                f"neighbours '{left}' ({g(a)}) and '{right}' ({g(b)}), for {lasting} per-layer "
                f"records since step {streak.since}: the signal is blocked in the middle of "
                "the stack",
                remedy="vanishing",
            )
