"""Every limit the diagnosis rules use, in one frozen, checked dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Thresholds:
    """Every limit the rules use; the defaults follow common practice.

    Gradient norms of 0.1-10 are healthy; ~1e-4 and below vanish; 50-100 and above explode.

    Where the sources differ from ours:

    - vanishing: the checklists' 1e-4 is on the gradient *values* (mean abs(g) of a layer);
      ours, ``vanish_norm=1e-4``, is on the layer's L2 *norm*, which is larger by about
      sqrt(numel), so ours is the stricter call on big layers. The flow rules compare mean
      abs(g) where the record has it, so a wide layer's small values still show.
    - exploding: 50-100 for the global norm in most guides (ours: ``explode_norm=50`` per
      layer, ``explode_global=100``); some tools only flag 1e4 and over.
    - recurrent spectral radius: theory puts the edge at 1 (the gradient through time grows
      past it, for a linear recurrence); ours, ``radius_limit=1.5``, leaves room for the
      tanh/sigmoid derivatives, which shrink the effective gain, and asks for growth too.
    - spread across layers: 3-4 decades between the earliest and the latest layer is where
      the sources call the flow blocked (ours: ``flow_decades=3``, ``flow_gap_decades=3``).
    - dead ReLU units: the sources worry at 30-50% of units never active (ours:
      ``dead_units=0.3``); a fully dead layer is the ``dead`` rule's, from its gradient.
    - clipping: a clip that bites on most steps should sit near the 95th-99th percentile of
      the early pre-clip norms (the checklists); ours flags one that scales nearly every step
      (``clip_frac=0.9``) by less than ``clip_coef=0.1``.

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
    saturation_warning: float = 0.25  # a saturated fraction over this (and not over the above)
    dead_units: float = 0.3  # a fraction of ReLU-family units never active, at or over this
    act_std_max: float = 1e6  # an activation std over this has blown up
    act_scale_decades: float = 3.0  # decades an activation std falls below the first module's
    unused_after: int = 3  # per-layer records without a gradient that make a parameter unused
    clip_coef: float = 0.1  # a clip coefficient under this bites hard ...
    clip_frac: float = 0.9  # ... on at least this fraction of ...
    clip_window: int = 10  # ... the last this many logged steps that clip
    flow_gap_decades: float = 3.0  # a middle layer this far below both its neighbours
    weight_growth_decades: float = 2.0  # weights grown this far over their first norm ...
    weight_growth_min_norm: float = 100.0  # ... and now over this norm: runaway weights

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
        for name in (
            "horizon_frac",
            "saturation",
            "saturation_warning",
            "dead_units",
            "clip_coef",
            "clip_frac",
        ):
            if getattr(self, name) > 1.0:
                raise ValueError(
                    f"Thresholds({name}={getattr(self, name)!r}): must be a fraction in (0, 1]; "
                    f"for example {name}={defaults[name]!r}"
                )
        for low, high in (
            ("vanish_norm", "explode_norm"),
            ("vanish_global", "explode_global"),
            ("saturation_warning", "saturation"),
        ):
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(
                    f"Thresholds({low}={getattr(self, low)!r}, {high}={getattr(self, high)!r}): "
                    f"{low} must be below {high}; for example {low}={defaults[low]!r}, "
                    f"{high}={defaults[high]!r}"
                )
