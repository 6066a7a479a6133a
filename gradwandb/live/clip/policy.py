"""Clipping policies: turn the per-tensor norms the tracker already computed into a scale.

A policy sees the gradients, their per-tensor L2 norms and the global norm (all on the device),
scales the gradients in place and reports what it did. It never reads a value back to the host,
so clipping adds no sync; the second pass over the gradients that ``clip_grad_norm_`` spends on
norms is not needed because the norms arrive ready.

A non-finite global norm leaves the gradients untouched (coefficient 1.0): scaling by NaN would
spread it to every layer and hide which one produced it. Skipping such a step is the job of the
non-finite guard.

>>> import torch
>>> grads = [torch.tensor([3.0, 4.0])]
>>> norms = torch.tensor([5.0], dtype=torch.float64)
>>> result = NormClip(1.0).clip_(grads, norms, norms.norm(), params=grads)
>>> round(float(result.coef), 4), [round(v, 4) for v in grads[0].tolist()]
(0.2, [0.6, 0.8])
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class ClipResult:
    """What a policy did this step: 0-dim device tensors.

    ``coef`` is the factor the global norm was scaled by (1.0 when clipping did not bite);
    ``threshold`` the max-norm the policy used, or None for a policy without one; ``extras``
    any other signal worth a chart (a z-score, say), logged as ``grad/clip_<name>``.
    """

    coef: Tensor
    threshold: Tensor | None = None
    extras: Mapping[str, Tensor] = field(default_factory=dict)


def scale_(grads: Sequence[Tensor], coef: Tensor) -> None:
    """Multiply every gradient in place by the 0-dim ``coef``, fused per device and dtype."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for g in grads:
        if g.is_sparse:
            g.mul_(coef.to(g.device, g.dtype))
        else:
            groups.setdefault((g.device, g.dtype), []).append(g)
    for (device, _), group in groups.items():
        torch._foreach_mul_(group, coef.to(device))


class ClipPolicy(ABC):
    """The interface every clipping policy implements.

    Subclasses keep whatever history they need in tensors and expose it through
    ``state_dict``/``load_state_dict`` so a resumed run clips exactly as before.
    """

    @abstractmethod
    def clip_(
        self, grads: Sequence[Tensor], norms: Tensor, total: Tensor, params: Sequence[Tensor]
    ) -> ClipResult:
        """Scale ``grads`` in place given their ``norms`` [n] and global norm ``total``."""

    def state_dict(self) -> dict[str, Any]:
        """The policy's state (empty for a stateless policy)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        del state


class NormClip(ClipPolicy):
    """Clip by global L2 norm to ``max_norm``, as ``torch.nn.utils.clip_grad_norm_`` does.

    The coefficient is ``min(1, max_norm / (total + eps))`` with the same ``eps`` as torch,
    so clipped gradients match ``clip_grad_norm_`` to rounding.
    """

    def __init__(self, max_norm: float, eps: float = 1e-6) -> None:
        self.max_norm = check_positive("clip", max_norm)
        self.eps = eps

    def __repr__(self) -> str:
        return f"NormClip(max_norm={self.max_norm})"

    def clip_(
        self, grads: Sequence[Tensor], norms: Tensor, total: Tensor, params: Sequence[Tensor]
    ) -> ClipResult:
        coef = torch.clamp(self.max_norm / (total + self.eps), max=1.0)
        coef = torch.where(torch.isfinite(total), coef, torch.ones_like(coef))
        scale_(grads, coef.to(torch.float32))
        return ClipResult(coef=coef, threshold=torch.full_like(coef, self.max_norm))


def check_positive(name: str, value: object) -> float:
    """``value`` as a float if it is a finite number above zero, else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number above 0, got {value!r}")
    return float(value)


def as_policy(clip: float | ClipPolicy | None) -> ClipPolicy | None:
    """Normalize the ``clip=`` argument of :func:`gradwandb.watch`."""
    if clip is None or isinstance(clip, ClipPolicy):
        return clip
    if isinstance(clip, bool) or not isinstance(clip, (int, float)):
        raise TypeError(
            f"clip must be a max-norm (a positive number) or a ClipPolicy such as "
            f"gradwandb.NormClip(1.0), got {clip!r} ({type(clip).__name__})"
        )
    return NormClip(check_positive("clip", clip))
