"""The rules on the global norm, O(1) a record:

- **exploding** (error): the global norm over ``explode_global``; the global norm rising
  ``growth_decades`` or more over the last ``growth_window`` logged steps (least-squares slope
  of log10 norm) and ending above ``growth_min_norm``; a spike that lasts ``sustain`` logged
  steps.
- **spike** (warning): log10 of the global norm more than ``spike_z`` standard deviations above
  its exponentially weighted average. A spike that recovers is only a warning; it counts as
  exploding when it lasts (above) or when it crosses the hard limit.
- **vanishing** (error): the global norm under ``vanish_global`` for ``sustain`` consecutive
  logged steps.
"""

from __future__ import annotations

import math

from gradwandb import keys as K
from gradwandb.live.diagnosis.emit import Emitter, g
from gradwandb.live.diagnosis.state import Ewm, Streak, Trend
from gradwandb.live.diagnosis.thresholds import Thresholds
from gradwandb.live.record import StepRecord


class GlobalNormRules:
    """Hard limit, growth, spikes and global vanishing, with their running state."""

    def __init__(self, thresholds: Thresholds) -> None:
        t = self.thresholds = thresholds
        self._ewm = Ewm(t.spike_window, t.spike_warmup, t.spike_min_std, t.spike_z)
        self._trend = Trend(t.growth_window)
        self._spikes = Streak()
        self._vanish = Streak()

    @property
    def vanishing(self) -> bool:
        """The global norm has been under the limit for ``sustain`` logged steps, up to now."""
        return self._vanish.count >= self.thresholds.sustain

    def __call__(self, record: StepRecord, out: Emitter, health: dict[str, float]) -> bool:
        """Judge ``record``'s global norm; True when an exploding condition holds."""
        t, step, gn = self.thresholds, record.step, record.global_norm
        exploding = False
        finite = math.isfinite(gn)
        if finite and gn > t.explode_global:
            exploding = True
            out.emit(
                "exploding",
                "error",
                None,
                step,
                gn,
                lambda: (
                    f"global gradient norm {g(gn)} at step {step}, over the limit "
                    f"{g(t.explode_global)}"
                ),
            )
        z = rise = 0.0
        if finite and gn > 0.0:
            y = math.log10(gn)
            z = self._ewm.observe(y)
            self._trend.push(step, y)
            rise = self._trend.rise()
        if z > t.spike_z:
            lasting = self._spikes.hit(step)
            out.emit(
                "spike",
                "warning",
                None,
                step,
                z,
                lambda: (
                    f"global gradient norm {g(gn)} at step {step} is {z:.1f} standard "
                    "deviations above its recent average (log scale)"
                ),
            )
            if lasting >= t.sustain:
                exploding = True
                since = self._spikes.since
                out.emit(
                    "exploding",
                    "error",
                    None,
                    since,
                    z,
                    lambda: (
                        f"global gradient norm has stayed over {t.spike_z:g} standard "
                        f"deviations above its average for {lasting} logged steps since step "
                        f"{since} (now {g(gn)})"
                    ),
                )
        else:
            self._spikes.miss()
        if rise >= t.growth_decades and gn >= t.growth_min_norm:
            exploding = True
            since = self._trend.first_step()
            out.emit(
                "exploding",
                "error",
                None,
                since,
                rise,
                lambda: (
                    f"global gradient norm grew {rise:.2f} decades over {t.growth_window} "
                    f"logged steps since step {since}, to {g(gn)}"
                ),
            )
        if finite and gn < t.vanish_global:
            lasting = self._vanish.hit(step)
            if lasting >= t.sustain:
                since = self._vanish.since
                what = (
                    "exactly 0: is the loss detached from the watched parameters?"
                    if gn == 0.0
                    else f"{g(gn)}, under {g(t.vanish_global)}: no signal reaches any layer"
                )
                out.emit(
                    "vanishing",
                    "error",
                    None,
                    since,
                    gn,
                    lambda: (
                        f"global gradient norm has stayed under {g(t.vanish_global)} for "
                        f"{lasting} logged steps since step {since}; now {what}"
                    ),
                )
        else:
            self._vanish.miss()
        health[K.H_SPIKE_Z] = z
        health[K.H_GROWTH] = rise
        return exploding
