"""The rules on activation health, over ``record.activations`` (what
:class:`~gradwandb.ActivationMonitor` measured on the steps it watches; the layer is the
module's name in keys, e.g. ``net.3``), for every activation module, feed-forward or recurrent:

- **saturation**: a module's ``saturated_frac`` over ``saturation_warning`` for ``sustain``
  consecutive reports of it (warning); over ``saturation`` it is severe and reported as
  **vanishing** (error): the units sit in the flat tails of sigmoid/tanh, their derivative is
  ~0 and the gradient to every layer before them vanishes. A recurrent module that the rules
  through time judge (it is in ``record.through_time``) is theirs.
- **dead_units** (warning): a ReLU-family module's ``dead_frac`` (units never positive in the
  step) at or over ``dead_units`` and under 1, for ``sustain`` reports. A fully dead module is
  the ``dead`` rule's, from the zero gradient of the layer it feeds.
- **activation_scale** (warning): across the modules in model order, a module's activation
  ``std`` over ``act_std_max``, or ``act_scale_decades`` or more below the first module's
  std, for ``sustain`` reports: the signal blows up or fades with depth.

O(modules reported) per record that has activations; nothing on the others.
"""

from __future__ import annotations

import math

from gradwandb import keys as K
from gradwandb.live.diagnosis import fixes
from gradwandb.live.diagnosis.emit import Emitter, g
from gradwandb.live.diagnosis.state import Streak
from gradwandb.live.diagnosis.thresholds import Thresholds
from gradwandb.live.record import StepRecord

_RECURRENT = ("RNN", "LSTM", "GRU")


class ActivationRules:
    """Saturation, dead units and activation scale, with a streak per module and rule."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._streaks: dict[tuple[str, str], Streak] = {}
        self.saturated = 0  # modules severely saturated (sustained) at the last report

    def _streak(self, rule: str, module: str) -> Streak:
        key = (rule, module)
        streak = self._streaks.get(key)
        if streak is None:
            streak = self._streaks[key] = Streak()
        return streak

    def __call__(self, record: StepRecord, out: Emitter) -> None:
        """Judge the modules ``record`` reports activations of."""
        if not record.activations:
            return
        self.saturated = 0
        first_std: tuple[str, float] | None = None
        for module, stats in record.activations.items():
            kind = record.module_types.get(module, "")
            what = f"'{module}' ({kind})" if kind else f"'{module}'"
            family = fixes.family(kind or None, None)
            frac = stats.get(K.SATURATED_FRAC)
            if frac is not None and not (kind in _RECURRENT and module in record.through_time):
                self._saturation(record.step, module, what, family, frac, out)
            dead = stats.get(K.DEAD_FRAC)
            if dead is not None:
                self._dead(record.step, module, what, family, dead, out)
            std = stats.get(K.STD)
            if std is None or not math.isfinite(std) or (dead is not None and dead >= 1.0):
                continue
            if first_std is None:
                if std > 0.0:
                    first_std = (module, std)
                self._scale(record.step, module, what, family, std, None, out)
            else:
                self._scale(record.step, module, what, family, std, first_std, out)

    def _saturation(
        self, step: int, module: str, what: str, family: str, frac: float, out: Emitter
    ) -> None:
        t = self.thresholds
        if not 0.0 <= frac <= 1.0:  # NaN (no elements) or out of range: says nothing
            self._streak("saturation", module).miss()
            return
        streak = self._streak("saturation", module)
        if not frac > t.saturation_warning:
            streak.miss()
            return
        lasting = streak.hit(step)
        if lasting < t.sustain:
            return
        severe = frac > t.saturation
        self.saturated += severe
        limit = t.saturation if severe else t.saturation_warning
        text = (
            f"{frac:.0%} of the activations of {what} are saturated (over {limit:.0%}) for "
            f"{lasting} reports since step {streak.since}: they sit in the flat tails where the "
            "derivative is ~0"
        )
        if severe:
            out.emit(
                "vanishing",
                "error",
                module,
                streak.since,
                frac,
                text + ", so the gradient to every layer before it vanishes",
                remedy="activation_saturation",
                family=family,
            )
        else:
            out.emit(
                "saturation",
                "warning",
                module,
                streak.since,
                frac,
                text + ", which weakens the gradient to the layers before it",
                remedy="activation_saturation",
                family=family,
            )

    def _dead(
        self, step: int, module: str, what: str, family: str, frac: float, out: Emitter
    ) -> None:
        t = self.thresholds
        streak = self._streak("dead_units", module)
        if not t.dead_units <= frac < 1.0:  # a fully dead module is the dead rule's
            streak.miss()
            return
        lasting = streak.hit(step)
        if lasting < t.sustain:
            return
        out.emit(
            "dead_units",
            "warning",
            module,
            streak.since,
            frac,
            lambda: (
                f"{frac:.0%} of the units of {what} are dead (never positive in a step; "
                f"at or over {t.dead_units:.0%}) for {lasting} reports since step "
                f"{streak.since}: they pass no gradient, so the weights feeding them stop "
                "learning"
            ),
            remedy="dead_units",
            family=family,
        )

    def _scale(
        self,
        step: int,
        module: str,
        what: str,
        family: str,
        std: float,
        first: tuple[str, float] | None,
        out: Emitter,
    ) -> None:
        t = self.thresholds
        streak = self._streak("activation_scale", module)
        blown = std > t.act_std_max
        fallen = 0.0
        if first is not None and first[1] > 0.0:
            fallen = math.log10(first[1] / max(std, 1e-300))
        if not (blown or fallen >= t.act_scale_decades):
            streak.miss()
            return
        lasting = streak.hit(step)
        if lasting < t.sustain:
            return
        if blown:
            text = (
                f"the activations of {what} have std {g(std)}, over {g(t.act_std_max)}, for "
                f"{lasting} reports since step {streak.since}: the signal blows up with depth"
            )
        else:
            assert first is not None
            text = (
                f"the activations of {what} have std {g(std)}, {fallen:.1f} decades below "
                f"those of the first activation '{first[0]}' ({g(first[1])}), for {lasting} "
                f"reports since step {streak.since}: the signal fades toward zero with depth"
            )
        out.emit(
            "activation_scale",
            "warning",
            module,
            streak.since,
            std,
            text,
            remedy="activation_scale",
            family=family,
        )
