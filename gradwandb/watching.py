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
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from gradwandb.clipping import ClipPolicy, as_policy
from gradwandb.keys import Keys
from gradwandb.schedules import ScheduleLike, as_schedule
from gradwandb.selection import ParamFilter, check_optimizer, parameter_info, select_parameters
from gradwandb.sinks import Sink
from gradwandb.tracker import Tracker

_TRACKERS: weakref.WeakKeyDictionary[nn.Module, Tracker] = weakref.WeakKeyDictionary()
# Per destination (a W&B run id, or a sink's identity): the tag each watched model got, so a
# model re-watched in the same run keeps its keys and a second model never takes the first's.
_TAGS: dict[str, weakref.WeakKeyDictionary[nn.Module, str | None]] = {}

NO_RUN = (
    "gradwandb.watch needs a W&B run to log to, and none is active: start one first with "
    "`run = wandb.init(project='my-project')` (set WANDB_MODE=offline to log without an "
    "account), then call gradwandb.watch(model, optimizer, run=run); or pass sink=MemorySink()"
)


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
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
) -> Tracker:
    """Watch ``model``'s gradients and log them to W&B at every optimizer step.

    Args:
        model: the module whose parameters to watch.
        optimizer: the optimizer that steps them. Statistics are taken in its step pre-hook,
            once per real step, on the accumulated (and AMP-unscaled) gradients. Without one,
            each backward pass counts as a step.
        run: the W&B run to log to; default the active ``wandb.run``.
        sink: log somewhere other than W&B (e.g. :class:`gradwandb.MemorySink`).
        log_every: log the global norm, clipping, non-finite count and per-layer L2 norms
            every this many steps (an int, a ``step -> bool``, or None). One pass.
        layers_every: also log mean|g|, max|g|, weight norms and update ratios (three passes
            and a copy of the weights).
        hist_every: also log gradient histograms. Each tier includes the ones before it.
        clip: a max global norm to clip to, or a :class:`ClipPolicy`. Clipping reuses the
            norms already computed and happens before the optimizer reads the gradients.
        params: which parameters: a name prefix, a list of prefixes, or ``(name, p) -> bool``.
        scaler: the ``torch.amp.GradScaler`` in use, to log its scale and skipped steps.
        name: a tag for this model's keys; a second model in one run gets its class name.

    Returns:
        The :class:`Tracker`; a context manager, or call ``.remove()``.
    """
    named = select_parameters(model, params)
    if optimizer is not None:
        check_optimizer(optimizer, named)
    log_schedule = as_schedule("log_every", log_every)
    stats_schedule = as_schedule("layers_every", layers_every)
    hist_schedule = as_schedule("hist_every", hist_every)
    policy = as_policy(clip)
    if scaler is not None and not callable(getattr(scaler, "step", None)):
        raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
    if name is not None and (not isinstance(name, str) or not name or "/" in name):
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")

    if sink is None:
        sink, destination = _wandb_sink(run)
    else:
        destination = f"sink-{id(sink)}"

    keys = Keys(_tag(destination, model, name))
    previous = _TRACKERS.get(model)
    if previous is not None:
        previous.remove()  # watching again replaces the old hooks, never doubles them
    tracker = Tracker(
        model,
        named,
        optimizer=optimizer,
        sink=sink,
        keys=keys,
        log_every=log_schedule,
        layers_every=stats_schedule,
        hist_every=hist_schedule,
        clip=policy,
        scaler=scaler,
        info=parameter_info(model, [n for n, _ in named]),
    )
    _TRACKERS[model] = tracker
    return tracker


def unwatch(model: nn.Module) -> None:
    """Remove the tracker watching ``model``, if any."""
    tracker = _TRACKERS.get(model)
    if tracker is not None:
        tracker.remove()


def _forget(tracker: Tracker) -> None:
    if _TRACKERS.get(tracker.model) is tracker:
        del _TRACKERS[tracker.model]


def _wandb_sink(run: Any) -> tuple[Sink, str]:
    import wandb

    from gradwandb.wandb_sink import WandbSink

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
