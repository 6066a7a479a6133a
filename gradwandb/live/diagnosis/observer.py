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

import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Real

import torch

from gradwandb import keys as K
from gradwandb.keys import Keys
from gradwandb.live.alerts import Alerter
from gradwandb.live.diagnosis.diagnoser import Diagnoser
from gradwandb.live.diagnosis.findings import Diagnosis
from gradwandb.live.diagnosis.thresholds import Thresholds
from gradwandb.live.record import JUDGE, StepRecord
from gradwandb.live.sinks import Sink, Value

Watched = Sequence[str] | Sequence[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]


class DiagnosisObserver:
    """The rules of :class:`Diagnoser` over a tracker's records, reported to ``sink``.

    ``keys`` are the tracker's (a tag goes into every key it writes), ``thresholds`` and
    ``layer_types`` go to the :class:`Diagnoser`, ``alerts`` says whether to send alerts.
    ``watched`` is every watched parameter, as ``(name, parameter)`` pairs (what
    ``named_parameters()`` gives; a mapping will do) or as names: the unused rule compares it
    with the names of each record (only the parameters that had a gradient). With the
    parameters it tells a frozen one (``requires_grad=False``, not a finding) from one that
    requires grad and gets none; with names only, it cannot, and says so.
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
        watched: Watched | None = None,
    ) -> None:
        self.sink = sink
        self.keys = keys
        names, trainable = _watched(watched)
        self.diagnoser = Diagnoser(thresholds, layer_types, watched=names, trainable=trainable)
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

    def observe_loss(self, step: int, value: float | torch.Tensor) -> None:
        """Tell diagnosis the loss of optimizer step ``step`` (the tracker never sees it).

        A NaN/Inf loss is a **nonfinite** finding for the whole model, reported (alert, run
        summary) the first time, before the gradients it poisons. Pass the number you log
        (``loss.item()``); a tensor is read here, one host sync, so only on steps where you
        read the loss anyway.

        >>> from gradwandb.live.sinks import MemorySink
        >>> sink = MemorySink()
        >>> observer = DiagnosisObserver(sink)
        >>> observer.observe_loss(3, float("nan"))
        >>> [(f.kind, f.layer, f.step) for f in observer.diagnosis().findings]
        [('nonfinite', None, 3)]
        >>> sink.summaries["gradwandb/verdict"]
        'nonfinite'
        """
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"observe_loss(step={step}, value=...): pass the loss as one number (e.g. "
                    f"loss.item()), got a tensor of shape {tuple(value.shape)}"
                )
            number = float(value.detach().reshape(()))
        elif isinstance(value, Real) and not isinstance(value, bool):
            number = float(value)
        else:
            raise TypeError(
                f"observe_loss(step={step}, value={value!r}): pass the loss as a number, e.g. "
                "loss.item()"
            )
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TypeError(f"observe_loss(step={step!r}, ...): step is an int >= 0")
        new = self.diagnoser.observe_loss(step, number)
        if new:
            self._due = True
            if self.alerter is not None:
                self.alerter.send(new)
            self._write()
        elif not math.isfinite(number):
            self._due = True

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


def _watched(
    watched: Watched | None,
) -> tuple[list[str] | None, Callable[[str], bool] | None]:
    """The watched names, and ``trainable(name)`` when the parameters are known."""
    if watched is None:
        return None, None
    if isinstance(watched, Mapping):
        pairs = list(watched.items())
    elif isinstance(watched, (str, bytes)) or not isinstance(watched, Sequence):
        raise TypeError(
            f"watched must be the watched parameters as (name, parameter) pairs or names, e.g. "
            f"list(model.named_parameters()), got {type(watched).__name__}"
        )
    elif all(isinstance(w, str) for w in watched):
        return [str(w) for w in watched], None
    else:
        pairs = list(watched)  # type: ignore[arg-type]
    if not all(
        isinstance(p, tuple)
        and len(p) == 2
        and isinstance(p[0], str)
        and isinstance(p[1], torch.Tensor)
        for p in pairs
    ):
        raise TypeError(
            "watched must be (name, parameter) pairs, e.g. list(model.named_parameters()), "
            "or a list of names"
        )
    params = dict(pairs)

    def trainable(name: str) -> bool:
        p = params.get(name)
        return p is None or p.requires_grad

    return list(params), trainable
