"""The spread of each gradient: standard deviation and signed mean of its elements, per layer.

Two built-in :class:`~gradwandb.Statistic` s at the ``"layers"`` tier, logged as
``grad_std/<name>`` and ``grad_mean/<name>``. Where ``grad_norm`` says how large a gradient is,
these say how it is spread: a gradient whose mean is large against its std pushes every
element the same way (a bias, a shifted input), one with mean ~0 and a small std is noise.

Both come from one pass per tensor on the device (``torch.std_mean``, float64 results,
half-precision gradients widened to float32), shared through the view's cache, and cross to
the host in the tracker's one transfer. The std is the population one (``correction=0``):
``sqrt(mean((g - mean(g))**2))``. A sparse gradient's implicit zeros count, as in
``grad_mean_abs``: its mean and std are over the full tensor, from the sum and the L2 norm of
its stored values.

>>> import torch
>>> from gradwandb.live.stats.statistic import GradientView
>>> g = [torch.tensor([1.0, 3.0]), torch.tensor([-2.0, -2.0, -2.0])]
>>> view = GradientView(0, ["a", "b"], g, g, torch.tensor([10.0**0.5, 12.0**0.5]), [2, 3])
>>> spread(view).tolist()  # rows: std, mean
[[1.0, 0.0], [2.0, -2.0]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradwandb import keys as K
from gradwandb.live.stats.statistic import GradientView, Statistic

SPREAD = "spread"  # the view's cache: the [2, n] std, mean matrix of a per-layer step
STD, MEAN = 0, 1  # rows of the spread matrix
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def spread(view: GradientView) -> Tensor:
    """The step's float64 [2, n] matrix of std and signed mean per gradient, computed once."""
    matrix: Tensor = view.cached(SPREAD, lambda: _spread(view))
    return matrix


def _spread(view: GradientView) -> Tensor:
    if not view.grads:
        return torch.zeros(2, 0, dtype=torch.float64)
    stds, means = [], []
    for i, grad in enumerate(view.grads):
        flat = grad.detach().reshape(-1)
        if flat.dtype in _LOW_PRECISION:
            flat = flat.float()
        numel = view.numels[i]
        if flat.numel() == numel and numel > 0:
            std, mean = torch.std_mean(flat, correction=0)
            stds.append(std.double())
            means.append(mean.double())
            continue
        # a sparse gradient (implicit zeros) or an empty one: from the sum and the norm
        total = max(numel, 1)
        mean = flat.double().sum() / total
        square = view.norms[i].double().square() / total
        stds.append((square - mean.square()).clamp_min(0.0).sqrt())
        means.append(mean)
    return torch.stack([torch.stack(stds), torch.stack(means)])


GRAD_STD = Statistic(K.GRAD_STD, lambda v: spread(v)[STD])
GRAD_MEAN = Statistic(K.GRAD_MEAN, lambda v: spread(v)[MEAN])
SPREAD_STATISTICS: tuple[Statistic, ...] = (GRAD_STD, GRAD_MEAN)
