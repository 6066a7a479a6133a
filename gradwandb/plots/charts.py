"""Charts people look at: the gradient flow of one step, and a layer x step heatmap of norms.

Both functions return PNG bytes drawn with matplotlib's Agg canvas directly (``pyplot`` and its
global state are never touched). :class:`ChartObserver` plugs them into a tracker, which logs
them as images next to the numbers:

    tracker = gradwandb.watch(model, optimizer)
    tracker.add_observer(ChartObserver(flow_every=100, heatmap_every=500))

>>> record = StepRecord(step=10, names=["0.weight", "0.bias"], norm=[0.5, 0.1],
...                     global_norm=0.51, mean_abs=[0.01, 0.05], max_abs=[0.2, 0.1])
>>> flow_chart(record)[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
>>> png = norm_heatmap([0, 10], ["0.weight"], [[-1.0, float("nan")]])
>>> png[:4] == b"\\x89PNG"
True
"""

from __future__ import annotations

import io
import math
import warnings
from collections import deque
from collections.abc import Sequence

import numpy as np
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from PIL import Image as PILImage

from gradwandb.keys import CHART_FLOW, CHART_HEATMAP, Keys
from gradwandb.live.record import StepRecord
from gradwandb.live.schedules import ScheduleLike, as_schedule
from gradwandb.live.sinks import Image

_MAX_COLOR = "#9ecae1"  # max |g| bars (light, wide)
_MEAN_COLOR = "#08519c"  # mean |g| bars (dark, narrow, in front)
_ZERO_COLOR = "#bdbdbd"  # an all-zero gradient (log10 norm -inf)
_BAD_COLOR = "#d62728"  # NaN or Inf
_DPI = 100
MAX_CELLS = 30_000  # layers x steps in the observer's heatmap: keeps its PNG under ~100 KB
_UNTAGGED = Keys()  # the first model in a run
_MAX_TICKS = 60  # more names than this: label every k-th one
_NAME_CHARS = 36  # longer parameter names are shortened in the middle


def is_bias(name: str) -> bool:
    """True for a bias parameter's name (``bias``, ``bias_ih_l0``, ``in_proj_bias``, ...).

    >>> is_bias("encoder.rnn.bias_hh_l0"), is_bias("0.bias"), is_bias("0.weight")
    (True, True, False)
    """
    last = name.rsplit(".", 1)[-1]
    return last == "bias" or last.startswith("bias_") or last.endswith("_bias")


def flow_chart(record: StepRecord, *, biases: bool = False) -> bytes:
    """PNG of the gradient flow at one step: max and mean |g| per parameter, forward order.

    ``record`` must carry per-layer values (a ``layers_every`` step). Bias parameters are left
    out unless ``biases=True`` (or unless there is nothing else).
    """
    return _png(_flow_figure(record, biases=biases))


def norm_heatmap(
    steps: Sequence[int],
    names: Sequence[str],
    log10_norms: Sequence[Sequence[float | None]],
) -> bytes:
    """PNG heatmap of log10 gradient norms: one row per layer (forward order, first at the top),
    one column per step.

    ``log10_norms[i][j]`` is layer ``names[i]`` at step ``steps[j]``. ``-inf`` (an all-zero
    gradient) and NaN/``+inf`` (a non-finite gradient) cells get their own colours; ``None``
    means not logged for that layer at that step and is left blank.
    """
    return _png(_heatmap_figure(steps, names, log10_norms))


class ChartObserver:
    """A tracker observer that logs the two charts as images.

    Every record with per-layer norms adds a column to a bounded buffer (the last
    ``max_columns``). On a step due by ``heatmap_every`` the heatmap of the buffer is returned
    under :data:`CHART_HEATMAP`; on a step due by ``flow_every`` that carries per-layer
    magnitudes, the flow chart under :data:`CHART_FLOW`. Intervals take an int, a
    ``step -> bool`` callable, or None (never). ``biases`` puts bias parameters in both charts.
    Pass the tracker's ``keys`` (``tracker.keys``) so a tagged tracker gets tagged image keys.
    A chart that fails to draw warns once and switches the charts off; tracking goes on.

    >>> obs = ChartObserver(flow_every=10, heatmap_every=None)
    >>> rec = StepRecord(step=10, names=["w"], norm=[0.5], global_norm=0.5,
    ...                  mean_abs=[0.1], max_abs=[0.3])
    >>> sorted(obs(rec))
    ['charts/grad_flow']
    >>> obs(StepRecord(step=11, names=["w"], norm=[], global_norm=0.5)) is None
    True
    """

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
        self._failed = False

    def __call__(self, record: StepRecord) -> dict[str, Image] | None:
        if self._failed:
            return None
        try:
            return self._charts(record)
        except Exception as exc:  # a chart that cannot be drawn must not stop the numbers
            self._failed = True
            warnings.warn(
                f"gradwandb: could not draw the charts at step {record.step} "
                f"({type(exc).__name__}: {exc}); charts are switched off, the numbers go on",
                RuntimeWarning,
                stacklevel=2,
            )
            return None

    def _charts(self, record: StepRecord) -> dict[str, Image] | None:
        if record.norm:
            self._remember(record)
        out: dict[str, Image] = {}
        tag = f"{self.keys.tag}, " if self.keys.tag else ""
        caption = f"{tag}step {record.step}"
        if record.mean_abs and record.max_abs and self._flow_at(record.step):
            png = flow_chart(record, biases=self.biases)
            out[self.keys.scalar(CHART_FLOW)] = Image(png, caption)
        if self._columns and self._heatmap_at(record.step):
            steps, names, grid = self.heatmap_data()
            png = norm_heatmap(steps, names, grid)
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
        return _keep([n for n in self._order if n in present], biases=self.biases)

    def _remember(self, record: StepRecord) -> None:
        column = {n: _log10(x) for n, x in zip(record.names, record.norm, strict=False)}
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


