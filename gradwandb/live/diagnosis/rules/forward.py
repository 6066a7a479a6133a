"""**nonfinite** (error) born in the forward pass, at the module that made it.

The forward check (:class:`~gradwandb.live.monitors.forward_check.ForwardCheck`) marks, on the
steps it checks, the first module whose output held NaN/Inf in the order the modules ran:
``record.activations[<module>][forward_nonfinite]``, whose value says what it saw
(:data:`~gradwandb.keys.FORWARD_MADE`: the module made it; :data:`~gradwandb.keys.FORWARD_WEIGHTS`:
its weights were already NaN/Inf; :data:`~gradwandb.keys.FORWARD_INPUT`: the model's input
was). A NaN made in the forward poisons every gradient of the step at once, which the rule on
gradients alone can only put down to the loss; this rule names the module. O(modules
reported) on records with activations.
"""

from __future__ import annotations

import math

from gradwandb import keys as K
from gradwandb.live.diagnosis import fixes
from gradwandb.live.diagnosis.emit import Emitter
from gradwandb.live.record import StepRecord


class ForwardRule:
    """Names the module where a step's NaN/Inf was born; remembers the last bad gradient."""

    def __init__(self) -> None:
        self.bad_step: int | None = None  # the last step whose gradients held NaN/Inf

    def saw_gradients(self, record: StepRecord) -> None:
        """Note whether ``record``'s gradients hold NaN/Inf (after judging it)."""
        if record.nonfinite_tensors or not math.isfinite(record.global_norm):
            self.bad_step = record.step

    def __call__(self, record: StepRecord, out: Emitter) -> bool:
        """Report the origin ``record`` names; True when it names one."""
        if not record.activations:
            return False
        for module, stats in record.activations.items():
            code = stats.get(K.FORWARD_NONFINITE)
            if code is None:
                continue
            self._emit(record, module, code, out)
            return True
        return False

    def _emit(self, record: StepRecord, module: str, code: float, out: Emitter) -> None:
        step, kind = record.step, record.module_types.get(module, "")
        what = f"'{module}' ({kind})" if kind else f"'{module}'"
        after = ""
        if self.bad_step is not None and self.bad_step < step:
            after = f" (checked on the step after NaN/Inf gradients at step {self.bad_step})"
        if code == K.FORWARD_WEIGHTS:
            text = (
                f"the forward of step {step} first went NaN/Inf at {what}, whose own weights "
                f"already hold NaN/Inf{after}: an earlier update wrote them, so every forward "
                "from here on is poisoned"
            )
            remedy = "weights_nonfinite"
        elif code == K.FORWARD_INPUT:
            text = f"the model's input holds NaN/Inf at step {step}{after}: check the data"
            remedy = "loss"
        else:
            text = (
                f"NaN/Inf born in the forward of {what} at step {step}{after}: its output is "
                "the first non-finite one in the order the modules ran (its weights and the "
                "model's input are finite), so every gradient of the step is NaN/Inf after it"
            )
            remedy = "forward"
        out.emit(
            "nonfinite",
            "error",
            module,
            step,
            code,
            text,
            remedy=remedy,
            family=fixes.family(kind or None, None),
        )
