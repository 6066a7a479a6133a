"""Statistics as plug-ins: what one statistic is, and what it sees of a step.

A :class:`Statistic` has a name (its key family), a tier (how often it runs: with the global
scalars, with the per-layer numbers, or with the histograms) and a function over the step's
:class:`GradientView`, computed on the gradients' device. It returns one value per watched
tensor (a ``[n]`` tensor, logged as ``<name>/<parameter>``), one value for the run (a 0-dim
tensor, logged as ``grad/<name>``), or None for nothing this step. Every statistic of a step
crosses to the host in the tracker's one transfer; a statistic never reads a value back itself.

The built-ins (:mod:`gradwandb.live.stats.builtin`) are written the same way; a statistic of
your own goes to every sink, to the reader and to the diagnosis rules (``record.get(name)``)
with no other edit:

>>> import torch, gradwandb
>>> rms = gradwandb.Statistic(
...     "grad_rms", lambda view: torch.stack([g.pow(2).mean().sqrt() for g in view.grads])
... )
>>> model = torch.nn.Linear(3, 1, bias=False)
>>> with torch.no_grad():
...     _ = model.weight.fill_(1.0)
>>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
>>> sink = gradwandb.MemorySink()
>>> with gradwandb.watch(model, optimizer, sink=sink, statistics=[rms]):
...     model(torch.ones(1, 3)).sum().backward()
...     optimizer.step()
>>> sink.last()["grad_rms/weight"]
1.0

State between steps lives in ``view.state``, a dict that is this statistic's own (for instance
the previous step's gradients, for a cosine between steps; see ``examples/custom_statistic.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor

if TYPE_CHECKING:
    from gradwandb.live.distributed import Reducer
    from gradwandb.live.record import StepRecord

Tier = Literal["log", "layers", "hist"]
TIERS: tuple[Tier, ...] = ("log", "layers", "hist")  # log_every, layers_every, hist_every
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass
class GradientView:
    """What a statistic sees of one step; every tensor is on the gradients' device.

    ``grads`` are the gradients the optimizer is about to read, before clipping (a sparse
    gradient's coalesced values), aligned with ``names`` and ``params``; ``norms`` their float64
    L2 norms, computed once per step and shared with clipping and every statistic; ``numels``
    the element count of each full gradient (a sparse one's implicit zeros count). In a job of
    several processes whose tensors are sharded, ``grads`` and ``params`` are this rank's
    pieces, ``norms`` and ``numels`` those of the full tensors, and ``reducer`` sums a
    per-tensor result over the ranks (one collective a call); otherwise it is None. On an
    ``after_step`` statistic's call the parameters hold the updated weights and ``snapshot`` the
    weights from before the step (None without an optimizer).
    """

    step: int
    names: list[str]
    grads: list[Tensor]
    params: list[Tensor]
    norms: Tensor
    numels: list[int]
    tiers: frozenset[str] = frozenset()  # the tiers this step runs, e.g. {"log", "layers"}
    snapshot: list[Tensor] | None = None
    state: dict[str, Any] = field(default_factory=dict)  # the running statistic's own
    reducer: Reducer | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    def preset(self, values: Mapping[str, Any]) -> None:
        """Fill the cache with results already made (the reduced numbers of a sharded step)."""
        self._cache.update(values)

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per step, shared by the statistics that ask for ``key``."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


Finalize = Callable[[list[float], GradientView, "StepRecord"], None]


@dataclass(frozen=True)
class Statistic:
    """One statistic of the watched gradients (see the module docstring).

    Args:
        name: the key family, e.g. ``"grad_rms"``: letters, digits and ``_``, starting with a
            letter. Per tensor it is logged as ``<name>/<parameter>``, per run as
            ``grad/<name>``.
        fn: ``view -> Tensor | None`` on the device: ``[n]`` (one value per tensor of
            ``view.grads``), 0-dim (one for the run), or None (nothing this step). It must not
            read values back to the host (no ``.item()``, no ``float(tensor)``).
        tier: when it runs: ``"log"`` (every ``log_every`` step), ``"layers"`` (default, every
            ``layers_every`` step) or ``"hist"`` (every ``hist_every`` step).
        after_step: run after the optimizer step (``view.snapshot`` holds the weights from
            before it; the parameters hold the new ones).
        finalize: for a result of another shape: ``finalize(values, view, record)`` turns the
            flat host values into the record's entries (``record.put``). The built-in
            histograms use it.
    """

    name: str
    fn: Callable[[GradientView], Tensor | None] | None
    tier: Tier = "layers"
    after_step: bool = False
    finalize: Finalize | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"Statistic(name={self.name!r}): use letters, digits and '_', starting with a "
                "letter, e.g. name='grad_rms'; it becomes the key family '<name>/<parameter>'"
            )
        if self.fn is not None and not callable(self.fn):
            raise TypeError(
                f"Statistic({self.name!r}, fn={self.fn!r}): fn must be a callable "
                "view -> Tensor | None, e.g. lambda view: torch.stack([g.abs().mean() for g in "
                "view.grads])"
            )
        if self.tier not in TIERS:
            raise ValueError(
                f"Statistic({self.name!r}, tier={self.tier!r}): tier must be one of "
                f"{', '.join(TIERS)} (when it runs: log_every, layers_every, hist_every)"
            )
        if not isinstance(self.after_step, bool):
            raise TypeError(f"Statistic({self.name!r}, after_step=...): pass True or False")
        if self.finalize is not None and not callable(self.finalize):
            raise TypeError(f"Statistic({self.name!r}, finalize=...): pass a callable or None")

    def read(
        self, values: list[float], view: GradientView, record: StepRecord, *, per_run: bool
    ) -> None:
        """Put this statistic's host ``values`` into ``record``: per tensor, or for the run."""
        if self.finalize is not None:
            self.finalize(values, view, record)
            return
        if per_run:
            record.put_run(self.name, values[0])
            return
        if len(values) != len(view.names):
            raise ValueError(
                f"statistic {self.name!r} returned {len(values)} values for "
                f"{len(view.names)} tensors: return one per tensor of view.grads ([n]), one "
                "for the run (0-dim), or give it a finalize"
            )
        record.put(self.name, values)


def check_statistics(statistics: object, taken: Sequence[str]) -> list[Statistic]:
    """Read ``watch(..., statistics=...)``: a list of :class:`Statistic`, names not taken."""
    if statistics is None:
        return []
    if isinstance(statistics, Statistic):
        statistics = [statistics]
    if isinstance(statistics, (str, bytes, Mapping)) or not isinstance(statistics, Sequence):
        raise TypeError(
            f"statistics must be a list of gradwandb.Statistic, got {type(statistics).__name__}"
        )
    out: list[Statistic] = []
    seen = set(taken)
    for item in statistics:
        if not isinstance(item, Statistic):
            raise TypeError(
                f"statistics must hold gradwandb.Statistic objects, got {item!r} "
                f"({type(item).__name__}); e.g. gradwandb.Statistic('grad_rms', fn)"
            )
        if item.name in seen:
            raise ValueError(
                f"statistics: the name {item.name!r} is already taken ({sorted(seen)}); "
                "give your statistic another name"
            )
        seen.add(item.name)
        out.append(item)
    return out
