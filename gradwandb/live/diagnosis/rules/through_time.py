"""The rules through time, per recurrent module, over ``record.through_time`` (the monitors'
:class:`~gradwandb.live.record.RecurrentSummary` s; the layer is the module's name):

- **vanishing** (error): the effective horizon under ``horizon_frac`` of the sequence length,
  or (with activation health on) the module's activations saturated over ``saturation``
  (``record.activations[module][saturated_frac]``, its latest value), for ``sustain``
  consecutive reports of that module. A report of a step with NaN/Inf gradients, or with
  non-finite summaries, says nothing about the horizon and is skipped.
- **exploding** (error): the largest spectral radius of the recurrent weights over
  ``radius_limit`` while the gradient grows going back in time (decay rate < 0) or the global
  norm of that step is over ``explode_global``.
"""

from __future__ import annotations

import math

from gradwandb import keys as K
from gradwandb.live.diagnosis import fixes
from gradwandb.live.diagnosis.emit import Emitter, g
from gradwandb.live.diagnosis.state import Streak
from gradwandb.live.diagnosis.thresholds import Thresholds
from gradwandb.live.record import RecurrentSummary, StepRecord


class ThroughTimeRules:
    """Horizon, exploding recurrence and saturation, with a streak per module."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._short: dict[str, Streak] = {}
        self._saturated: dict[str, Streak] = {}
        self._latest: dict[str, float] = {}  # module -> its latest saturated fraction

    def __call__(self, record: StepRecord, out: Emitter) -> None:
        """Judge every module reported in ``record``."""
        for module, stats in record.activations.items():
            frac = stats.get(K.SATURATED_FRAC)
            if frac is None or math.isnan(frac):
                continue
            if not 0.0 <= frac <= 1.0:
                raise ValueError(
                    f"StepRecord(step={record.step}).activations[{module!r}] has a saturated "
                    f"fraction of {frac!r}: it must be in [0, 1]"
                )
            self._latest[module] = float(frac)
        finite = math.isfinite(record.global_norm) and not record.nonfinite_tensors
        for module, summary in record.through_time.items():
            if not isinstance(module, str) or not isinstance(summary, RecurrentSummary):
                raise TypeError(
                    f"StepRecord(step={record.step}).through_time maps a module's name to its "
                    f"RecurrentSummary, got {module!r}: {summary!r}"
                )
            kind = summary.module_type or record.module_types.get(module, "")
            what = f"'{module}' ({kind})" if kind else f"'{module}'"
            self._horizon(module, kind, what, summary, finite, out)
            self._exploding(module, what, summary, record.global_norm, out)
            saturated = self._latest.get(module)
            if saturated is not None:
                self._saturation(module, what, summary.step, saturated, out)

    def _horizon(
        self,
        module: str,
        module_type: str,
        what: str,
        s: RecurrentSummary,
        finite: bool,
        out: Emitter,
    ) -> None:
        t = self.thresholds
        streak = self._short.setdefault(module, Streak())
        growing = s.decay_rate is not None and s.decay_rate < 0.0  # a short horizon of growth
        usable = finite and all(
            x is None or math.isfinite(x) for x in (s.decay_rate, s.first_last_ratio)
        )
        if not usable or s.seq_len < 2 or growing or s.horizon >= t.horizon_frac * s.seq_len:
            streak.miss()
            return
        lasting = streak.hit(s.step)
        if lasting < t.sustain:
            return
        early = ""
        if s.first_last_ratio is not None:
            early = f"; the first timestep gets {g(s.first_last_ratio)} of the last one's"
        out.emit(
            "vanishing",
            "error",
            module,
            streak.since,
            s.horizon / s.seq_len,
            lambda: (
                f"gradient through time in {what} fades within {s.horizon} of {s.seq_len} "
                f"timesteps (under {t.horizon_frac:g} of the sequence) for {lasting} reports "
                f"since step {streak.since}{early}: early inputs barely learn"
            ),
            remedy="time_vanishing",
            family=fixes.time_family(module_type),
        )

    def _exploding(
        self, module: str, what: str, s: RecurrentSummary, global_norm: float, out: Emitter
    ) -> None:
        t, radius, rate = self.thresholds, s.spectral_radius, s.decay_rate
        if radius is None or not radius > t.radius_limit or not out.fresh("exploding", module):
            return
        growing = rate is not None and rate < 0.0
        if not (growing or global_norm > t.explode_global):
            return
        if rate is not None and growing:
            why = "the gradient grows going back in time (" + _growth(rate, s.seq_len) + ")"
        else:
            why = f"the global gradient norm is {g(global_norm)}, over {g(t.explode_global)}"
        out.emit(
            "exploding",
            "error",
            module,
            s.step,
            radius,
            f"recurrent weights of {what} have spectral radius {g(radius)}, over "
            f"{g(t.radius_limit)}, and {why} at step {s.step}",
            remedy="time_exploding",
        )

    def _saturation(self, module: str, what: str, step: int, frac: float, out: Emitter) -> None:
        t = self.thresholds
        streak = self._saturated.setdefault(module, Streak())
        if not frac > t.saturation:
            streak.miss()
            return
        lasting = streak.hit(step)
        if lasting < t.sustain:
            return
        out.emit(
            "vanishing",
            "error",
            module,
            streak.since,
            frac,
            lambda: (
                f"{frac:.0%} of the activations of {what} are saturated (over "
                f"{t.saturation:.0%}) for {lasting} reports since step {streak.since}: their "
                "derivative is near 0, so the gradient through time vanishes"
            ),
            remedy="saturation",
        )


def _growth(rate: float, seq_len: int) -> str:
    """How fast a gradient grows going back in time, in words that never read "x1".

    >>> _growth(-0.7, 8), _growth(-0.001, 40), _growth(-1e-6, 40)
    ('x2.01 per timestep', 'x1.04 across the 40 timesteps', 'by a factor e**1e-06 per timestep')
    """
    per = math.exp(-rate)
    if g(per) != "1":
        return f"x{g(per)} per timestep"
    total = math.exp(min(-rate * max(seq_len - 1, 1), 700.0))
    if g(total) != "1":
        return f"x{g(total)} across the {seq_len} timesteps"
    return f"by a factor e**{g(-rate)} per timestep"
