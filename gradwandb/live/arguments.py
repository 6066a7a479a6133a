"""The checks of :func:`gradwandb.watch`'s arguments, all made before anything is hooked.

Each check names the argument, says what it got (a tensor or an array by its type and shape,
never its values) and how to fix it, so a wrong argument never surfaces later as an obscure
error from deep inside, or as a tracker that silently does nothing.

>>> check_name("encoder")
'encoder'
>>> check_name("   ")  # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
ValueError: name must be a non-empty tag for this model's keys (letters, ...
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from gradwandb.live.diagnosis import Thresholds
from gradwandb.live.monitors.activations import kind_of
from gradwandb.live.monitors.sequence_capture import RECURRENT
from gradwandb.live.schedules import Schedule, ScheduleLike, as_schedule
from gradwandb.live.selection import check_optimizer

_SHOWN_CHARS = 60  # a repr longer than this is shown by its type (and shape) only
_SINK_METHODS = ("log", "summary", "alive", "close")
_SCALER_METHODS = ("scale", "unscale_", "step", "update", "get_scale")
# Modules whose input is token ids or offsets: nothing flows back to it through time.
_INTEGER_INPUT = (nn.Embedding, nn.EmbeddingBag)


def shown(value: object) -> str:
    """``value`` as an error message shows it: its repr when short, else its type (a tensor or
    an array with its shape and dtype), so a message never prints a tensor whole.

    >>> shown(3), shown("sgd")
    ('3 (int)', "'sgd' (str)")
    >>> shown(torch.zeros(100, 3))
    'a Tensor of shape (100, 3), dtype float32'
    >>> shown(torch.tensor(2.0)), shown(object())
    ('a 0-dim Tensor (dtype float32)', 'a object')
    """
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None and not isinstance(value, numbers.Number):
        kind = type(value).__name__
        dims = tuple(int(d) for d in shape)
        dt = str(dtype).removeprefix("torch.")
        if not dims:
            return f"a 0-dim {kind} (dtype {dt})"
        return f"a {kind} of shape {dims}, dtype {dt}"
    text = repr(value)
    if len(text) > _SHOWN_CHARS or " object at 0x" in text:
        return f"a {type(value).__name__}"
    return f"{text} ({type(value).__name__})"


def whole_number(value: object) -> bool:
    """True for an int-like value that is not a bool (``numpy.int64`` too).

    >>> import numpy as np
    >>> whole_number(3), whole_number(np.int64(3)), whole_number(True), whole_number(3.0)
    (True, True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_flag(argument: str, value: object) -> bool:
    """An on/off argument (``alerts``, ``charts``).

    >>> check_flag("charts", True)
    True
    >>> check_flag("charts", "yes")
    Traceback (most recent call last):
        ...
    TypeError: charts must be True or False, got 'yes' (str)
    """
    if not isinstance(value, bool):
        raise TypeError(f"{argument} must be True or False, got {shown(value)}")
    return value


def check_name(name: object) -> str | None:
    """The tag for this model's keys: None, or a non-blank string without '/'.

    >>> check_name(None) is None
    True
    >>> check_name("a/b")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: name must not contain '/' (it separates the parts of a key), ...
    """
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(
            f"name must be a string (a tag for this model's keys), got {shown(name)}; "
            "e.g. name='encoder', or leave it out"
        )
    if not name.strip():
        raise ValueError(
            "name must be a non-empty tag for this model's keys (letters, digits, '_', '-'), "
            f"got {name!r}; e.g. name='encoder', or leave it out"
        )
    if "/" in name:
        raise ValueError(
            "name must not contain '/' (it separates the parts of a key), "
            f"got {name!r}; e.g. name='encoder'"
        )
    return name


def check_diagnose(diagnose: object) -> tuple[bool, Thresholds | None]:
    """Whether to diagnose, and with which thresholds (None: the defaults).

    >>> check_diagnose(True), check_diagnose(False)
    ((True, None), (False, None))
    """
    if isinstance(diagnose, Thresholds):
        return True, diagnose
    if isinstance(diagnose, bool):
        return diagnose, None
    raise TypeError(
        f"diagnose must be True, False or a gradwandb.Thresholds, got {shown(diagnose)}; "
        "e.g. diagnose=Thresholds(...) to change a threshold"
    )


def check_guard(guard: object) -> bool | int:
    """The guard: True/False, or N >= 1 (stop after N bad steps in a row), as a plain int.

    >>> import numpy as np
    >>> check_guard(True), check_guard(np.int64(3))
    (True, 3)
    >>> check_guard(0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: guard=N stops training after N steps in a row with NaN/Inf ...
    """
    if isinstance(guard, bool):
        return guard
    if not whole_number(guard):
        raise TypeError(
            "guard must be True (skip steps with NaN/Inf gradients), False, or a whole number "
            f"N (skip them, and stop after N in a row), got {shown(guard)}"
        )
    assert isinstance(guard, numbers.Integral)
    if guard < 1:
        raise ValueError(
            "guard=N stops training after N steps in a row with NaN/Inf gradients, so N must be "
            f"at least 1, got {guard}; pass guard=True to skip such steps and never stop"
        )
    return int(guard)


def check_params(params: object) -> None:
    """``params``: None, a name prefix, a list of prefixes, or ``(name, p) -> bool``.

    >>> check_params(["encoder.", "decoder."])
    >>> check_params(5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    TypeError: params must be a name prefix (e.g. 'encoder.'), a list of ...
    """
    if params is None or isinstance(params, str) or callable(params):
        return
    fix = (
        "params must be a name prefix (e.g. 'encoder.'), a list of prefixes, or a predicate "
        "(name, parameter) -> bool, got {}; or leave it out to watch every parameter"
    )
    if isinstance(params, torch.Tensor) or not isinstance(params, Sequence):
        raise TypeError(fix.format(shown(params)))
    if not params:
        raise ValueError("params=[] names no parameter: pass prefixes, or None to watch all")
    for item in params:
        if not isinstance(item, str):
            what = "a Parameter" if isinstance(item, torch.Tensor) else shown(item)
            raise TypeError(
                fix.format(f"a list holding {what}")
                + " (to watch some tensors, select them by name: params=['fc.'])"
            )


def check_optimizers(
    optimizer: object, named: Sequence[tuple[str, nn.Parameter]]
) -> list[torch.optim.Optimizer]:
    """The optimizers to watch: one, several (stepping the same backward), or none.

    >>> model = nn.Linear(2, 1)
    >>> check_optimizers(None, list(model.named_parameters()))
    []
    >>> check_optimizers([], list(model.named_parameters()))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: optimizer=[] holds no optimizer: pass the optimizer (or a list ...
    """
    if optimizer is None:
        return []
    if isinstance(optimizer, str):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {shown(optimizer)}: gradwandb "
            "does not build one; pass the one your loop steps, e.g. "
            "opt = torch.optim.SGD(model.parameters(), lr=0.1); gradwandb.watch(model, opt)"
        )
    if isinstance(optimizer, (list, tuple)):
        if not optimizer:
            raise ValueError(
                "optimizer=[] holds no optimizer: pass the optimizer (or a list of those that "
                "step the same backward), or None to count each backward as a step"
            )
        for item in optimizer:
            if not isinstance(item, torch.optim.Optimizer):
                raise TypeError(
                    f"optimizer: the list holds {shown(item)}, not a torch.optim.Optimizer; "
                    "pass only the optimizers your loop steps"
                )
            check_optimizer(item, named)
        if len({id(o) for o in optimizer}) != len(optimizer):
            raise ValueError("optimizer: the list holds the same optimizer twice; pass it once")
        return list(optimizer)
    check_optimizer(optimizer, named)
    assert isinstance(optimizer, torch.optim.Optimizer)
    return [optimizer]


