"""The Tracker: one optimizer step in, one row out.

Per step: capture (the heartbeat) -> statistics on the device -> clipping reusing the same norm
vector -> one host transfer -> :class:`~gradwandb.record.StepRecord` -> observers and the sink.

Cost model. A step on which nothing is scheduled and no clipping is set costs a counter
increment. With clipping, the norms and the in-place scale run on the device with no host
sync. A logged step moves all its results to the host in one transfer (per device), after the
optimizer step; a histogram step adds histograms, parameter norms and the update ratio to that
same transfer (and one copy of the watched weights, freed after the step). Only a step whose
gradients hold NaN/Inf pays a second pass, to count the bad elements.

An internal error never escapes into the user's backward or step: it is reported once, the
tracker switches itself off, and training goes on.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gradwandb import keys as K
from gradwandb import statistics as S
from gradwandb.capture import BackwardEnd, HookSet, on_optimizer_step, wrap_method
from gradwandb.clipping import ClipPolicy
from gradwandb.keys import Keys
from gradwandb.record import StepRecord, skip_row, to_row
from gradwandb.schedules import Schedule
from gradwandb.selection import ParameterInfo, Present, present
from gradwandb.sinks import Histogram, Sink

Observer = Callable[[StepRecord], None]


class StopTraining(RuntimeError):
    """Raised on purpose by gradwandb to stop a run; passes through the error shield."""


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

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(record)`` with the :class:`StepRecord` of every logged step."""
        self._observers.append(observer)

    def remove(self) -> None:
        """Take every hook out and stop logging. Safe to call twice."""
        self._active = False
        self._hooks.remove()
        self.sink.close()
        from gradwandb.watching import _forget

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
        """The run is closing: stop before anything is logged into a finished run."""
        self._detach()

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
        if not (plan.anything or self.clip is not None):
            return  # nothing scheduled: no work, no sync
        now = present(self._params)
        if not now.grads:
            return
        values = [S.dense_values(g) for g in now.grads]
        stats = S.grad_stats(values) if plan.layers else None
        norms = S.grad_norms(values) if stats is None else stats[S.NORM]
        total = S.global_norm(norms)
        pending = _Pending(k, plan, now, values, norms)
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
        if self.clip is not None:
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
        for observer in self._observers:
            observer(record)
        row = to_row(record, self.keys)
        if self._info_pending:
            row[self.keys.scalar(K.PARAMS_TABLE)] = self._info.table
            self._info_pending = False
        self.sink.log(row, k)

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


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))
