"""When to do what: a schedule is a ``step -> bool`` callable over 0-based optimizer steps.

>>> every(10)(0), every(10)(5), every(10)(20)
(True, False, True)
>>> as_schedule("log_every", 3)(6)
True
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

Schedule = Callable[[int], bool]
ScheduleLike = int | Schedule


def every(n: int) -> Schedule:
    """Steps 0, n, 2n, ..."""
    return lambda step: step % n == 0


def never(step: int) -> bool:
    """No step."""
    return False


def as_schedule(name: str, value: ScheduleLike | None) -> Schedule:
    """Read an interval argument: a positive whole number (a numpy integer too), a
    ``step -> bool`` callable, or None (never).

    >>> import numpy as np
    >>> as_schedule("log_every", np.int64(5))(10)
    True
    """
    if value is None:
        return never
    if callable(value):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        from gradwandb.live.arguments import shown  # arguments imports this module

        raise TypeError(
            f"{name} must be a whole number of steps (or a step -> bool callable), "
            f"got {shown(value)}; e.g. {name}=10, or None for never"
        )
    if value < 1:
        raise ValueError(f"{name} must be at least 1 (log every that many steps), got {value}")
    return every(int(value))
