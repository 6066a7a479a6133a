"""Keep long runs light on the page: thin series and bin heatmap columns to a fixed budget.

A 10,000-step run drawn point by point makes a slow page and a large image for no visible
gain. :func:`thin_series` keeps every k-th point of a series and the range (min, max) of each
k-step bucket, so a spike between kept points still shows; :func:`bin_columns` merges the
columns of a ``[row][column]`` grid k at a time, keeping each bin's largest value (the
cell that matters for exploding gradients). Both say how many steps one point stands for,
which the page prints.

>>> thin = thin_series([(i, float(i)) for i in range(10)], limit=5)
>>> thin.stride, [s for s, _ in thin.points]
(2, [0, 2, 4, 6, 8])
>>> thin.low, thin.high
([0.0, 2.0, 4.0, 6.0, 8.0], [1.0, 3.0, 5.0, 7.0, 9.0])
>>> grid = bin_columns([0, 1, 2, 3], [[1.0, 5.0, None, 2.0]], limit=2)
>>> grid.steps, grid.values, grid.width
([0, 2], [[5.0, 2.0]], 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_COLUMNS", "MAX_POINTS", "Binned", "Thinned", "bin_columns", "thin_series"]

MAX_POINTS = 2000  # points of a line drawn for one series
MAX_COLUMNS = 400  # columns of a heatmap (steps)


@dataclass(frozen=True)
class Thinned:
    """Every ``stride``-th point of a series, with each bucket's finite min and max (None
    where a bucket holds no finite value); ``total`` points before thinning."""

    points: list[tuple[int, Any]]
    low: list[float | None]
    high: list[float | None]
    stride: int
    total: int

    def note(self, what: str = "step") -> str:
        """What the page says about it: empty when nothing was left out."""
        if self.stride == 1:
            return ""
        return (
            f"every {_ordinal(self.stride)} logged {what} of {self.total:,} shown; the band spans "
            f"each {self.stride} {what}s' smallest to largest value"
        )


@dataclass(frozen=True)
class Binned:
    """A grid with its columns merged ``width`` at a time (the largest value of each bin;
    None where a bin logged nothing); ``steps`` holds each bin's first step."""

    steps: list[int]
    values: list[list[float | None]]
    width: int
    total: int

    def note(self) -> str:
        if self.width == 1:
            return ""
        return (
            f"{self.total:,} logged steps in {len(self.steps)} columns: each column shows the "
            f"largest value of {self.width} consecutive steps"
        )


def thin_series(series: Sequence[tuple[int, Any]], limit: int = MAX_POINTS) -> Thinned:
    """At most ``limit`` points of ``series``: every k-th one (k the smallest stride that
    fits), with each bucket of k points' finite min and max."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    total = len(series)
    stride = max(1, math.ceil(total / limit))
    points, low, high = [], [], []
    for start in range(0, total, stride):
        bucket = series[start : start + stride]
        points.append(bucket[0])
        finite = [float(v) for _, v in bucket if _finite(v)]
        low.append(min(finite) if finite else None)
        high.append(max(finite) if finite else None)
    return Thinned(points, low, high, stride, total)


def bin_columns(
    steps: Sequence[int], values: Sequence[Sequence[float | None]], limit: int = MAX_COLUMNS
) -> Binned:
    """``values[row][column]`` with at most ``limit`` columns: consecutive columns merged into
    bins of equal width, each keeping its largest value. NaN and +inf win a bin (they are what
    must not vanish), then finite values; -inf (an all-zero gradient) only if nothing else."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    total = len(steps)
    width = max(1, math.ceil(total / limit))
    if width == 1:
        return Binned(list(steps), [list(row) for row in values], 1, total)
    starts = range(0, total, width)
    out = [[_largest(row[s : s + width]) for s in starts] for row in values]
    return Binned([steps[s] for s in starts], out, width, total)


def _largest(cells: Sequence[float | None]) -> float | None:
    present = [c for c in cells if c is not None]
    if not present:
        return None
    bad = [c for c in present if math.isnan(c) or c == math.inf]
    if bad:
        return bad[0]
    return max(present)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
