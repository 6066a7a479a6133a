"""Adaptive clipping policies: thresholds that follow the run instead of a fixed max-norm.

Four :class:`~gradwandb.live.clip.policy.ClipPolicy` implementations beside the fixed
:class:`~gradwandb.live.clip.policy.NormClip`:

- :class:`PercentileClip` (AutoClip-style): clip the global norm to a percentile of the
  global norms seen so far.
- :class:`ZScoreClip` (ZClip-style): clip a global norm that sits more than ``z`` standard
  deviations above its exponential moving average.
- :class:`UnitwiseClip` (AGC-style): clip each output unit's gradient relative to the norm of
  that unit's weights.
- :class:`ValueClip`: clamp each gradient element, as ``torch.nn.utils.clip_grad_value_``;
  the weaker choice, since it changes the gradient's direction.

Rules they share. Nothing in ``clip_`` reads a value back to the host: history lives in
tensors on the gradients' device, updated in place, and every decision is a ``torch.where``,
so clipping adds no sync on steps that log nothing. A step whose global norm is NaN or Inf
leaves the gradients untouched (coefficient 1.0) and never enters a policy's history, so one
bad step cannot poison the thresholds of later ones. A global norm of exactly 0 (no gradient
at all) says nothing about the gradient's scale and does not enter the history either.
``state_dict()`` holds CPU tensors; after ``load_state_dict()`` the state moves to the device
of the next call, and a resumed run clips exactly as the uninterrupted one would have.

While a policy has no threshold yet (its warm-up) it reports a threshold of ``inf``: no limit,
so the coefficient ``min(1, threshold / norm)`` is 1.

>>> import torch
>>> policy = PercentileClip(percentile=50.0, warmup=3)
>>> for norm in [1.0, 2.0, 3.0, 10.0]:
...     grads = [torch.tensor([norm])]
...     norms = torch.tensor([norm], dtype=torch.float64)
...     result = policy.clip_(grads, norms, norms.norm(), params=grads)
>>> float(result.threshold), round(float(result.coef), 4), grads[0].tolist()  # median of 1, 2, 3
(2.0, 0.2, [2.0])
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gradwandb.live.clip.policy import ClipPolicy, ClipResult, check_positive, scale_
from gradwandb.live.stats import kernels as S

_LOW_PRECISION = (torch.float16, torch.bfloat16)
State = dict[str, Tensor]


def _check_int(name: str, value: object, minimum: int) -> int:
    """``value`` if it is an int of at least ``minimum``, else an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_below(name: str, value: object, bound: float, inclusive: bool) -> float:
    """A positive number below ``bound`` (or equal to it when ``inclusive``)."""
    number = check_positive(name, value)
    if number > bound or (number == bound and not inclusive):
        relation = "<=" if inclusive else "<"
        raise ValueError(f"{name} must be a number > 0 and {relation} {bound:g}, got {value!r}")
    return number


def _observed(total: Tensor) -> Tensor:
    """Bool 0-dim: does this global norm enter a policy's history (finite and above 0)?"""
    return torch.isfinite(total) & (total > 0)


def _coef(total: Tensor, threshold: Tensor) -> Tensor:
    """``threshold / total`` where the norm exceeds the threshold, else exactly 1.0.

    No ``eps``: the adaptive thresholds follow the norm's own scale, which may be far below
    1e-6. A NaN or Inf norm is never scaled.
    """
    bites = torch.isfinite(total) & (total > threshold)
    return torch.where(bites, threshold / total, torch.ones_like(total))


