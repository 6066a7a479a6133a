"""**nonfinite** (error): a step with NaN/Inf gradients, and the layer it started in.

The origin is named first: in backward order (the reverse of the forward order of
``record.names``) the first layer that holds NaN/Inf, i.e. the *last* culprit in forward
order. When every watched layer is non-finite at once, the loss (or the model output) itself
is probably NaN/Inf. Stateless; O(1) on a record with only the global scalars.
"""

from __future__ import annotations

import math

from gradwandb.live.diagnosis.emit import Emitter, g, names
from gradwandb.live.record import StepRecord


def culprits(record: StepRecord) -> list[str]:
    """The layers holding NaN/Inf, in forward order: by element count, else by norm."""
    if not record.norm and not record.nonfinite_elements:
        return []  # a record with only the global scalars: O(1)
    counts = record.nonfinite_elements
    if counts:
        found = [n for n in record.names if counts.get(n, 0) > 0]
        if found:
            return found
    return [n for n, x in zip(record.names, record.norm, strict=False) if not math.isfinite(x)]


def nonfinite(record: StepRecord, out: Emitter) -> bool:
    """Report the step's NaN/Inf gradients; True when it has any."""
    bad = culprits(record)
    if not (bad or record.nonfinite_tensors or not math.isfinite(record.global_norm)):
        return False
    step, counts = record.step, record.nonfinite_elements
    if bad and len(bad) == len(record.names) and len(bad) > 1:
        out.emit(
            "nonfinite",
            "error",
            None,
            step,
            float(len(bad)),
            f"every watched layer ({len(bad)}) has NaN/Inf gradients at once at step {step}: "
            "the loss (or the model output) itself is probably NaN/Inf",
            remedy="loss",
        )
    elif bad:
        origin = bad[-1]  # backward runs in reverse: the last one is hit first
        count = counts.get(origin, 0)

        def message() -> str:
            rest = list(reversed(bad[:-1]))
            what = f"{count} NaN/Inf elements" if count else "a NaN/Inf norm"
            text = (
                f"NaN/Inf gradients from step {step}, starting at '{origin}' ({what}): "
                "the first non-finite layer in backward order"
            )
            if rest:
                text += f"; then, in backward order: {names(rest)}"
            elif len(record.names) == 1:
                text += " (the only watched layer: the loss itself may be NaN/Inf)"
            return text

        out.emit("nonfinite", "error", origin, step, float(count), message)
    else:
        out.emit(
            "nonfinite",
            "error",
            None,
            step,
            record.global_norm,
            lambda: (
                f"the global gradient norm is {g(record.global_norm)} at step {step} "
                f"({record.nonfinite_tensors} non-finite tensors; no per-layer values on this "
                "step to name the layer)"
            ),
            remedy="loss",
        )
    return True