# -- drawing --------------------------------------------------------------------------------


def _flow_figure(record: StepRecord, *, biases: bool = False) -> Figure:
    """The flow chart's figure: bars of max |g| (patches first) then mean |g| per layer."""
    n = len(record.names)
    if not record.mean_abs or not record.max_abs:
        raise ValueError(
            f"step {record.step} has no per-layer values (mean_abs/max_abs are empty); draw "
            "the flow chart of a per-layer step (one that layers_every schedules)"
        )
    if len(record.mean_abs) != n or len(record.max_abs) != n:
        raise ValueError(
            f"step {record.step}: {n} names but {len(record.mean_abs)} mean_abs and "
            f"{len(record.max_abs)} max_abs values; pass one of each per name"
        )
    keep = [i for i, name in enumerate(record.names) if biases or not is_bias(name)]
    if not keep:  # only biases: show them rather than nothing
        keep = list(range(n))
    names = [record.names[i] for i in keep]
    means = [record.mean_abs[i] for i in keep]
    tops = [record.max_abs[i] for i in keep]
    zero = [math.isfinite(t) and t == 0.0 for t in tops]
    bad = [not (math.isfinite(m) and math.isfinite(t)) for m, t in zip(means, tops, strict=True)]

    x = np.arange(len(names))
    fig = _figure(width=min(16.0, max(6.5, 2.5 + 0.28 * len(names))), height=4.8)
    ax = fig.add_subplot()
    positive = [v for v in (*means, *tops) if math.isfinite(v) and v > 0.0]
    if positive:
        lo = 10.0 ** math.floor(math.log10(min(positive) / 2))
        hi = 10.0 ** math.ceil(math.log10(max(positive) * 2))
    else:
        lo, hi = 1e-8, 1.0
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)  # fixed before the bars, so all-zero bars do not upset autoscaling
    ax.bar(x, [_bar(t) for t in tops], width=0.8, color=_MAX_COLOR, label="max |g|")
    ax.bar(x, [_bar(m) for m in means], width=0.45, color=_MEAN_COLOR, label="mean |g|")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("|gradient|")
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.set_axisbelow(True)

    across = ax.get_xaxis_transform()  # x in data, y in axes fractions
    zx = [i for i, z in enumerate(zero) if z]
    bx = [i for i, b in enumerate(bad) if b]
    if zx:
        ax.plot(
            zx,
            [0.0] * len(zx),
            "^",
            color="black",
            markersize=8,
            clip_on=False,
            transform=across,
            label="zero gradient",
        )
    if bx:
        ax.plot(
            bx,
            [0.96] * len(bx),
            "X",
            color=_BAD_COLOR,
            markersize=9,
            clip_on=False,
            transform=across,
            label="NaN/Inf",
        )

    chosen = _name_ticks(ax.xaxis, names, rotation=90)
    for index, label in zip(chosen, ax.get_xticklabels(), strict=True):
        if bad[index]:
            label.set_color(_BAD_COLOR)
        elif zero[index]:
            label.set_color("black")
            label.set_fontweight("bold")
    hidden = n - len(names)
    note = f" ({hidden} biases hidden)" if hidden else ""
    ax.set_title(f"gradient flow at step {record.step}{note}", loc="left", fontsize=10)
    fig.legend(loc="outside upper right", ncol=4, frameon=False, fontsize=8)
    return fig


