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
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy
import torch
from torch import Tensor

NORM, L1_SUM, MAX_ABS = 0, 1, 2  # rows of the grad_stats matrix
VALUE_BINS = 64
LOG10_BINS = 128  # magnitude bins: two binary orders each, spanning float32
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_LITTLE_ENDIAN = sys.byteorder == "little"


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


def without_overflow(norms: Tensor, tensors: Sequence[Tensor]) -> Tensor:
    """``norms`` of ``tensors`` with every float32 overflow of finite values recomputed.

    A float32 sum of squares overflows for norms past ~1.8e19 although every element is
    finite. On the CPU, where reading a tensor is no sync, such norms are recomputed scaled in
    float64 (in place), so finite gradients never get an infinite norm and clipping scales
    them. On an accelerator the norms are returned as they are (as ``clip_grad_norm_`` has
    them): finding them would need a sync.
    """
    if norms.device.type != "cpu":
        return norms
    host = norms.numpy()  # a view of CPU memory: no copy, no sync
    for i in (~numpy.isfinite(host)).nonzero()[0].tolist():
        flat = _accumulator(tensors[i].detach())
        if numpy.isfinite(flat.numpy()).all():  # finite values: the squares overflowed
            norms[i] = exact_norms([flat])[0]
    return norms


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

    Any tensors will do (weights and updates use it too); they are read, never changed.

    Norms accumulate in the gradient's precision (float32 for half types), as
    ``clip_grad_norm_`` does: a tensor whose elements are all below ~1e-19 has squares that
    underflow to a norm of 0, which :func:`exact_norms` corrects on request.
    """
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    if tensors[0].device.type == "cpu":
        return _cpu_norms([_accumulator(t.detach()) for t in tensors])
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


def nonfinite_flags(norms: Tensor) -> Tensor:
    """Bool [n]: which tensors may hold a NaN or Inf, read off their L2 norms (no pass).

    A NaN or Inf element makes the norm NaN or Inf; so does a float32 overflow of a finite
    gradient's norm, which :func:`nonfinite_counts` tells apart.
    """
    return ~torch.isfinite(norms)


def nonfinite_counts(tensors: Sequence[Tensor]) -> list[int]:
    """Number of NaN/Inf elements in each tensor; a second pass, for bad steps only."""
    return [int((~torch.isfinite(t)).sum()) for t in tensors]


@dataclass(frozen=True)
class Histograms:
    """Device tensors for the histogram step of ``n`` tensors.

    ``values`` [n, VALUE_BINS] counts the finite values over [-scale, scale] (NaN and Inf
    fall outside); ``log10`` [n, LOG10_BINS] counts magnitudes by float32 exponent, two
    binary orders (0.6 decades) a bin (see :func:`log10_edges`): bin 0 also holds the zeros
    and bin LOG10_BINS-1 the NaN/Inf, which the host takes back out with ``zeros`` [n] and
    the non-finite counts it has.
    """

    values: Tensor
    scale: Tensor
    log10: Tensor
    zeros: Tensor


def _magnitude_bins(flat: Tensor) -> Tensor:
    """Counts of float32 ``flat`` per pair of binary exponents, read off the bits (no log).

    The top byte of a little-endian float32 is the sign and the 7 high exponent bits, so
    masking the sign off gives the bin directly, one byte per element.
    """
    top_byte = flat.contiguous().view(torch.uint8)[3::4] if _LITTLE_ENDIAN else None
    if top_byte is None:
        exponent = torch.frexp(flat)[1] + 126  # the same bins, computed
        index = (exponent.clamp(0, 255) // 2).to(torch.uint8)
    else:
        index = top_byte & 0x7F
    if flat.device.type == "cpu":
        return torch.bincount(index, minlength=LOG10_BINS).double()
    # bincount sizes its output from the data on accelerators (a sync); histc does not.
    return torch.histc(index.float(), LOG10_BINS, 0, LOG10_BINS).double()


def histograms(tensors: Sequence[Tensor], max_abs: Tensor) -> Histograms:
    """Histograms of each tensor. On an accelerator the ranges stay on the device (no sync).

    ``max_abs`` [n] is the MAX_ABS row of :func:`grad_stats`; for a tensor holding NaN/Inf it
    is not finite and the range comes from the finite values instead.
    """
    flats = [t.detach().reshape(-1).float() for t in tensors]
    on_cpu = bool(flats) and flats[0].device.type == "cpu"
    values, scales = [], []
    tops = max_abs.tolist() if on_cpu else max_abs  # reading a CPU tensor is no sync
    for flat, top in zip(flats, tops, strict=True):
        if on_cpu:  # a host-side range: histc straight on the gradient, no extra pass
            scale = float(top) if math.isfinite(top) else _finite_max(flat).item()
            scale = scale if scale > 0 else 1.0
            values.append(torch.histc(flat, VALUE_BINS, -scale, scale).double())
            scales.append(torch.tensor(scale, dtype=torch.float64))
        else:  # a device-side range: scale the values into [-1, 1] instead
            finite_top = torch.where(torch.isfinite(top), top, _finite_max(flat).double())
            dev_scale = torch.where(finite_top > 0, finite_top, 1.0)
            values.append(torch.histc(flat / dev_scale.float(), VALUE_BINS, -1, 1).double())
            scales.append(dev_scale)
    return Histograms(
        values=torch.stack(values),
        scale=torch.stack(scales),
        log10=torch.stack([_magnitude_bins(f) for f in flats]),
        zeros=torch.stack([f.numel() - torch.count_nonzero(f) for f in flats]).double(),
    )


def _finite_max(flat: Tensor) -> Tensor:
    return torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0).abs().amax()


def value_edges(scale: float) -> list[float]:
    """The VALUE_BINS + 1 edges of a values histogram whose range is [-scale, scale]."""
    step = 2.0 * scale / VALUE_BINS
    return [-scale + i * step for i in range(VALUE_BINS + 1)]


def log10_edges() -> list[float]:
    """The LOG10_BINS + 1 edges, in log10|g|, of every magnitude histogram.

    Bin k holds |g| in [2**(2k-127), 2**(2k-125)); its first edge is the smallest float32
    denormal instead, since bin 0 also holds every denormal.
    """
    step = math.log10(2.0)
    return [math.log10(2.0**-149)] + [(2 * k - 127) * step for k in range(1, LOG10_BINS + 1)]


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
