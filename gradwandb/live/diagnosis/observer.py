"""Diagnosis as one observer of the tracker: :class:`DiagnosisObserver` reads each logged
step's record (after the monitors filled it: ``stage = JUDGE``), returns the ``health/...``
signals for the row, alerts on new findings, and keeps the run summary's verdict and findings
(records with :data:`~gradwandb.keys.FINDING_FIELDS`) up to date.

>>> from gradwandb.live.sinks import MemorySink
>>> sink = MemorySink()
>>> observer = DiagnosisObserver(sink)
>>> observer(StepRecord(step=0, names=["w"], norm=[], global_norm=150.0))["health/exploding"]
1.0
>>> sink.summaries["gradwandb/verdict"], sink.summaries["gradwandb/findings"][0]["kind"]
('exploding', 'exploding')
>>> [a.title for a in sink.alerts]
['gradwandb: exploding gradients']
"""

from __future__ import annotations

from collections.abc import Mapping

from gradwandb import keys as K
from gradwandb.keys import Keys
from gradwandb.live.alerts import Alerter
from gradwandb.live.diagnosis.diagnoser import Diagnoser
from gradwandb.live.diagnosis.findings import Diagnosis
from gradwandb.live.diagnosis.thresholds import Thresholds
from gradwandb.live.record import JUDGE, StepRecord
from gradwandb.live.sinks import Sink, Value


class DiagnosisObserver:
    """The rules of :class:`Diagnoser` over a tracker's records, reported to ``sink``.

    ``keys`` are the tracker's (a tag goes into every key it writes), ``thresholds`` and
    ``layer_types`` go to the :class:`Diagnoser`, ``alerts`` says whether to send alerts.
    """

    stage = JUDGE

    def __init__(
        self,
        sink: Sink,
        keys: Keys = Keys(),  # noqa: B008  (frozen, immutable)
        thresholds: Thresholds | None = None,
        layer_types: Mapping[str, str] | None = None,
        *,
        alerts: bool = True,
    ) -> None:
        self.sink = sink
        self.keys = keys
        self.diagnoser = Diagnoser(thresholds, layer_types)
        self.alerter = Alerter(sink, keys.tag) if alerts else None
        self._due = False  # a step was judged whose verdict is not in the summary yet

    def __call__(self, record: StepRecord) -> dict[str, Value]:
        """Judge ``record``; alert on and write down what is new; the row's health signals."""
        found = self.diagnoser.step_rules(record)
        late = self.diagnoser.time_rules(record)
        self._due = True
        for new in (found, late):  # one alert per kind for each: the gradients, then in time
            if new and self.alerter is not None:
                self.alerter.send(new)
        if found or late:
            self._write()  # now too, in case the run never finishes cleanly
        return dict(self.diagnoser.health_row(self.keys))

    def finish(self) -> None:
        """Write the final verdict and findings into the run summary (once a step was judged,
        while the sink is alive)."""
        due, self._due = self._due, False
        if due and self.sink.alive():
            self._write()

    def diagnosis(self) -> Diagnosis:
        """The verdict of the run so far and all its findings."""
        return self.diagnoser.diagnosis()

    def _write(self) -> None:
        diagnosis = self.diagnoser.diagnosis()
        self.sink.summary(
            {
                self.keys.scalar(K.VERDICT): diagnosis.verdict,
                self.keys.scalar(K.FINDINGS): [f.to_record() for f in diagnosis.findings],
            }
        )
