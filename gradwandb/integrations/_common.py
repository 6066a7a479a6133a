"""What both framework callbacks share: the framework's step key on every row, a run of
gradwandb's own when the framework has none, the watch options a callback passes through, and
the error that names the extra to install (the ranks that do not log get the live wing's
:class:`~gradwandb.live.sinks.NullSink`).

>>> from gradwandb.live.sinks import MemorySink
>>> inner = MemorySink()
>>> sink = FrameworkStepSink(inner, "trainer/global_step", lambda: 7)
>>> sink.log({"grad/global_norm": 0.5}, step=0)
>>> inner.rows
[(0, {'grad/global_norm': 0.5, 'trainer/global_step': 7})]
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from gradwandb.live.sinks import Sink, Value

# Options of gradwandb.watch a callback sets itself, and what it sets them from.
_SET_BY_CALLBACK = {
    "optimizer": "the framework's optimizer(s)",
    "sink": "the framework's W&B run (pass run= to choose another)",
    "scaler": "the framework's GradScaler, when it uses one",
    "name": "the optimizer (several optimizers get one tag each)",
}


def missing_extra(framework: str, extra: str, error: ImportError) -> ImportError:
    """The ImportError a callback module raises when its framework is not installed.

    >>> str(missing_extra("PyTorch Lightning", "lightning", ImportError("no lightning")))
    "gradwandb.integrations.lightning needs PyTorch Lightning, which is not installed \
(no lightning): pip install 'gradwandb[lightning]'"
    """
    return ImportError(
        f"gradwandb.integrations.{extra} needs {framework}, which is not installed "
        f"({error}): pip install 'gradwandb[{extra}]'"
    )


def check_watch_options(callback: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword options a callback passes on to :func:`gradwandb.watch`, by name.

    >>> check_watch_options("GradwandbCallback", {"layers_every": 5})
    {'layers_every': 5}
    >>> check_watch_options("GradwandbCallback", {"sink": None})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    TypeError: GradwandbCallback sets sink itself (from the framework's W&B run ...
    """
    from gradwandb.live.watching import watch

    accepted = {
        name
        for name, p in inspect.signature(watch).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    passed_on = ", ".join(sorted(accepted - {"run", *_SET_BY_CALLBACK}))
    for name in options:
        if name in _SET_BY_CALLBACK:
            raise TypeError(
                f"{callback} sets {name} itself (from {_SET_BY_CALLBACK[name]}); leave {name}= "
                "out, or call gradwandb.watch in your own training loop"
            )
        if name not in accepted:
            raise TypeError(
                f"{callback} got an unknown option {name}=; it takes run= and project=, and "
                f"passes these on to gradwandb.watch: {passed_on}"
            )
    return dict(options)


class FrameworkStepSink:
    """Adds the framework's step (``step_key: step_fn()``) to every row it passes on.

    W&B plots a metric against the framework's step key when that key is in its row (the
    frameworks declare it with ``define_metric``), so gradwandb's rows line up with the loss
    and the learning rate the Trainer logs. Everything else goes to ``inner`` unchanged.
    """

    def __init__(self, inner: Sink, step_key: str, step_fn: Callable[[], int]) -> None:
        self.inner = inner
        self.step_key = step_key
        self.step_fn = step_fn

    def log(self, row: Mapping[str, Value], step: int) -> None:
        self.inner.log({**row, self.step_key: int(self.step_fn())}, step)

    def summary(self, values: Mapping[str, Any]) -> None:
        self.inner.summary(values)

    def alert(self, title: str, text: str, level: str) -> None:
        self.inner.alert(title, text, level)

    def alive(self) -> bool:
        return self.inner.alive()

    def close(self) -> None:
        self.inner.close()

    def on_finish(self, callback: Callable[[], None]) -> None:
        """Pass W&B's finish hook through (see :class:`~gradwandb.live.wandb_sink.WandbSink`)."""
        on_finish = getattr(self.inner, "on_finish", None)
        if callable(on_finish):
            on_finish(callback)


def wandb_sink(run: Any, step_key: str, step_fn: Callable[[], int]) -> FrameworkStepSink:
    """A sink writing to ``run``, each row carrying the framework's step."""
    from gradwandb.live.wandb_sink import WandbSink

    if getattr(run, "_is_finished", False):
        raise RuntimeError(
            f"the W&B run {getattr(run, 'id', run)!r} has finished; pass run= an open run, "
            "or leave run= out"
        )
    return FrameworkStepSink(WandbSink(run), step_key, step_fn)


def own_run(project: str, step_key: str) -> Any:
    """A W&B run of gradwandb's own, for a framework that logs to none.

    Offline unless ``WANDB_MODE`` says otherwise (no account needed; ``wandb sync`` uploads
    it later); every metric is plotted against ``step_key``, as the framework's own W&B
    integration does.
    """
    import wandb

    if os.environ.get("WANDB_MODE") is None:
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # nothing to report offline
        mode = "offline"
    else:
        mode = os.environ["WANDB_MODE"]
    run = wandb.init(project=project, mode=mode, reinit="create_new")  # type: ignore[arg-type]
    define_step(run, step_key)
    return run


def define_step(run: Any, step_key: str) -> None:
    """Plot every metric of ``run`` against ``step_key`` (what the frameworks declare)."""
    define = getattr(run, "define_metric", None)
    if callable(define):
        define(step_key)
        define("*", step_metric=step_key, step_sync=True)
