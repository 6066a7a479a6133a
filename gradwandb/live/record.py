"""One logged step on the host: the numbers the statistics produced, and the row they make.

A :class:`StepRecord` is what every consumer downstream of the statistics reads (the sinks
through :func:`to_row`, diagnosis rules, tests): the values are plain Python floats, already
moved off the device.

>>> record = StepRecord(step=3, names=["w"], norm=[0.5], global_norm=0.5)
>>> to_row(record, Keys())["grad_norm/w"]
0.5
"""

from __future__ import annotations

from collections.abc import Mapping
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
    module's class name (``"RNN"``, ``"LSTM"``, ``"GRU"``, or another sequence module's)."""

    step: int
    seq_len: int
    horizon: int
    decay_rate: float | None = None
    first_last_ratio: float | None = None
    spectral_radius: float | None = None
    module_type: str = ""


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
    # Filled by FILL-stage observers (the monitors), read by the later stages:
    through_time: dict[str, RecurrentSummary] = field(default_factory=dict)  # module -> summary
    activations: dict[str, dict[str, float]] = field(default_factory=dict)  # module -> stat -> v
    module_types: dict[str, str] = field(default_factory=dict)  # module (as in keys) -> class


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
    for family, values in (
        (K.GRAD_NORM, record.norm),
        (K.GRAD_MEAN_ABS, record.mean_abs),
        (K.GRAD_MAX_ABS, record.max_abs),
    ):
        for name, value in zip(record.names, values, strict=False):  # [] off stats steps
            row[keys.param(family, name)] = value
    per_name: tuple[tuple[str, Mapping[str, Value]], ...] = (
        (K.GRAD_NONFINITE, record.nonfinite_elements),
        (K.GRAD_ZERO_FRAC, record.zero_frac),
        (K.GRAD_HIST, record.value_hist),
        (K.GRAD_LOG10_HIST, record.log10_hist),
        (K.PARAM_NORM, record.param_norm),
        (K.UPDATE_RATIO, record.update_ratio),
    )
    for family, mapping in per_name:
        for name, item in mapping.items():
            row[keys.param(family, name)] = item
    return row


def skip_row(step: int, keys: Keys, scale: float | None) -> dict[str, Value]:
    """The row of a step GradScaler skipped for overflow: no gradient statistics, by design."""
    row: dict[str, Value] = {keys.scalar(K.STEP): step, keys.scalar(K.AMP_OVERFLOW_SKIP): 1}
    if scale is not None:
        row[keys.scalar(K.AMP_SCALE)] = scale
    return row
