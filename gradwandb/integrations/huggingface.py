"""gradwandb in the Hugging Face Trainer: one callback.

    from gradwandb.integrations.huggingface import GradwandbCallback

    args = TrainingArguments("out", report_to="wandb", max_grad_norm=1.0,
                             gradient_accumulation_steps=4)
    trainer = Trainer(model, args, train_dataset=data, callbacks=[GradwandbCallback()])

When training begins it watches the Trainer's model with its optimizer (the torch optimizer
inside Accelerate's ``AcceleratedOptimizer``, which exists only once ``train()`` has built it)
and, at every optimizer step, logs what that optimizer consumes: the gradients accumulated
over ``gradient_accumulation_steps``, unscaled (fp16 with a GradScaler), taken before the
Trainer's clip, whatever ``max_grad_norm`` is. ``grad/clip_coef`` is the scale that clip
(``accelerator.clip_grad_norm_``) applied; 1.0 with ``max_grad_norm=0``, where the Trainer
only measures the norm. The rows go to the run ``report_to="wandb"`` opened (or ``run=``, or
any active ``wandb.run``; with none, to an offline run of gradwandb's own) and carry
``train/global_step``, the value the Trainer's W&B callback gives the loss and ``grad_norm``
of the same optimizer step, which is the axis it plots every metric against.

Under DDP or FSDP the callback watches on every process (the statistics of the whole model
need each rank's part: gradwandb's distributed support does that inside ``watch``) and only
the main process writes rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gradwandb.integrations._common import (
    check_watch_options,
    missing_extra,
    own_run,
    wandb_sink,
)
from gradwandb.live.sinks import NullSink

try:
    from transformers import TrainerCallback
except ImportError as _error:
    raise missing_extra("the Hugging Face Trainer (transformers)", "huggingface", _error) from None

if TYPE_CHECKING:
    from gradwandb.live.tracker import Tracker

    _Base = object
else:
    _Base = TrainerCallback

STEP_KEY = "train/global_step"  # the Trainer's W&B step key, on every row gradwandb logs


class GradwandbCallback(_Base):
    """Watch the Trainer's model's gradients on W&B; one row per optimizer step.

    Args:
        run: the W&B run to log to; default the active ``wandb.run`` (the one
            ``report_to="wandb"`` opened), else an offline run of gradwandb's own in
            ``project``, finished when training ends.
        project: the project of that own run.
        **options: passed on to :func:`gradwandb.watch` (``log_every``, ``layers_every``,
            ``hist_every``, ``params``, ``clip``, ...); the callback sets ``optimizer``,
            ``sink``, ``scaler`` and ``name`` itself.

    After training, ``callback.run`` is the run it logged to (None on the other processes)
    and ``callback.tracker`` the tracker it used (removed, its diagnosis kept).

    >>> callback = GradwandbCallback(hist_every=None)
    >>> callback.options
    {'hist_every': None}
    """

    def __init__(self, *, run: Any = None, project: str = "gradwandb", **options: Any) -> None:
        super().__init__()
        self.options = check_watch_options("GradwandbCallback", options)
        self.project = project
        self.run: Any = run
        self.tracker: Tracker | None = None
        self._given = run
        self._own_run: Any = None
        self._state: Any = None
        self._undo: list[Any] = []

    # -- the Trainer's events -------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._stop()
        self._state = state
        self._start(args, state, kwargs.get("model"), kwargs.get("optimizer"))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._state = state
        if self.tracker is None:  # an optimizer made after on_train_begin
            self._start(args, state, kwargs.get("model"), kwargs.get("optimizer"))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._stop()

    # -- the work -------------------------------------------------------------------------

    def _start(self, args: Any, state: Any, model: Any, optimizer: Any) -> None:
        from gradwandb.live.watching import watch

        inner = torch_optimizer(optimizer)
        if not isinstance(model, nn.Module) or inner is None:
            return  # not built yet: the next step's event tries again
        if getattr(state, "is_world_process_zero", True):
            self.run = self._wandb_run()
            sink: Any = wandb_sink(self.run, STEP_KEY, self._logged_step)
        else:
            self.run, sink = None, NullSink()
        scaler = getattr(optimizer, "scaler", None)
        self.tracker = watch(model, inner, sink=sink, scaler=scaler, **self.options)
        self._undo = [self.tracker.remove]
        if optimizer is not inner:
            self._undo.insert(0, route_accelerate_steps(optimizer, inner))
        start = int(getattr(state, "global_step", 0) or 0)
        if start > 0:  # resumed from a checkpoint: go on counting from the Trainer's step
            self.tracker.load_state_dict({"step": start, "clip_bites": 0})

    def _logged_step(self) -> int:
        """``train/global_step`` of the optimizer step now running: the Trainer adds one to
        ``state.global_step`` right after ``optimizer.step()``, then logs with the new value."""
        return int(getattr(self._state, "global_step", 0)) + 1

    def _wandb_run(self) -> Any:
        if self._given is not None:
            return self._given
        import wandb

        if wandb.run is not None:
            return wandb.run
        if self._own_run is None or getattr(self._own_run, "_is_finished", False):
            self._own_run = own_run(self.project, STEP_KEY)
        return self._own_run

    def _stop(self) -> None:
        while self._undo:
            self._undo.pop(0)()
        if self._own_run is not None and not getattr(self._own_run, "_is_finished", False):
            self._own_run.finish()


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer inside Accelerate's ``AcceleratedOptimizer`` (or ``optimizer``).

    >>> sgd = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    >>> torch_optimizer(sgd) is sgd, torch_optimizer(None)
    (True, None)
    """
    seen = 0
    while not isinstance(optimizer, torch.optim.Optimizer) or hasattr(optimizer, "optimizer"):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or seen > 8:
            break
        optimizer, seen = inner, seen + 1
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


def route_accelerate_steps(accelerated: Any, inner: torch.optim.Optimizer) -> Any:
    """Keep Accelerate's step through gradwandb's wrapper under a GradScaler.

    With a scaler, ``AcceleratedOptimizer`` keeps the inner optimizer's ``step`` as it was when
    it was made, swaps in a marked copy around ``scaler.step`` and puts the kept one back,
    which would bypass (and then remove) a wrapper added later. Point both at the wrapper the
    tracker put on ``inner``; the returned undo restores them.
    """
    names = ("_optimizer_original_step_method", "_optimizer_patched_step_method")
    if getattr(accelerated, "scaler", None) is None or not all(
        hasattr(accelerated, n) for n in names
    ):
        return lambda: None
    saved = {n: getattr(accelerated, n) for n in names}
    wrapped = inner.step

    def marked(*args: Any, **kwargs: Any) -> Any:
        accelerated._accelerate_step_called = True  # how Accelerate tells a step from a skip
        return wrapped(*args, **kwargs)

    accelerated._optimizer_original_step_method = wrapped
    accelerated._optimizer_patched_step_method = marked

    def undo() -> None:
        for name, value in saved.items():
            setattr(accelerated, name, value)

    return undo
