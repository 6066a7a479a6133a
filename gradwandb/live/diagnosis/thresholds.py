"""Every limit the diagnosis rules use, in one frozen, checked dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Thresholds:
    """Every limit the rules use; the defaults follow common practice.

    Gradient norms of 0.1-10 are healthy; ~1e-4 and below vanish; 50-100 and above explode.

    >>> Thresholds(sustain=5).sustain
    5
    >>> Thresholds(sustain=0)
    Traceback (most recent call last):
    ...
    ValueError: Thresholds(sustain=0): must be an int >= 1; for example sustain=3
    """

    vanish_norm: float = 1e-4  # a layer's gradient L2 norm under this is vanishing
    vanish_global: float = 1e-4  # the global norm under this: no signal reaches any layer
    explode_norm: float = 50.0  # a layer's gradient L2 norm over this is exploding
    explode_global: float = 100.0  # the global norm over this is exploding
    flow_decades: float = 3.0  # log10(latest / earliest layer) at or over this: a flow problem
    flow_ignore_bias: bool = True  # the flow ratio compares weights only
    sustain: int = 3  # consecutive records for vanishing, dead, flow and a lasting spike
    growth_window: int = 20  # logged steps over which sustained growth is measured
    growth_decades: float = 1.0  # rise of log10 global norm over the window that is growth
    growth_min_norm: float = 10.0  # growth counts only once the norm leaves the healthy range
    spike_z: float = 4.0  # z-score of log10 global norm over which a step is a spike
    spike_window: int = 50  # span of the exponentially weighted average and variance
    spike_warmup: int = 10  # logged steps before spikes are judged
    spike_min_std: float = 0.05  # floor of the standard deviation, in decades
    horizon_frac: float = 0.25  # a horizon under this fraction of the sequence is vanishing
    radius_limit: float = 1.5  # a recurrent spectral radius over this can explode
    saturation: float = 0.5  # a saturated fraction of activations over this is vanishing

    def __post_init__(self) -> None:
        defaults = {f.name: f.default for f in fields(self)}
        for f in fields(self):
            value, default = getattr(self, f.name), f.default
            if isinstance(default, bool):
                ok, want = isinstance(value, bool), "must be True or False"
            elif isinstance(default, int):
                least = 2 if f.name == "growth_window" else 1
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
                want = f"must be an int >= {least}"
            else:
                ok = (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                    and value > 0
                )
                want = "must be a finite number > 0"
            if not ok:
                raise ValueError(
                    f"Thresholds({f.name}={value!r}): {want}; for example {f.name}={default!r}"
                )
        for name in ("horizon_frac", "saturation"):
            if getattr(self, name) > 1.0:
                raise ValueError(
                    f"Thresholds({name}={getattr(self, name)!r}): must be a fraction in (0, 1]; "
                    f"for example {name}={defaults[name]!r}"
                )
        for low, high in (("vanish_norm", "explode_norm"), ("vanish_global", "explode_global")):
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(
                    f"Thresholds({low}={getattr(self, low)!r}, {high}={getattr(self, high)!r}): "
                    f"{low} must be below {high}; for example {low}={defaults[low]!r}, "
                    f"{high}={defaults[high]!r}"
                )
