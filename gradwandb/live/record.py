"""One logged step on the host: the numbers the statistics produced, and the row they make.

A :class:`StepRecord` is what every consumer downstream of the statistics reads (the sinks
through :func:`to_row`, diagnosis rules, tests): the values are plain Python floats, already
moved off the device.

Every statistic's values are reached the same way, by its name (its key family):
:meth:`StepRecord.put` and :meth:`StepRecord.get`. The built-ins keep typed attributes for
the rules (``norm``, ``mean_abs`` and ``max_abs`` as lists in ``names`` order, the rest as
``{name: value}``); any other statistic lives in ``extra`` (per tensor) or ``per_run``.

>>> record = StepRecord(step=3, names=["w"], norm=[0.5], global_norm=0.5)
>>> record.put("grad_rms", [0.25])
>>> record.get("grad_norm"), record.get("grad_rms")
({'w': 0.5}, {'w': 0.25})
>>> row = to_row(record, Keys())
>>> row["grad_norm/w"], row["grad_rms/w"]
(0.5, 0.25)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gradwandb import keys as K
from gradwandb.keys import Keys
from gradwandb.live.sinks import Histogram, Value

# When an observer runs within a step: FILL (monitors that add their measures to the record),
# then JUDGE (diagnosis, which reads everything the step measured), then REPORT (charts,
# anything that only reads). An observer says its stage with a ``stage`` attribute; a plain
# callable is REPORT. Within a stage, observers run in the order they were added.
FILL, JUDGE, REPORT = 0, 1, 2


@dataclass(frozen=True)
class RecurrentSummary:
    """One module's report through time at ``step``, and the largest spectral radius of its
    recurrent weight blocks at the latest spectral step (None before); ``module_type`` is the
    module's class name (``"RNN"``, ``"LSTM"``, ``"GRU"``, or another sequence module's).

    ``horizon``, ``decay_rate`` and ``first_last_ratio`` summarise dL/dx_t (where the loss's
    gradient lands in time). The ``memory_*`` fields summarise the memory probe,
    ||d h_T / d x_t|| over ``memory_len`` timesteps (how far back the recurrence carries
    the gradient, whatever the number of loss terms); None when no probe ran.
    """

    step: int
    seq_len: int
    horizon: int
    decay_rate: float | None = None
    first_last_ratio: float | None = None
    spectral_radius: float | None = None
    module_type: str = ""
    memory_horizon: int | None = None
    memory_decay_rate: float | None = None
    memory_len: int | None = None


@dataclass
class StepRecord:
    """Statistics of the watched gradients at one optimizer step (pre-clip)."""

    step: int
    names: list[str]  # the parameters that had a gradient, in selection order
    norm: list[float]  # per-layer L2 norms
    global_norm: float
    nonfinite_tensors: int = 0
    mean_abs: list[float] = field(default_factory=list)  # on stats steps only
    max_abs: list[float] = field(default_factory=list)  # on stats steps only
    clip_coef: float = 1.0
    clip_threshold: float | None = None
    clip_rate: float | None = None
    clip_extras: dict[str, float] = field(default_factory=dict)  # e.g. {"zscore": 2.1}
    nonfinite_elements: dict[str, int] = field(default_factory=dict)
    zero_frac: dict[str, float] = field(default_factory=dict)
    value_hist: dict[str, Histogram] = field(default_factory=dict)
    log10_hist: dict[str, Histogram] = field(default_factory=dict)
    param_norm: dict[str, float] = field(default_factory=dict)
    update_ratio: dict[str, float] = field(default_factory=dict)
    amp_scale: float | None = None
    amp_overflow_skip: int | None = None
    guard_skipped: int | None = None  # with guard=: 1 when the guard skipped this step
    guard_skipped_total: int | None = None  # with guard=: steps skipped so far
    extra: dict[str, dict[str, Value]] = field(default_factory=dict)  # other statistics
    per_run: dict[str, Value] = field(default_factory=dict)  # statistics with one value a step
    # Filled by FILL-stage observers (the monitors), read by the later stages:
    through_time: dict[str, RecurrentSummary] = field(default_factory=dict)  # module -> summary
    activations: dict[str, dict[str, float]] = field(default_factory=dict)  # module -> stat -> v
    module_types: dict[str, str] = field(default_factory=dict)  # module (as in keys) -> class

    def put(self, family: str, values: Sequence[Value] | Mapping[str, Value]) -> None:
        """Set statistic ``family``'s values: one per name (in ``names`` order) or by name."""
        by_name = (
            values if isinstance(values, Mapping) else dict(zip(self.names, values, strict=False))
        )
        listed = _LISTED.get(family)
        if listed is not None:
            setattr(self, listed, [by_name[n] for n in self.names if n in by_name])
        elif family in _MAPPED:
            getattr(self, _MAPPED[family]).update(by_name)
        else:
            self.extra.setdefault(family, {}).update(by_name)

    def put_run(self, name: str, value: Value) -> None:
        """Set the one value of statistic ``name`` for this step (logged as ``grad/<name>``)."""
        self.per_run[name] = value

    def get(self, family: str) -> dict[str, Value]:
        """Statistic ``family``'s values by parameter name (empty when not logged this step)."""
        listed = _LISTED.get(family)
        if listed is not None:
            return dict(zip(self.names, getattr(self, listed), strict=False))
        if family in _MAPPED:
            return dict(getattr(self, _MAPPED[family]))
        return dict(self.extra.get(family, {}))

    def families(self) -> list[str]:
        """Every per-tensor statistic that has values in this record."""
        typed = [f for f in (*_LISTED, *_MAPPED) if self.get(f)]
        return typed + [f for f, v in self.extra.items() if v]