class _StatefulPolicy(ClipPolicy):
    """A policy whose history is a dict of tensors, created on the first call's device."""

    def __init__(self) -> None:
        self._state: State | None = None

    @abstractmethod
    def _fresh(self, device: torch.device) -> State:
        """The empty history, on ``device``."""

    def _state_on(self, device: torch.device) -> State:
        if self._state is None:
            self._state = self._fresh(device)
        elif next(iter(self._state.values())).device != device:  # after load_state_dict
            self._state = {k: v.to(device) for k, v in self._state.items()}
        return self._state

    def state_dict(self) -> dict[str, Any]:
        """The history as CPU tensors (copies); a fresh history before the first call."""
        state = self._state if self._state is not None else self._fresh(torch.device("cpu"))
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; it moves to the device of the next call."""
        expected = self._fresh(torch.device("cpu"))
        if set(state) != set(expected):
            raise ValueError(
                f"{type(self).__name__}.load_state_dict expects the keys {sorted(expected)} "
                f"(from its state_dict()), got {sorted(state)}"
            )
        loaded: State = {}
        for key, ref in expected.items():
            value = state[key]
            if not isinstance(value, Tensor) or value.shape != ref.shape:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"{type(self).__name__} state {key!r} must be a tensor of shape "
                    f"{tuple(ref.shape)}, got {shape}; load the state_dict() of a policy "
                    "built with the same arguments"
                )
            loaded[key] = value.detach().to("cpu", ref.dtype, copy=True)
        self._state = loaded


class PercentileClip(_StatefulPolicy):
    """Clip the global norm to a percentile of the past global norms (AutoClip-style).

    The history is a ring buffer of the last ``history`` observed global norms (pre-clip,
    finite, above 0), kept on the gradients' device; its write position advances only on an
    observed norm. The threshold is the ``percentile`` of that history, interpolated linearly
    between order statistics (as ``numpy.percentile``). Clipping starts once ``warmup`` norms
    have been observed; until then the threshold is ``inf``.

    The current norm enters the history *after* the threshold is computed: the threshold
    depends only on past steps, so a spike cannot raise the bar it is measured against.

    Cost per step: a sort of the ``history`` buffer on the device (no host sync).

    Which percentile. Two rules go by "clip at a percentile of the norms", and they are not
    the same rule:

    - AutoClip (Seetharaman et al., 2020) clips at a *low* percentile, the 10th by default
      (``percentile=10``), of *all past* norms, recomputed every step. It bites on most steps
      on purpose: it is a regulariser that keeps every update near the typical small norm,
      and it follows the norms as they drift during training. Pick it to stabilise a run
      whose norms wander or spike (recurrent nets, speech and audio models), where the
      reduced step size is wanted; watch ``grad/clip_rate`` (~0.9 at the 10th percentile).
    - The checklists' rule is a *fixed* threshold at a *high* percentile, the 95th-99th, of
      the norms of the *early*, healthy steps: run a few hundred steps unclipped, read the
      percentile off ``grad/global_norm``, and pass it as ``clip=<that number>``. It bites
      only on the outliers (1-5% of steps) and leaves ordinary updates, so the learning rate
      means what it says. Pick it to guard against rare spikes without changing training.
      ``PercentileClip(percentile=99, history=200, warmup=200)`` is its adaptive cousin: a
      99th percentile of the recent norms, which rises if the norms grow for good.

    Diagnosis points at the second when a clip is far too tight: the ``clipping`` finding
    gives the 95th-99th percentile of the pre-clip norms it saw.

    >>> PercentileClip(percentile=150)
    Traceback (most recent call last):
    ...
    ValueError: percentile must be a number > 0 and <= 100, got 150
    """

    def __init__(self, percentile: float = 10.0, history: int = 1000, warmup: int = 25) -> None:
        super().__init__()
        self.percentile = _check_below("percentile", percentile, 100.0, inclusive=True)
        self.history = _check_int("history", history, 1)
        self.warmup = _check_int("warmup", warmup, 1)

    def __repr__(self) -> str:
        return (
            f"PercentileClip(percentile={self.percentile:g}, history={self.history}, "
            f"warmup={self.warmup})"
        )

    def _fresh(self, device: torch.device) -> State:
        return {
            "norms": torch.full((self.history,), math.inf, dtype=torch.float64, device=device),
            "count": torch.zeros((), dtype=torch.int64, device=device),
        }

    def _threshold(self, state: State) -> Tensor:
        """The percentile of the history (``inf`` before ``warmup`` norms), 0-dim float64."""
        norms, count = state["norms"], state["count"]
        filled = count.clamp(max=self.history)
        ordered = torch.sort(norms).values  # empty slots hold inf: they sort last
        last = (filled - 1).clamp(min=0)
        position = (self.percentile / 100.0) * last.to(torch.float64)
        low = position.floor().to(torch.int64).clamp(0, self.history - 1)
        high = torch.minimum(low + 1, last)
        pair = ordered.index_select(0, torch.stack([low, high]))
        value = pair[0] + (position - low.to(torch.float64)) * (pair[1] - pair[0])
        ready = count >= self.warmup
        return torch.where(ready, value, torch.full_like(value, math.inf))

    def clip_(
        self, grads: Sequence[Tensor], norms: Tensor, total: Tensor, params: Sequence[Tensor]
    ) -> ClipResult:
        x = total.detach().to(torch.float64)
        state = self._state_on(x.device)
        threshold = self._threshold(state)
        coef = _coef(x, threshold)
        scale_(grads, coef.to(torch.float32))
        # remember x (after the threshold: past steps only); a skipped step rewrites the old slot
        ok = _observed(x)
        slot = (state["count"] % self.history).reshape(1)
        kept = state["norms"].index_select(0, slot)
        state["norms"].index_copy_(0, slot, torch.where(ok, x.reshape(1), kept))
        state["count"].add_(ok.to(torch.int64))
        return ClipResult(coef=coef, threshold=threshold)


class ZScoreClip(_StatefulPolicy):
    """Clip a global norm that is an outlier against its moving statistics (ZClip-style).

    The policy tracks the mean ``m`` and variance ``v`` of the global norm. Each step it
    computes ``z = (norm - m) / sqrt(v)``; when ``z > z_limit`` (the ``z`` argument) the norm
    is clipped to ``threshold = m + z_limit * sqrt(v)``. The statistics are then updated with
    the norm *as clipped*, so a spike does not inflate them::

        d = clipped - m;  m += (1 - alpha) * d;  v = alpha * (v + (1 - alpha) * d**2)

    During the first ``warmup`` observed norms (finite, above 0) it only collects statistics:
    ``m`` and ``v`` are their plain mean and (population) variance, the threshold is ``inf``
    and the z-score NaN. With no spread (``v == 0``) the z-score of a norm above the mean is
    ``inf`` and the norm is clipped to the mean. Logs ``grad/clip_zscore``.

    >>> ZScoreClip(alpha=1.0)
    Traceback (most recent call last):
    ...
    ValueError: alpha must be a number > 0 and < 1, got 1.0
    """

    def __init__(self, z: float = 2.5, alpha: float = 0.97, warmup: int = 25) -> None:
        super().__init__()
        self.z = check_positive("z", z)
        self.alpha = _check_below("alpha", alpha, 1.0, inclusive=False)
        self.warmup = _check_int("warmup", warmup, 2)

    def __repr__(self) -> str:
        return f"ZScoreClip(z={self.z:g}, alpha={self.alpha:g}, warmup={self.warmup})"

    def _fresh(self, device: torch.device) -> State:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        return {
            "count": torch.zeros((), dtype=torch.int64, device=device),
            "mean": zero.clone(),
            "var": zero.clone(),
        }

    def clip_(
        self, grads: Sequence[Tensor], norms: Tensor, total: Tensor, params: Sequence[Tensor]
    ) -> ClipResult:
        x = total.detach().to(torch.float64)
        state = self._state_on(x.device)
        count, mean, var = state["count"], state["mean"], state["var"]
        warming = count < self.warmup
        std = var.sqrt()
        nan = torch.full_like(x, math.nan)
        zscore = torch.where(warming, nan, (x - mean) / std)
        threshold = torch.where(warming, torch.full_like(x, math.inf), mean + self.z * std)
        coef = _coef(x, threshold)
        scale_(grads, coef.to(torch.float32))
        # statistics: the clipped norm; a plain mean/variance while warming, an EMA after
        ok = _observed(x)
        clipped = torch.minimum(x, threshold)
        d = clipped - mean
        n = (count + 1).to(torch.float64)
        warm_mean = mean + d / n
        warm_var = var + (d * (clipped - warm_mean) - var) / n
        ema_mean = mean + (1.0 - self.alpha) * d
        ema_var = self.alpha * (var + (1.0 - self.alpha) * d * d)
        new_mean = torch.where(warming, warm_mean, ema_mean)
        new_var = torch.where(warming, warm_var, ema_var)
        mean.copy_(torch.where(ok, new_mean, mean))
        var.copy_(torch.where(ok, new_var, var))
        count.add_(ok.to(torch.int64))
        return ClipResult(coef=coef, threshold=threshold, extras={"zscore": zscore})


def _unit_norms(t: Tensor) -> Tensor:
    """Float64 L2 norm of each row (dim 0) of a tensor of dim >= 2, shape [rows, 1, ...]."""
    acc = torch.float32 if t.dtype in _LOW_PRECISION else None
    dims = tuple(range(1, t.dim()))
    norms: Tensor = torch.linalg.vector_norm(t, 2, dim=dims, keepdim=True, dtype=acc)
    return norms.to(torch.float64)


def _sparse_rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """Row indices and values of a sparse gradient's coalesced form (duplicates summed)."""
    if grad.sparse_dim() != 1:
        raise NotImplementedError(
            f"sparse gradients with sparse_dim {grad.sparse_dim()} are not supported; "
            "only row-sparse ones (nn.Embedding(sparse=True)); use NormClip or PercentileClip"
        )
    coalesced = grad.coalesce()
    return coalesced.indices()[0], coalesced.values()


