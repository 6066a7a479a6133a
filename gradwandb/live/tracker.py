"""The Tracker: one optimizer step in, one row out.

Per step: capture (the heartbeat) -> statistics on the device -> the non-finite guard and
clipping, reusing the same norm vector -> one host transfer ->
:class:`~gradwandb.live.record.StepRecord` -> observers (monitors, diagnosis, reports) -> the sink.

Cost model. A step on which nothing is scheduled and no clipping is set costs a counter
increment. With clipping, the norms and the in-place scale run on the device with no host
sync. A logged step moves all its results to the host in one transfer (per device), after the
optimizer step; a histogram step adds histograms, parameter norms and the update ratio to that
same transfer (and one copy of the watched weights, freed after the step). Only a step whose
gradients hold NaN/Inf pays a second pass, to count the bad elements.

Diagnosis reads the host numbers of logged steps only: no device work and no sync of its own;
on a step with only the global scalars it does a constant amount of Python. Alerts and summary
writes happen only on a step with new findings, and at the end.

The non-finite guard (``guard=``) must know on the host, before the optimizer reads the
gradients, whether they are finite: with it on, *every* step computes the norms (one pass on
the device, as clipping does) and moves the global norm to the host (one sync, before the
optimizer step); a logged step still makes its own transfer after the step. When the global
norm is NaN/Inf, a second pass counts the bad elements (that step only). A bad step is skipped
by setting every ``.grad`` the optimizer holds to None: torch optimizers skip a parameter with
no gradient entirely, so weights, moments, step counts and weight decay stay as they were.

An internal error never escapes into the user's backward or step: it is reported once, the
tracker switches itself off, and training goes on. :class:`StopTraining`, raised on purpose
(``guard=N``), is the one exception that goes through.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from gradwandb import keys as K
from gradwandb.keys import Keys
from gradwandb.live.assembly import Pending, Plan, assemble
from gradwandb.live.capture import BackwardEnd, HookSet, on_optimizer_step, wrap_method
from gradwandb.live.clip.policy import ClipPolicy
from gradwandb.live.diagnosis.findings import Diagnosis
from gradwandb.live.guard import Guard, drop_grads
from gradwandb.live.record import StepRecord, skip_row, to_row
from gradwandb.live.schedules import Schedule
from gradwandb.live.selection import ParameterInfo, present
from gradwandb.live.shield import StopTraining
from gradwandb.live.sinks import Sink, Value
from gradwandb.live.stats import kernels as S
from gradwandb.live.stats.builtin import BUILTIN, MAGNITUDES
from gradwandb.live.stats.statistic import GradientView, Statistic

Observer = Callable[[StepRecord], "Mapping[str, Value] | None"]


class Tracker:
    """Watches one model's gradients; made by :func:`gradwandb.watch`.

    Use it as a context manager, or call :meth:`remove` when done. ``tracker.step`` is the
    index of the next optimizer step; ``tracker.records`` holds nothing (records go to the
    sink and to observers), which keeps memory flat over long runs.
    """

    def __init__(
        self,
        model: nn.Module,
        named: Sequence[tuple[str, nn.Parameter]],
        *,
        optimizer: torch.optim.Optimizer | None,
        sink: Sink,
        keys: Keys,
        log_every: Schedule,
        layers_every: Schedule,
        hist_every: Schedule,
        clip: ClipPolicy | None,
        scaler: Any | None,
        info: ParameterInfo,
        diagnosis: Callable[[], Diagnosis] | None = None,
        guard: bool | int = False,
        statistics: Sequence[Statistic] = BUILTIN,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.sink = sink
        self.keys = keys
        self.clip = clip
        self.scaler = scaler
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._log_at = log_every
        self._layers_at = layers_every
        self._hist_at = hist_every
        self._info = info
        self._step = 0
        self._active = True
        self._failed = False
        self._pending: Pending | None = None
        self._statistics = tuple(statistics)
        self._state: dict[str, dict[str, Any]] = {st.name: {} for st in self._statistics}
        self._bites: Tensor | None = None  # device count of steps on which clipping bit
        self._observers: list[Observer] = []
        self._hooks = HookSet()
        self._backward_end: BackwardEnd | None = None
        self._running: str | None = None  # name of the hook now executing, if any
        self._info_pending = True
        self._diagnosis = diagnosis  # the diagnosis observer's, when diagnosing
        self._finished = False  # the observers' finish() was called
        self._guard = Guard(None if guard is True else int(guard)) if guard else None
        self._stop: str | None = None  # raised as StopTraining once the running hook is done

        sink.summary(
            {
                keys.scalar(K.PARAMS_TOTAL): info.total,
                keys.scalar(K.PARAMS_TRAINABLE): info.trainable,
                keys.scalar(K.PARAMS_FROZEN): info.frozen,
                keys.scalar(K.PARAM_ORDER): list(self.names),
            }
        )
        if optimizer is not None:
            on_optimizer_step(
                self._hooks,
                optimizer,
                lambda: self._shielded("pre", self._pre_step),
                lambda: self._shielded("post", self._post_step),
            )
        else:
            self._backward_end = BackwardEnd(
                self._hooks, lambda: self._shielded(None, self._whole_step)
            )
            self._backward_end.refresh(self._params)
            # a parameter unfrozen later has no hook yet: look again before each forward
            refresh = self._backward_end.refresh
            self._hooks.add(
                "refresh", model.register_forward_pre_hook(lambda m, a: refresh(self._params))
            )
        if scaler is not None:
            wrap_method(self._hooks, scaler, "step", self._scaler_step)
        on_finish = getattr(sink, "on_finish", None)
        if callable(on_finish):
            on_finish(self._sink_finished)

    # -- public ---------------------------------------------------------------------------

    @property
    def step(self) -> int:
        """Index of the next optimizer step (the number of steps seen so far)."""
        return self._step

    @property
    def active(self) -> bool:
        """True while the tracker is hooked in and logging."""
        return self._active

    def diagnosis(self) -> Diagnosis:
        """The run's diagnosis so far: ``.verdict`` and ``.findings`` (each with its fix).

        Healthy and empty when diagnosis is off (``diagnose=False``) or nothing was logged.
        """
        if self._diagnosis is None:
            return Diagnosis("healthy", ())
        return self._diagnosis()

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(record)`` with the :class:`StepRecord` of every logged step.

        What it returns (a mapping of more keys, or None) joins that step's row.
        """
        self._observers.append(observer)

    def on_remove(self, undo: Callable[[], None]) -> None:
        """Call ``undo`` when the tracker is removed or switches itself off."""
        self._hooks.on_remove(undo)

    def remove(self) -> None:
        """Take every hook out, finish the observers (diagnosis writes the verdict into the run
        summary), stop logging.

        Safe to call twice.
        """
        self._active = False
        self._hooks.remove()
        self._finish_observers()
        self.sink.close()
        from gradwandb.live.watching import _forget

        _forget(self)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self._active else "removed"
        return f"<gradwandb.Tracker {type(self.model).__name__} step={self._step} {state}>"

    # -- the shield -----------------------------------------------------------------------

    def _shielded(self, hook: str | None, body: Callable[[], None]) -> None:
        if not self._active:
            return
        self._running = hook
        try:
            body()
        except StopTraining:
            raise
        except Exception as exc:  # an error of ours must never stop the user's training
            self._fail(exc)
        finally:
            self._running = None
        stop, self._stop = self._stop, None
        if stop is not None:  # the guard's, on purpose: the step was logged and skipped
            raise StopTraining(stop)

    def _fail(self, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            warnings.warn(
                f"gradwandb: internal error at step {self._step} ({type(exc).__name__}: {exc}); "
                "gradient tracking is switched off and training goes on",
                RuntimeWarning,
                stacklevel=2,
            )
        self._detach()

    def _detach(self) -> None:
        self._active = False
        self._pending = None
        self._hooks.remove(keep=self._running)

    def _sink_finished(self) -> None:
        """The run is closing: finish the observers, then stop before anything else is logged.

        Runs inside W&B's ``finish()``, so nothing may escape from here.
        """
        self._finish_observers()
        try:
            self._detach()
        except Exception as exc:
            self._fail(exc)

    # -- the step -------------------------------------------------------------------------

    def _plan(self, k: int) -> Plan:
        hist = self._hist_at(k)
        layers = hist or self._layers_at(k)
        return Plan(log=layers or self._log_at(k), layers=layers, hist=hist)

    def _pre_step(self) -> None:
        if not self.sink.alive():
            self._detach()
            return
        k = self._step
        plan = self._plan(k)
        self._pending = None
        if not (plan.anything or self.clip is not None or self._guard is not None):
            return  # nothing scheduled: no work, no sync
        now = present(self._params)
        if not now.grads:
            return
        values = [S.dense_values(g) for g in now.grads]
        stats = S.grad_stats(values) if plan.layers else None  # L2, L1, max in one pass
        norms = S.grad_norms(values) if stats is None else stats[S.NORM]
        total = S.global_norm(norms)
        names = [self.names[i] for i in now.index]
        skipped = self._guard is not None and self._guard.trips(k, names, values, norms)
        if skipped:
            plan = replace(plan, log=True)  # a skipped step is always logged
        view = GradientView(
            step=k,
            names=names,
            grads=values,
            params=list(now.params),
            norms=norms,
            numels=[p.numel() for p in now.params],
            tiers=plan.tiers,
        )
        if stats is not None:
            view.cached(MAGNITUDES, lambda: stats)
        pending = Pending(plan, now, view, skipped=skipped)
        if skipped and self._guard is not None:
            pending.stop = self._guard.stop_message(k)
        pending.device.update(total=total, nonfinite=S.nonfinite_flags(norms).sum())
        self._compute(pending, after_step=False)  # before clipping: what arrived
        if self.optimizer is not None and any(
            st.after_step and plan.runs(st) for st in self._statistics
        ):
            view.snapshot = [p.detach().clone() for p in now.params]
        if skipped:
            drop_grads(self.optimizer, self.model)  # the optimizer now skips the step
        elif self.clip is not None:
            result = self.clip.clip_(now.grads, norms, total, now.params)
            bit = (result.coef < 1.0).to(torch.float64)
            self._bites = bit if self._bites is None else self._bites + bit
            pending.device.update(coef=result.coef, bites=self._bites)
            if result.threshold is not None:
                pending.device["threshold"] = result.threshold
            for name, value in result.extras.items():
                pending.device[f"clip_{name}"] = value
        scale = getattr(self.scaler, "_scale", None)
        if isinstance(scale, Tensor):
            pending.device["amp_scale"] = scale
        self._pending = pending

    def _compute(self, pending: Pending, *, after_step: bool) -> None:
        """Run the scheduled statistics of one phase on the device (no sync)."""
        view = pending.view
        for statistic in self._statistics:
            if statistic.after_step != after_step or statistic.fn is None:
                continue
            if not pending.plan.runs(statistic):
                continue
            view.state = self._state[statistic.name]
            result = statistic.fn(view)
            if result is not None:
                pending.results[statistic.name] = result

    def _post_step(self) -> None:
        pending, self._pending = self._pending, None
        k = self._step
        self._step += 1
        if pending is None or not pending.plan.anything:
            return
        self._stop = pending.stop  # raised by the shield once this step is logged
        self._compute(pending, after_step=True)
        host = S.to_host(pending.transfer())  # the one sync of this step
        record = assemble(pending, host, self._statistics)
        if self._guard is not None:
            record.guard_skipped = int(pending.skipped)
            record.guard_skipped_total = self._guard.total
        row = to_row(record, self.keys)
        for observer in self._observers:
            row.update(observer(record) or {})
        if self._info_pending:
            row[self.keys.scalar(K.PARAMS_TABLE)] = self._info.table
            self._info_pending = False
        self.sink.log(row, k)

    # -- the end ---------------------------------------------------------------------------

    def _finish_observers(self) -> None:
        """Call ``finish()`` on every observer that has one, once (the tracker was removed or
        the run is finishing); an error there is reported and does not escape."""
        if self._finished:
            return
        self._finished = True
        for observer in self._observers:
            finish = getattr(observer, "finish", None)
            if not callable(finish):
                continue
            try:
                finish()
            except Exception as exc:  # a sink failing at the end must not break the user's code
                self._fail(exc)

    def _whole_step(self) -> None:
        """Fallback heartbeat (no optimizer): the end of a backward pass."""
        assert self._backward_end is not None
        self._backward_end.refresh(self._params)  # pick up parameters unfrozen since
        self._pre_step()
        if self._active:
            self._post_step()

    def _scaler_step(
        self, original: Callable[..., Any], optimizer: Any, *args: Any, **kwargs: Any
    ) -> Any:
        before = self._step
        out = original(optimizer, *args, **kwargs)
        if optimizer is self.optimizer and self._active and self._step == before:
            # GradScaler found Inf/NaN and skipped optimizer.step(): log the skip, not the grads.
            self._shielded(None, self._log_skip)
        return out

    def _log_skip(self) -> None:
        scale = getattr(self.scaler, "_scale", None)
        value = float(scale) if isinstance(scale, Tensor) else None
        self.sink.log(skip_row(self._step, self.keys, value), self._step)
        self._step += 1
