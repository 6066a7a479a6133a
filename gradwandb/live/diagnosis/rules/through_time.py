"""The rules through time, per recurrent module, over ``record.through_time`` (the monitors'
:class:`~gradwandb.live.record.RecurrentSummary` s; the layer is the module's name).

Which curve they judge. When the memory probe ran (``memory_horizon`` is set), the rules judge
the recurrence's memory, ||d h_T / d x_t||, which does not depend on how many loss terms there
are; otherwise the input-gradient curve dL/dx_t (where the loss's gradient lands in time, which
with a loss at every timestep stays flat however fast the recurrence forgets).

- **vanishing** (error): the horizon under ``horizon_frac`` of the sequence length, or (with
  activation health on) the module's activations saturated over ``saturation``
  (``record.activations[module][saturated_frac]``, its latest value), for ``sustain``
  consecutive reports of that module. A report of a step with NaN/Inf gradients, or with
  non-finite summaries, says nothing about the horizon and is skipped.
- **exploding** (error): the judged curve grows going back in time, by more than
  :data:`MIN_GROWTH` across the sequence (decay rate < 0), and, for a vanilla nn.RNN, the
  largest spectral radius of its recurrent weights is over ``radius_limit``. A gated cell
  (LSTM, GRU) needs the memory probe: the radius of one of its gate blocks is not the gain of
  the recurrence (the gates multiply it by sigmoid and tanh derivatives), and dL/dx_t grows
  toward early timesteps with a loss at every timestep, so neither says it explodes.
"""

from __future__ import annotations

import math

from gradwandb import keys as K
from gradwandb.live.diagnosis import fixes
from gradwandb.live.diagnosis.emit import Emitter, g
from gradwandb.live.diagnosis.state import Streak
from gradwandb.live.diagnosis.thresholds import Thresholds
from gradwandb.live.record import RecurrentSummary, StepRecord

MIN_GROWTH = 2.0  # growth going back in time, across the sequence, that counts as exploding
_GATED = ("LSTM", "GRU")


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
            self._exploding(module, kind, what, summary, out)
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
        memory = s.memory_horizon is not None
        if memory:
            horizon, length, rate = s.memory_horizon, s.memory_len or s.seq_len, s.memory_decay_rate
            summaries: tuple[float | None, ...] = (rate,)
        else:
            horizon, length, rate = s.horizon, s.seq_len, s.decay_rate
            summaries = (rate, s.first_last_ratio)
        assert horizon is not None
        growing = rate is not None and rate < 0.0  # a short horizon of growth
        usable = finite and all(x is None or math.isfinite(x) for x in summaries)
        if not usable or length < 2 or growing or horizon >= t.horizon_frac * length:
            streak.miss()
            return
        lasting = streak.hit(s.step)
        if lasting < t.sustain:
            return
        if memory:
            text = (
                f"the memory of {what} fades within {horizon} of {length} timesteps (under "
                f"{t.horizon_frac:g} of the sequence) for {lasting} reports since step "
                f"{streak.since}: its final state barely depends on inputs more than {horizon} "
                "steps back, so early inputs barely learn"
            )
        else:
            early = ""
            if s.first_last_ratio is not None:
                early = f"; the first timestep gets {g(s.first_last_ratio)} of the last one's"
            text = (
                f"gradient through time in {what} fades within {horizon} of {length} "
                f"timesteps (under {t.horizon_frac:g} of the sequence) for {lasting} reports "
                f"since step {streak.since}{early}: early inputs barely learn"
            )
        out.emit(
            "vanishing",
            "error",
            module,
            streak.since,
            horizon / length,
            text,
            remedy="time_vanishing",
            family=fixes.time_family(module_type),
        )

    def _exploding(
        self, module: str, module_type: str, what: str, s: RecurrentSummary, out: Emitter
    ) -> None:
        t, radius = self.thresholds, s.spectral_radius
        if not out.fresh("exploding", module):
            return
        memory = s.memory_horizon is not None
        rate, length = (
            (s.memory_decay_rate, s.memory_len or s.seq_len)
            if memory
            else (s.decay_rate, s.seq_len)
        )
        gated = module_type in _GATED
        if gated and not memory:
            return  # neither a gate block's radius nor dL/dx_t says a gated cell explodes
        if rate is None or not _grows(rate, length):
            return
        what_grows = "its memory (d h_T / d x_t)" if memory else "the gradient"
        why = f"{what_grows} grows going back in time ({_growth(rate, length)})"
        if gated:
            out.emit(
                "exploding",
                "error",
                module,
                s.step,
                math.exp(min(-rate, 700.0)),
                f"the recurrence of {what} amplifies: {why} at step {s.step}: its final state "
                "depends more on early inputs than on recent ones",
                remedy="time_exploding",
                family=fixes.time_family(module_type),
            )
            return
        if radius is None or not radius > t.radius_limit:
            return
        out.emit(
            "exploding",
            "error",
            module,
            s.step,
            radius,
            f"recurrent weights of {what} have spectral radius {g(radius)}, over "
            f"{g(t.radius_limit)}, and {why} at step {s.step}",
            remedy="time_exploding",
            family=fixes.time_family(module_type),
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


def _grows(rate: float, seq_len: int) -> bool:
    """True when a curve of decay rate ``rate`` grows going back in time by more than
    :data:`MIN_GROWTH` across ``seq_len`` timesteps.

    >>> _grows(-0.7, 8), _grows(-0.001, 40), _grows(0.5, 40)
    (True, False, False)
    """
    return math.isfinite(rate) and -rate * max(seq_len - 1, 1) > math.log(MIN_GROWTH)


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