def _sparse_mul_(grad: Tensor, rows: Tensor, factor: Tensor) -> None:
    """Scale a sparse gradient in place as if its coalesced row ``rows[i]`` were ``*factor[i]``.

    An uncoalesced gradient stores a row as several entries that sum to it; scaling each
    entry by its row's factor scales the sum, so the gradient object itself is kept.
    """
    where = torch.zeros(grad.shape[0], dtype=torch.int64, device=rows.device)
    where.index_copy_(0, rows, torch.arange(rows.numel(), device=rows.device))
    entry_factor = factor.index_select(0, where.index_select(0, grad._indices()[0]))
    values = grad._values()
    values.mul_(entry_factor.to(values.dtype))


class UnitwiseClip(ClipPolicy):
    """Adaptive gradient clipping per unit, relative to the unit's weights (AGC-style).

    A unit is one output unit: a row (index along dim 0) of a parameter of dim >= 2, such as
    a Linear weight's row or a conv kernel's output channel; a parameter of dim 0 or 1 (bias,
    norm gain) is a single unit. A unit whose gradient norm exceeds
    ``clip_factor * max(||W_unit||, eps)`` is scaled down to exactly that norm; the others are
    left alone. For a row-sparse gradient (``nn.Embedding(sparse=True)``) each stored row is
    a unit.

    Cost: one extra pass over the weights and over the gradients of dim >= 2 for the per-unit
    norms (the norms the tracker passes in are per tensor), then the in-place scale. A sparse
    gradient is coalesced, which on an accelerator reads its size back to the host.

    Reports ``coef`` = post-clip global norm / pre-clip global norm (exactly 1.0 when no unit
    was clipped), no single threshold, and ``grad/clip_unit_frac``: the fraction of units
    clipped.

    >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    >>> grads = [torch.tensor([[0.3, 0.0], [0.0, 0.001]])]
    >>> norms = torch.stack([g.norm() for g in grads]).double()
    >>> result = UnitwiseClip(clip_factor=0.02).clip_(grads, norms, norms.norm(), [w])
    >>> [round(v, 6) for v in grads[0].flatten().tolist()]  # row 0 capped at 0.02 * 5
    [0.1, 0.0, 0.0, 0.001]
    >>> float(result.extras["unit_frac"])
    0.5
    """

    def __init__(self, clip_factor: float = 0.01, eps: float = 1e-3) -> None:
        self.clip_factor = check_positive("clip_factor", clip_factor)
        self.eps = check_positive("eps", eps)

    def __repr__(self) -> str:
        return f"UnitwiseClip(clip_factor={self.clip_factor:g}, eps={self.eps:g})"

    def _limit(self, weight_norm: Tensor) -> Tensor:
        return self.clip_factor * weight_norm.clamp(min=self.eps)

    def clip_(
        self, grads: Sequence[Tensor], norms: Tensor, total: Tensor, params: Sequence[Tensor]
    ) -> ClipResult:
        if len(params) != len(grads):
            raise ValueError(
                f"UnitwiseClip needs the parameter of every gradient: got {len(grads)} "
                f"gradients and {len(params)} params"
            )
        if not grads:
            one = torch.ones_like(total, dtype=torch.float64)
            return ClipResult(coef=one, extras={"unit_frac": one * 0})
        finite = torch.isfinite(total)
        rowwise = [g.dim() >= 2 for g in grads]
        # the weight norms of all one-unit tensors in one call; their gradient norms are given
        singles = [p.detach() for p, r in zip(params, rowwise, strict=True) if not r]
        single_w = iter(S.grad_norms(singles).unbind() if singles else ())
        g_norms: list[Tensor] = []  # flat per unit, over all tensors
        limits: list[Tensor] = []
        bites: list[Tensor] = []
        for i, (g, p) in enumerate(zip(grads, params, strict=True)):
            rows: Tensor | None = None
            if not rowwise[i]:  # one unit
                g_norm = norms[i].to(torch.float64).reshape(1)
                limit = self._limit(next(single_w).reshape(1))
            elif g.is_sparse:
                rows, values = _sparse_rows(g)
                g_norm = _unit_norms(values)
                limit = self._limit(_unit_norms(p.detach().index_select(0, rows)))
            else:
                g_norm = _unit_norms(g)
                limit = self._limit(_unit_norms(p.detach()))
            bite = finite & (g_norm > limit)
            factor = torch.where(bite, limit / g_norm, 1.0)
            if rows is not None:
                _sparse_mul_(g, rows, factor)
            else:
                g.mul_(factor.reshape(g_norm.shape if rowwise[i] else ()).to(g.dtype))
            g_norms.append(g_norm.reshape(-1))
            limits.append(limit.reshape(-1))
            bites.append(bite.reshape(-1))
        pre, limit_all, bite_all = torch.cat(g_norms), torch.cat(limits), torch.cat(bites)
        post = torch.where(bite_all, limit_all, pre)
        clipped = bite_all.sum()
        ratio = (post.square().sum() / pre.square().sum()).sqrt().clamp(max=1.0)
        coef = torch.where(clipped > 0, ratio, 1.0)
        frac = clipped.to(torch.float64) / pre.numel()
        return ClipResult(coef=coef, extras={"unit_frac": frac})


