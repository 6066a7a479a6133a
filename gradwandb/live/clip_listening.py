"""What a tracker does when the user clips: the statistics are taken before the clip, the
coefficient the clip applied is this step's, and a change of the gradients gradwandb did not
see is reported once. :mod:`gradwandb.live.user_clip` calls these methods.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from gradwandb import keys as K

if TYPE_CHECKING:
    from gradwandb.keys import Keys
    from gradwandb.live.assembly import Pending
    from gradwandb.live.sinks import Sink


class ClipListening:
    """The part of :class:`~gradwandb.live.tracker.Tracker` the clipping functions talk to."""

    if TYPE_CHECKING:  # provided by the tracker
        _active: bool
        _measured: bool
        _pending: Pending | None
        _step: int
        _bites: Tensor | None
        _host_bites: int
        _last_row: tuple[int, float] | None
        _unseen_warned: bool
        optimizers: list[torch.optim.Optimizer]
        sink: Sink
        keys: Keys

        @property
        def _params(self) -> list[nn.Parameter]: ...

        def _shielded(self, body: Callable[[], None]) -> None: ...
        def _measure(self, given: Mapping[int, Tensor] | None = None) -> None: ...
        def _remember_versions(self) -> None: ...

    # -- what the heartbeat and the clipping functions call -------------------------------

    def wants(self, params: Sequence[Tensor]) -> bool:
        """Whether a clip of ``params`` touches this tracker's parameters (user_clip)."""
        if not self._active:
            return False
        mine = {id(p) for p in self._params}
        return any(id(p) in mine for p in params)

    def before_clip(self, grads: Sequence[Tensor], norms: Sequence[Tensor] | None) -> None:
        """The user is about to clip: take this step's statistics now, pre-clip."""
        if self.optimizers:
            given = None if norms is None else dict(zip(map(id, grads), norms, strict=True))
            self._shielded(lambda: self._measure(given))

    def after_clip(self, coef: Tensor, threshold: float) -> None:
        """The user's clip scaled the gradients by ``coef``: that is this step's coefficient."""
        self._shielded(lambda: self._user_clipped(coef, threshold))

    def grads_changed(self) -> None:
        """A change gradwandb knows of (``GradScaler.unscale_``): not an unseen one."""
        if self._active and not self._measured:
            self._remember_versions()

    def _user_clipped(self, coef: Tensor, threshold: float) -> None:
        full = getattr(coef, "full_tensor", None)  # torch's clip of DTensor gradients
        if callable(full):
            coef = full()
        pending = self._pending
        if self.optimizers:
            if pending is None or pending.skipped:
                return
            previous = pending.device.get("coef")
            pending.device["coef"] = coef if previous is None else torch.minimum(previous, coef)
            pending.device["threshold"] = torch.tensor(threshold, dtype=torch.float64)
            return
        self._amend_clip(coef, threshold)  # no optimizer: this step's row is already out

    def _amend_clip(self, coef: Tensor, threshold: float) -> None:
        """Add a clip by hand, after the row of its step, to that row (one more sync)."""
        last = self._last_row
        if last is None or last[0] != self._step - 1:
            return
        k, own = last
        value = float(coef) * own
        self._host_bites += int(value < 1.0)
        bites = self._host_bites + (int(float(self._bites)) if self._bites is not None else 0)
        self.sink.log(
            {
                self.keys.scalar(K.STEP): k,
                self.keys.scalar(K.CLIP_COEF): value,
                self.keys.scalar(K.CLIP_THRESHOLD): threshold,
                self.keys.scalar(K.CLIP_RATE): bites / (k + 1),
            },
            k,
        )

    def _warn_unseen(self, changed: list[str]) -> None:
        if not changed or self._unseen_warned:
            return
        self._unseen_warned = True
        shown = ", ".join(changed[:5]) + (
            f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        )
        warnings.warn(
            f"gradwandb: the gradients of {shown} changed between the end of backward and "
            "optimizer.step() by something gradwandb does not see, so from this step on the "
            "logged numbers may be taken after that change (for instance after a clip). Call "
            "torch.nn.utils.clip_grad_norm_ / clip_grad_value_ through torch.nn.utils (not a "
            "copy imported before gradwandb.watch), or pass clip= to gradwandb.watch",
            RuntimeWarning,
            stacklevel=4,
        )
        self.sink.summary({self.keys.scalar(K.UNSEEN_GRAD_CHANGE): True})