def check_scaler(scaler: object) -> None:
    """``scaler``: None or the ``torch.amp.GradScaler`` the loop uses.

    >>> check_scaler(torch.amp.GradScaler("cpu", enabled=False))
    >>> check_scaler("amp")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    TypeError: scaler must be the torch.amp.GradScaler your loop uses, got ...
    """
    if scaler is None:
        return
    if not all(callable(getattr(scaler, name, None)) for name in _SCALER_METHODS):
        hint = ""
        if isinstance(scaler, torch.optim.lr_scheduler.LRScheduler):
            hint = " (that is a learning-rate scheduler, which gradwandb does not need)"
        raise TypeError(
            f"scaler must be the torch.amp.GradScaler your loop uses, got {shown(scaler)}{hint}"
            "; pass scaler=torch.amp.GradScaler() (the one you call scaler.step(optimizer) on), "
            "or leave it out"
        )


def check_sink(sink: object, *, alerts: bool) -> None:
    """``sink``: None (log to W&B) or an object with the methods of :class:`gradwandb.Sink`.

    >>> from gradwandb.live.sinks import MemorySink
    >>> check_sink(MemorySink(), alerts=True)
    >>> check_sink(object(), alerts=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    TypeError: sink must have the methods log, summary, alive, close, alert of ...
    """
    if sink is None:
        return
    needed = _SINK_METHODS + (("alert",) if alerts else ())
    missing = [m for m in needed if not callable(getattr(sink, m, None))]
    if missing:
        raise TypeError(
            f"sink must have the methods {', '.join(needed)} of gradwandb.Sink; "
            f"{type(sink).__name__} lacks {', '.join(missing)}; pass sink=gradwandb.MemorySink(), "
            "or leave sink out to log to the W&B run"
        )


def check_run(run: object) -> None:
    """``run``: None (the active ``wandb.run``) or the object ``wandb.init()`` returned.

    >>> check_run(None)
    >>> check_run("user/project/abc123")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    TypeError: run must be the W&B run object wandb.init() returned, got ...
    """
    if run is None:
        return
    if isinstance(run, str) or not all(
        hasattr(run, attribute) for attribute in ("id", "log", "summary")
    ):
        raise TypeError(
            f"run must be the W&B run object wandb.init() returned, got {shown(run)}; "
            "a run's name or path cannot be logged to: pass run = wandb.init(...) itself, "
            "or leave run out to use the active run"
        )


