"""Sweep charts, arrays in and PNG bytes out: the phase diagram (a grid of two swept
parameters, cells coloured by verdict, one panel per value of the others) and a parameter
against an outcome, points coloured by verdict.

>>> png = phase_chart("lr", [0.1, 1.0], "init", ["normal"],
...                   {((), 0.1, "normal"): "healthy", ((), 1.0, "normal"): "exploding"})
>>> png[:4] == b"\\x89PNG"
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from gradwandb.keys import VERDICTS
from gradwandb.plots.charts import _figure, _png

__all__ = ["VERDICT_COLORS", "outcome_chart", "phase_chart"]

VERDICT_COLORS = {
    "healthy": "#1a9850",
    "vanishing": "#4575b4",
    "exploding": "#f46d43",
    "nonfinite": "#a50026",
    None: "#bdbdbd",  # no verdict: the run failed or was stopped
}
Cell = tuple[tuple[Any, ...], Any, Any]  # (values of the facet parameters, x value, y value)


def phase_chart(
    x_name: str,
    x_values: Sequence[Any],
    y_name: str,
    y_values: Sequence[Any],
    cells: Mapping[Cell, str | None],
    *,
    facet_names: Sequence[str] = (),
    facets: Sequence[tuple[Any, ...]] = ((),),
    labels: Mapping[Cell, str] | None = None,
) -> bytes:
    """PNG of the phase diagram: ``x_name`` across, ``y_name`` down, one panel per facet
    (values of the remaining parameters), each cell coloured by its verdict (grey where none)
    and labelled with ``labels[cell]`` (default: the verdict)."""
    from matplotlib.patches import Patch, Rectangle

    if not x_values or not y_values:
        raise ValueError(f"nothing to draw: {len(x_values)} {x_name} and {len(y_values)} {y_name}")
    n = max(1, len(facets))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    cw, ch = max(0.9, 6.0 / max(len(x_values), 1)), 0.55
    fig = _figure(
        width=min(15.0, cols * (1.6 + cw * len(x_values)) + 0.5),
        height=min(14.0, rows * (1.0 + ch * len(y_values)) + 0.9),
    )
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, facet in zip(axes.flat, facets, strict=False):
        for i, x in enumerate(x_values):
            for j, y in enumerate(y_values):
                cell = (tuple(facet), x, y)
                present = cell in cells
                verdict = cells.get(cell)
                color = VERDICT_COLORS.get(verdict, VERDICT_COLORS[None]) if present else "white"
                ax.add_patch(Rectangle((i, j), 1, 1, facecolor=color, edgecolor="white", lw=2))
                text = (labels or {}).get(cell, verdict or ("no verdict" if present else ""))
                dark = verdict in ("vanishing", "nonfinite")
                ax.text(i + 0.5, j + 0.5, text, ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")  # fmt: skip
        ax.set_xlim(0, len(x_values))
        ax.set_ylim(len(y_values), 0)
        ax.set_xticks([i + 0.5 for i in range(len(x_values))], [_fmt(v) for v in x_values])
        ax.set_yticks([j + 0.5 for j in range(len(y_values))], [_fmt(v) for v in y_values])
        ax.tick_params(length=0, labelsize=8)
        ax.set_xlabel(x_name, fontsize=8)
        ax.set_ylabel(y_name, fontsize=8)
        for side in ax.spines.values():
            side.set_visible(False)
        if facet_names:
            title = ", ".join(f"{k}={_fmt(v)}" for k, v in zip(facet_names, facet, strict=False))
            ax.set_title(title, fontsize=8)
    shown = [v for v in (*VERDICTS, None) if v in set(cells.values())]
    fig.legend(
        handles=[Patch(color=VERDICT_COLORS[v], label=v or "no verdict") for v in shown],
        loc="outside upper center",
        ncol=len(shown) or 1,
        frameon=False,
        fontsize=8,
    )
    return _png(fig)


def outcome_chart(
    param: str,
    values: Sequence[Any],
    outcome: str,
    outcomes: Sequence[float | None],
    verdicts: Sequence[str | None],
) -> bytes:
    """PNG of ``outcome`` against ``param``, one point per run coloured by its verdict.
    Numbers go on a numeric axis (log when positive and spread over two decades or more);
    anything else on a categorical one, in the order given."""
    import numpy as np

    fig = _figure(width=4.2, height=3.0)
    ax = fig.add_subplot()
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        x = np.array([float(v) for v in values])
    else:
        order = list(dict.fromkeys(_fmt(v) for v in values))
        x = np.array([order.index(_fmt(v)) for v in values], dtype=float)
        ax.set_xticks(range(len(order)), order, fontsize=7)
    y = np.array([math.nan if o is None else float(o) for o in outcomes])
    colors = [VERDICT_COLORS.get(v, VERDICT_COLORS[None]) for v in verdicts]
    ax.scatter(x, y, c=colors, s=28, edgecolors="0.3", linewidths=0.4)
    if numeric and len(x) and (x > 0).all() and x.max() / x.min() >= 100:
        ax.set_xscale("log")
    finite = y[np.isfinite(y)]
    if len(finite) and (finite > 0).all() and finite.max() / finite.min() >= 100:
        ax.set_yscale("log")
    ax.set_xlabel(param, fontsize=8)
    ax.set_ylabel(outcome, fontsize=8)
    ax.tick_params(labelsize=7)
    return _png(fig)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
