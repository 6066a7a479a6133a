"""The parameters a tracker watches: their names, the order they are named in, and what their
gradients looked like at the end of the last backward.

- Order: the order their modules first ran (learned at the first forward; registration order
  until then, and for parameters whose module did not run), so a culprit is named where the
  forward met it, not where ``__init__`` declared it.
- Refresh: when an optimizer gains a param group (``add_param_group``), the selection is made
  again.
- Versions: each gradient's version counter, remembered at the end of backward, tells whether
  something changed a gradient in place before the step (a clip gradwandb did not see).

>>> import torch
>>> model = torch.nn.Linear(2, 1)
>>> watched = Watched(list(model.named_parameters()))
>>> watched.ran([model]), watched.names
(False, ['weight', 'bias'])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

Reselect = Callable[[], Sequence[tuple[str, nn.Parameter]]]


class Watched:
    """Names and parameters, aligned; ``optimizers`` and ``reselect`` enable :meth:`refresh`."""

    def __init__(
        self,
        named: Sequence[tuple[str, nn.Parameter]],
        optimizers: Sequence[torch.optim.Optimizer] = (),
        reselect: Reselect | None = None,
    ) -> None:
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self._optimizers = list(optimizers)
        self._reselect = reselect
        self._size = self._optimizer_size()
        self._rank: dict[int, int] = {}  # id(param) -> position of its module in run order
        self._versions: dict[int, tuple[int, int]] = {}  # id(param) -> (id(grad), version)

    def _optimizer_size(self) -> int:
        return sum(len(g["params"]) for o in self._optimizers for g in o.param_groups)

    def refresh(self) -> bool:
        """Select again if an optimizer gained parameters since; True when the set changed."""
        if self._reselect is None or not self._optimizers:
            return False
        size = self._optimizer_size()
        if size == self._size:
            return False
        self._size = size
        named = list(self._reselect())
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self._reorder()
        return True

    def ran(self, modules: Sequence[nn.Module]) -> bool:
        """The modules in the order they first ran; True when the names were reordered."""
        for position, module in enumerate(modules):
            for p in module.parameters(recurse=False):
                self._rank.setdefault(id(p), position)
        return self._reorder()

    def _reorder(self) -> bool:
        last = len(self._rank)
        params = self.params
        order = sorted(range(len(params)), key=lambda i: (self._rank.get(id(params[i]), last), i))
        if order == list(range(len(params))):
            return False
        self.names = [self.names[i] for i in order]
        self.params = [params[i] for i in order]
        return True

    def remember_versions(self) -> None:
        """Note each gradient (and its version counter) as it is now."""
        self._versions = {
            id(p): (id(p.grad), p.grad._version) for p in self.params if p.grad is not None
        }

    def changed(self) -> list[str]:
        """Names of the gradients changed in place since :meth:`remember_versions`."""
        out = []
        for name, p in zip(self.names, self.params, strict=True):
            seen = self._versions.get(id(p))
            if p.grad is not None and seen is not None and seen != (id(p.grad), p.grad._version):
                out.append(name)
        return out
