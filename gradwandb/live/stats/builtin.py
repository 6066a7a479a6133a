"""The built-in statistics, written as :class:`~gradwandb.Statistic` s like a user's own.

In the order the tracker runs them (a statistic may read what an earlier one put in the
record): per-layer L2 norm, mean and max abs(g); std and signed mean
(:mod:`~gradwandb.live.stats.spread`); the second look at non-finite and
underflowed norms (no device work of its own; on bad steps only it makes a pass and a sync);
weight norm; update ratio (after the optimizer step); histograms.

On a per-layer step the tracker takes the norms from the fused L2/L1/max pass
(:func:`magnitudes`), so the three per-layer statistics cost one pass together.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradwandb import keys as K
from gradwandb.live.record import StepRecord
from gradwandb.live.sinks import Histogram
from gradwandb.live.stats import kernels as S
from gradwandb.live.stats.spread import GRAD_MEAN, GRAD_STD
from gradwandb.live.stats.statistic import GradientView, Statistic

MAGNITUDES = "magnitudes"  # the view's cache: the [3, n] L2, L1, max matrix of a per-layer step
PARAM_NORMS = "param_norms"  # the view's cache: the [n] weight norms, taken before the step


def magnitudes(view: GradientView) -> Tensor:
    """The step's [3, n] matrix of L2 norm, sum abs(g) and max abs(g), computed once."""
    matrix: Tensor = view.cached(MAGNITUDES, lambda: S.grad_stats(view.grads))
    return matrix


def _mean_abs(values: list[float], view: GradientView, record: StepRecord) -> None:
    record.put(K.GRAD_MEAN_ABS, [v / n for v, n in zip(values, view.numels, strict=True)])


def _second_look(values: list[float], view: GradientView, record: StepRecord) -> None:
    """Name the culprits of a bad step, and correct norms that under- or overflowed.

    Off the per-layer schedule the norms are not on the host: a step with a NaN/Inf or a
    vanished global norm fetches them (a second sync, bad steps only). A non-finite norm (or
    max) gets its NaN/Inf elements counted; a float32 overflow of a finite gradient's norm
    counts none and is recomputed, like a norm of 0 whose max abs(g) is not 0 (squares that
    underflowed).
    """
    if not record.norm and (record.nonfinite_tensors or record.global_norm == 0.0):
        record.put(K.GRAD_NORM, S.to_host({"norms": view.norms})["norms"])
    if record.norm:
        _check_norms(record, view.grads, view)
    if "layers" in view.tiers:
        for name in record.names:
            record.nonfinite_elements.setdefault(name, 0)


def _check_norms(record: StepRecord, values: list[Tensor], view: GradientView) -> None:
    norm, top = record.norm, record.max_abs
    known = bool(top)
    bad = [i for i, x in enumerate(norm) if not (_finite(x) and (not known or _finite(top[i])))]
    counts = dict(zip(bad, S.nonfinite_counts([values[i] for i in bad]), strict=True))
    if view.reducer is not None and bad:  # pieces: the full tensors' counts, in one SUM
        local = [float(counts.get(i, 0)) for i in range(len(norm))]
        full = view.reducer.sum(torch.tensor(local, dtype=torch.float64, device=view.norms.device))
        counts = {i: int(c) for i, c in enumerate(full.tolist()) if i in counts or c}
        bad = sorted(counts)
    for i, c in counts.items():
        record.nonfinite_elements[record.names[i]] = c
    record.nonfinite_tensors = sum(1 for c in counts.values() if c)
    if view.reducer is not None:
        return  # the reduced norms stand: a piece's exact norm is not the tensor's
    underflow = [i for i, x in enumerate(norm) if x == 0.0 and (not known or top[i] > 0)]
    redo = underflow + [i for i, c in counts.items() if c == 0]
    if redo:
        for i, exact in zip(redo, S.exact_norms([values[i] for i in redo]), strict=True):
            norm[i] = exact
        if record.nonfinite_tensors == 0:
            record.global_norm = math.sqrt(sum(x * x for x in norm))


