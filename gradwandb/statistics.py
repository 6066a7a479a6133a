"""Per-tensor gradient statistics: pure functions over lists of tensors, computed on their device.

Cost model (where host syncs happen): nothing in this module reads a value back to the host
except :func:`to_host`, which moves every requested result in one copy per device. The
tracker calls it at most once per logged step; a step that logs nothing never calls it.
:func:`nonfinite_counts` is the one exception, run only on a step whose stats already showed a
non-finite tensor.

Kernels are chosen by device. On an accelerator the ``torch._foreach_*`` kernels reduce all
tensors of a dtype in a few fused launches. On the CPU, where ``_foreach`` ops are a loop of
per-tensor ops anyway, the fastest per-tensor reductions are used instead: a BLAS dot for
the L2 norm and ``aminmax`` for max|g|, which stay fast when gradients vanish into denormals.
Nothing here copies host data to the device either (no ``torch.tensor(list, device=...)``),
since on an accelerator that copy would wait for the queued work.

>>> import torch
>>> g = [torch.tensor([3.0, -4.0]), torch.tensor([0.0, 0.0, 1.0, -1.0])]
>>> [[round(v, 4) for v in row] for row in grad_stats(g).tolist()]  # L2, sum|g|, max|g|
[[5.0, 1.4142], [7.0, 2.0], [4.0, 1.0]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

NORM, L1_SUM, MAX_ABS = 0, 1, 2  # rows of the grad_stats matrix
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


def _accumulator(t: Tensor) -> Tensor:
    """``t`` flat, in a dtype safe to reduce in (low-precision floats widen to float32)."""
    flat = t.reshape(-1)
    return flat.float() if flat.dtype in _LOW_PRECISION else flat


def _foreach_rows(tensors: Sequence[Tensor], orders: Sequence[float]) -> Tensor:
    """[len(orders), n] vector norms with fused multi-tensor kernels (accelerators).

    One launch group per dtype; results are placed back in order with ``stack`` so no index
    tensor has to be copied to the device.
    """
    groups: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.dtype, []).append(i)
    rows: list[list[Tensor | None]] = [[None] * len(tensors) for _ in orders]
    for dtype, idx in groups.items():
        group = [tensors[i] for i in idx]
        acc = torch.float32 if dtype in _LOW_PRECISION else None
        for row, order in enumerate(orders):
            for i, value in zip(idx, torch._foreach_norm(group, order, dtype=acc), strict=True):
                rows[row][i] = value
    return torch.stack([torch.stack([v.double() for v in r if v is not None]) for r in rows])


def _cpu_norms(flats: Sequence[Tensor]) -> Tensor:
    """L2 norms as ``sqrt(dot(g, g))``: one BLAS pass, fast even on denormals (CPU)."""
    return torch.stack([torch.dot(f, f) for f in flats]).double().sqrt()


def _cpu_rows(tensors: Sequence[Tensor]) -> Tensor:
    """[3, n] of L2, L1 and max-abs with per-tensor kernels (CPU).

    max|g| comes from ``aminmax`` (one pass of comparisons, cheap even on denormals), the L1
    sums from one ``_foreach_norm``.
    """
    flats = [_accumulator(t) for t in tensors]
    lows, highs = [], []
    for f in flats:
        if f.numel():
            low, high = torch.aminmax(f)
        else:  # a sparse gradient with no stored values
            low = high = f.new_zeros(())
        lows.append(low)
        highs.append(high)
    l1 = torch.stack(torch._foreach_norm(flats, 1.0)).double()
    mx = torch.maximum(-torch.stack(lows), torch.stack(highs)).double()
    return torch.stack([_cpu_norms(flats), l1, mx])


def grad_norms(tensors: Sequence[Tensor]) -> Tensor:
    """Float64 [n] L2 norms on the tensors' device: the one pass every step needs.

    Norms accumulate in the gradient's precision (float32 for half types), as
    ``clip_grad_norm_`` does: a tensor whose elements are all below ~1e-19 has squares that
    underflow to a norm of 0, which :func:`exact_norms` corrects on request.
    """
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    if tensors[0].device.type == "cpu":
        return _cpu_norms([_accumulator(t) for t in tensors])
    return _foreach_rows(tensors, (2.0,))[0]


def grad_stats(tensors: Sequence[Tensor]) -> Tensor:
    """A float64 [3, n] matrix on the tensors' device: rows L2 norm, sum|g|, max|g|.

    ``tensors`` are the values from :func:`dense_values`, all on one device. The mean
    |g| is ``sum|g| / numel`` of the full gradient, divided on the host (a sparse gradient's
    implicit zeros count). A NaN in a tensor makes its norm and max NaN; an Inf makes them Inf.
    """
    if not tensors:
        return torch.zeros(3, 0, dtype=torch.float64)
    if tensors[0].device.type == "cpu":
        return _cpu_rows(tensors)
    return _foreach_rows(tensors, (2.0, 1.0, math.inf))


def exact_norms(tensors: Sequence[Tensor]) -> list[float]:
    """L2 norms immune to float32 underflow and overflow (scaled, float64); a host sync.

    For the rare tensors whose fast norm reads 0 while max|g| > 0, or Inf while finite.
    """
    out = []
    for t in tensors:
        x = _accumulator(t).double()
        scale = x.abs().max() if x.numel() else x.new_zeros(())
        out.append(float(torch.linalg.vector_norm(x / scale) * scale) if scale > 0 else 0.0)
    return out


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

    ``values`` [n, VALUE_BINS] counts the finite values (NaN/Inf read as 0) over
    [-scale, scale]; ``log10`` [n, LOG10_BINS] counts log10|g| of the finite non-zero values
    over the fixed edges :func:`log10_edges`, which span every float32 magnitude, so
    ``numel - sum(log10)`` is the number of zeros plus non-finite elements.
    """

    values: Tensor
    scale: Tensor
    log10: Tensor


def histograms(tensors: Sequence[Tensor], max_abs: Tensor) -> Histograms:
    """Histograms of each tensor, with no host sync (ranges stay on the device).

    ``max_abs`` [n] is the MAX_ABS row of :func:`grad_stats`. NaN and Inf are set to zero
    first, so a tensor that holds them still gets a histogram of its finite values (the zeros
    they add are taken back on the host, where the non-finite counts are known).
    """
    values, scales, logs = [], [], []
    for t, top in zip(tensors, max_abs, strict=True):
        flat = torch.nan_to_num(_accumulator(t.detach()), nan=0.0, posinf=0.0, neginf=0.0)
        magnitude = flat.abs()
        finite_top = torch.where(torch.isfinite(top), top, magnitude.amax().double())
        scale = torch.where(finite_top > 0, finite_top, 1.0).to(flat.dtype)
        values.append(torch.histc(flat / scale, VALUE_BINS, -1, 1))
        # log10(0) is -inf, outside the range: zeros fall out of this histogram.
        logs.append(torch.histc(torch.log10(magnitude), LOG10_BINS, LOG10_LOW, LOG10_HIGH))
        scales.append(scale.double())
    return Histograms(
        values=torch.stack(values), scale=torch.stack(scales), log10=torch.stack(logs)
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