def _heatmap_figure(
    steps: Sequence[int],
    names: Sequence[str],
    log10_norms: Sequence[Sequence[float | None]],
) -> Figure:
    """The heatmap's figure: image 0 holds the values (non-finite masked), image 1 marks them."""
    rows, cols = len(names), len(steps)
    if not rows or not cols:
        raise ValueError(
            f"nothing to draw: {rows} names and {cols} steps; pass at least one of each"
        )
    if len(log10_norms) != rows:
        raise ValueError(
            f"log10_norms has {len(log10_norms)} rows for {rows} names; pass one row per "
            "layer, log10_norms[layer][step]"
        )
    for name, row in zip(names, log10_norms, strict=True):
        if len(row) != cols:
            raise ValueError(
                f"row {name!r} of log10_norms has {len(row)} values for {cols} steps; "
                "pass one value per step (None where not logged)"
            )
    grid = np.array(
        [[math.nan if v is None else float(v) for v in row] for row in log10_norms],
        dtype=np.float64,
    )
    missing = np.array([[v is None for v in row] for row in log10_norms], dtype=bool)
    finite = np.isfinite(grid)
    zero = (grid == -np.inf) & ~missing
    bad = ~finite & ~zero & ~missing
    if finite.any():
        vmin, vmax = float(grid[finite].min()), float(grid[finite].max())
    else:
        vmin, vmax = -1.0, 0.0
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5

    fig = _figure(
        width=min(12.0, max(7.0, 4.0 + 0.04 * cols)), height=min(10.0, max(3.2, 1.6 + 0.2 * rows))
    )
    ax = fig.add_subplot()
    values = np.ma.masked_where(~finite, grid)
    image = ax.imshow(
        values, aspect="auto", interpolation="nearest", cmap="viridis", vmin=vmin, vmax=vmax
    )
    marks = np.ma.masked_where(~(zero | bad), np.where(bad, 1.0, 0.0))
    ax.imshow(
        marks,
        aspect="auto",
        interpolation="nearest",
        cmap=ListedColormap([_ZERO_COLOR, _BAD_COLOR]),
        vmin=0.0,
        vmax=1.0,
    )
    fig.colorbar(image, ax=ax, label="log10 gradient norm", pad=0.02)

    at = MaxNLocator(nbins=8, integer=True).tick_values(0, cols - 1)
    ticks = [int(i) for i in at if 0 <= i <= cols - 1]
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
    ax.set_xlabel("optimizer step (per-layer steps only)" if cols > 1 else "optimizer step")
    _name_ticks(ax.yaxis, names, rotation=0)
    ax.set_title(
        "log10 gradient norm per layer (forward order, first on top)", loc="left", fontsize=10
    )
    legend = []
    if zero.any():
        legend.append(Patch(color=_ZERO_COLOR, label="zero gradient"))
    if bad.any():
        legend.append(Patch(color=_BAD_COLOR, label="NaN/Inf"))
    if missing.any():
        legend.append(Patch(facecolor="white", edgecolor="0.6", label="not logged"))
    if legend:
        fig.legend(
            handles=legend,
            loc="outside upper right",
            ncol=3,
            frameon=False,
            fontsize=8,
            handlelength=1.2,
        )
    return fig


# -- helpers --------------------------------------------------------------------------------


def _figure(*, width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    """Render ``fig`` to a 256-colour PNG (a third of the full-colour size) and release it."""
    full = io.BytesIO()
    try:
        fig.savefig(full, format="png", dpi=_DPI)
    finally:
        fig.clear()
    full.seek(0)
    with PILImage.open(full) as image:
        small = image.convert("RGB").quantize(256, method=PILImage.Quantize.MEDIANCUT)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _name_ticks(axis: Axis, names: Sequence[str], rotation: int) -> list[int]:
    """Label ticks 0, 1, ... with (shortened) names; with many names, every k-th one."""
    k = max(1, math.ceil(len(names) / _MAX_TICKS))
    size = 8 if len(names) <= 24 else 6
    chosen = list(range(0, len(names), k))
    axis.set_ticks(chosen, [_short(names[i]) for i in chosen], rotation=rotation, fontsize=size)
    return chosen


def _short(name: str) -> str:
    if len(name) <= _NAME_CHARS:
        return name
    half = (_NAME_CHARS - 1) // 2
    return f"{name[:half]}\u2026{name[-half:]}"


def _keep(names: Sequence[str], *, biases: bool) -> list[str]:
    kept = [n for n in names if biases or not is_bias(n)]
    return kept or list(names)


def _bar(x: float) -> float:
    """A bar's height: the value, or 0 (no bar) where it is zero or not finite."""
    return x if math.isfinite(x) and x > 0.0 else 0.0


def _log10(x: float) -> float:
    if math.isnan(x):
        return math.nan
    if x == 0.0:
        return -math.inf
    if math.isinf(x):
        return math.inf
    return math.log10(abs(x))
