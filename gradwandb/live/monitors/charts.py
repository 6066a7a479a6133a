"""The charts of a training run, as a tracker observer: :class:`ChartObserver` turns the
records into the pictures of :mod:`gradwandb.plots.charts` and logs them as images next to the
numbers:

    tracker = gradwandb.watch(model, optimizer)
    tracker.add_observer(ChartObserver(flow_every=100, heatmap_every=500, keys=tracker.keys))

(or ``gradwandb.watch(..., charts=True)``). matplotlib is imported on the first drawing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import ClassVar

from gradwandb.keys import CHART_FLOW, CHART_HEATMAP, Keys, is_bias
from gradwandb.live.monitors.base import log10_abs
from gradwandb.live.record import REPORT, StepRecord
from gradwandb.live.schedules import ScheduleLike, as_schedule
from gradwandb.live.shield import Shield
from gradwandb.live.sinks import Image

__all__ = ["MAX_CELLS", "ChartObserver"]

MAX_CELLS = 30_000  # layers x steps in the observer's heatmap: keeps its PNG under ~100 KB
_UNTAGGED = Keys()  # the first model in a run


class ChartObserver:
    """A tracker observer that logs the gradient-flow chart and the layer x step heatmap.

    Every record with per-layer norms adds a column to a bounded buffer (the last
    ``max_columns``). On a step due by ``heatmap_every`` the heatmap of the buffer is returned
    under :data:`~gradwandb.keys.CHART_HEATMAP`; on a step due by ``flow_every`` that carries
    per-layer magnitudes, the flow chart under :data:`~gradwandb.keys.CHART_FLOW`. Intervals
    take an int, a ``step -> bool`` callable, or None (never). ``biases`` puts bias parameters
    in both charts. Pass the tracker's ``keys`` (``tracker.keys``) so a tagged tracker gets
    tagged image keys. A chart that fails to draw warns once and switches the charts off;
    tracking goes on.

    >>> obs = ChartObserver(flow_every=10, heatmap_every=None)
    >>> rec = StepRecord(step=10, names=["w"], norm=[0.5], global_norm=0.5,
    ...                  mean_abs=[0.1], max_abs=[0.3])
    >>> sorted(obs(rec))
    ['charts/grad_flow']
    >>> obs(StepRecord(step=11, names=["w"], norm=[], global_norm=0.5)) is None
    True
    """

    stage: ClassVar[int] = REPORT

    def __init__(
        self,
        *,
        flow_every: ScheduleLike | None = 100,
        heatmap_every: ScheduleLike | None = 500,
        biases: bool = False,
        keys: Keys = _UNTAGGED,
        max_columns: int = 200,
    ) -> None:
        self._flow_at = as_schedule("flow_every", flow_every)
        self._heatmap_at = as_schedule("heatmap_every", heatmap_every)
        if isinstance(max_columns, bool) or not isinstance(max_columns, int) or max_columns < 1:
            raise ValueError(
                f"max_columns must be a whole number of steps, at least 1 (the heatmap keeps "
                f"that many per-layer steps), got {max_columns!r}"
            )
        self.biases = biases
        self.keys = keys
        self._columns: deque[tuple[int, dict[str, float]]] = deque(maxlen=max_columns)
        self._order: list[str] = []  # every name seen, in forward order
        self._shield = Shield(
            "gradwandb.ChartObserver", "charts are switched off (the numbers go on)"
        )

    def __call__(self, record: StepRecord) -> dict[str, Image] | None:
        if self._shield.failed:
            return None
        try:
            return self._charts(record)
        except Exception as exc:  # a chart that cannot be drawn must not stop the numbers
            self._shield.trip(exc, f"at step {record.step}")
            return None

    def _charts(self, record: StepRecord) -> dict[str, Image] | None:
        from gradwandb.plots import charts as plots  # matplotlib only when drawing

        if record.norm:
            self._remember(record)
        out: dict[str, Image] = {}
        tag = f"{self.keys.tag}, " if self.keys.tag else ""
        caption = f"{tag}step {record.step}"
        if record.mean_abs and record.max_abs and self._flow_at(record.step):
            png = plots.flow_chart(
                record.names, record.mean_abs, record.max_abs, step=record.step, biases=self.biases
            )
            out[self.keys.scalar(CHART_FLOW)] = Image(png, caption)
        if self._columns and self._heatmap_at(record.step):
            steps, names, grid = self.heatmap_data()
            png = plots.norm_heatmap(steps, names, grid)
            out[self.keys.scalar(CHART_HEATMAP)] = Image(png, caption)
        return out or None

    def heatmap_data(self) -> tuple[list[int], list[str], list[list[float | None]]]:
        """What the next heatmap would show: steps, names and ``[layer][step]`` log10 norms.

        The latest columns, at most :data:`MAX_CELLS` cells in all (fewer steps for a model
        with many layers).
        """
        columns = list(self._columns)
        rows = len(self._names(columns))
        columns = columns[-max(1, MAX_CELLS // max(1, rows)) :]
        names = self._names(columns)
        grid = [[column.get(name) for _, column in columns] for name in names]
        return [step for step, _ in columns], names, grid

    def _names(self, columns: Sequence[tuple[int, dict[str, float]]]) -> list[str]:
        present = {name for _, column in columns for name in column}
        names = [n for n in self._order if n in present]
        kept = [n for n in names if self.biases or not is_bias(n)]
        return kept or names

    def _remember(self, record: StepRecord) -> None:
        column = {n: log10_abs(x) for n, x in zip(record.names, record.norm, strict=False)}
        self._columns.append((record.step, column))
        self._merge_order(record.names)

    def _merge_order(self, names: Sequence[str]) -> None:
        """Place unseen names in forward order: right after the name before them in ``names``,
        or, for leading ones, right before the first known name after them."""
        known = set(self._order)
        if known.issuperset(names):
            return
        at: int | None = None  # where the next unseen name goes
        for i, name in enumerate(names):
            if name in known:
                at = self._order.index(name) + 1
                continue
            if at is None:
                after = next((n for n in names[i + 1 :] if n in known), None)
                at = len(self._order) if after is None else self._order.index(after)
            self._order.insert(at, name)
            known.add(name)
            at += 1
