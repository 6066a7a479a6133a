"""Charts people look at, arrays in and PNG bytes out: the gradient flow of one step, a layer x
step heatmap of gradient norms, and a recurrent module's timestep x step heatmap.

Both wings draw with these functions: the live one through
:class:`~gradwandb.ChartObserver` and :class:`~gradwandb.BPTTMonitor`, the reading one from
what a run logged. They take plain sequences (names, values, steps, ``[row][column]`` grids),
never a record. Drawing uses matplotlib's Agg canvas directly (``pyplot`` and its global state
are never touched), and matplotlib is imported on the first drawing, not with gradwandb.

>>> png = flow_chart(["0.weight", "0.bias"], [0.01, 0.05], [0.2, 0.1], step=10)
>>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
>>> png = norm_heatmap([0, 10], ["0.weight"], [[-1.0, float("nan")]])
>>> png[:4] == b"\\x89PNG"
True
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from gradwandb.keys import is_bias

if TYPE_CHECKING:
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

__all__ = ["flow_chart", "norm_heatmap", "timestep_heatmap"]

_MAX_COLOR = "#9ecae1"  # max |g| bars (light, wide)
_MEAN_COLOR = "#08519c"  # mean |g| bars (dark, narrow, in front)
_ZERO_COLOR = "#bdbdbd"  # an all-zero gradient (log10 norm -inf)
_BAD_COLOR = "#d62728"  # NaN or Inf
_DPI = 100
_MAX_TICKS = 60  # more names than this: label every k-th one
_NAME_CHARS = 36  # longer parameter names are shortened in the middle


def flow_chart(
    names: Sequence[str],
    mean_abs: Sequence[float],
    max_abs: Sequence[float],
    *,
    step: int | None = None,
    biases: bool = False,
) -> bytes:
    """PNG of the gradient flow at one step: max and mean |g| per parameter, in the order of
    ``names`` (forward order), one value of each per name; ``step`` goes in the title.

    Bias parameters are left out unless ``biases=True`` (or unless there is nothing else).
    """
    return _png(_flow_figure(names, mean_abs, max_abs, step=step, biases=biases))


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


def timestep_heatmap(
    module: str, steps: Sequence[int], log10_norms: Sequence[Sequence[float | None]]
) -> bytes:
    """PNG heatmap of one recurrent module's log10 input-gradient norm dL/dx_t: one row per
    timestep (the first on top), one column per monitored step.

    ``log10_norms[t][j]`` is timestep ``t`` at step ``steps[j]``, with the cells as in
    :func:`norm_heatmap` (``None`` past that step's sequence).

    >>> timestep_heatmap("encoder", [0, 5], [[-1.0, -2.0], [0.5, None]])[:4] == b"\\x89PNG"
    True
    """
    return _png(_timestep_figure(module, steps, log10_norms))


# -- drawing --------------------------------------------------------------------------------


def _timestep_figure(
    module: str, steps: Sequence[int], log10_norms: Sequence[Sequence[float | None]]
) -> Figure:
    """The timestep heatmap's figure: :func:`_heatmap_figure` with timesteps for rows."""
    fig = _heatmap_figure(
        steps,
        [str(t) for t in range(len(log10_norms))],
        log10_norms,
        title=f"{module}: log10 input-gradient norm dL/dx_t per timestep (first on top)",
        xlabel="optimizer step (monitored steps)",
    )
    fig.axes[0].set_ylabel("timestep")
    return fig


def _flow_figure(
    names: Sequence[str],
    mean_abs: Sequence[float],
    max_abs: Sequence[float],
    *,
    step: int | None = None,
    biases: bool = False,
) -> Figure:
    """The flow chart's figure: bars of max |g| (patches first) then mean |g| per layer."""
    n = len(names)
    at = "" if step is None else f"step {step}"
    if len(mean_abs) == 0 or len(max_abs) == 0:
        raise ValueError(
            f"{at or 'the step'} has no per-layer values (mean_abs/max_abs are empty); draw "
            "the flow chart of a per-layer step (one that layers_every schedules)"
        )
    if len(mean_abs) != n or len(max_abs) != n:
        raise ValueError(
            f"{at + ': ' if at else ''}{n} names but {len(mean_abs)} mean_abs and "
            f"{len(max_abs)} max_abs values; pass one of each per name"
        )
    keep = [i for i, name in enumerate(names) if biases or not is_bias(name)]
    if not keep:  # only biases: show them rather than nothing
        keep = list(range(n))
    shown = [names[i] for i in keep]
    means = [float(mean_abs[i]) for i in keep]
    tops = [float(max_abs[i]) for i in keep]
    zero = [math.isfinite(t) and t == 0.0 for t in tops]
    bad = [not (math.isfinite(m) and math.isfinite(t)) for m, t in zip(means, tops, strict=True)]

    x = np.arange(len(shown))
    fig = _figure(width=min(16.0, max(6.5, 2.5 + 0.28 * len(shown))), height=4.8)
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
    ax.set_xlim(-0.6, len(shown) - 0.4)
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

    chosen = _name_ticks(ax.xaxis, shown, rotation=90)
    for index, label in zip(chosen, ax.get_xticklabels(), strict=True):
        if bad[index]:
            label.set_color(_BAD_COLOR)
        elif zero[index]:
            label.set_color("black")
            label.set_fontweight("bold")
    hidden = n - len(shown)
    note = f" ({hidden} biases hidden)" if hidden else ""
    ax.set_title(f"gradient flow{' at ' + at if at else ''}{note}", loc="left", fontsize=10)
    fig.legend(loc="outside upper right", ncol=4, frameon=False, fontsize=8)
    return fig


def _heatmap_figure(
    steps: Sequence[int],
    names: Sequence[str],
    log10_norms: Sequence[Sequence[float | None]],
    *,
    title: str = "log10 gradient norm per layer (forward order, first on top)",
    xlabel: str | None = None,
) -> Figure:
    """The heatmap's figure: image 0 holds the values (non-finite masked), image 1 marks them.

    ``xlabel`` defaults to the optimizer step (of the per-layer steps, with several columns).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

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
    if xlabel is None:
        xlabel = "optimizer step (per-layer steps only)" if cols > 1 else "optimizer step"
    ax.set_xlabel(xlabel)
    _name_ticks(ax.yaxis, names, rotation=0)
    ax.set_title(title, loc="left", fontsize=10)
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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    """Render ``fig`` to a 256-colour PNG (a third of the full-colour size) and release it."""
    from PIL import Image as PILImage

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


def _bar(x: float) -> float:
    """A bar's height: the value, or 0 (no bar) where it is zero or not finite."""
    return x if math.isfinite(x) and x > 0.0 else 0.0
