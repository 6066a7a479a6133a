"""**clipping** (warning): a clip that bites on nearly every step, far below 1.

Over the last ``clip_window`` logged steps that clip (``record.clip_threshold`` set, or a
coefficient under 1), a coefficient under ``clip_coef`` on at least ``clip_frac`` of them: the
clip scales every update by that coefficient, so it divides the effective learning rate by
~1/coefficient (clip=1e-3 against norms ~1 divides it by ~1000). The message suggests a
threshold from the pre-clip global norms seen: their 95th-99th percentile (the checklists'
rule for a fixed clip). A momentary dip of the coefficient that recovers is no finding.

O(1) per record (amortised; the window is short), O(history) once when it fires.
"""

from __future__ import annotations

import math
from collections import deque

from gradwandb.live.diagnosis.emit import Emitter, g
from gradwandb.live.diagnosis.thresholds import Thresholds
from gradwandb.live.record import StepRecord

HISTORY = 200  # pre-clip global norms kept for the suggested threshold


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile, interpolated linearly between order statistics (as numpy).

    >>> percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95)
    4.8
    """
    ordered = sorted(values)
    position = q / 100.0 * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


class ClippingRule:
    """The window of recent clip coefficients, and the recent pre-clip norms."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._window: deque[tuple[int, float]] = deque(maxlen=thresholds.clip_window)
        self._tight = 0  # coefficients under clip_coef in the window
        self._norms: deque[float] = deque(maxlen=HISTORY)

    def __call__(self, record: StepRecord, out: Emitter) -> None:
        """Judge ``record``'s clipping."""
        t = self.thresholds
        gn, coef = record.global_norm, record.clip_coef
        if math.isfinite(gn) and gn > 0.0:
            self._norms.append(gn)
        clipping = record.clip_threshold is not None or coef < 1.0
        if not clipping or not math.isfinite(coef):
            return
        if len(self._window) == self._window.maxlen and self._window[0][1] < t.clip_coef:
            self._tight -= 1
        self._window.append((record.step, coef))
        self._tight += coef < t.clip_coef
        if len(self._window) < t.clip_window or self._tight < t.clip_frac * t.clip_window:
            return
        if not out.fresh("clipping", None):
            return
        coefs = sorted(c for _, c in self._window)
        typical = coefs[len(coefs) // 2]
        since = next(step for step, c in self._window if c < t.clip_coef)
        tight, window = self._tight, len(self._window)
        norms = list(self._norms)
        threshold = record.clip_threshold

        def message() -> str:
            factor = 1.0 / typical if typical > 0.0 else math.inf
            at = f"clip={g(threshold)} " if threshold is not None else "the clip "
            text = (
                f"{at}scales {tight} of the last {window} logged steps since step {since} by "
                f"less than {g(t.clip_coef)} (median coefficient {g(typical)}, pre-clip norms "
                f"~{g(percentile(norms, 50))}): it divides the effective learning rate by "
                f"~{g(factor)}"
            )
            if norms:
                text += (
                    f"; the 95th-99th percentile of the {len(norms)} pre-clip norms seen is "
                    f"{g(percentile(norms, 95))}-{g(percentile(norms, 99))}, a max-norm that "
                    "bites only on the outliers"
                )
            return text

        out.emit("clipping", "warning", None, since, typical, message, remedy="clipping")
