"""Diagnosis: small rules over the stream of :class:`~gradwandb.live.record.StepRecord` s.

A :class:`Diagnoser` reads one record per logged step and says what is wrong, where, since
when and what to try, as :class:`Finding` s; :meth:`Diagnoser.diagnosis` gives the run's
verdict. It is pure: no hooks, no tensors, only the host-side numbers of each record.

The rules (every threshold is a field of :class:`Thresholds`):

- **nonfinite** (error): a step with NaN/Inf gradients. The origin is named first: in backward
  order (the reverse of the forward order of ``record.names``) the first layer that holds
  NaN/Inf, i.e. the *last* culprit in forward order. When every watched layer is non-finite at
  once, the loss (or the model output) itself is probably NaN/Inf.
- **exploding** (error): the global norm over ``explode_global``; a layer's norm over
  ``explode_norm``; the global norm rising ``growth_decades`` or more over the last
  ``growth_window`` logged steps (least-squares slope of log10 norm) and ending above
  ``growth_min_norm``; a spike that lasts ``sustain`` logged steps.
- **spike** (warning): log10 of the global norm more than ``spike_z`` standard deviations above
  its exponentially weighted average. A spike that recovers is only a warning; it counts as
  exploding when it lasts (above) or when it crosses the hard limit.
- **vanishing**: a layer's norm under ``vanish_norm`` for ``sustain`` consecutive records that
  carry per-layer norms (error for weights, warning for biases); the global norm under
  ``vanish_global`` for ``sustain`` consecutive logged steps (error).
- **flow** (error): log10 of the ratio of the latest to the earliest layer's gradient (forward
  order; weights only unless ``flow_ignore_bias=False``; mean abs(g) where the record has it,
  else the norm) at or over ``flow_decades`` for ``sustain`` consecutive per-layer records.
- **dead** (warning): a gradient norm of exactly 0 for ``sustain`` consecutive per-layer
  records (reported instead of vanishing while the gradient is exactly 0).

Through time (:meth:`Diagnoser.observe_recurrent`, fed the per-module summaries of
:class:`~gradwandb.BPTTMonitor`; the layer is the recurrent module's name):

- **vanishing** (error): the effective horizon under ``horizon_frac`` of the sequence length,
  or (with a saturated fraction given) the activations saturated over ``saturation``, for
  ``sustain`` consecutive reports of that module.
- **exploding** (error): the largest spectral radius of the recurrent weights over
  ``radius_limit`` while the gradient grows going back in time (decay rate < 0) or the global
  norm of that step is over ``explode_global``.

Each finding is reported once per kind and layer; its ``step`` is the step the condition began
(for sustained rules, the first step of the stretch). The verdict is the worst *error* kind seen
in the run: nonfinite > exploding > vanishing (vanishing and flow) > healthy; warnings (spikes,
dead parameters, vanishing biases) leave it healthy.

Cost: O(1) per record that carries only the global scalars, O(layers) per per-layer record;
memory is bounded by the number of layers and the windows.

>>> d = Diagnoser()
>>> for step in range(3):
...     found = d.update(StepRecord(step=step, names=["0.weight"], norm=[2e-6], global_norm=2e-6))
>>> [(f.kind, f.layer, f.step) for f in d.diagnosis().findings]
[('vanishing', None, 0), ('vanishing', '0.weight', 0)]
>>> d.diagnosis().verdict
'vanishing'
>>> d.health()["health/vanishing_layers"]
1.0
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol

from gradwandb.live.record import StepRecord

KINDS = ("exploding", "spike", "vanishing", "flow", "nonfinite", "dead")
SEVERITIES = ("warning", "error")
VERDICTS = ("healthy", "vanishing", "exploding", "nonfinite")  # in rising precedence

_FLOOR = 1e-30  # norms below this count as this in the flow ratio (keeps it finite)
_LISTED = 5  # culprit names spelled out in a non-finite message


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


@dataclass(frozen=True)
class Finding:
    """One problem: what (``kind``), where (``layer``, None for the whole model), since when
    (``step``), the number that tripped the rule (``value``), and the fix to try."""

    kind: str
    layer: str | None
    step: int
    value: float
    message: str
    fix: str
    severity: str


@dataclass(frozen=True)
class Diagnosis:
    """The run so far: its verdict and every finding, in the order they were found."""

    verdict: str
    findings: tuple[Finding, ...]


class TimeSummary(Protocol):
    """What :meth:`Diagnoser.observe_recurrent` reads of one module's report through time
    (a :class:`~gradwandb.live.monitors.through_time.RecurrentSummary` is one): the horizon
    in timesteps, the decay rate of ln(norm) per timestep going back (None when unknown), the
    first/last ratio, and the largest spectral radius of the recurrent weights (None until
    computed)."""

    @property
    def step(self) -> int: ...
    @property
    def seq_len(self) -> int: ...
    @property
    def horizon(self) -> int: ...
    @property
    def decay_rate(self) -> float | None: ...
    @property
    def first_last_ratio(self) -> float | None: ...
    @property
    def spectral_radius(self) -> float | None: ...


_VERDICT_OF_KIND = {
    "nonfinite": "nonfinite",
    "exploding": "exploding",
    "vanishing": "vanishing",
    "flow": "vanishing",
}


def verdict_of(findings: Iterable[Finding]) -> str:
    """The worst verdict among the *error* findings: nonfinite > exploding > vanishing > healthy.

    >>> spike = Finding("spike", None, 3, 6.0, "", "", "warning")
    >>> flow = Finding("flow", "0.weight", 9, 3.5, "", "", "error")
    >>> verdict_of([spike]), verdict_of([spike, flow])
    ('healthy', 'vanishing')
    """
    worst = 0
    for f in findings:
        if f.severity == "error":
            worst = max(worst, VERDICTS.index(_VERDICT_OF_KIND.get(f.kind, "healthy")))
    return VERDICTS[worst]


# -- the fixes ---------------------------------------------------------------------------------

_CLIP = "clip the global norm: gradwandb.watch(..., clip=1.0), or an adaptive clip policy"
_LOWER_LR = "lower the learning rate (or add warmup)"
_GATED = "nn.LSTM or nn.GRU instead of a vanilla nn.RNN"
_ORTHO = "orthogonal init of the recurrent weights (nn.init.orthogonal_ on weight_hh)"
_TBPTT = "a shorter unroll (truncated BPTT: detach the hidden state every k steps)"
_INIT = "Kaiming init for ReLU layers, Xavier for tanh/sigmoid ones (nn.init.kaiming_normal_)"
_RESIDUAL = "residual connections"
_LAYERNORM = "layer norm (nn.LayerNorm) between layers"
_RELU = "ReLU or GELU instead of sigmoid/tanh"
_GUARD = "gradwandb.watch(..., guard=True) to skip steps with NaN/Inf gradients"
_LOSS = (
    "check the loss for log(0) or a division by zero (add an epsilon; use log_softmax or "
    "BCEWithLogitsLoss)"
)
_FP32 = "run that layer in fp32 (outside autocast)"

_VANISH_FIX = {
    "rnn": (_GATED, _ORTHO, _TBPTT),
    "recurrent": ("if it is a vanilla RNN: " + _GATED, _ORTHO, _TBPTT),
    "gated": (_TBPTT, _ORTHO, "layer norm inside the cell", "a forget-gate bias of 1 (LSTM)"),
    "conv": (_INIT, _RESIDUAL, "batch norm (nn.BatchNorm2d) after each conv", _RELU),
    "embedding": (
        "fix the layers above it, where the signal fades: " + _INIT,
        _RESIDUAL,
        _LAYERNORM,
    ),
    "other": (_INIT, _RESIDUAL, _LAYERNORM, _RELU),
}
_EXPLODE_FIX = {
    "rnn": (_CLIP, _LOWER_LR, _GATED, _ORTHO, _TBPTT),
    "recurrent": (_CLIP, _LOWER_LR, _ORTHO, _TBPTT),
    "gated": (_CLIP, _LOWER_LR, _TBPTT, _ORTHO),
    "other": (_CLIP, _LOWER_LR, "check the init scale (Kaiming/Xavier)", _LAYERNORM),
}
_NONFINITE_FIX = {
    "norm": (_GUARD, "a larger eps in the norm layer", _LOWER_LR, _LOSS, _FP32),
    "rnn": (_GUARD, _CLIP, _LOWER_LR, _LOSS, _FP32),
    "recurrent": (_GUARD, _CLIP, _LOWER_LR, _LOSS, _FP32),
    "gated": (_GUARD, _CLIP, _LOWER_LR, _LOSS, _FP32),
    "other": (_GUARD, _LOWER_LR, _LOSS, _FP32),
}
_LOSS_FIX = (
    _LOSS,
    "check the inputs and labels for NaN/Inf",
    "compute the loss in fp32 under AMP",
    _GUARD,
    _LOWER_LR,
)
_SPIKE_FIX = (
    "try: an adaptive clip policy (z-score or percentile) absorbs such spikes, or a fixed "
    "gradwandb.watch(..., clip=1.0); if they recur, lower the learning rate or add warmup, "
    "and look at the batch of that step"
)
_FORGET_BIAS = "a forget-gate bias of 1 (LSTM: fill the f block of bias_ih with 1)"
_SPECTRAL_NORM = (
    "spectral normalisation of weight_hh (torch.nn.utils.parametrizations.spectral_norm)"
)
_TIME_VANISH_FIX = {
    "rnn": (_GATED, _ORTHO, _TBPTT),
    "lstm": (_FORGET_BIAS, _ORTHO, _TBPTT),
    "gated": (_ORTHO, _TBPTT, "layer norm inside the cell"),
    "other": (_ORTHO, _TBPTT),
}
_TIME_EXPLODE_FIX = (_CLIP, _ORTHO + " or " + _SPECTRAL_NORM, _LOWER_LR, _TBPTT)
_SATURATION_FIX = (
    "a smaller init scale of the weights feeding it (input and recurrent)",
    _LAYERNORM + " or inside the cell",
    _LOWER_LR,
)
_DEAD_FIX = {
    "embedding": (
        "check that the inputs use more than the padding row (padding_idx) and that the "
        "embedding output is not detached",
    ),
    "other": (
        "check that the parameter reaches the loss (no .detach() or torch.no_grad() on its "
        "path, not an unused branch or output)",
        f"if the units feeding it are dead ReLUs: LeakyReLU or GELU, {_INIT}, and {_LOWER_LR}",
    ),
}


def _family(class_name: str | None, layer: str | None) -> str:
    """Which remedies apply, from the owning module's class name (or the parameter's name)."""
    if class_name is not None:
        if class_name in ("RNN", "RNNCell"):
            return "rnn"
        if class_name in ("LSTM", "GRU", "LSTMCell", "GRUCell"):
            return "gated"
        if class_name.startswith(("Conv", "LazyConv")):
            return "conv"
        if class_name.startswith("Embedding"):
            return "embedding"
        if "Norm" in class_name:  # LayerNorm, BatchNorm2d, GroupNorm, RMSNorm
            return "norm"
        return "other"
    if layer is not None and layer.rsplit(".", 1)[-1].startswith(
        ("weight_hh", "weight_ih", "bias_hh", "bias_ih")
    ):
        return "recurrent"
    return "other"


def _fix(table: Mapping[str, Sequence[str]], family: str) -> str:
    remedies = table.get(family) or table["other"]
    return "try: " + "; ".join(remedies)


def _culprits(record: StepRecord) -> list[str]:
    """The layers holding NaN/Inf, in forward order: by element count, else by norm."""
    if not record.norm and not record.nonfinite_elements:
        return []  # a record with only the global scalars: O(1)
    counts = record.nonfinite_elements
    if counts:
        culprits = [n for n in record.names if counts.get(n, 0) > 0]
        if culprits:
            return culprits
    return [n for n, x in zip(record.names, record.norm, strict=False) if not math.isfinite(x)]


def _first_end(
    names: Sequence[str], measure: Sequence[float], skip_bias: bool, *, forward: bool
) -> int | None:
    """Index of the earliest (or latest) layer that can end the flow ratio; a short scan."""
    order = range(len(names)) if forward else range(len(names) - 1, -1, -1)
    for i in order:
        if math.isfinite(measure[i]) and not (skip_bias and _is_bias(names[i])):
            return i
    return None


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1].startswith("bias")


def _g(x: float) -> str:
    return f"{x:.3g}"


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:_LISTED])
    more = len(names) - _LISTED
    return shown + (f" and {more} more" if more > 0 else "")


# -- running statistics ------------------------------------------------------------------------


class _Ewm:
    """Exponentially weighted mean and variance of log10 global norm, for spike z-scores."""

    def __init__(self, span: int, warmup: int, min_std: float, z_limit: float) -> None:
        self.alpha = 2.0 / (span + 1.0)
        self.warmup = warmup
        self.min_std = min_std
        self.z_limit = z_limit
        self.count = 0
        self.mean = 0.0
        self.var = 0.0

    def observe(self, y: float) -> float:
        """The z-score of ``y`` against the values before it (0 during warm-up); then learn it.

        The first values get equal weights (a plain mean, no pull toward 0), later ones the
        exponential weights; a spike is learned only up to the limit, so that one outlier does
        not hide the next.
        """
        std = max(math.sqrt(self.var), self.min_std)
        judged = self.count >= self.warmup
        z = (y - self.mean) / std if judged else 0.0
        if judged:
            y = min(y, self.mean + self.z_limit * std)
        self.count += 1
        a = max(self.alpha, 1.0 / self.count)
        delta = y - self.mean
        self.mean += a * delta
        self.var = (1.0 - a) * (self.var + a * delta * delta)
        return z


class _Trend:
    """Least-squares slope of the last ``window`` values, kept as running sums (O(1) a push)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.points: deque[tuple[int, float]] = deque()
        self.sum_y = 0.0
        self.sum_xy = 0.0  # x is the position in the window, 0 .. len - 1
        self.pushes = 0

    def push(self, step: int, y: float) -> None:
        if len(self.points) == self.window:
            _, first = self.points.popleft()
            self.sum_y -= first
            self.sum_xy -= self.sum_y  # every remaining point moves one place left
        self.sum_xy += len(self.points) * y
        self.sum_y += y
        self.points.append((step, y))
        self.pushes += 1
        if self.pushes % self.window == 0:  # drop accumulated rounding, amortized O(1)
            self.sum_y = sum(p[1] for p in self.points)
            self.sum_xy = sum(i * p[1] for i, p in enumerate(self.points))

    def rise(self) -> float:
        """Fitted change over the full window, in the units of y; 0 until the window fills."""
        n = len(self.points)
        if n < self.window:
            return 0.0
        sum_x = n * (n - 1) / 2.0
        sum_xx = (n - 1) * n * (2 * n - 1) / 6.0
        slope = (n * self.sum_xy - sum_x * self.sum_y) / (n * sum_xx - sum_x * sum_x)
        return slope * (n - 1)

    def first_step(self) -> int:
        return self.points[0][0]


