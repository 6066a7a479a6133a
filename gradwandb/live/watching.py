"""``gradwandb.watch`` and ``gradwandb.unwatch``: argument checks, run binding, key tags.

>>> import torch, gradwandb
>>> model = torch.nn.Linear(4, 2)
>>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
>>> sink = gradwandb.MemorySink()
>>> with gradwandb.watch(model, optimizer, sink=sink) as tracker:
...     model(torch.randn(8, 4)).pow(2).mean().backward()
...     optimizer.step()
>>> sorted(k for k in sink.last() if k.startswith("grad/"))
['grad/clip_coef', 'grad/global_norm', 'grad/nonfinite']
>>> tracker.diagnosis().verdict, sink.summaries["gradwandb/verdict"]
('healthy', 'healthy')
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gradwandb import keys as K
from gradwandb.keys import Keys
from gradwandb.live import arguments as A
from gradwandb.live import distributed
from gradwandb.live.clip.policy import ClipPolicy, as_policy
from gradwandb.live.diagnosis import DiagnosisObserver, Thresholds
from gradwandb.live.monitors.activations import ActivationMonitor
from gradwandb.live.monitors.charts import ChartObserver
from gradwandb.live.monitors.forward_check import ForwardCheck
from gradwandb.live.monitors.through_time import BPTTMonitor
from gradwandb.live.schedules import ScheduleLike
from gradwandb.live.selection import (
    ParamFilter,
    parameter_info,
    select_parameters,
    unnamed_in_optimizers,
    unwrap,
    user_name,
)
from gradwandb.live.settings import describe
from gradwandb.live.sinks import Sink
from gradwandb.live.stats.builtin import BUILTIN, RESERVED
from gradwandb.live.stats.statistic import Statistic, check_statistics
from gradwandb.live.tracker import Tracker

_TRACKERS: weakref.WeakKeyDictionary[nn.Module, Tracker] = weakref.WeakKeyDictionary()
# Per destination (a W&B run id, or a sink's identity): the tag each watched model got, so a
# model re-watched in the same run keeps its keys and a second model never takes the first's.
_TAGS: dict[str, weakref.WeakKeyDictionary[nn.Module, str | None]] = {}
# Per destination: the step a model's last tracker reached, so watching it again goes on.
_LAST_STEP: dict[str, weakref.WeakKeyDictionary[nn.Module, int]] = {}

NO_RUN = (
    "gradwandb.watch needs a W&B run to log to, and none is active: start one first with "
    "`run = wandb.init(project='my-project')` (set WANDB_MODE=offline to log without an "
    "account), then call gradwandb.watch(model, optimizer, run=run); or pass sink=MemorySink()"
)


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    *,
    run: Any = None,
    sink: Sink | None = None,
    log_every: ScheduleLike | None = 1,
    layers_every: ScheduleLike | None = 10,
    hist_every: ScheduleLike | None = 100,
    clip: float | ClipPolicy | None = None,
    params: ParamFilter = None,
    scaler: Any = None,
    name: str | None = None,
    diagnose: bool | Thresholds = True,
    alerts: bool = True,
    guard: bool | int = False,
    bptt_every: ScheduleLike | None = None,
    bptt_modules: Sequence[str] | None = None,
    charts: bool = False,
    activations_every: ScheduleLike | None = None,
    statistics: Sequence[Statistic] | None = None,
) -> Tracker:
    """Watch ``model``'s gradients and log them to W&B at every optimizer step.

    Args:
        model: the module whose parameters to watch.
        optimizer: the optimizer that steps them. Statistics are taken in its step pre-hook,
            once per real step, on the accumulated (and AMP-unscaled) gradients. Without one,
            each backward pass counts as a step.
        run: the W&B run to log to; default the active ``wandb.run``.
        sink: log somewhere other than W&B (e.g. :class:`gradwandb.MemorySink`).
        log_every: log the global norm, clip coefficient and non-finite count every this
            many steps (an int, a ``step -> bool``, or None). One norm pass.
        layers_every: also log per parameter the L2 norm, mean and max abs(g), weight norm
            and update ratio (two more passes and a copy of the weights).
        hist_every: also log gradient histograms. Each tier includes the ones before it.
        clip: a max global norm to clip to, or a :class:`ClipPolicy`. Clipping reuses the
            norms already computed and happens before the optimizer reads the gradients.
        params: which parameters: a name prefix, a list of prefixes, or ``(name, p) -> bool``.
        scaler: the ``torch.amp.GradScaler`` in use, to log its scale and skipped steps.
        name: a tag for this model's keys; a second model in one run gets its class name.
        diagnose: run the diagnosis rules on every logged step (True, or your own
            :class:`gradwandb.Thresholds`): ``health/...`` signals join each row,
            ``tracker.diagnosis()`` gives the verdict and findings, and the run summary gets
            ``gradwandb/verdict`` and ``gradwandb/findings`` at the end. No extra host sync.
        alerts: send a W&B alert (``run.alert``) with the fix when diagnosis first finds
            exploding, vanishing, blocked or non-finite gradients in a layer.
        guard: skip every optimizer step whose gradients hold NaN/Inf (weights and optimizer
            state untouched, gradients cleared, ``guard/skipped`` logged) and go on; an int N
            also raises :class:`~gradwandb.StopTraining` after N such steps in a row. Costs
            one host sync per step (the global norm, before the optimizer step).
        bptt_every: for every nn.RNN, nn.LSTM and nn.GRU in the model, log per-timestep
            gradient norms and their summaries (``bptt/...``) every this many steps, the
            recurrent weights' spectra (``rnn/...``) every 100 and a timestep x step heatmap
            (``bptt/<module>/heatmap``) every 500; with ``diagnose`` the summaries feed the
            rules through time (vanishing and exploding per recurrent module). None
            (default): off; 10 costs about a quarter of a step on the seq2seq benchmark.
        bptt_modules: watch only these module paths through time; naming a module that is
            not recurrent (any module over [batch, time, features]) watches it too.
        activations_every: log activation health (``act/...``: saturated, dead and zero
            fractions, mean and std of every nn.Tanh, nn.Sigmoid, nn.ReLU, nn.LeakyReLU,
            nn.GELU and recurrent output) every this many steps; None (default): off.
        statistics: statistics of your own (:class:`gradwandb.Statistic`), computed and
            logged like the built-ins, in the same host transfer.
        charts: also log a gradient-flow chart (every 100 steps) and a layer x step heatmap
            of gradient norms (every 500) as images under ``charts/...``.

    Returns:
        The :class:`Tracker`; a context manager, or call ``.remove()``.
    """
    A.check_params(params)
    named = select_parameters(model, params)
    own = check_statistics(statistics, RESERVED)
    optimizers = A.check_optimizers(optimizer, named)
    log_every, log_schedule = A.check_interval("log_every", log_every)
    layers_every, stats_schedule = A.check_interval("layers_every", layers_every)
    hist_every, hist_schedule = A.check_interval("hist_every", hist_every)
    A.check_number("clip", clip)
    policy = as_policy(clip)
    A.check_scaler(scaler)
    name = A.check_name(name)
    diagnosing, thresholds = A.check_diagnose(diagnose)
    alerts = A.check_flag("alerts", alerts)
    guard = A.check_guard(guard)
    bptt_every, bptt_schedule = A.check_interval("bptt_every", bptt_every)
    bptt_modules = A.check_through_time(model, bptt_every, bptt_modules)
    activations_every, activations_schedule = A.check_interval(
        "activations_every", activations_every
    )
    A.check_activations(model, activations_every)
    charts = A.check_flag("charts", charts)
    A.check_sink(sink, alerts=alerts and diagnosing)
    if sink is None:
        A.check_run(run)
    layout = distributed.layout(model, named)  # several processes: which piece is whose
    rank = distributed.world()[0]

    if sink is None and rank > 0:  # rank 0 logs; the others compute the same numbers, silently
        sink, destination = distributed.silent_sink(run), f"rank-{rank}"
    elif sink is None:
        sink, destination = _wandb_sink(run)
    else:
        destination = f"sink-{id(sink)}"
    if layout is not None:
        rank_local = [("bptt_every", bptt_every), ("activations_every", activations_every)]
        distributed.note_rank_local([name for name, on in rank_local if on is not None])

    keys = Keys(_tag(destination, model, name))
    previous = _TRACKERS.get(model)
    if previous is not None:
        previous.remove()  # watching again replaces the old hooks, never doubles them
    steps_here = _LAST_STEP.get(destination)
    start_step = steps_here.get(model, 0) if steps_here is not None else 0  # same run: go on
    diagnosis = (
        DiagnosisObserver(
            sink,
            keys,
            thresholds,
            _layer_types(model, [n for n, _ in named]),
            alerts=alerts,
            watched=named,
        )
        if diagnosing
        else None
    )
    # names the module a forward NaN/Inf is born in (checked steps: activations_every's)
    check = ForwardCheck(model, every=activations_schedule, keys=keys) if diagnosing else None
    tracker = Tracker(
        model,
        named,
        optimizer=optimizers,
        sink=sink,
        keys=keys,
        log_every=log_schedule,
        layers_every=stats_schedule,
        hist_every=hist_schedule,
        clip=policy,
        scaler=scaler,
        info=parameter_info(model, [n for n, _ in named]),
        diagnosis=None if diagnosis is None else diagnosis.diagnosis,
        observe_loss=None if diagnosis is None else diagnosis.observe_loss,
        guard=guard,
        statistics=(*BUILTIN, *own, *([check.statistic] if check is not None else [])),
        reselect=_reselect(model, params, optimizers),
        start_step=start_step,
        distributed=layout,
    )
    sink.summary(
        {
            keys.scalar(K.SETTINGS): describe(
                optimizer=[type(o).__name__ for o in optimizers] or None,
                log_every=log_every,
                layers_every=layers_every,
                hist_every=hist_every,
                clip=policy,
                params=params,
                scaler=scaler is not None,
                tag=keys.tag,
                diagnose=diagnosing,
                alerts=alerts,
                guard=guard,
                bptt_every=bptt_every,
                bptt_modules=bptt_modules,
                activations_every=activations_every,
                charts=charts,
                statistics=[st.name for st in own],
            )
        }
    )
    activations: ActivationMonitor | None = None
    if activations_every is not None:  # before BPTT: its saturation feeds the rules in time
        activations = ActivationMonitor(
            model, every=activations_schedule, keys=keys, clock=lambda: tracker.step
        )
        tracker.add_observer(activations.attach())
        tracker.on_remove(activations.remove)
    if check is not None:  # after the activations: it adds to what they put in the record
        check.clock = lambda: tracker.step
        tracker.add_observer(check.attach())
        tracker.on_remove(check.remove)
    has_rnn = any(isinstance(m, nn.RNNBase) for m in model.modules())
    if bptt_every is not None and (has_rnn or bptt_modules is not None):
        monitor = BPTTMonitor(
            model,
            every=bptt_schedule,
            modules=bptt_modules,
            keys=keys,
            clock=lambda: tracker.step,
        )
        tracker.add_observer(monitor.attach())
        tracker.on_remove(monitor.remove)
    if diagnosis is not None:  # a JUDGE: it reads what the monitors put in the record
        tracker.add_observer(diagnosis)
    if charts:
        tracker.add_observer(ChartObserver(keys=keys))
    _TRACKERS[model] = tracker
    tracker.on_remove(lambda: _forget(tracker, destination))
    return tracker


def _layer_types(model: nn.Module, names: Sequence[str]) -> Mapping[str, str]:
    """Parameter name -> class name of the module that directly holds it, for ``names``.

    >>> _layer_types(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)), ["0.weight", "1.bias"])
    {'0.weight': 'Linear', '1.bias': 'LayerNorm'}
    """
    wanted = set(names)
    types: dict[str, str] = {}
    for prefix, module in unwrap(model).named_modules():
        prefix = user_name(prefix)
        for own, _ in module.named_parameters(recurse=False):
            full = f"{prefix}.{own}" if prefix else own
            if full in wanted:
                types.setdefault(full, type(module).__name__)
    return types


def _reselect(
    model: nn.Module, params: ParamFilter, optimizers: Sequence[torch.optim.Optimizer]
) -> Callable[[], list[tuple[str, nn.Parameter]]]:
    """How to find the watched parameters again once an optimizer gains a param group: the
    model's (by ``params``), and with no filter also those the optimizers hold besides."""

    def again() -> list[tuple[str, nn.Parameter]]:
        named = select_parameters(model, params)
        return named + (unnamed_in_optimizers(model, optimizers) if params is None else [])

    return again