def check_number(argument: str, value: object) -> None:
    """A numeric argument given as a tensor or array is refused with its shape, not its values
    (``clip=torch.tensor(1.0)``: pass ``clip=1.0``); anything else is left to its own check.

    >>> check_number("clip", 1.0)
    >>> check_number("clip", torch.ones(3))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    TypeError: clip must be a plain Python number, got a Tensor of shape (3,), ...
    """
    if isinstance(value, numbers.Number) or not hasattr(value, "shape"):
        return
    raise TypeError(
        f"{argument} must be a plain Python number, got {shown(value)}; pass e.g. "
        f"{argument}=1.0 (for a one-element tensor t, {argument}=t.item())"
    )


def check_through_time(
    model: nn.Module, bptt_every: object, bptt_modules: object
) -> list[str] | None:
    """``bptt_every`` and ``bptt_modules`` together; the module paths to watch (None: every
    recurrent module).

    Through-time tracking that would watch nothing is an error, not a no-op: ``bptt_every``
    on a model with no nn.RNN/LSTM/GRU (and no ``bptt_modules``), ``bptt_modules`` without
    ``bptt_every``, and a named module that is an embedding (its input is token ids, through
    which no gradient flows).

    >>> check_through_time(nn.GRU(2, 3), 10, None) is None
    True
    >>> check_through_time(nn.Linear(2, 3), 10, None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: bptt_every=10 tracks gradients through time in nn.RNN, nn.LSTM ...
    """
    if bptt_modules is None:
        if bptt_every is not None and not any(isinstance(m, RECURRENT) for m in model.modules()):
            raise ValueError(
                f"bptt_every={bptt_every if whole_number(bptt_every) else '...'} tracks "
                "gradients through time in nn.RNN, nn.LSTM and nn.GRU modules, and "
                f"{type(model).__name__} has none; leave bptt_every out, or name the module "
                "that runs over [batch, time, features] in bptt_modules=[...]"
            )
        return None
    if isinstance(bptt_modules, str) or not isinstance(bptt_modules, Sequence):
        raise TypeError(
            f"bptt_modules must be a list of module paths, e.g. ['encoder.rnn'], got "
            f"{shown(bptt_modules)}"
        )
    paths = list(bptt_modules)
    recurrent = [p for p, m in model.named_modules() if isinstance(m, RECURRENT)]
    if bptt_every is None:
        raise ValueError(
            "bptt_modules names the modules to track through time, but bptt_every is None, "
            "so none would be: pass bptt_every too (e.g. bptt_every=10), or leave "
            "bptt_modules out"
        )
    if not paths:
        raise ValueError(
            "bptt_modules=[] names no module: pass None to watch every recurrent module "
            f"({recurrent or 'the model has none'})"
        )
    every_module = dict(model.named_modules())
    for path in paths:
        if not isinstance(path, str):
            raise TypeError(
                f"bptt_modules must hold module paths (strings from model.named_modules()), "
                f"got {shown(path)}; e.g. bptt_modules={recurrent[:1] or ['encoder.rnn']}"
            )
        module = every_module.get(path)
        if module is None:
            raise ValueError(
                f"bptt_modules: {path!r} is not a module path of {type(model).__name__}; its "
                f"recurrent modules are {recurrent}; paths come from model.named_modules()"
            )
        if isinstance(module, _INTEGER_INPUT):
            raise ValueError(
                f"bptt_modules: {path!r} is an nn.{type(module).__name__}, whose input is "
                "token ids, through which no gradient flows back in time; name the recurrent "
                f"module it feeds instead ({recurrent or 'e.g. the nn.GRU after it'})"
            )
    return paths


def check_activations(model: nn.Module, activations_every: object) -> None:
    """``activations_every`` on a model with no module to watch is an error, not a no-op.

    >>> check_activations(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), 10)
    >>> check_activations(nn.Linear(2, 2), 10)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: activations_every=10 watches nn.Tanh, nn.Sigmoid, nn.ReLU, ...
    """
    if activations_every is None:
        return
    if any(kind_of(m) is not None for m in model.modules()):
        return
    shown_every = activations_every if whole_number(activations_every) else "..."
    raise ValueError(
        f"activations_every={shown_every} watches nn.Tanh, nn.Sigmoid, nn.ReLU, "
        f"nn.LeakyReLU, nn.GELU and recurrent modules, and {type(model).__name__} has none "
        "(a functional call such as torch.relu cannot be hooked); use the module form "
        "(nn.ReLU()), or leave activations_every out"
    )


def check_interval(argument: str, value: Any) -> tuple[ScheduleLike | None, Schedule]:
    """An interval argument as given (a numpy integer made a plain int, for the run summary)
    and as a schedule.

    >>> import numpy as np
    >>> value, schedule = check_interval("log_every", np.int64(10))
    >>> type(value).__name__, schedule(20), schedule(5)
    ('int', True, False)
    """
    plain = int(value) if whole_number(value) else value
    return plain, as_schedule(argument, plain)
