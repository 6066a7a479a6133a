"""The rules on the weights, over ``param_norm`` (the weight norm before the step, logged on
per-layer records):

- **nonfinite** (error): a weight norm that is NaN/Inf: the weights themselves hold NaN/Inf
  (an update with NaN/Inf gradients, or one that overflowed, wrote them) and every later
  forward is poisoned.
- **weights** (warning): a weight norm ``weight_growth_decades`` or more over the first one
  seen for that parameter (weights only, biases skipped) and over
  ``weight_growth_min_norm``: the weights run away (too high a learning rate, no weight decay).

O(layers) per per-layer record that carries weight norms.
"""

from __future__ import annotations

import math

from gradwandb import keys as K
from gradwandb.live.diagnosis.emit import Emitter, g
from gradwandb.live.diagnosis.thresholds import Thresholds
from gradwandb.live.record import StepRecord


class WeightRules:
    """The first finite weight norm of each parameter, to measure growth against."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._first: dict[str, tuple[int, float]] = {}  # name -> (step, first norm > 0)

    def __call__(self, record: StepRecord, out: Emitter) -> bool:
        """Judge the weight norms of ``record``; True when some weights are NaN/Inf."""
        t, step = self.thresholds, record.step
        bad = False
        for name, x in record.param_norm.items():
            if not math.isfinite(x):
                bad = True
                if out.fresh("nonfinite", name):
                    out.emit(
                        "nonfinite",
                        "error",
                        name,
                        step,
                        x,
                        f"the weights of '{name}' hold NaN/Inf at step {step} (weight norm "
                        f"{g(x)}): an update with NaN/Inf gradients, or one that overflowed, "
                        "wrote them, and every forward from here on is poisoned",
                        remedy="weights_nonfinite",
                    )
                continue
            if K.is_bias(name) or x <= 0.0:
                continue
            first = self._first.get(name)
            if first is None:
                self._first[name] = (step, x)
                continue
            rise = math.log10(x / first[1])
            if rise < t.weight_growth_decades or x <= t.weight_growth_min_norm:
                continue
            if not out.fresh("weights", name):
                continue
            since, start = first
            out.emit(
                "weights",
                "warning",
                name,
                since,
                rise,
                f"the weight norm of '{name}' grew {rise:.1f} decades since step {since}, from "
                f"{g(start)} to {g(x)} at step {step}: the weights run away",
            )
        return bad