def unwatch(model: nn.Module) -> None:
    """Remove the tracker watching ``model``, if any."""
    tracker = _TRACKERS.get(model)
    if tracker is not None:
        tracker.remove()


def _forget(tracker: Tracker, destination: str) -> None:
    """The tracker is gone: drop it, and remember its step for a re-watch in the same run."""
    if _TRACKERS.get(tracker.model) is tracker:
        del _TRACKERS[tracker.model]
    _LAST_STEP.setdefault(destination, weakref.WeakKeyDictionary())[tracker.model] = tracker.step


def _wandb_sink(run: Any) -> tuple[Sink, str]:
    import wandb

    from gradwandb.live.wandb_sink import WandbSink

    run = run if run is not None else wandb.run
    if run is None:
        raise RuntimeError(NO_RUN)
    if getattr(run, "_is_finished", False):
        raise RuntimeError(f"the W&B run {run.id} has finished; start a new one with wandb.init()")
    return WandbSink(run), f"run-{run.id}"


def _tag(destination: str, model: nn.Module, name: str | None) -> str | None:
    tags = _TAGS.setdefault(destination, weakref.WeakKeyDictionary())
    others = {t for m, t in tags.items() if m is not model}
    if name is not None:
        if name in others:
            raise ValueError(f"name {name!r} is already used by another model in this run")
        tags[model] = name
        return name
    if model in tags:
        return tags[model]
    tag: str | None = None
    if tags:
        base = type(model).__name__.lower()
        tag, i = base, 2
        while tag in others:
            tag, i = f"{base}_{i}", i + 1
    tags[model] = tag
    return tag
