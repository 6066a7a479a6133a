"""The Tracker: one optimizer step in, one row out.

Per step: the heartbeat (:mod:`~gradwandb.live.capture`) -> the statistics, measured once on
the device before any clipping (whoever clips: gradwandb's ``clip=``, the user's
``clip_grad_norm_`` seen by :mod:`~gradwandb.live.user_clip`) -> the non-finite guard and
gradwandb's own clipping, reusing the same norm vector -> the optimizer step -> one host
transfer -> :class:`~gradwandb.live.record.StepRecord` -> observers (monitors, diagnosis,
reports, by stage) -> the sink.

Cost model. A step on which nothing is scheduled and no clipping is set costs a counter
increment (and, with an optimizer, a check of each gradient's version counter at the end of
backward only when the next step is scheduled). With clipping, the norms and the in-place
scale run on the device with no host sync. A logged step moves all its results to the host in
one transfer (per device), after the optimizer step; a per-layer step adds its statistics to
that same transfer (and one copy of the watched weights, freed after the step). Only a step
whose gradients hold NaN/Inf pays a second pass, to count the bad elements. Without an
optimizer, a clip by hand after backward costs one more sync on logged steps (the coefficient
arrives after the row). The guard costs one sync per step (:mod:`~gradwandb.live.guard`).

Diagnosis reads the host numbers of logged steps only: no device work and no sync of its own.

An internal error never escapes into the user's backward or step: it is reported once, the
tracker switches itself off, and training goes on. :class:`StopTraining`, raised on purpose
(``guard=N``), is the one exception that goes through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from gradwandb import keys as K
from gradwandb.keys import Keys
from gradwandb.live import user_clip
from gradwandb.live.assembly import Pending, Plan, assemble
from gradwandb.live.capture import (
    BackwardEnd,
    HookSet,
    ModuleHook,
    OptimizerSteps,
    learn_run_order,
    scale_inside_step,
    wrap_method,
)
from gradwandb.live.clip.policy import ClipPolicy
from gradwandb.live.clip_listening import ClipListening
from gradwandb.live.diagnosis.findings import Diagnosis
from gradwandb.live.distributed import Layout, fsdp1_root, listen_fsdp1_clip
from gradwandb.live.guard import Guard, drop_grads, unwatched_grads
from gradwandb.live.record import REPORT, StepRecord, skip_row, to_row
from gradwandb.live.schedules import Schedule
from gradwandb.live.selection import ParameterInfo, present
from gradwandb.live.shield import Shield, StopTraining
from gradwandb.live.sinks import Sink, Value
from gradwandb.live.stats import kernels as S
from gradwandb.live.stats.builtin import BUILTIN, MAGNITUDES
from gradwandb.live.stats.statistic import GradientView, Statistic
from gradwandb.live.watched import Reselect, Watched

Observer = Callable[[StepRecord], "Mapping[str, Value] | None"]
_WIDE = (torch.float32, torch.float64)  # norms torch computed in these are ours to reuse


class Tracker(ClipListening):
    """Watches one model's gradients; made by :func:`gradwandb.watch`.

    Use it as a context manager, or call :meth:`remove` when done. ``tracker.step`` is the
    index of the next optimizer step. Records go to the sink and to observers, none are kept,
    which keeps memory flat over long runs.
    """

    def __init__(
        self,
        model: nn.Module,
        named: Sequence[tuple[str, nn.Parameter]],
        *,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None,
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
        reselect: Reselect | None = None,
        start_step: int = 0,
        observe_loss: Callable[[int, float | Tensor], None] | None = None,
        distributed: Layout | None = None,
    ) -> None:
        if isinstance(optimizer, torch.optim.Optimizer):
            optimizers = [optimizer]
        else:
            optimizers = list(optimizer or ())
        self.model = model
        self.optimizers = optimizers
        self.optimizer = optimizers[0] if optimizers else None
        self.sink = sink
        self.keys = keys
        self.clip = clip
        self.scaler = scaler
        self._watched = Watched(named, optimizers, reselect)
        self._log_at = log_every
        self._layers_at = layers_every
        self._hist_at = hist_every
        self._info = info
        self._step = start_step
        self._active = True
        self._shield = Shield(
            "gradwandb", "gradient tracking is switched off", on_fail=self._detach
        )
        self._pending: Pending | None = None
        self._measured = False  # this step's statistics are taken (pending or nothing to take)
        self._statistics = tuple(statistics)
        self._state: dict[str, dict[str, Any]] = {st.name: {} for st in self._statistics}
        self._bites: Tensor | None = None  # device count of steps on which clipping bit
        self._host_bites = 0  # the same, for clips seen after a step's row (no optimizer)
        self._observers: list[Observer] = []
        self._hooks = HookSet()
        self._backward_end: BackwardEnd | None = None
        self._steps: OptimizerSteps | None = None
        self._unseen_warned = False
        self._last_row: tuple[int, float] | None = None  # (step, clip coef) of the last row
        self._info_pending = True
        self._diagnosis = diagnosis  # the diagnosis observer's, when diagnosing
        self._observe_loss = observe_loss
        self._finished = False  # the observers' finish() was called
        self._guard = Guard(None if guard is True else int(guard)) if guard else None
        self._stop: str | None = None  # raised as StopTraining once the running hook is done
        self._dist = distributed  # several processes: pieces, weights, the one reduction

        sink.summary(
            {
                keys.scalar(K.PARAMS_TOTAL): info.total,
                keys.scalar(K.PARAMS_TRAINABLE): info.trainable,
                keys.scalar(K.PARAMS_FROZEN): info.frozen,
                keys.scalar(K.PARAM_ORDER): list(self.names),
            }
        )
        if optimizers:
            self._steps = OptimizerSteps(
                self._hooks,
                optimizers,
                begin=lambda: self._shielded(self._begin),
                end=lambda: self._shielded(self._end),
                abort=self._abort,
            )
            self._backward_end = BackwardEnd(self._hooks, lambda: self._shielded(self._landed))
        else:
            self._backward_end = BackwardEnd(self._hooks, lambda: self._shielded(self._whole_step))
        self._backward_end.refresh(self._params)
        self._hooks.add(
            "forward", model.register_forward_pre_hook(ModuleHook(self._before_forward))
        )
        if not isinstance(getattr(model, "_orig_mod", None), nn.Module):  # not under compile:
            # hooks inside a compiled region would be traced; there, registration order stays
            learn_run_order(self._hooks, model, lambda ran: self._shielded(lambda: self._ran(ran)))
        if scaler is not None:
            wrap_method(self._hooks, scaler, "step", self._scaler_step)
        self._hooks.on_remove(user_clip.listen(self))
        if distributed is not None and fsdp1_root(model):  # FSDP1's own clip: seen as torch's
            around = listen_fsdp1_clip(model, lambda: self.before_clip([], None), self.after_clip)
            wrap_method(self._hooks, model, "clip_grad_norm_", around)
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

    def observe_loss(self, loss: float | Tensor) -> None:
        """Tell diagnosis this step's loss (call it before ``optimizer.step()``): a NaN/Inf
        loss is reported at once, before the gradients it poisons. Pass ``loss.item()`` where
        you read it anyway; a tensor is read here (one host sync).

        >>> import math, torch, gradwandb
        >>> model = torch.nn.Linear(2, 1)
        >>> with gradwandb.watch(model, sink=gradwandb.MemorySink()) as tracker:
        ...     tracker.observe_loss(math.nan)
        >>> tracker.diagnosis().verdict
        'nonfinite'
        """
        if self._active and self._observe_loss is not None:
            self._shielded(
                lambda: self._observe_loss(self._step, loss) if self._observe_loss else None
            )

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(record)`` with the :class:`StepRecord` of every logged step.

        What it returns (a mapping of more keys, or None) joins that step's row. Observers run
        by their ``stage`` (monitors, then diagnosis, then the rest), then in the order added.
        """
        self._observers.append(observer)
        self._observers.sort(key=lambda o: getattr(o, "stage", REPORT))

    def on_remove(self, undo: Callable[[], None]) -> None:
        """Call ``undo`` when the tracker is removed or switches itself off."""
        self._hooks.on_remove(undo)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue this tracker's step index and clip rate.

        >>> import torch, gradwandb
        >>> model = torch.nn.Linear(2, 1)
        >>> with gradwandb.watch(model, sink=gradwandb.MemorySink()) as tracker:
        ...     model(torch.ones(1, 2)).sum().backward()
        >>> tracker.state_dict()
        {'step': 1, 'clip_bites': 0}
        """
        bites = int(float(self._bites)) if self._bites is not None else 0
        return {"step": self._step, "clip_bites": bites + self._host_bites}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (a resumed run's first step gets index ``step``)."""
        step, bites = state.get("step"), state.get("clip_bites", 0)
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(
                f"load_state_dict: 'step' must be a whole number >= 0, got {step!r}; pass what "
                "tracker.state_dict() returned"
            )
        if not isinstance(bites, int) or isinstance(bites, bool) or not 0 <= bites <= step:
            raise ValueError(f"load_state_dict: 'clip_bites' must be in [0, step], got {bites!r}")
        self._step = step
        self._bites, self._host_bites = None, bites

    def remove(self) -> None:
        """Take every hook out, finish the observers (diagnosis writes the verdict into the run
        summary), stop logging.

        Safe to call twice.
        """
        self._active = False
        self._hooks.remove()
        self._finish_observers()
        self.sink.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self._active else "removed"
        return f"<gradwandb.Tracker {type(self.model).__name__} step={self._step} {state}>"

    # -- the shield -----------------------------------------------------------------------

    def _shielded(self, body: Callable[[], None]) -> None:
        """Run a hook's body: an error of ours is reported once and switches tracking off."""
        if not self._active:
            return
        try:
            body()
        except StopTraining:
            raise
        except Exception as exc:  # an error of ours must never stop the user's training
            self._fail(exc)
        stop, self._stop = self._stop, None
        if stop is not None:  # the guard's, on purpose: the step was logged and skipped
            raise StopTraining(stop)

    def _fail(self, exc: Exception) -> None:
        self._shield.trip(exc, f"at step {self._step}")

    def _detach(self) -> None:
        self._active = False
        self._pending = None
        self._hooks.remove()

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

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        if self._active and self._backward_end is not None:
            self._backward_end.reset()  # a backward that raised never reached its end
            self._backward_end.refresh(self._params)  # parameters unfrozen since

    def _landed(self) -> None:
        """End of a backward (with an optimizer): remember the gradients' versions."""
        if not self._measured and self._plan(self._step).anything:
            self._watched.remember_versions()

    def _measure(self, given: Mapping[int, Tensor] | None = None) -> None:
        """Take this step's statistics, once, before anything clips the gradients."""
        if self._measured:
            return
        self._measured = True
        if not self.sink.alive():
            self._detach()
            return
        if self._watched.refresh():  # an optimizer gained a param group
            self._names_changed()
        k = self._step
        plan = self._plan(k)
        if not (plan.anything or self.clip is not None or self._guard is not None):
            return  # nothing scheduled: no work, no sync
        dist = self._dist
        now = present(self._params) if dist is None else dist.present(self._params)
        if not now.grads:
            return
        if given is None and self.optimizers and plan.anything:
            self._warn_unseen(self._watched.changed())
        values = [S.dense_values(g) for g in now.grads]
        scale = scale_inside_step(self.optimizers)  # a fused optimizer unscales after this
        if scale is not None:
            values = [v / scale.to(v.device) for v in values]  # clipping still acts on grads
        stats = S.grad_stats(values) if plan.layers else None  # L2, L1, max in one pass
        reducer = None if dist is None else dist.reducer(self._params, now)
        numels = (
            [p.numel() for p in now.params]
            if dist is None
            else dist.numels(self._params, now.index)
        )
        if stats is not None:
            norms = stats[S.NORM]
        elif (
            given is not None
            and reducer is None
            and scale is None
            and all(id(g) in given and given[id(g)].dtype in _WIDE for g in now.grads)
        ):
            norms = torch.stack([given[id(g)] for g in now.grads]).double()  # torch's own pass
        else:
            norms = S.grad_norms(values)
        norms = S.without_overflow(norms, values)
        names = [self.names[i] for i in now.index]
        skipped = self._guard is not None and self._guard.trips(
            k,
            names,
            values,
            norms,
            also=unwatched_grads(self.optimizers, self._params),
            agree=None if dist is None else dist.agree,
        )
        if skipped:
            plan = replace(plan, log=True)  # a skipped step is always logged
        extras: dict[str, Tensor] = {}
        if reducer is not None and (plan.anything or self.clip is not None):  # the one SUM
            params = now.params if plan.layers else None
            norms, stats, extras = reducer.measure(norms, values, stats, params, numels)
        view = GradientView(
            step=k,
            names=names,
            grads=values,
            params=list(now.params),
            norms=norms,
            numels=numels,
            tiers=plan.tiers,
            reducer=reducer,
        )
        if stats is not None:
            view.cached(MAGNITUDES, lambda: stats)
        view.preset(extras)  # reduced weight norms, std and mean
        pending = Pending(plan, now, view, skipped=skipped)
        if skipped and self._guard is not None:
            pending.stop = self._guard.stop_message(k)
        pending.device.update(total=S.global_norm(norms), nonfinite=S.nonfinite_flags(norms).sum())
        self._compute(pending, after_step=False)  # before clipping: what arrived
        self._pending = pending
        if skipped and self.optimizers:
            drop_grads(self.optimizers, self.model)  # every update of this step is skipped

    def _begin(self) -> None:
        """The optimizer is about to step: statistics (if no clip took them), own clipping."""
        self._measure()
        pending = self._pending
        if pending is None:
            return
        view, now = pending.view, pending.now
        if self.clip is not None and not pending.skipped:
            user = pending.device.get("coef")
            norms = view.norms if user is None else view.norms * user
            result = self.clip.clip_(now.grads, norms, S.global_norm(norms), now.params)
            coef = result.coef if user is None else result.coef * user
            pending.device["coef"] = coef
            if result.threshold is not None:
                pending.device["threshold"] = result.threshold
            for name, value in result.extras.items():
                pending.device[f"clip_{name}"] = value
        if "coef" in pending.device:
            bit = (pending.device["coef"] < 1.0).to(torch.float64)
            self._bites = bit if self._bites is None else self._bites + bit
            pending.device["bites"] = self._bites + self._host_bites
        if self.optimizers and any(
            st.after_step and pending.plan.runs(st) for st in self._statistics
        ):
            view.snapshot = [p.detach().clone() for p in now.params]
        scale = getattr(self.scaler, "_scale", None)
        if isinstance(scale, Tensor):
            pending.device["amp_scale"] = scale

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

    def _abort(self) -> None:
        """The optimizer's step raised: drop this step's work, log nothing for it."""
        self._pending = None
        self._measured = False

    def _end(self) -> None:
        pending, self._pending = self._pending, None
        self._measured = False
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
        self._last_row = (k, record.clip_coef)

    def _whole_step(self) -> None:
        """Fallback heartbeat (no optimizer): the end of a backward pass."""
        self._measure()
        skipped = self._pending is not None and self._pending.skipped
        try:
            if self._active:
                self._begin()
            if self._active:
                self._end()
        finally:
            if skipped:  # zeroed only now: the record had to see what the gradients held
                drop_grads(self.optimizers, self.model)

    def _remember_versions(self) -> None:
        self._watched.remember_versions()

    def _ran(self, modules: Sequence[nn.Module]) -> None:
        """The first forward told the order the modules run in: name parameters in it."""
        if self._watched.ran(modules):
            self._names_changed()

    def _names_changed(self) -> None:
        if self._backward_end is not None:
            self._backward_end.refresh(self._params)
        self.sink.summary({self.keys.scalar(K.PARAM_ORDER): list(self.names)})

    @property
    def names(self) -> list[str]:
        """The watched parameters' names, in the order their modules ran."""
        return self._watched.names

    @property
    def _params(self) -> list[nn.Parameter]:
        return self._watched.params

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

    def _scaler_step(
        self, original: Callable[..., Any], optimizer: Any, *args: Any, **kwargs: Any
    ) -> Any:
        before = self._step
        begun = self._steps.begun if self._steps is not None else False
        out = original(optimizer, *args, **kwargs)
        stepped = self._step != before or (self._steps is not None and self._steps.begun != begun)
        if optimizer is self.optimizer and self._active and not stepped:
            # GradScaler found Inf/NaN and skipped optimizer.step(): log the skip, not the grads.
            self._shielded(self._log_skip)
        return out

    def _log_skip(self) -> None:
        self._measured = False
        self._pending = None
        scale = getattr(self.scaler, "_scale", None)
        value = float(scale) if isinstance(scale, Tensor) else None
        self.sink.log(skip_row(self._step, self.keys, value), self._step)
        self._step += 1
