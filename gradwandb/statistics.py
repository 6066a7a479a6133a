"""Per-tensor gradient statistics: pure functions over lists of tensors, computed on their device.

Cost model (where host syncs happen): nothing in this module reads a value back to the host
except :func:`to_host`, which moves every requested result in one copy per device. The
tracker calls it at most once per logged step; a step that logs nothing never calls it.
:func:`nonfinite_counts` is the one exception, run only on a step whose stats already showed a
non-finite tensor.

Kernels are chosen by device. On an accelerator the ``torch._foreach_*`` kernels reduce all
tensors of a dtype in a few fused launches. On the CPU, where ``_foreach`` ops are a loop of
per-tensor ops anyway, per-tensor reductions are used because they are faster there:
``aminmax`` finds max|g| in one pass, and the L2 norm accumulates in float64, which also keeps
the norm of a vanishing gradient (elements below ~1e-19, whose squares underflow float32)
from reading as exactly zero.

>>> import torch
>>> g = [torch.tensor([3.0, -4.0]), torch.tensor([0.0, 0.0, 1.0, -1.0])]
>>> grad_stats(g, [2, 4]).tolist()
[[5.0, 1.4142135623730951], [3.5, 0.5], [4.0, 1.0]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

NORM, MEAN_ABS, MAX_ABS = 0, 1, 2  # rows of the grad_stats matrix
VALUE_BINS = 64
LOG10_LOW, LOG10_HIGH, LOG10_BINS = -45.0, 40.0, 170  # fixed half-decade bins over all float32
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def dense_values(grad: Tensor) -> Tensor:
    """The stored values of a gradient: itself, or for a sparse one its coalesced values.

    Coalescing sums the duplicate indices an embedding's sparse gradient carries, so the
    statistics describe the gradient the optimizer will apply.
    """
    if grad.is_sparse:
        return grad.coalesce().values()
    return grad


def _by_device(tensors: Sequence[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


def _foreach_rows(tensors: Sequence[Tensor]) -> Tensor:
    """[3, n] of L2, L1 and max-abs norms with fused multi-tensor kernels (accelerators)."""
    n = len(tensors)
    device = tensors[0].device
    out = torch.empty(3, n, dtype=torch.float32, device=device)
    for (_, dtype), idx in _by_device(tensors).items():
        group = [tensors[i] for i in idx]
        acc = torch.float32 if dtype in _LOW_PRECISION else None
        index = torch.tensor(idx, device=device)
        for row, order in ((NORM, 2.0), (MEAN_ABS, 1.0), (MAX_ABS, math.inf)):
            norms = torch._foreach_norm(group, order, dtype=acc)
            out[row].index_copy_(0, index, torch.stack(norms).to(torch.float32))
    return out.to(torch.float64)


def _cpu_rows(tensors: Sequence[Tensor]) -> Tensor:
    """[3, n] of L2, L1 and max-abs norms with per-tensor kernels (CPU)."""
    l2 = [torch.linalg.vector_norm(t, 2, dtype=torch.float64) for t in tensors]
    l1 = [torch.linalg.vector_norm(t, 1, dtype=torch.float64) for t in tensors]
    mx = []
    for t in tensors:
        if t.numel() == 0:  # a sparse gradient with no stored values
            mx.append(torch.zeros((), dtype=torch.float64))
            continue
        low, high = torch.aminmax(t)
        mx.append(torch.maximum(-low, high).to(torch.float64))
    return torch.stack([torch.stack(l2), torch.stack(l1), torch.stack(mx)])


def grad_stats(tensors: Sequence[Tensor], numels: Sequence[int]) -> Tensor:
    """A float64 [3, n] matrix on the tensors' device: rows L2 norm, mean|g|, max|g|.

    ``tensors`` are the values from :func:`dense_values`, all on one device; ``numels`` the
    element counts of the full gradients (a sparse gradient's implicit zeros count in the mean).
    A NaN anywhere in a tensor makes its norm and max NaN; an Inf makes them Inf.
    """
    if not tensors:
        return torch.zeros(3, 0, dtype=torch.float64)
    device = tensors[0].device
    rows = _cpu_rows(tensors) if device.type == "cpu" else _foreach_rows(tensors)
    counts = torch.tensor(numels, dtype=torch.float64, device=device)
    rows[MEAN_ABS] /= counts
    return rows


def global_norm(norms: Tensor) -> Tensor:
    """The L2 norm over all tensors, from their per-tensor L2 norms (0-dim, same device)."""
    total: Tensor = torch.linalg.vector_norm(norms, 2)
    return total


def nonfinite_flags(stats: Tensor) -> Tensor:
    """Bool [n]: which tensors hold a NaN or Inf, read off the stats without another pass."""
    return ~(torch.isfinite(stats[MAX_ABS]) & torch.isfinite(stats[NORM]))


def nonfinite_counts(tensors: Sequence[Tensor]) -> list[int]:
    """Number of NaN/Inf elements in each tensor; a second pass, for bad steps only."""
    return [int((~torch.isfinite(t)).sum()) for t in tensors]


@dataclass(frozen=True)
class Histograms:
    """Device tensors for the histogram step of ``n`` tensors.

    ``values`` [n, VALUE_BINS] counts finite values over [-scale, scale] per tensor;
    ``log10`` [n, LOG10_BINS] counts log10|g| of finite non-zero values over the fixed edges
    :func:`log10_edges`; ``zeros`` and ``nonfinite`` [n] count the elements left out of both.
    """

    values: Tensor
    scale: Tensor
    log10: Tensor
    zeros: Tensor
    nonfinite: Tensor


def histograms(tensors: Sequence[Tensor]) -> Histograms:
    """Histograms of each tensor, with no host sync (ranges stay on the device)."""
    values, scales, logs, zeros, nonfinite = [], [], [], [], []
    for t in tensors:
        flat = t.detach().reshape(-1).float()
        finite = torch.isfinite(flat)
        magnitude = torch.where(finite, flat.abs(), 0.0)
        scale = magnitude.amax() if flat.numel() else torch.zeros((), device=flat.device)
        safe_scale = torch.where(scale > 0, scale, 1.0)
        # histc skips NaN and values outside [min, max], so non-finite values fall out.
        values.append(
            torch.histc(torch.where(finite, flat, math.nan) / safe_scale, VALUE_BINS, -1, 1)
        )
        scales.append(safe_scale)
        nonzero = finite & (flat != 0)
        log_mag = torch.log10(torch.where(nonzero, magnitude, math.nan))
        logs.append(torch.histc(log_mag, LOG10_BINS, LOG10_LOW, LOG10_HIGH))
        zeros.append((flat == 0).sum())
        nonfinite.append((~finite).sum())
    return Histograms(
        values=torch.stack(values),
        scale=torch.stack(scales),
        log10=torch.stack(logs),
        zeros=torch.stack(zeros),
        nonfinite=torch.stack(nonfinite),
    )


def value_edges(scale: float) -> list[float]:
    """The VALUE_BINS + 1 edges of a values histogram whose range is [-scale, scale]."""
    step = 2.0 * scale / VALUE_BINS
    return [-scale + i * step for i in range(VALUE_BINS + 1)]


def log10_edges() -> list[float]:
    """The fixed LOG10_BINS + 1 edges of every log10|g| histogram."""
    step = (LOG10_HIGH - LOG10_LOW) / LOG10_BINS
    return [LOG10_LOW + i * step for i in range(LOG10_BINS + 1)]


def tensor_norms(tensors: Sequence[Tensor]) -> Tensor:
    """Float64 [n] L2 norms (parameters, updates), on the tensors' device."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack(
        [torch.linalg.vector_norm(t.detach(), 2, dtype=torch.float64) for t in tensors]
    )


def to_host(named: Mapping[str, Tensor]) -> dict[str, list[float]]:
    """Move every tensor to the host as a flat list, in one copy (one sync) per device.

    >>> to_host({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0)})
    {'a': [1.0, 2.0], 'b': [3.0]}
    """
    by_device: dict[torch.device, list[str]] = {}
    for name, t in named.items():
        by_device.setdefault(t.device, []).append(name)
    out: dict[str, list[float]] = {}
    for names in by_device.values():
        flat = [named[n].detach().reshape(-1).to(torch.float64) for n in names]
        values = torch.cat(flat).tolist() if flat else []
        start = 0
        for name, t in zip(names, flat, strict=True):
            out[name] = values[start : start + t.numel()]
            start += t.numel()
    return {name: out[name] for name in named}
