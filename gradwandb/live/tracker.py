"""The Tracker: one optimizer step in, one row out.

Per step: capture (the heartbeat) -> statistics on the device -> the non-finite guard and
clipping, reusing the same norm vector -> one host transfer ->
:class:`~gradwandb.live.record.StepRecord` -> observers (diagnosis first) -> alerts and the sink.

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

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from gradwandb import keys as K
from gradwandb.keys import Keys
from gradwandb.live.capture import BackwardEnd, HookSet, on_optimizer_step, wrap_method
from gradwandb.live.clip.policy import ClipPolicy
from gradwandb.live.diagnosis import Diagnoser, Diagnosis, Finding
from gradwandb.live.record import StepRecord, skip_row, to_row
from gradwandb.live.schedules import Schedule
from gradwandb.live.selection import ParameterInfo, Present, present
from gradwandb.live.sinks import Histogram, Sink, Value
from gradwandb.live.stats import kernels as S

Observer = Callable[[StepRecord], "Mapping[str, Value] | None"]


class StopTraining(RuntimeError):
    """Raised on purpose by gradwandb to stop a run; passes through the error shield.

    The guard (``gradwandb.watch(..., guard=N)``) raises it from ``optimizer.step()`` (or from
    ``backward()`` without an optimizer) after N steps in a row with NaN/Inf gradients, every
    one of them skipped, so the weights are those from before the first bad step.
    """


# Findings worth interrupting someone for, and the W&B alert level of each.
ALERT_LEVELS = {"nonfinite": "ERROR", "exploding": "ERROR", "vanishing": "WARN", "flow": "WARN"}
ALERT_TITLES = {
    "nonfinite": "NaN/Inf gradients",
    "exploding": "exploding gradients",
    "vanishing": "vanishing gradients",
    "flow": "gradient flow blocked",
}
MAX_ALERTS_PER_KIND = 3  # per tracker; each alert groups a step's new layers of one kind
_ALERT_LINES = 5  # findings spelled out in one alert's text; the rest are counted


@dataclass
class _Guard:
    """The non-finite guard: what it skipped, and after how many bad steps in a row to stop."""

    stop_after: int | None  # None: skip bad steps and never stop
    total: int = 0  # steps skipped so far
    in_a_row: int = 0  # bad steps since the last finite one
    first: int = 0  # the first step of the current run of bad ones
    culprits: dict[str, None] = field(default_factory=dict)  # their layers, in order

    def stop_message(self, step: int) -> str | None:
        """Why to stop after bad step ``step``, or None to go on."""
        if self.stop_after is None or self.in_a_row < self.stop_after:
            return None
        names = list(self.culprits)
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        span = f"step {step}" if self.first == step else f"steps {self.first}-{step}"
        return (
            f"gradwandb: {self.in_a_row} optimizer steps in a row had NaN/Inf gradients "
            f"({span}, guard={self.stop_after}), in: {shown}. Each was skipped, so the weights "
            f"and optimizer state are those from before step {self.first}. Look for what "
            "overflows in those layers (log or division near 0, a too high learning rate, "
            "fp16 without a GradScaler); lower the learning rate or clip (clip=1.0), resume "
            "from a checkpoint, or pass guard=True to skip bad steps without stopping"
        )


@dataclass(frozen=True)
class _Plan:
    """What one step does, cheapest tier first; each tier includes the ones before it."""

    log: bool  # global norm, clipping, non-finite count: one pass, tiny row
    layers: bool  # + per layer: L2 norm, mean|g|, max|g|, weight norm, update ratio
    hist: bool  # + histograms

    @property
    def anything(self) -> bool:
        return self.log


@dataclass
class _Pending:
    """Device-side results of a step between the pre-hook and the post-hook."""

    step: int
    plan: _Plan
    now: Present
    values: list[Tensor]
    norms: Tensor
    device: dict[str, Tensor] = field(default_factory=dict)
    snapshot: list[Tensor] | None = None
    skipped: bool = False  # the guard skipped this step (its gradients held NaN/Inf)
    stop: str | None = None  # the guard's reason to stop training after this step


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
        diagnoser: Diagnoser | None = None,
        alerts: bool = False,
        guard: bool | int = False,
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
        self._pending: _Pending | None = None
        self._bites: Tensor | None = None  # device count of steps on which clipping bit
        self._observers: list[Observer] = []
        self._hooks = HookSet()
        self._backward_end: BackwardEnd | None = None
        self._running: str | None = None  # name of the hook now executing, if any
        self._info_pending = True
        self._diagnoser = diagnoser
        self._verdict_due = False  # the diagnoser saw a step whose verdict is not written yet
        self._alerts = alerts and diagnoser is not None
        self._alerted: set[tuple[str, str | None]] = set()  # (kind, layer) already alerted
        self._alerts_sent: dict[str, int] = {}  # per kind
        self._guard = _Guard(None if guard is True else int(guard)) if guard else None
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
        if diagnoser is not None:
            self.add_observer(self._diagnose)
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
        return (self._diagnoser or Diagnoser()).diagnosis()

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(record)`` with the :class:`StepRecord` of every logged step.

        What it returns (a mapping of more keys, or None) joins that step's row.
        """
        self._observers.append(observer)

    def on_remove(self, undo: Callable[[], None]) -> None:
        """Call ``undo`` when the tracker is removed or switches itself off."""
        self._hooks.on_remove(undo)

    def remove(self) -> None:
        """Take every hook out, write the verdict into the run summary, stop logging.

        Safe to call twice.
        """
        self._active = False
        self._hooks.remove()
        try:
            if self._verdict_due and self.sink.alive():
                self._write_verdict()
        except Exception as exc:  # a sink failing at the end must not break the user's code
            self._fail(exc)
        self._verdict_due = False
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
        """The run is closing: write the verdict, then stop before anything else is logged.

        Runs inside W&B's ``finish()``, so nothing may escape from here.
        """
        try:
            if self._verdict_due:
                self._write_verdict()
        except Exception as exc:
            self._fail(exc)
        self._verdict_due = False
        try:
            self._detach()
        except Exception as exc:
            self._fail(exc)

    # -- the step -------------------------------------------------------------------------

    def _plan(self, k: int) -> _Plan:
        hist = self._hist_at(k)
        layers = hist or self._layers_at(k)
        return _Plan(log=layers or self._log_at(k), layers=layers, hist=hist)

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
        stats = S.grad_stats(values) if plan.layers else None
        norms = S.grad_norms(values) if stats is None else stats[S.NORM]
        total = S.global_norm(norms)
        pending = _Pending(k, plan, now, values, norms)
        if self._guard is not None and self._guard_trips(k, now, values, norms, total):
            pending.skipped = True
            pending.plan = replace(plan, log=True)  # a skipped step is always logged
            pending.stop = self._guard.stop_message(k)
        pending.device.update(total=total, nonfinite=S.nonfinite_flags(norms).sum())
        if stats is not None:
            pending.device["stats"] = stats
        if plan.hist and stats is not None:  # before clipping: show what arrived
            hist = S.histograms(values, stats[S.MAX_ABS])
            pending.device.update(
                hist_values=hist.values,
                hist_scale=hist.scale,
                hist_log10=hist.log10,
                hist_zeros=hist.zeros,
            )
        if plan.layers and self.optimizer is not None:
            pending.snapshot = [p.detach().clone() for p in now.params]
        if pending.skipped:
            self._drop_grads()  # after the reads above; the optimizer now skips the step
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

    def _post_step(self) -> None:
        pending, self._pending = self._pending, None
        k = self._step
        self._step += 1
        if pending is None or not pending.plan.anything:
            return
        self._stop = pending.stop  # raised by the shield once this step is logged
        if pending.plan.layers:
            params = pending.now.params
            if pending.snapshot is None:  # no optimizer: weights as they are
                pending.device["param_norm"] = S.grad_norms(params)
            else:  # weights before the step; the update is what the step added
                before = S.grad_norms(pending.snapshot)
                moved = S.grad_norms(
                    torch._foreach_sub([p.detach() for p in params], pending.snapshot)
                )
                pending.device["param_norm"] = before
                pending.device["update_ratio"] = moved / before.clamp_min(1e-30)
        host = S.to_host(pending.device)  # the one sync of this step
        record = self._record(k, pending, host)
        if self._guard is not None:
            record.guard_skipped = int(pending.skipped)
            record.guard_skipped_total = self._guard.total
        row = to_row(record, self.keys)
        for observer in self._observers:
            row.update(observer(record) or {})
        if self._diagnoser is not None:  # findings observers made (through time) this step
            late = self._diagnoser.flush()
            if late:
                if self._alerts:
                    self._alert(late)
                self._write_verdict()
        if self._info_pending:
            row[self.keys.scalar(K.PARAMS_TABLE)] = self._info.table
            self._info_pending = False
        self.sink.log(row, k)

    # -- the guard ------------------------------------------------------------------------

    def _guard_trips(
        self, k: int, now: Present, values: list[Tensor], norms: Tensor, total: Tensor
    ) -> bool:
        """Whether step ``k``'s gradients hold NaN/Inf; counts it. One host sync (the norm).

        A non-finite norm of finite gradients (a float32 overflow of the squares) is told
        apart by counting the bad elements, on that step only.
        """
        guard = self._guard
        assert guard is not None
        culprits: list[str] = []
        if not math.isfinite(float(total)):  # the guard's sync
            suspects = S.nonfinite_flags(norms).nonzero().flatten().tolist()
            counts = S.nonfinite_counts([values[i] for i in suspects])
            culprits = [
                self.names[now.index[i]] for i, c in zip(suspects, counts, strict=True) if c
            ]
        if not culprits:
            guard.in_a_row = 0
            return False
        if guard.in_a_row == 0:
            guard.first, guard.culprits = k, {}
        guard.in_a_row += 1
        guard.total += 1
        guard.culprits.update(dict.fromkeys(culprits))
        return True

    def _drop_grads(self) -> None:
        """Skip this step: clear every gradient the step would read (``.grad = None``).

        With an optimizer, every parameter it holds (watched or not); without one, every
        parameter of the model, so the user's own ``optimizer.step()`` skips them.
        """
        if self.optimizer is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
        else:
            params = list(self.model.parameters())
        for p in params:
            p.grad = None

    # -- diagnosis, alerts, the verdict ---------------------------------------------------

    def _diagnose(self, record: StepRecord) -> dict[str, Value]:
        """The diagnosis observer: feed the record, alert on new findings, return the signals."""
        assert self._diagnoser is not None
        new = self._diagnoser.update(record)
        self._verdict_due = True
        if new:
            if self._alerts:
                self._alert(new)
            self._write_verdict()  # now too, in case the run never finishes cleanly
        return {self.keys.scalar(key): v for key, v in self._diagnoser.health().items()}

    def _alert(self, findings: Sequence[Finding]) -> None:
        """One alert per kind among ``findings``, for the layers not alerted on before.

        At most :data:`MAX_ALERTS_PER_KIND` per kind; a failing alert switches alerts off
        (with a warning) and nothing else.
        """
        groups: dict[str, list[Finding]] = {}
        for f in findings:
            if f.severity != "error" or f.kind not in ALERT_LEVELS:
                continue  # warnings (spikes, dead or vanishing biases) do not page anyone
            if (f.kind, f.layer) not in self._alerted:
                self._alerted.add((f.kind, f.layer))
                groups.setdefault(f.kind, []).append(f)
        for kind, group in groups.items():
            if self._alerts_sent.get(kind, 0) >= MAX_ALERTS_PER_KIND:
                continue
            self._alerts_sent[kind] = self._alerts_sent.get(kind, 0) + 1
            tag = f" ({self.keys.tag})" if self.keys.tag else ""
            title = f"gradwandb: {ALERT_TITLES[kind]}{tag}"[:63]  # W&B: under 64 characters
            try:
                self.sink.alert(title, _alert_text(group), ALERT_LEVELS[kind])
            except Exception as exc:
                self._alerts = False
                warnings.warn(
                    f"gradwandb: sending an alert failed ({type(exc).__name__}: {exc}); "
                    "alerts are switched off, logging and training go on",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return

    def _write_verdict(self) -> None:
        """Put the verdict and the findings (each with its fix) into the run summary."""
        diagnosis = self.diagnosis()
        self.sink.summary(
            {
                self.keys.scalar(K.VERDICT): diagnosis.verdict,
                self.keys.scalar(K.FINDINGS): [_finding_line(f) for f in diagnosis.findings],
            }
        )

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

    def _record(self, k: int, pending: _Pending, host: dict[str, list[float]]) -> StepRecord:
        names = [self.names[i] for i in pending.now.index]
        n = len(names)
        record = StepRecord(step=k, names=names, norm=[], global_norm=host["total"][0])
        if "stats" in host:
            stats = host["stats"]
            numels = [p.numel() for p in pending.now.params]
            record.norm = stats[:n]
            record.mean_abs = [a / c for a, c in zip(stats[n : 2 * n], numels, strict=True)]
            record.max_abs = stats[2 * n :]
        elif host["nonfinite"][0] or record.global_norm == 0.0:
            # a bad step: name the culprits even off the per-layer schedule (second sync)
            record.norm = S.to_host({"norms": pending.norms})["norms"]
        if record.norm:
            self._check_norms(record, pending.values)
        if "coef" in host:
            record.clip_coef = host["coef"][0]
            record.clip_rate = host["bites"][0] / (k + 1)
        if "threshold" in host:
            record.clip_threshold = host["threshold"][0]
        record.clip_extras = {
            key.removeprefix("clip_"): v[0] for key, v in host.items() if key.startswith("clip_")
        }
        if "amp_scale" in host:
            record.amp_scale = host["amp_scale"][0]
            record.amp_overflow_skip = 0
        if pending.plan.layers:
            self._add_stats(record, pending, host)
        if pending.plan.hist:
            self._add_hist(record, pending, host)
        return record

    @staticmethod
    def _check_norms(record: StepRecord, values: list[Tensor]) -> None:
        """Second looks, on the rare steps that need one (each costs a pass and a sync).

        A non-finite norm (or max): count the NaN/Inf elements; a float32 overflow of a
        finite gradient's norm counts none and is recomputed. A norm of 0 may be squares that
        underflowed (when max|g| is non-zero, or unknown off stats steps): recompute it.
        """
        norm, top = record.norm, record.max_abs
        known = bool(top)
        bad = [i for i, x in enumerate(norm) if not (_finite(x) and (not known or _finite(top[i])))]
        counts = dict(zip(bad, S.nonfinite_counts([values[i] for i in bad]), strict=True))
        for i, c in counts.items():
            record.nonfinite_elements[record.names[i]] = c
        record.nonfinite_tensors = sum(1 for c in counts.values() if c)
        underflow = [i for i, x in enumerate(norm) if x == 0.0 and (not known or top[i] > 0)]
        redo = underflow + [i for i, c in counts.items() if c == 0]
        if redo:
            for i, exact in zip(redo, S.exact_norms([values[i] for i in redo]), strict=True):
                norm[i] = exact
            if record.nonfinite_tensors == 0:
                record.global_norm = math.sqrt(sum(x * x for x in norm))

    def _add_stats(
        self, record: StepRecord, pending: _Pending, host: dict[str, list[float]]
    ) -> None:
        for i, name in enumerate(record.names):
            record.nonfinite_elements.setdefault(name, 0)
            record.param_norm[name] = host["param_norm"][i]
            if "update_ratio" in host:
                record.update_ratio[name] = host["update_ratio"][i]

    def _add_hist(
        self, record: StepRecord, pending: _Pending, host: dict[str, list[float]]
    ) -> None:
        vb, lb = S.VALUE_BINS, S.LOG10_BINS
        log_edges = S.log10_edges()
        for i, (name, p) in enumerate(zip(record.names, pending.now.params, strict=True)):
            numel = p.numel()
            implicit_zeros = numel - pending.values[i].numel()  # a sparse gradient's
            zeros = host["hist_zeros"][i]
            counts = host["hist_values"][i * vb : (i + 1) * vb]
            counts[vb // 2] += implicit_zeros  # the bin that holds 0
            record.value_hist[name] = Histogram(counts, S.value_edges(host["hist_scale"][i]))
            logs = host["hist_log10"][i * lb : (i + 1) * lb]
            logs[0] -= zeros
            logs[-1] -= record.nonfinite_elements[name]
            record.log10_hist[name] = Histogram(logs, log_edges).trimmed()
            record.zero_frac[name] = (zeros + implicit_zeros) / numel


def _finding_line(finding: Finding) -> str:
    """A finding as one line of the run summary: its message, then its fix."""
    return f"{finding.message}; {finding.fix}"


def _alert_text(group: Sequence[Finding]) -> str:
    """The body of one alert: the findings (a few spelled out, the rest named) and the fixes."""
    lines = [f.message for f in group[:_ALERT_LINES]]
    rest = [f.layer or "the whole model" for f in group[_ALERT_LINES:]]
    if rest:
        lines.append(f"... and {len(rest)} more: {', '.join(rest[:20])}")
    lines.extend(dict.fromkeys(f.fix for f in group))  # each distinct fix once
    return "\n".join(lines)


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))