def _max_abs(t: Tensor) -> Tensor:
    """max |t| as a float64 0-dim tensor (0 for an empty one), from one ``aminmax`` pass.

    ``aminmax`` is one pass of comparisons; ``vector_norm(t, inf)`` is far slower on the CPU.
    """
    if t.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=t.device)
    low, high = torch.aminmax(t)
    return torch.maximum(-low, high).to(torch.float64)


class ValueClip(ClipPolicy):
    """Clamp every gradient element to ``[-limit, limit]``, as ``clip_grad_value_`` does.

    The weaker choice: clamping the large elements and not the small ones changes the
    gradient's direction, where a norm clip only shortens it. Prefer :class:`NormClip` or an
    adaptive policy; use this one to reproduce a recipe that clipped by value.

    Reports ``coef`` = post-clip global norm / pre-clip global norm (exactly 1.0 when no
    element was clamped) and ``threshold`` = ``limit`` (a bound on elements, not a norm).
    Cost: three passes (max |g| to see whether anything bites, the clamp, the new norms).

    >>> grads = [torch.tensor([3.0, -4.0, 0.5])]
    >>> norms = torch.stack([g.norm() for g in grads]).double()
    >>> result = ValueClip(1.0).clip_(grads, norms, norms.norm(), params=grads)
    >>> grads[0].tolist(), round(float(result.coef), 4)
    ([1.0, -1.0, 0.5], 0.2985)
    """

    def __init__(self, limit: float) -> None:
        self.limit = check_positive("limit", limit)

    def __repr__(self) -> str:
        return f"ValueClip(limit={self.limit:g})"

    def clip_(
        self, grads: Sequence[Tensor], norms: Tensor, total: Tensor, params: Sequence[Tensor]
    ) -> ClipResult:
        x = total.detach().to(torch.float64)
        finite = torch.isfinite(x)
        threshold = torch.full_like(x, self.limit)
        bound = torch.where(finite, threshold, torch.full_like(x, math.inf))
        bites: list[Tensor] = []
        post: list[Tensor] = []
        for g in grads:
            acc = torch.float32 if g.dtype in _LOW_PRECISION else None
            if g.is_sparse:
                rows, values = _sparse_rows(g)
                top = _max_abs(values)
                b = bound.to(values.dtype)
                clamped = values.clamp(-b, b)
                nonzero = values != 0
                ratio = torch.where(nonzero, clamped / torch.where(nonzero, values, 1), 1)
                _sparse_mul_(g, rows, ratio)
                after = clamped
            else:
                top = _max_abs(g)
                b = bound.to(g.dtype)
                g.clamp_(-b, b)
                after = g
            bites.append(top > bound)
            post.append(torch.linalg.vector_norm(after, dtype=acc).to(torch.float64))
        if not grads:
            return ClipResult(coef=torch.ones_like(x), threshold=threshold)
        bit = torch.stack(bites)
        per_tensor = torch.where(bit, torch.stack(post), norms.to(torch.float64))
        ratio = (torch.linalg.vector_norm(per_tensor) / x).clamp(max=1.0)
        coef = torch.where(bit.any(), ratio, torch.ones_like(x))
        return ClipResult(coef=coef, threshold=threshold)
