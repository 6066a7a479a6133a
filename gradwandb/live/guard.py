"""The non-finite guard: skip an optimizer step whose gradients hold NaN/Inf, weights untouched.

A step is bad when a gradient holds NaN/Inf, or when a gradient's norm is past
:data:`OVERFLOW` (its squares overflow float32, as an optimizer's second moment would):
overflow and non-finite are treated alike.

Cost model: the guard must know on the host, before the optimizer reads the gradients,
whether they are finite, so with it on *every* step computes the norms (one pass on the
device, as clipping does) and reads the global norm back (one sync, before the optimizer
step). Only when that norm is not finite does a second pass count the bad elements (that step
only), which also tells a NaN/Inf from a float32 overflow of finite squares.

A bad step is skipped by setting every ``.grad`` the optimizer holds to None: torch optimizers
skip a parameter with no gradient entirely, so weights, moments, step counts and weight decay
stay as they were. Without an optimizer (a hand-written update) the gradients are zeroed in
place instead.

>>> guard = Guard(stop_after=2)
>>> guard.count(5, ["fc.weight"]), guard.stop_message(5) is None
(True, True)
>>> guard.count(6, ["fc.weight"]), guard.stop_message(6)[:45]
(True, 'gradwandb: 2 optimizer steps in a row had NaN')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gradwandb.live.selection import optimizer_params
from gradwandb.live.stats import kernels as S

OVERFLOW = math.sqrt(float(torch.finfo(torch.float32).max))  # ~1.84e19: g*g overflows past it


@dataclass
class Guard:
    """What the guard skipped, and after how many bad steps in a row to stop."""

    stop_after: int | None  # None: skip bad steps and never stop
    total: int = 0  # steps skipped so far
    in_a_row: int = 0  # bad steps since the last finite one
    first: int = 0  # the first step of the current run of bad ones
    culprits: dict[str, None] = field(default_factory=dict)  # their layers, in order

    def trips(
        self,
        step: int,
        names: Sequence[str],
        values: Sequence[Tensor],
        norms: Tensor,
        also: Sequence[tuple[str, Tensor]] = (),
        agree: Callable[[Sequence[str], Sequence[str]], list[str]] | None = None,
    ) -> bool:
        """Whether step ``step``'s gradients hold NaN/Inf; counts it. One host sync.

        ``values`` are the gradients (dense values) named by ``names``, ``norms`` their norms;
        ``also`` more gradients the step would apply (an optimizer's unwatched parameters).
        ``agree(culprits, names)`` (several processes) turns this rank's culprits into every
        rank's, so all ranks skip the same steps.
        """
        watched = list(names)
        if also:
            more = [S.dense_values(g) for _, g in also]
            names = [*names, *(n for n, _ in also)]
            values = [*values, *more]
            norms = torch.cat([norms, S.grad_norms(more)])
        culprits: list[str] = []
        total = float(S.global_norm(norms))  # the guard's sync
        if not math.isfinite(total) or total > OVERFLOW:
            # NaN/Inf elements, or a norm whose squares overflow float32 (so would an
            # optimizer's g*g): both are skipped alike
            bad = S.nonfinite_flags(norms) | (norms > OVERFLOW)
            culprits = [names[i] for i in bad.nonzero().flatten().tolist()]
        if agree is not None:
            culprits = agree(culprits, watched)
        return self.count(step, culprits)

    def count(self, step: int, culprits: Sequence[str]) -> bool:
        """Record step ``step``'s NaN/Inf layers (none: a good step); True when it is bad."""
        if not culprits:
            self.in_a_row = 0
            return False
        if self.in_a_row == 0:
            self.first, self.culprits = step, {}
        self.in_a_row += 1
        self.total += 1
        self.culprits.update(dict.fromkeys(culprits))
        return True

    def stop_message(self, step: int) -> str | None:
        """Why to stop after bad step ``step``, or None to go on."""
        if self.stop_after is None or self.in_a_row < self.stop_after:
            return None
        names = list(self.culprits)
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        span = f"step {step}" if self.first == step else f"steps {self.first}-{step}"
        return (
            f"gradwandb: {self.in_a_row} optimizer steps in a row had NaN/Inf (or overflowing) "
            f"gradients ({span}, guard={self.stop_after}), in: {shown}. Each was skipped, so "
            f"the weights and optimizer state are those from before step {self.first}. Look for "
            "what overflows in those layers (log or division near 0, a too high learning rate, "
            "fp16 without a GradScaler); lower the learning rate or clip (clip=1.0), resume "
            "from a checkpoint, or pass guard=True to skip bad steps without stopping"
        )


def drop_grads(optimizers: Sequence[torch.optim.Optimizer], model: nn.Module) -> None:
    """Skip this step: make every gradient the step would read harmless.

    With optimizers, every parameter they hold (watched or not) gets ``.grad = None``, which
    torch optimizers skip entirely. Without one, every gradient of the model is zeroed in
    place instead, so a hand-written update (``p.data.add_(p.grad, alpha=-lr)``) still runs
    and changes nothing (a ``.grad`` of None would make it raise).
    """
    if optimizers:
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
        return
    for p in model.parameters():
        if p.grad is not None:
            p.grad.zero_()


def unwatched_grads(
    optimizers: Sequence[torch.optim.Optimizer], watched: Sequence[nn.Parameter]
) -> list[tuple[str, Tensor]]:
    """The gradients the optimizers would apply to parameters the tracker does not watch."""
    mine = {id(p) for p in watched}
    others = [p for p in optimizer_params(optimizers) if id(p) not in mine]
    return [(f"<unwatched {i}>", p.grad) for i, p in enumerate(others) if p.grad is not None]