@dataclass
class _Streak:
    """How many consecutive qualifying records, and the step the stretch began."""

    count: int = 0
    since: int = 0

    def hit(self, step: int, contiguous: bool = True) -> int:
        if self.count == 0 or not contiguous:
            self.count, self.since = 0, step
        self.count += 1
        return self.count

    def miss(self) -> None:
        self.count = 0


@dataclass
class _Layer:
    seen: int = -1  # index of the last per-layer record that held this parameter
    vanish: _Streak = field(default_factory=_Streak)
    dead: _Streak = field(default_factory=_Streak)


# -- the diagnoser -----------------------------------------------------------------------------


class Diagnoser:
    """Runs every rule over the records of one model; feed it each logged record in order.

    ``layer_types`` maps a parameter name to the class name of the module that owns it
    (``"Linear"``, ``"LSTM"``, ``"RNN"``, ``"Conv2d"``, ...); it picks the fix to suggest.
    """

    def __init__(
        self,
        thresholds: Thresholds | None = None,
        layer_types: Mapping[str, str] | None = None,
    ) -> None:
        if thresholds is None:
            thresholds = Thresholds()
        if not isinstance(thresholds, Thresholds):
            raise TypeError(
                f"Diagnoser(thresholds={thresholds!r}): pass a gradwandb.Thresholds, "
                "e.g. Thresholds(explode_global=50.0), or None for the defaults"
            )
        types = {} if layer_types is None else layer_types
        if not isinstance(types, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in types.items()
        ):
            raise TypeError(
                f"Diagnoser(layer_types={layer_types!r}): pass a mapping of parameter name to "
                "module class name, e.g. {'rnn.weight_hh_l0': 'RNN'}, or None"
            )
        self.thresholds = thresholds
        self._types = dict(types)
        self._model_family = self._whole_model_family()
        t = thresholds
        self._ewm = _Ewm(t.spike_window, t.spike_warmup, t.spike_min_std, t.spike_z)
        self._trend = _Trend(t.growth_window)
        self._spikes = _Streak()
        self._global_vanish = _Streak()
        self._flow = _Streak()
        self._layers: dict[str, _Layer] = {}
        self._layer_records = 0
        self._sustained_layers = 0  # layers vanishing (sustained) at the last per-layer record
        self._reported: set[tuple[str, str | None]] = set()
        self._findings: list[Finding] = []
        self._health: dict[str, float] = {}
        self._short_horizon: dict[str, _Streak] = {}  # per recurrent module
        self._saturated: dict[str, _Streak] = {}
        self._pending: list[Finding] = []  # found through time, not yet returned by update()
        self._last_global: tuple[int, float] | None = None  # (step, global norm) of the last record

    # -- public ---------------------------------------------------------------------------

    def update(self, record: StepRecord) -> list[Finding]:
        """Read one logged record; return the findings that are new at it, after those that
        :meth:`observe_recurrent` found since the last call and :meth:`flush` did not take."""
        if record.norm and len(record.norm) != len(record.names):
            raise ValueError(
                f"StepRecord(step={record.step}) has {len(record.norm)} per-layer norms for "
                f"{len(record.names)} names: pass one norm per name, or norm=[] for a record "
                "with only the global scalars"
            )
        new: list[Finding] = self.flush()
        health: dict[str, float] = {}
        self._last_global = (record.step, record.global_norm)
        bad = self._nonfinite(record, new)
        exploding = self._global(record, new, health)
        if record.norm:
            exploding = self._per_layer(record, new, health) or exploding
        k = self.thresholds.sustain
        vanishing = (
            self._global_vanish.count >= k or self._sustained_layers > 0 or self._flow.count >= k
        )
        health["health/exploding"] = 1.0 if exploding else 0.0
        health["health/vanishing"] = 1.0 if vanishing else 0.0
        health["health/nonfinite"] = 1.0 if bad else 0.0
        self._health = health
        return new

    def observe_recurrent(
        self,
        step: int,
        module: str,
        module_type: str,
        summary: TimeSummary,
        saturated: float | None = None,
    ) -> list[Finding]:
        """Read one recurrent module's report through time; return the findings new at it.

        ``module`` names the module (the layer of its findings), ``module_type`` is its class
        name (``"RNN"``, ``"LSTM"``, ``"GRU"``; it picks the fix), ``summary`` its
        :class:`TimeSummary` at ``step`` and ``saturated`` the fraction of its activations
        that are saturated, if measured. Call it after :meth:`update` of the same step (the
        global norm of that record joins the exploding rule). The findings also wait in
        :meth:`flush` (and so reach the next :meth:`update`'s return) for a consumer that
        only reads those.

        >>> from gradwandb.live.monitors.through_time import RecurrentSummary
        >>> d = Diagnoser(Thresholds(sustain=2))
        >>> short = RecurrentSummary(step=0, seq_len=40, horizon=3, decay_rate=0.9)
        >>> d.observe_recurrent(0, "encoder", "RNN", short)
        []
        >>> [(f.kind, f.layer, f.step, f.value) for f in d.observe_recurrent(10, "encoder", "RNN",
        ...  RecurrentSummary(step=10, seq_len=40, horizon=4, decay_rate=0.8))]
        [('vanishing', 'encoder', 0, 0.1)]
        """
        if not isinstance(module, str) or not isinstance(module_type, str):
            raise TypeError(
                f"observe_recurrent(module={module!r}, module_type={module_type!r}): pass the "
                "module's name and its class name as strings, e.g. 'encoder', 'LSTM'"
            )
        if saturated is not None and not (
            isinstance(saturated, (int, float)) and 0.0 <= saturated <= 1.0
        ):
            raise ValueError(
                f"observe_recurrent(saturated={saturated!r}): pass a fraction in [0, 1] or None"
            )
        new: list[Finding] = []
        self._time_vanishing(step, module, module_type, summary, new)
        self._time_exploding(step, module, module_type, summary, new)
        if saturated is not None:
            self._saturation(step, module, module_type, float(saturated), new)
        self._pending += new
        return new

    def flush(self) -> list[Finding]:
        """The findings of :meth:`observe_recurrent` not yet returned by :meth:`update` or by
        this method (each is returned once), for a consumer that alerts on new findings."""
        out, self._pending = self._pending, []
        return out

    def health(self) -> dict[str, float]:
        """Signals of the last record, as ``{"health/<name>": float}``.

        Every record: ``exploding``, ``vanishing``, ``nonfinite`` (0 or 1), ``spike_z`` (z-score
        of log10 global norm), ``growth`` (decades the global norm rose over the window).
        Records with per-layer norms add ``vanishing_layers``, ``dead_layers`` (counts) and,
        with two or more layers to compare, ``flow_ratio`` (log10 latest over earliest).
        """
        return dict(self._health)

    def diagnosis(self) -> Diagnosis:
        """The verdict of the run so far and all its findings."""
        return Diagnosis(verdict_of(self._findings), tuple(self._findings))

    # -- bookkeeping ----------------------------------------------------------------------

    def _fresh(self, kind: str, layer: str | None) -> bool:
        return (kind, layer) not in self._reported

    def _emit(self, new: list[Finding], finding: Finding) -> None:
        self._reported.add((finding.kind, finding.layer))
        self._findings.append(finding)
        new.append(finding)

    def _family_of(self, layer: str | None) -> str:
        if layer is None:
            return self._model_family
        return _family(self._types.get(layer), layer)

    def _whole_model_family(self) -> str:
        """For findings about the whole model: its recurrent (or conv) layers matter most."""
        families = {_family(c, None) for c in self._types.values()}
        return next((f for f in ("rnn", "gated", "conv") if f in families), "other")

    # -- rules ----------------------------------------------------------------------------

    def _nonfinite(self, record: StepRecord, new: list[Finding]) -> bool:
        culprits = _culprits(record)
        if not (culprits or record.nonfinite_tensors or not math.isfinite(record.global_norm)):
            return False
        step, counts = record.step, record.nonfinite_elements
        if culprits and len(culprits) == len(record.names) and len(culprits) > 1:
            if self._fresh("nonfinite", None):
                message = (
                    f"every watched layer ({len(culprits)}) has NaN/Inf gradients at once at "
                    f"step {step}: the loss (or the model output) itself is probably NaN/Inf"
                )
                fix = "try: " + "; ".join(_LOSS_FIX)
                value = float(len(culprits))
                self._emit(new, Finding("nonfinite", None, step, value, message, fix, "error"))
        elif culprits:
            origin = culprits[-1]  # backward runs in reverse: the last one is hit first
            if self._fresh("nonfinite", origin):
                rest = list(reversed(culprits[:-1]))
                count = counts.get(origin, 0)
                what = f"{count} NaN/Inf elements" if count else "a NaN/Inf norm"
                message = (
                    f"NaN/Inf gradients from step {step}, starting at '{origin}' ({what}): "
                    "the first non-finite layer in backward order"
                )
                if rest:
                    message += f"; then, in backward order: {_names(rest)}"
                elif len(record.names) == 1:
                    message += " (the only watched layer: the loss itself may be NaN/Inf)"
                fix = _fix(_NONFINITE_FIX, self._family_of(origin))
                self._emit(
                    new, Finding("nonfinite", origin, step, float(count), message, fix, "error")
                )
        elif self._fresh("nonfinite", None):
            message = (
                f"the global gradient norm is {_g(record.global_norm)} at step {step} "
                f"({record.nonfinite_tensors} non-finite tensors; no per-layer values on this "
                "step to name the layer)"
            )
            fix = "try: " + "; ".join(_LOSS_FIX)
            self._emit(
                new, Finding("nonfinite", None, step, record.global_norm, message, fix, "error")
            )
        return True

    def _global(self, record: StepRecord, new: list[Finding], health: dict[str, float]) -> bool:
        """The rules on the global norm: O(1)."""
        t, step, g = self.thresholds, record.step, record.global_norm
        family = self._model_family
        exploding = False
        finite = math.isfinite(g)
        if finite and g > t.explode_global:
            exploding = True
            if self._fresh("exploding", None):
                message = (
                    f"global gradient norm {_g(g)} at step {step}, over the limit "
                    f"{_g(t.explode_global)}"
                )
                fix = _fix(_EXPLODE_FIX, family)
                self._emit(new, Finding("exploding", None, step, g, message, fix, "error"))
        z = rise = 0.0
        if finite and g > 0.0:
            y = math.log10(g)
            z = self._ewm.observe(y)
            self._trend.push(step, y)
            rise = self._trend.rise()
        if z > t.spike_z:
            lasting = self._spikes.hit(step)
            if self._fresh("spike", None):
                message = (
                    f"global gradient norm {_g(g)} at step {step} is {z:.1f} standard deviations "
                    "above its recent average (log scale)"
                )
                self._emit(new, Finding("spike", None, step, z, message, _SPIKE_FIX, "warning"))
            if lasting >= t.sustain:
                exploding = True
                if self._fresh("exploding", None):
                    since = self._spikes.since
                    message = (
                        f"global gradient norm has stayed over {t.spike_z:g} standard deviations "
                        f"above its average for {lasting} logged steps since step {since} "
                        f"(now {_g(g)})"
                    )
                    fix = _fix(_EXPLODE_FIX, family)
                    self._emit(new, Finding("exploding", None, since, z, message, fix, "error"))
        else:
            self._spikes.miss()
        if rise >= t.growth_decades and g >= t.growth_min_norm:
            exploding = True
            if self._fresh("exploding", None):
                since = self._trend.first_step()
                message = (
                    f"global gradient norm grew {rise:.2f} decades over {t.growth_window} logged "
                    f"steps since step {since}, to {_g(g)}"
                )
                fix = _fix(_EXPLODE_FIX, family)
                self._emit(new, Finding("exploding", None, since, rise, message, fix, "error"))
        if finite and g < t.vanish_global:
            lasting = self._global_vanish.hit(step)
            if lasting >= t.sustain and self._fresh("vanishing", None):
                since = self._global_vanish.since
                if g == 0.0:
                    what = "exactly 0: is the loss detached from the watched parameters?"
                else:
                    what = f"{_g(g)}, under {_g(t.vanish_global)}: no signal reaches any layer"
                message = (
                    f"global gradient norm has stayed under {_g(t.vanish_global)} for "
                    f"{lasting} logged steps since step {since}; now {what}"
                )
                fix = _fix(_VANISH_FIX, family)
                self._emit(new, Finding("vanishing", None, since, g, message, fix, "error"))
        else:
            self._global_vanish.miss()
        health["health/spike_z"] = z
        health["health/growth"] = rise
        return exploding

    def _per_layer(self, record: StepRecord, new: list[Finding], health: dict[str, float]) -> bool:
        """The rules on per-layer norms: O(layers), with a short path for healthy layers."""
        t = self.thresholds
        low, high = t.vanish_norm, t.explode_norm
        self._layer_records += 1
        index = self._layer_records
        exploding = False
        vanishing_now = dead_now = 0
        self._sustained_layers = 0
        for name, x in zip(record.names, record.norm, strict=True):
            layer = self._layers.get(name)
            if layer is None:
                layer = self._layers[name] = _Layer()
            contiguous = layer.seen == index - 1
            layer.seen = index
            if low <= x <= high:  # healthy (and finite): only the streaks end
                layer.vanish.count = layer.dead.count = 0
                continue
            exploding = self._odd_layer(record, name, x, layer, contiguous, new) or exploding
            vanishing_now += x < low
            dead_now += x == 0.0
        health["health/vanishing_layers"] = float(vanishing_now)
        health["health/dead_layers"] = float(dead_now)
        self._flow_rule(record, new, health)
        return exploding

    def _odd_layer(
        self,
        record: StepRecord,
        name: str,
        x: float,
        layer: _Layer,
        contiguous: bool,
        new: list[Finding],
    ) -> bool:
        """A layer whose norm is over the limit, under it, exactly 0 or NaN/Inf."""
        t, step, k = self.thresholds, record.step, self.thresholds.sustain
        if not math.isfinite(x):  # the non-finite rule has it
            layer.vanish.miss()
            layer.dead.miss()
            return False
        if x > t.explode_norm:
            layer.vanish.miss()
            layer.dead.miss()
            if self._fresh("exploding", name):
                message = (
                    f"gradient norm of '{name}' is {_g(x)} at step {step}, over the "
                    f"per-layer limit {_g(t.explode_norm)}"
                )
                fix = _fix(_EXPLODE_FIX, self._family_of(name))
                self._emit(new, Finding("exploding", name, step, x, message, fix, "error"))
            return True
        layer.vanish.hit(step, contiguous)  # under the vanishing limit
        if x == 0.0:
            layer.dead.hit(step, contiguous)
        else:
            layer.dead.miss()
        if layer.dead.count >= k:  # exactly 0 all along: dead rather than vanishing
            if self._fresh("dead", name):
                since = layer.dead.since
                message = (
                    f"gradient of '{name}' has been exactly 0 for {layer.dead.count} "
                    f"per-layer records since step {since}"
                )
                fix = _fix(_DEAD_FIX, self._family_of(name))
                self._emit(new, Finding("dead", name, since, x, message, fix, "warning"))
        elif layer.vanish.count >= k:
            self._sustained_layers += 1
            if self._fresh("vanishing", name):
                since = layer.vanish.since
                severity = "warning" if _is_bias(name) else "error"
                message = (
                    f"gradient norm of '{name}' has stayed under {_g(t.vanish_norm)} for "
                    f"{layer.vanish.count} per-layer records since step {since} (now {_g(x)})"
                )
                fix = _fix(_VANISH_FIX, self._family_of(name))
                self._emit(new, Finding("vanishing", name, since, x, message, fix, severity))
        return False

    def _flow_rule(self, record: StepRecord, new: list[Finding], health: dict[str, float]) -> None:
        t, step = self.thresholds, record.step
        measure, label = record.norm, "norm"
        if len(record.mean_abs) == len(record.names):
            measure, label = record.mean_abs, "mean abs(g)"
        first = _first_end(record.names, measure, t.flow_ignore_bias, forward=True)
        last = _first_end(record.names, measure, t.flow_ignore_bias, forward=False)
        if first is None or last is None or first >= last:
            self._flow.miss()
            return
        early, late = measure[first], measure[last]
        # an exactly-zero end is a dead layer (the dead rule's case), not a weak flow;
        # nothing flowing at either end gives no ratio
        if early == 0.0 or (early <= _FLOOR and late <= _FLOOR):
            self._flow.miss()
            return
        ratio = math.log10(max(late, _FLOOR) / max(early, _FLOOR))
        health["health/flow_ratio"] = ratio
        if ratio < t.flow_decades:
            self._flow.miss()
            return
        lasting = self._flow.hit(step)
        name = record.names[first]
        if lasting >= t.sustain and self._fresh("flow", name):
            message = (
                f"gradient {label} shrinks {ratio:.1f} decades from the latest layer "
                f"'{record.names[last]}' ({_g(late)}) back to the earliest '{name}' "
                f"({_g(early)}), for {lasting} per-layer records since step {self._flow.since}"
            )
            fix = _fix(_VANISH_FIX, self._family_of(name))
            self._emit(new, Finding("flow", name, self._flow.since, ratio, message, fix, "error"))

    # -- rules through time ---------------------------------------------------------------

    def _time_vanishing(
        self, step: int, module: str, module_type: str, s: TimeSummary, new: list[Finding]
    ) -> None:
        t = self.thresholds
        streak = self._short_horizon.setdefault(module, _Streak())
        growing = s.decay_rate is not None and s.decay_rate < 0.0  # a short horizon of growth
        if s.seq_len < 2 or growing or s.horizon >= t.horizon_frac * s.seq_len:
            streak.miss()
            return
        lasting = streak.hit(step)
        if lasting < t.sustain or not self._fresh("vanishing", module):
            return
        early = ""
        if s.first_last_ratio is not None:
            early = f"; the first timestep gets {_g(s.first_last_ratio)} of the last one's"
        message = (
            f"gradient through time in '{module}' ({module_type}) fades within {s.horizon} of "
            f"{s.seq_len} timesteps (under {t.horizon_frac:g} of the sequence) for {lasting} "
            f"reports since step {streak.since}{early}: early inputs barely learn"
        )
        family = "lstm" if module_type == "LSTM" else _family(module_type, None)
        fix = _fix(_TIME_VANISH_FIX, family)
        value = s.horizon / s.seq_len
        self._emit(new, Finding("vanishing", module, streak.since, value, message, fix, "error"))

    def _time_exploding(
        self, step: int, module: str, module_type: str, s: TimeSummary, new: list[Finding]
    ) -> None:
        t, radius = self.thresholds, s.spectral_radius
        if radius is None or not radius > t.radius_limit or not self._fresh("exploding", module):
            return
        growing = s.decay_rate is not None and s.decay_rate < 0.0
        last = self._last_global
        over = last is not None and last[0] == step and last[1] > t.explode_global
        if not (growing or over):
            return
        if growing:
            assert s.decay_rate is not None
            why = (
                f"the gradient grows going back in time (x{_g(math.exp(-s.decay_rate))} per "
                "timestep)"
            )
        else:
            assert last is not None
            why = f"the global gradient norm is {_g(last[1])}, over {_g(t.explode_global)}"
        message = (
            f"recurrent weights of '{module}' ({module_type}) have spectral radius {_g(radius)}, "
            f"over {_g(t.radius_limit)}, and {why} at step {step}"
        )
        fix = "try: " + "; ".join(_TIME_EXPLODE_FIX)
        self._emit(new, Finding("exploding", module, step, radius, message, fix, "error"))

    def _saturation(
        self, step: int, module: str, module_type: str, frac: float, new: list[Finding]
    ) -> None:
        t = self.thresholds
        streak = self._saturated.setdefault(module, _Streak())
        if not frac > t.saturation:
            streak.miss()
            return
        lasting = streak.hit(step)
        if lasting < t.sustain or not self._fresh("vanishing", module):
            return
        message = (
            f"{frac:.0%} of the activations of '{module}' ({module_type}) are saturated (over "
            f"{t.saturation:.0%}) for {lasting} reports since step {streak.since}: their "
            "derivative is near 0, so the gradient through time vanishes"
        )
        fix = "try: " + "; ".join(_SATURATION_FIX)
        self._emit(new, Finding("vanishing", module, streak.since, frac, message, fix, "error"))
