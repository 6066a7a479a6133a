"""The one error shield of the live wing: an error of ours is reported once, the part that
raised switches itself off, and the user's training goes on.

Every hook gradwandb puts into a user's forward, backward or optimizer step runs its body
through a :class:`Shield`. :class:`~gradwandb.StopTraining` is the one exception let through:
it is raised on purpose.

>>> import warnings
>>> shield = Shield("gradwandb.Example", "examples are switched off")
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     shield.run(lambda: 1 / 0), shield.run(lambda: 2), shield.failed
(None, None, True)
>>> print(caught[0].message)  # doctest: +NORMALIZE_WHITESPACE
gradwandb.Example: internal error (ZeroDivisionError: division by zero); examples are
switched off and training goes on
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class StopTraining(RuntimeError):
    """Raised on purpose by gradwandb to stop a run; passes through every shield.

    The guard (``gradwandb.watch(..., guard=N)``) raises it from ``optimizer.step()`` (or from
    ``backward()`` without an optimizer) after N steps in a row with NaN/Inf gradients, every
    one of them skipped, so the weights are those from before the first bad step.
    """


class Shield:
    """Runs bodies until one raises; then warns once, calls ``on_fail`` and runs nothing more.

    ``who`` names the part in the warning, ``consequence`` says what stops working.
    """

    def __init__(
        self, who: str, consequence: str, on_fail: Callable[[], None] | None = None
    ) -> None:
        self.who = who
        self.consequence = consequence
        self.on_fail = on_fail
        self.failed = False

    def run(self, body: Callable[[], T]) -> T | None:
        """``body()``, or None once this shield has failed (or when ``body`` fails now)."""
        if self.failed:
            return None
        try:
            return body()
        except StopTraining:
            raise
        except Exception as exc:  # an error of ours must never stop the user's training
            self.trip(exc)
            return None

    def trip(self, exc: BaseException, where: str = "") -> None:
        """Report ``exc`` (once) and switch off; ``where`` adds context such as the step."""
        first = not self.failed
        self.failed = True
        if first:
            at = f" {where}" if where else ""
            warnings.warn(
                f"{self.who}: internal error{at} ({type(exc).__name__}: {exc}); "
                f"{self.consequence} and training goes on",
                RuntimeWarning,
                stacklevel=3,
            )
        if self.on_fail is not None:
            self.on_fail()
