"""The rules on per-layer norms, O(layers) a per-layer record with a short path for healthy
layers:

- **exploding** (error): a layer's norm over ``explode_norm``.
- **vanishing**: a layer's norm under ``vanish_norm`` for ``sustain`` consecutive records
  that carry per-layer norms (error for weights, warning for biases).
- **dead** (warning): a gradient norm of exactly 0 for ``sustain`` consecutive per-layer
  records (reported instead of vanishing while the gradient is exactly 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gradwandb import keys as K
from gradwandb.live.diagnosis.emit import Emitter, g
from gradwandb.live.diagnosis.state import Streak
from gradwandb.live.diagnosis.thresholds import Thresholds
from gradwandb.live.record import StepRecord


@dataclass
class _Layer:
    seen: int = -1  # index of the last per-layer record that held this parameter
    vanish: Streak = field(default_factory=Streak)
    dead: Streak = field(default_factory=Streak)


class PerLayerRules:
    """Layer explode, vanish and dead, with a streak per layer."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._layers: dict[str, _Layer] = {}
        self._records = 0
        self.sustained = 0  # layers vanishing (sustained) at the last per-layer record

    def __call__(self, record: StepRecord, out: Emitter, health: dict[str, float]) -> bool:
        """Judge a record with per-layer norms; True when a layer is exploding."""
        low, high = self.thresholds.vanish_norm, self.thresholds.explode_norm
        self._records += 1
        index = self._records
        exploding = False
        vanishing_now = dead_now = 0
        self.sustained = 0
        for name, x in zip(record.names, record.norm, strict=True):
            layer = self._layers.get(name)
            if layer is None:
                layer = self._layers[name] = _Layer()
            contiguous = layer.seen == index - 1
            layer.seen = index
            if low <= x <= high:  # healthy (and finite): only the streaks end
                layer.vanish.count = layer.dead.count = 0
                continue
            exploding = self._odd(record.step, name, x, layer, contiguous, out) or exploding
            vanishing_now += x < low
            dead_now += x == 0.0
        health[K.H_VANISHING_LAYERS] = float(vanishing_now)
        health[K.H_DEAD_LAYERS] = float(dead_now)
        return exploding

    def _odd(
        self, step: int, name: str, x: float, layer: _Layer, contiguous: bool, out: Emitter
    ) -> bool:
        """A layer whose norm is over the limit, under it, exactly 0 or NaN/Inf."""
        t, k = self.thresholds, self.thresholds.sustain
        if not math.isfinite(x):  # the non-finite rule has it
            layer.vanish.miss()
            layer.dead.miss()
            return False
        if x > t.explode_norm:
            layer.vanish.miss()
            layer.dead.miss()
            out.emit(
                "exploding",
                "error",
                name,
                step,
                x,
                lambda: (
                    f"gradient norm of '{name}' is {g(x)} at step {step}, over the "
                    f"per-layer limit {g(t.explode_norm)}"
                ),
            )
            return True
        layer.vanish.hit(step, contiguous)  # under the vanishing limit
        if x == 0.0:
            layer.dead.hit(step, contiguous)
        else:
            layer.dead.miss()
        if layer.dead.count >= k:  # exactly 0 all along: dead rather than vanishing
            dead = layer.dead
            out.emit(
                "dead",
                "warning",
                name,
                dead.since,
                x,
                lambda: (
                    f"gradient of '{name}' has been exactly 0 for {dead.count} "
                    f"per-layer records since step {dead.since}"
                ),
            )
        elif layer.vanish.count >= k:
            self.sustained += 1
            vanish = layer.vanish
            out.emit(
                "vanishing",
                "warning" if K.is_bias(name) else "error",
                name,
                vanish.since,
                x,
                lambda: (
                    f"gradient norm of '{name}' has stayed under {g(t.vanish_norm)} for "
                    f"{vanish.count} per-layer records since step {vanish.since} (now {g(x)})"
                ),
            )
        return False