def _update_ratio(view: GradientView) -> Tensor | None:
    if view.snapshot is None:  # no optimizer: no update to measure
        return None
    snapshot = view.snapshot
    before: Tensor = view.cached(PARAM_NORMS, lambda: S.grad_norms(snapshot))
    moved = S.grad_norms(torch._foreach_sub([p.detach() for p in view.params], snapshot))
    if view.reducer is not None:  # pieces: one SUM of the squared update norms
        moved = view.reducer.norms(moved)
    ratio: Tensor = moved / before.clamp_min(1e-30)
    return ratio


def _histograms(view: GradientView) -> Tensor:
    """Values and magnitude histograms of every tensor, flat in one device vector."""
    h = S.histograms(view.grads, magnitudes(view)[S.MAX_ABS])
    stored = torch.stack([h.zeros.new_full((), float(g.numel())) for g in view.grads])
    counts = torch.cat([h.values, h.log10, h.zeros[:, None], stored[:, None]], dim=1)
    if view.reducer is not None:  # pieces: bins over shared edges add up, in one SUM
        counts = view.reducer.sum(counts)
    vb, lb = S.VALUE_BINS, S.LOG10_BINS
    values, log10, zeros, total = torch.split(counts, [vb, lb, 1, 1], dim=1)
    return torch.cat([values.reshape(-1), h.scale, log10.reshape(-1), zeros[:, 0], total[:, 0]])


def _read_histograms(values: list[float], view: GradientView, record: StepRecord) -> None:
    n, vb, lb = len(view.names), S.VALUE_BINS, S.LOG10_BINS
    value_counts, rest = values[: n * vb], values[n * vb :]
    scales, log_counts = rest[:n], rest[n : n + n * lb]
    zero_counts, stored = rest[n + n * lb : 2 * n + n * lb], rest[2 * n + n * lb :]
    log_edges = S.log10_edges()
    for i, name in enumerate(view.names):
        numel = view.numels[i]
        implicit_zeros = numel - int(stored[i])  # a sparse gradient's
        counts = value_counts[i * vb : (i + 1) * vb]
        counts[vb // 2] += implicit_zeros  # the bin that holds 0
        record.value_hist[name] = Histogram(counts, S.value_edges(scales[i]))
        logs = log_counts[i * lb : (i + 1) * lb]
        logs[0] -= zero_counts[i]
        logs[-1] -= record.nonfinite_elements.get(name, 0)
        record.log10_hist[name] = Histogram(logs, log_edges).trimmed()
        record.zero_frac[name] = (zero_counts[i] + implicit_zeros) / numel


def _finite(x: float) -> bool:
    return math.isfinite(x)


GRAD_NORM = Statistic(K.GRAD_NORM, lambda v: v.norms)
GRAD_MEAN_ABS = Statistic(K.GRAD_MEAN_ABS, lambda v: magnitudes(v)[S.L1_SUM], finalize=_mean_abs)
GRAD_MAX_ABS = Statistic(K.GRAD_MAX_ABS, lambda v: magnitudes(v)[S.MAX_ABS])
GRAD_NONFINITE = Statistic(K.GRAD_NONFINITE, None, tier="log", finalize=_second_look)
PARAM_NORM = Statistic(
    K.PARAM_NORM,
    lambda v: v.cached(PARAM_NORMS, lambda: S.grad_norms([p.detach() for p in v.params])),
)
UPDATE_RATIO = Statistic(K.UPDATE_RATIO, _update_ratio, after_step=True)
GRAD_HIST = Statistic(K.GRAD_HIST, _histograms, tier="hist", finalize=_read_histograms)

BUILTIN: tuple[Statistic, ...] = (
    GRAD_NORM,
    GRAD_MEAN_ABS,
    GRAD_MAX_ABS,
    GRAD_STD,
    GRAD_MEAN,
    GRAD_NONFINITE,
    PARAM_NORM,
    UPDATE_RATIO,
    GRAD_HIST,
)
# Names a statistic of the user's may not take: every built-in family, and the run-level
# scalars under grad/ (a statistic with one value per run is logged as grad/<name>).
RESERVED = (
    *K.PARAM_FAMILIES,
    *(key.removeprefix("grad/") for key in (K.GLOBAL_NORM, K.CLIP_COEF, K.CLIP_RATE)),
    *(key.removeprefix("grad/") for key in (K.CLIP_THRESHOLD, K.NONFINITE)),
    "clip_zscore",
    "clip_unit_frac",
)
