"""What diagnosis produces: :class:`Finding` s (plain data, one record each in the run
summary), the run's :class:`Diagnosis`, and :func:`verdict_of`.

>>> f = Finding("vanishing", "0.weight", 4, 2e-6, "gradient norm of '0.weight' ...", "try: ...",
...             "error")
>>> record = f.to_record()
>>> sorted(record) == sorted(FINDING_FIELDS), Finding.from_record(record) == f
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gradwandb.keys import FINDING_FIELDS, KINDS, SEVERITIES, VERDICTS

# The verdict each kind of *error* finding leads to; the others leave the run healthy.
_VERDICT_OF_KIND = {
    "nonfinite": "nonfinite",
    "exploding": "exploding",
    "vanishing": "vanishing",
    "flow": "vanishing",
}


@dataclass(frozen=True)
class Finding:
    """One problem: what (``kind``), where (``layer``, None for the whole model), since when
    (``step``), the number that tripped the rule (``value``), and the fix to try."""

    kind: str
    layer: str | None
    step: int
    value: float
    message: str
    fix: str
    severity: str

    def to_record(self) -> dict[str, Any]:
        """The finding as a record with exactly :data:`~gradwandb.keys.FINDING_FIELDS`, as the
        run summary's ``gradwandb/findings`` holds it (a NaN/Inf ``value`` is kept as is)."""
        return {name: getattr(self, name) for name in FINDING_FIELDS}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Finding:
        """The finding of a record written by :meth:`to_record` (e.g. read back from a run).

        >>> Finding.from_record({"kind": "spike", "severity": "warning"})
        Traceback (most recent call last):
        ...
        ValueError: a finding record needs the fields ...; this one lacks ['layer', 'step', ...]
        """
        if not isinstance(record, Mapping):
            raise TypeError(f"a finding record is a mapping of {FINDING_FIELDS}, got {record!r}")
        missing = [name for name in FINDING_FIELDS if name not in record]
        if missing:
            raise ValueError(
                f"a finding record needs the fields {FINDING_FIELDS}; this one lacks {missing}"
            )
        kind, severity = str(record["kind"]), str(record["severity"])
        if kind not in KINDS or severity not in SEVERITIES:
            raise ValueError(
                f"a finding record's kind is one of {KINDS} and its severity one of "
                f"{SEVERITIES}, got kind={kind!r}, severity={severity!r}"
            )
        layer = record["layer"]
        value = record["value"]
        return cls(
            kind=kind,
            layer=None if layer is None else str(layer),
            step=int(record["step"]),
            value=math.nan if value is None else float(value),
            message=str(record["message"]),
            fix=str(record["fix"]),
            severity=severity,
        )


@dataclass(frozen=True)
class Diagnosis:
    """The run so far: its verdict and every finding, in the order they were found."""

    verdict: str
    findings: tuple[Finding, ...]


def verdict_of(findings: Iterable[Finding]) -> str:
    """The worst verdict among the *error* findings: nonfinite > exploding > vanishing > healthy.

    >>> spike = Finding("spike", None, 3, 6.0, "", "", "warning")
    >>> flow = Finding("flow", "0.weight", 9, 3.5, "", "", "error")
    >>> verdict_of([spike]), verdict_of([spike, flow])
    ('healthy', 'vanishing')
    """
    worst = 0
    for f in findings:
        if f.severity == "error":
            worst = max(worst, VERDICTS.index(_VERDICT_OF_KIND.get(f.kind, "healthy")))
    return VERDICTS[worst]
