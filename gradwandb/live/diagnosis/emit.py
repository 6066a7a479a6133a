"""The one way a rule reports: :meth:`Emitter.emit` picks the fix for the finding's kind and
layer family, fits it to what the run already does, and reports each (kind, layer) once.

>>> out = Emitter({"0.weight": "Linear"})
>>> out.emit("exploding", "error", "0.weight", 3, 60.0, "gradient norm of '0.weight' is 60")
True
>>> out.emit("exploding", "error", "0.weight", 4, 70.0, "gradient norm of '0.weight' is 70")
False
>>> [(f.kind, f.layer, f.step) for f in out.findings], out.findings[0].fix[:29]
([('exploding', '0.weight', 3)], 'try: clip the global norm: gr')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from gradwandb.live.diagnosis import fixes
from gradwandb.live.diagnosis.findings import Finding
from gradwandb.live.record import StepRecord

Message = str | Callable[[], str]  # a callable is built only when the finding is new

_LISTED = 5  # names spelled out in a message; the rest are counted


class Emitter:
    """Collects the findings of one model; ``layer_types`` maps a parameter name to the class
    name of the module that owns it (it picks the fix)."""

    def __init__(self, layer_types: Mapping[str, str]) -> None:
        self._types = dict(layer_types)
        self._model_family = fixes.model_family(self._types)
        self._reported: set[tuple[str, str | None]] = set()
        self.findings: list[Finding] = []  # all, in the order found
        self.new: list[Finding] = []  # since the last :meth:`begin`
        self.setting = fixes.Setting()

    def begin(self, record: StepRecord) -> None:
        """Start the findings of ``record``: what it says the run does fits the fixes."""
        self.new = []
        self.setting = fixes.Setting(
            clip=record.clip_threshold, guard=record.guard_skipped is not None
        )

    def fresh(self, kind: str, layer: str | None) -> bool:
        """True until a finding of ``kind`` about ``layer`` is emitted."""
        return (kind, layer) not in self._reported

    def emit(
        self,
        kind: str,
        severity: str,
        layer: str | None,
        step: int,
        value: float,
        message: Message,
        *,
        remedy: str | None = None,
        family: str | None = None,
    ) -> bool:
        """Report a finding unless one of ``kind`` about ``layer`` was; True when it is new.

        The fix comes from table ``remedy`` (default: the kind's) for ``family`` (default: the
        layer's, or the whole model's when ``layer`` is None).
        """
        if not self.fresh(kind, layer):
            return False
        if family is None:
            family = self.family_of(layer)
        fix = fixes.fix_for(remedy or kind, family, self.setting)
        text = message if isinstance(message, str) else message()
        finding = Finding(kind, layer, step, value, text, fix, severity)
        self._reported.add((kind, layer))
        self.findings.append(finding)
        self.new.append(finding)
        return True

    def family_of(self, layer: str | None) -> str:
        if layer is None:
            return self._model_family
        return fixes.family(self._types.get(layer), layer)


def g(x: float) -> str:
    """A number in a message: three significant digits."""
    return f"{x:.3g}"


def names(listed: Sequence[str]) -> str:
    """Quoted names, the first few spelled out and the rest counted."""
    shown = ", ".join(f"'{n}'" for n in listed[:_LISTED])
    more = len(listed) - _LISTED
    return shown + (f" and {more} more" if more > 0 else "")
