"""Where rows go. A sink receives flat ``{key: value}`` rows tagged with the optimizer step and
knows nothing of statistics; values are floats, ints, :class:`Histogram` or :class:`Table`.
It also takes run-level summary values and alerts (a title, a text, a level).

:class:`MemorySink` keeps everything in lists, for tests and for programs that read the numbers
directly; :class:`gradwandb.live.wandb_sink.WandbSink` writes to a W&B run.

>>> sink = MemorySink()
>>> sink.log({"grad/global_norm": 0.5}, step=0)
>>> sink.log({"grad/clip_coef": 1.0}, step=0)
>>> sink.rows
[(0, {'grad/global_norm': 0.5, 'grad/clip_coef': 1.0})]
>>> sink.alert("gradwandb: NaN/Inf gradients", "step 3: 0.weight holds NaN", "ERROR")
>>> sink.alerts[0].level
'ERROR'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Histogram:
    """Bin counts and their ``len(counts) + 1`` edges."""

    counts: Sequence[float]
    edges: Sequence[float]

    def trimmed(self) -> Histogram:
        """The same histogram without its empty bins at either end (one bin at least)."""
        nonzero = [i for i, c in enumerate(self.counts) if c]
        if not nonzero:
            return self
        lo, hi = nonzero[0], nonzero[-1] + 1
        return Histogram(list(self.counts[lo:hi]), list(self.edges[lo : hi + 1]))


@dataclass(frozen=True)
class Table:
    """A small table: column names and rows."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True)
class Image:
    """A picture as PNG bytes (a chart), with an optional caption."""

    png: bytes
    caption: str | None = None


Value = float | int | str | Histogram | Table | Image

ALERT_LEVELS = ("INFO", "WARN", "ERROR")  # W&B's alert levels, mildest first


@dataclass(frozen=True)
class Alert:
    """An alert as a sink received it; ``level`` is one of :data:`ALERT_LEVELS`."""

    title: str
    text: str
    level: str


class Sink(Protocol):
    """What the tracker needs from a destination."""

    def log(self, row: Mapping[str, Value], step: int) -> None:
        """Record ``row`` for optimizer step ``step``; a later row with the same step merges."""

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run-level values (last write wins)."""

    def alert(self, title: str, text: str, level: str) -> None:
        """Raise an alert (a W&B alert: e-mail or Slack); ``level`` is INFO, WARN or ERROR."""

    def alive(self) -> bool:
        """False once the destination is closed (a finished run); the tracker then detaches."""

    def close(self) -> None:
        """The tracker is done with this sink; flush anything held back."""


class NullSink:
    """Drops everything: the sink of the ranks other than 0 in a job of several processes."""

    def log(self, row: Mapping[str, Value], step: int) -> None:
        pass

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def alert(self, title: str, text: str, level: str) -> None:
        pass

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        pass


@dataclass
class MemorySink:
    """Keeps rows in memory, merged per step, in step order of arrival."""

    rows: list[tuple[int, dict[str, Value]]] = field(default_factory=list)
    summaries: dict[str, Any] = field(default_factory=dict)
    finished: bool = False  # set it to play a destination that closed under the tracker
    alerts: list[Alert] = field(default_factory=list)

    def log(self, row: Mapping[str, Value], step: int) -> None:
        if self.rows and self.rows[-1][0] == step:
            self.rows[-1][1].update(row)
        else:
            self.rows.append((step, dict(row)))

    def summary(self, values: Mapping[str, Any]) -> None:
        self.summaries.update(values)

    def alert(self, title: str, text: str, level: str) -> None:
        if level not in ALERT_LEVELS:
            raise ValueError(f"alert level must be one of {ALERT_LEVELS}, got {level!r}")
        self.alerts.append(Alert(title, text, level))

    def alive(self) -> bool:
        return not self.finished

    def close(self) -> None:
        pass

    def series(self, key: str) -> list[tuple[int, Value]]:
        """Every ``(step, value)`` logged under ``key``."""
        return [(step, row[key]) for step, row in self.rows if key in row]

    def last(self) -> dict[str, Value]:
        """The most recent row (empty if none)."""
        return self.rows[-1][1] if self.rows else {}
