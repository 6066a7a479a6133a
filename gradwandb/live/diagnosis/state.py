"""The running state of the rules, each O(1) a value: a weighted average for spike z-scores,
a sliding least-squares trend for growth, and a streak of consecutive qualifying records."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


class Ewm:
    """Exponentially weighted mean and variance of log10 global norm, for spike z-scores.

    >>> ewm = Ewm(span=50, warmup=2, min_std=0.05, z_limit=4.0)
    >>> [round(ewm.observe(y), 1) for y in (0.0, 0.0, 0.0, 1.0)]
    [0.0, 0.0, 0.0, 20.0]
    """

    def __init__(self, span: int, warmup: int, min_std: float, z_limit: float) -> None:
        self.alpha = 2.0 / (span + 1.0)
        self.warmup = warmup
        self.min_std = min_std
        self.z_limit = z_limit
        self.count = 0
        self.mean = 0.0
        self.var = 0.0

    def observe(self, y: float) -> float:
        """The z-score of ``y`` against the values before it (0 during warm-up); then learn it.

        The first values get equal weights (a plain mean, no pull toward 0), later ones the
        exponential weights; a spike is learned only up to the limit, so that one outlier does
        not hide the next.
        """
        std = max(math.sqrt(self.var), self.min_std)
        judged = self.count >= self.warmup
        z = (y - self.mean) / std if judged else 0.0
        if judged:
            y = min(y, self.mean + self.z_limit * std)
        self.count += 1
        a = max(self.alpha, 1.0 / self.count)
        delta = y - self.mean
        self.mean += a * delta
        self.var = (1.0 - a) * (self.var + a * delta * delta)
        return z


class Trend:
    """Least-squares slope of the last ``window`` values, kept as running sums (O(1) a push).

    >>> trend = Trend(3)
    >>> for step, y in enumerate((0.0, 1.0, 2.0)):
    ...     trend.push(step, y)
    >>> trend.rise(), trend.first_step()
    (2.0, 0)
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.points: deque[tuple[int, float]] = deque()
        self.sum_y = 0.0
        self.sum_xy = 0.0  # x is the position in the window, 0 .. len - 1
        self.pushes = 0

    def push(self, step: int, y: float) -> None:
        if len(self.points) == self.window:
            _, first = self.points.popleft()
            self.sum_y -= first
            self.sum_xy -= self.sum_y  # every remaining point moves one place left
        self.sum_xy += len(self.points) * y
        self.sum_y += y
        self.points.append((step, y))
        self.pushes += 1
        if self.pushes % self.window == 0:  # drop accumulated rounding, amortized O(1)
            self.sum_y = sum(p[1] for p in self.points)
            self.sum_xy = sum(i * p[1] for i, p in enumerate(self.points))

    def rise(self) -> float:
        """Fitted change over the full window, in the units of y; 0 until the window fills."""
        n = len(self.points)
        if n < self.window:
            return 0.0
        sum_x = n * (n - 1) / 2.0
        sum_xx = (n - 1) * n * (2 * n - 1) / 6.0
        slope = (n * self.sum_xy - sum_x * self.sum_y) / (n * sum_xx - sum_x * sum_x)
        return slope * (n - 1)

    def first_step(self) -> int:
        return self.points[0][0]


@dataclass
class Streak:
    """How many consecutive qualifying records, and the step the stretch began."""

    count: int = 0
    since: int = 0

    def hit(self, step: int, contiguous: bool = True) -> int:
        if self.count == 0 or not contiguous:
            self.count, self.since = 0, step
        self.count += 1
        return self.count

    def miss(self) -> None:
        self.count = 0
