"""Line charts of a run, arrays in and PNG bytes out: the global gradient norm with the clip
coefficient, a recurrent module's per-timestep curves, and gradient histograms of one step.

Like :mod:`gradwandb.plots.charts` these draw on matplotlib's Agg canvas (no ``pyplot``) and
import matplotlib on the first drawing.

>>> png = global_chart([0, 1, 2], [1.0, 10.0, float("nan")], clip_steps=[0, 1, 2],
...                    clip=[1.0, 0.1, 1.0])
>>> png[:4] == b"\\x89PNG"
True
>>> curves_chart("encoder", [(0, [1e-3, 1e-2, 1.0]), (5, [1e-4, 1e-2, 1.0])])[:4] == b"\\x89PNG"
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gradwandb.plots.charts import _BAD_COLOR, _figure, _png, _short

__all__ = ["Band", "curves_chart", "global_chart", "histogram_chart"]

Band = tuple[Sequence[int], Sequence[float | None], Sequence[float | None]]  # steps, low, high
_NORM_COLOR = "#08519c"
_CLIP_COLOR = "#d95f02"


def global_chart(
    steps: Sequence[int],
    norms: Sequence[float],
    *,
    band: Band | None = None,
    clip_steps: Sequence[int] = (),
    clip: Sequence[float] = (),
    clip_band: Band | None = None,
) -> bytes:
    """PNG of the global gradient norm (top) and the clip coefficient (below, when given)
    over the optimizer steps, both on a log scale. A ``band`` (steps, low, high) shades the
    range each drawn point stands for; NaN/Inf norms are marked in red along the bottom."""
    rows = 2 if clip_steps else 1
    fig = _figure(width=9.0, height=3.0 + 1.6 * (rows - 1))
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False, height_ratios=[2, 1][:rows])
    top = axes[0][0]
    _line(top, steps, norms, band, _NORM_COLOR, "global gradient norm (pre-clip)")
    bad = [s for s, v in zip(steps, norms, strict=True) if not math.isfinite(v)]
    if band is not None:  # a bucket with a non-finite value has no finite range but may hide one
        bad += [s for s, lo, v in zip(band[0], band[1], norms, strict=False) if lo is None]
    if bad:
        top.plot(bad, [0.02] * len(bad), "|", color=_BAD_COLOR, markersize=10,
                 transform=top.get_xaxis_transform(), label="NaN/Inf")  # fmt: skip
    top.set_ylabel("global norm")
    top.legend(loc="upper right", fontsize=8, frameon=False)
    if rows == 2:
        low = axes[1][0]
        _line(low, clip_steps, clip, clip_band, _CLIP_COLOR, "clip coefficient")
        low.set_ylabel("clip coef")
        low.axhline(1.0, color="0.6", linewidth=0.8, linestyle=":")
        low.set_xlabel("optimizer step")
    else:
        top.set_xlabel("optimizer step")
    return _png(fig)


def curves_chart(
    module: str,
    curves: Sequence[tuple[int, Sequence[float | None]]],
    *,
    ylabel: str = "input-gradient norm dL/dx_t",
) -> bytes:
    """PNG of a recurrent module's per-timestep norms: one line per monitored step
    (``(step, values by timestep)``), earlier steps lighter, log scale."""
    from matplotlib import colormaps

    if not curves:
        raise ValueError(f"{module}: no curves to draw; pass at least one (step, values)")
    fig = _figure(width=7.5, height=3.6)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"]
    n = len(curves)
    for i, (step, values) in enumerate(curves):
        y = np.array([math.nan if v is None or v <= 0 else float(v) for v in values])
        color = cmap(0.15 + 0.75 * (i / max(1, n - 1)))
        ax.plot(np.arange(len(y)), y, marker="o", markersize=3, color=color, label=f"step {step}")
    ax.set_yscale("log")
    ax.set_xlabel("timestep (0 = first)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{module}: {ylabel} per timestep", loc="left", fontsize=10)
    ax.legend(fontsize=7, frameon=False, ncol=2 if n > 4 else 1)
    return _png(fig)


def histogram_chart(
    panels: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    step: int,
    xlabel: str = "log10 |gradient value|",
) -> bytes:
    """PNG of gradient histograms at ``step``, one outline per ``(name, counts, edges)`` on
    one axes (forward order: earlier layers darker), counts on a log scale."""
    from matplotlib import colormaps

    if not panels:
        raise ValueError(f"step {step}: no histograms to draw; pass at least one")
    fig = _figure(width=7.5, height=3.6)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"]
    n = len(panels)
    drawn = False
    for i, (name, counts, edges) in enumerate(panels):
        e = np.asarray(edges, dtype=np.float64)
        c = np.asarray(counts, dtype=np.float64)
        if len(e) != len(c) + 1 or not len(c) or not (c > 0).any():
            continue
        color = cmap(0.85 * i / max(1, n - 1))
        ax.stairs(np.where(c > 0, c, np.nan), e, color=color, linewidth=1.2, label=_short(name))
        drawn = True
    if drawn:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(f"gradient values per layer at step {step}", loc="left", fontsize=10)
    ax.legend(fontsize=7, frameon=False, ncol=2 if n > 6 else 1)
    return _png(fig)


def _line(
    ax: object,
    steps: Sequence[int],
    values: Sequence[float],
    band: Band | None,
    color: str,
    label: str,
) -> None:
    from matplotlib.axes import Axes

    assert isinstance(ax, Axes)
    y = np.array([v if math.isfinite(v) and v > 0 else math.nan for v in values], dtype=float)
    if band is not None and len(band[0]) == len(steps):
        lo = np.array([math.nan if v is None or v <= 0 else v for v in band[1]], dtype=float)
        hi = np.array([math.nan if v is None or v <= 0 else v for v in band[2]], dtype=float)
        ax.fill_between(np.asarray(band[0]), lo, hi, color=color, alpha=0.2, linewidth=0)
    ax.plot(np.asarray(steps), y, color=color, linewidth=1.1, label=label)
    if np.isfinite(y).any():
        ax.set_yscale("log")
