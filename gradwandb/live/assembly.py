"""One step's work between the optimizer's pre-hook and post-hook, and the record it makes.

:class:`Plan` says what a step does (the tiers, cheapest first; each includes the ones before
it); :class:`Pending` holds its device-side results until the post-hook; :func:`assemble`
turns the host copy of those results into the step's :class:`~gradwandb.live.record.StepRecord`
(the global scalars, the clipping numbers, then every statistic in turn).

>>> Plan(log=True, layers=True, hist=False).tiers == frozenset({"log", "layers"})
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

from gradwandb.live.record import StepRecord
from gradwandb.live.selection import Present
from gradwandb.live.stats.statistic import GradientView, Statistic


@dataclass(frozen=True)
class Plan:
    """What one step does, cheapest tier first; each tier includes the ones before it."""

    log: bool  # global norm, clipping, non-finite count: one pass, tiny row
    layers: bool  # + per layer: L2 norm, mean|g|, max|g|, weight norm, update ratio
    hist: bool  # + histograms

    @property
    def anything(self) -> bool:
        return self.log

    @property
    def tiers(self) -> frozenset[str]:
        """The :data:`~gradwandb.live.stats.statistic.TIERS` this step runs."""
        chosen = (("log", self.log), ("layers", self.layers), ("hist", self.hist))
        return frozenset(tier for tier, on in chosen if on)

    def runs(self, statistic: Statistic) -> bool:
        """Whether ``statistic`` is computed on this step."""
        return statistic.tier in self.tiers


@dataclass
class Pending:
    """Device-side results of a step between the pre-hook and the post-hook."""

    plan: Plan
    now: Present
    view: GradientView
    device: dict[str, Tensor] = field(default_factory=dict)  # global scalars and clipping
    results: dict[str, Tensor] = field(default_factory=dict)  # statistic name -> its result
    skipped: bool = False  # the guard skipped this step (its gradients held NaN/Inf)
    stop: str | None = None  # the guard's reason to stop training after this step

    @property
    def step(self) -> int:
        return self.view.step

    def transfer(self) -> dict[str, Tensor]:
        """Everything to move to the host this step, under distinct names."""
        out = dict(self.device)
        out.update({f"stat:{name}": value for name, value in self.results.items()})
        return out


def assemble(
    pending: Pending, host: dict[str, list[float]], statistics: Sequence[Statistic]
) -> StepRecord:
    """The record of ``pending``'s step from ``host``, the copy of :meth:`Pending.transfer`."""
    view = pending.view
    k = view.step
    record = StepRecord(
        step=k,
        names=list(view.names),
        norm=[],
        global_norm=host["total"][0],
        nonfinite_tensors=int(host["nonfinite"][0]),
    )
    if "coef" in host:
        record.clip_coef = host["coef"][0]
        record.clip_rate = host["bites"][0] / (k + 1)
    if "threshold" in host:
        record.clip_threshold = host["threshold"][0]
    record.clip_extras = {
        key.removeprefix("clip_"): v[0] for key, v in host.items() if key.startswith("clip_")
    }
    if "amp_scale" in host:
        record.amp_scale = host["amp_scale"][0]
        record.amp_overflow_skip = 0
    for statistic in statistics:
        if not pending.plan.runs(statistic):
            continue
        result = pending.results.get(statistic.name)
        if result is None and statistic.fn is not None:
            continue  # it had nothing to say this step
        values = host.get(f"stat:{statistic.name}", [])
        per_run = result is not None and result.dim() == 0
        statistic.read(values, view, record, per_run=per_run)
    return record
