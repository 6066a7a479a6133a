"""Diagnosis: small rules over the stream of :class:`~gradwandb.live.record.StepRecord` s, read
along the data flow:

- :mod:`.thresholds`: :class:`Thresholds`, every limit the rules use;
- :mod:`.state`: the running state of the rules (weighted average, trend, streak);
- :mod:`.rules`: the rules by family (non-finite, global norm, per layer, flow, through time);
- :mod:`.emit` and :mod:`.fixes`: the one way a rule reports a finding, with the fix to try
  for its kind and layer type;
- :mod:`.findings`: :class:`Finding` (plain data, ``to_record``/``from_record``),
  :class:`Diagnosis`, :func:`verdict_of`;
- :mod:`.diagnoser`: :class:`Diagnoser`, the pure rules engine over records;
- :mod:`.observer`: :class:`DiagnosisObserver`, the tracker's observer that reports them
  (``health/...`` signals, alerts, the run summary).
"""

from gradwandb.live.diagnosis.diagnoser import Diagnoser
from gradwandb.live.diagnosis.findings import Diagnosis, Finding, verdict_of
from gradwandb.live.diagnosis.observer import DiagnosisObserver
from gradwandb.live.diagnosis.thresholds import Thresholds

__all__ = [
    "Diagnoser",
    "Diagnosis",
    "DiagnosisObserver",
    "Finding",
    "Thresholds",
    "verdict_of",
]