# Where the built-ins keep their values: lists in ``names`` order, or {name: value}.
_LISTED = {K.GRAD_NORM: "norm", K.GRAD_MEAN_ABS: "mean_abs", K.GRAD_MAX_ABS: "max_abs"}
_MAPPED = {
    K.GRAD_NONFINITE: "nonfinite_elements",
    K.GRAD_ZERO_FRAC: "zero_frac",
    K.GRAD_HIST: "value_hist",
    K.GRAD_LOG10_HIST: "log10_hist",
    K.PARAM_NORM: "param_norm",
    K.UPDATE_RATIO: "update_ratio",
}


class Observer(Protocol):
    """Called with the record of every logged step; what it returns joins that step's row.

    Optional attributes: ``stage`` (:data:`FILL`, :data:`JUDGE` or :data:`REPORT`, the
    default) and ``finish()``, called once when the tracker is removed or the run finishes.
    """

    def __call__(self, record: StepRecord) -> Mapping[str, Value] | None: ...


def to_row(record: StepRecord, keys: Keys) -> dict[str, Value]:
    """The flat ``{key: value}`` row of a record, keyed per :mod:`gradwandb.keys`."""
    row: dict[str, Value] = {
        keys.scalar(K.STEP): record.step,
        keys.scalar(K.GLOBAL_NORM): record.global_norm,
        keys.scalar(K.NONFINITE): record.nonfinite_tensors,
        keys.scalar(K.CLIP_COEF): record.clip_coef,
    }
    if record.clip_threshold is not None:
        row[keys.scalar(K.CLIP_THRESHOLD)] = record.clip_threshold
    if record.clip_rate is not None:
        row[keys.scalar(K.CLIP_RATE)] = record.clip_rate
    for name, value in record.clip_extras.items():
        row[keys.scalar(K.clip_extra(name))] = value
    if record.amp_scale is not None:
        row[keys.scalar(K.AMP_SCALE)] = record.amp_scale
    if record.amp_overflow_skip is not None:
        row[keys.scalar(K.AMP_OVERFLOW_SKIP)] = record.amp_overflow_skip
    if record.guard_skipped is not None:
        row[keys.scalar(K.GUARD_SKIPPED)] = record.guard_skipped
    if record.guard_skipped_total is not None:
        row[keys.scalar(K.GUARD_SKIPPED_TOTAL)] = record.guard_skipped_total
    for name, one in record.per_run.items():
        row[keys.scalar(f"grad/{name}")] = one
    for family in record.families():
        for name, item in record.get(family).items():
            row[keys.param(family, name)] = item
    return row


def skip_row(step: int, keys: Keys, scale: float | None) -> dict[str, Value]:
    """The row of a step GradScaler skipped for overflow: no gradient statistics, by design."""
    row: dict[str, Value] = {keys.scalar(K.STEP): step, keys.scalar(K.AMP_OVERFLOW_SKIP): 1}
    if scale is not None:
        row[keys.scalar(K.AMP_SCALE)] = scale
    return row
