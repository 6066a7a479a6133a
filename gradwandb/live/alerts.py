"""Alerts: findings worth interrupting someone for, sent through the sink (``run.alert`` on
W&B), at most a few per kind and never twice for one (kind, layer).

>>> from gradwandb.live.diagnosis import Finding
>>> from gradwandb.live.sinks import MemorySink
>>> sink = MemorySink()
>>> alerter = Alerter(sink, tag="critic")
>>> boom = Finding("exploding", None, 0, 150.0, "global gradient norm 150", "try: clip", "error")
>>> alerter.send([boom]), alerter.send([boom])
(1, 0)
>>> sink.alerts[0].title, sink.alerts[0].level
('gradwandb: exploding gradients (critic)', 'ERROR')
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gradwandb.live.sinks import Sink

if TYPE_CHECKING:  # findings import nothing of alerts; alerts need only their type
    from gradwandb.live.diagnosis.findings import Finding

# Findings worth interrupting someone for, and the W&B alert level of each.
ALERT_LEVELS = {"nonfinite": "ERROR", "exploding": "ERROR", "vanishing": "WARN", "flow": "WARN"}
ALERT_TITLES = {
    "nonfinite": "NaN/Inf gradients",
    "exploding": "exploding gradients",
    "vanishing": "vanishing gradients",
    "flow": "gradient flow blocked",
}
MAX_ALERTS_PER_KIND = 3  # per tracker; each alert groups a step's new layers of one kind
TITLE_LIMIT = 63  # W&B wants a title under 64 characters
_ALERT_LINES = 5  # findings spelled out in one alert's text; the rest are counted


class Alerter:
    """Sends one alert per kind among a step's new *error* findings, for the layers not
    alerted on before; at most :data:`MAX_ALERTS_PER_KIND` per kind. A failing alert switches
    alerts off (with one warning) and nothing else. ``tag`` is the tracker's key tag."""

    def __init__(self, sink: Sink, tag: str | None = None) -> None:
        self.sink = sink
        self.tag = tag
        self.on = True
        self._alerted: set[tuple[str, str | None]] = set()  # (kind, layer) already alerted
        self._sent: dict[str, int] = {}  # per kind

    def send(self, findings: Sequence[Finding]) -> int:
        """Alert on ``findings``; the number of alerts sent."""
        if not self.on:
            return 0
        groups: dict[str, list[Finding]] = {}
        for f in findings:
            if f.severity != "error" or f.kind not in ALERT_LEVELS:
                continue  # warnings (spikes, dead or vanishing biases) do not page anyone
            if (f.kind, f.layer) not in self._alerted:
                self._alerted.add((f.kind, f.layer))
                groups.setdefault(f.kind, []).append(f)
        sent = 0
        for kind, group in groups.items():
            if self._sent.get(kind, 0) >= MAX_ALERTS_PER_KIND:
                continue
            self._sent[kind] = self._sent.get(kind, 0) + 1
            try:
                self.sink.alert(title(kind, self.tag), alert_text(group), ALERT_LEVELS[kind])
            except Exception as exc:  # a network error must not stop logging or training
                self.on = False
                warnings.warn(
                    f"gradwandb: sending an alert failed ({type(exc).__name__}: {exc}); "
                    "alerts are switched off, logging and training go on",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            sent += 1
        return sent


def title(kind: str, tag: str | None = None) -> str:
    """The alert's title, under 64 characters.

    >>> title("flow"), len(title("flow", "x" * 80))
    ('gradwandb: gradient flow blocked', 63)
    """
    suffix = f" ({tag})" if tag else ""
    return f"gradwandb: {ALERT_TITLES[kind]}{suffix}"[:TITLE_LIMIT]


def alert_text(group: Sequence[Finding]) -> str:
    """The body of one alert: the findings (a few spelled out, the rest named) and the fixes."""
    lines = [f.message for f in group[:_ALERT_LINES]]
    rest = [f.layer or "the whole model" for f in group[_ALERT_LINES:]]
    if rest:
        lines.append(f"... and {len(rest)} more: {', '.join(rest[:20])}")
    lines.extend(dict.fromkeys(f.fix for f in group))  # each distinct fix once
    return "\n".join(lines)
