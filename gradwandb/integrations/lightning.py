"""gradwandb in PyTorch Lightning: one callback.

    from gradwandb.integrations.lightning import GradwandbCallback

    trainer = lightning.Trainer(
        logger=WandbLogger(project="translate"),
        callbacks=[GradwandbCallback()],        # options go on to gradwandb.watch
        gradient_clip_val=1.0,
        accumulate_grad_batches=4,
    )

At the start of training it watches the LightningModule with the Trainer's optimizer(s) and,
at every optimizer step, logs what the optimizer consumes: the gradients accumulated over
``accumulate_grad_batches``, unscaled (``precision="16-mixed"``), taken before Lightning's
own clipping (``gradient_clip_val``, by norm or by value, or ``self.clip_gradients`` in a
manual step). ``grad/clip_coef`` is the scale that clipping applied. The rows go to the run of
the Trainer's ``WandbLogger`` (or ``run=``; with no W&B logger, to an offline run of
gradwandb's own) and carry ``trainer/global_step``, the value the logger puts in the rows of
the same batch, which is the axis WandbLogger plots every metric against.

Several optimizers (manual optimization, a GAN's generator and discriminator) each get a
tracker of their own, tagged by the submodule that holds their parameters
(``grad/generator/global_norm``). Under DDP or FSDP the callback watches on every rank (the
statistics of the whole model need each rank's part: gradwandb's distributed support does
that inside ``watch``) and only rank 0 writes rows.

Works with ``import lightning`` and ``import pytorch_lightning`` alike: the callback is a
``Callback`` of each that is installed.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gradwandb.integrations._common import (
    check_watch_options,
    define_step,
    missing_extra,
    own_run,
    wandb_sink,
)
from gradwandb.live.sinks import NullSink

if TYPE_CHECKING:
    from gradwandb.live.tracker import Tracker

STEP_KEY = "trainer/global_step"  # WandbLogger's step key, on every row gradwandb logs


def _frameworks() -> list[ModuleType]:
    found: list[ModuleType] = []
    first_error: ImportError | None = None
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            found.append(importlib.import_module(name))
        except ImportError as exc:
            first_error = first_error or exc
    if not found:
        assert first_error is not None
        raise missing_extra("PyTorch Lightning", "lightning", first_error)
    return found


_FRAMEWORKS = _frameworks()
_WANDB_LOGGERS = tuple(
    cls
    for fw in _FRAMEWORKS
    if (cls := getattr(getattr(fw, "loggers", None), "WandbLogger", None)) is not None
)

if TYPE_CHECKING:
    _Base = object
else:  # one class that each installed Lightning's Trainer accepts as its own Callback
    _Base = (
        _FRAMEWORKS[0].Callback
        if len(_FRAMEWORKS) == 1
        else type("_LightningCallbacks", tuple(fw.Callback for fw in _FRAMEWORKS), {})
    )


class GradwandbCallback(_Base):
    """Watch the LightningModule's gradients on W&B; one row per optimizer step.

    Args:
        run: the W&B run to log to; default the run of the Trainer's ``WandbLogger`` (the
            first, among several loggers), else an offline run of gradwandb's own in
            ``project``, finished when training ends.
        project: the project of that own run.
        **options: passed on to :func:`gradwandb.watch` (``log_every``, ``layers_every``,
            ``hist_every``, ``params``, ``clip``, ``bptt_every``, ...); the callback sets
            ``optimizer``, ``sink``, ``scaler`` and ``name`` itself.

    After training, ``callback.run`` is the run it logged to (None on the other ranks), and
    ``callback.trackers`` the trackers it used (removed, their diagnosis kept).

    >>> callback = GradwandbCallback(layers_every=5)
    >>> callback.options
    {'layers_every': 5}
    """

    def __init__(self, *, run: Any = None, project: str = "gradwandb", **options: Any) -> None:
        super().__init__()
        self.options = check_watch_options("GradwandbCallback", options)
        self.project = project
        self.run: Any = run
        self.trackers: list[Tracker] = []
        self._given = run
        self._own_run: Any = None

    # -- Lightning's hooks ----------------------------------------------------------------

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._stop()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._stop()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._stop()

    # -- the work -------------------------------------------------------------------------

    def _start(self, trainer: Any, pl_module: nn.Module) -> None:
        from gradwandb.live.watching import watch

        self._stop()
        self.trackers = []
        optimizers = [o for o in trainer.optimizers if isinstance(o, torch.optim.Optimizer)]
        if not optimizers:
            warnings.warn(
                "GradwandbCallback: the Trainer has no torch optimizer to watch "
                "(configure_optimizers returned none), so no gradients are logged",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        if trainer.is_global_zero:
            self.run = self._wandb_run(trainer)
            sink: Any = wandb_sink(self.run, STEP_KEY, lambda: logged_step(trainer))
        else:
            self.run, sink = None, NullSink()
        start = logged_step(trainer)
        for module, group, tag, params in _groups(pl_module, optimizers):
            tracker = watch(
                module,
                group,
                sink=sink,
                scaler=scaler,
                name=tag,
                **({"params": params} if params is not None else {}),
                **self.options,
            )
            if start > 0:  # a resumed fit goes on counting from the Trainer's step
                tracker.load_state_dict({"step": start, "clip_bites": 0})
            self.trackers.append(tracker)

    def _wandb_run(self, trainer: Any) -> Any:
        if self._given is not None:
            return self._given
        for logger in getattr(trainer, "loggers", None) or []:
            if isinstance(logger, _WANDB_LOGGERS):
                run = logger.experiment
                define_step(run, STEP_KEY)  # as WandbLogger does (not when it reused wandb.run)
                return run
        if self._own_run is None or getattr(self._own_run, "_is_finished", False):
            self._own_run = own_run(self.project, STEP_KEY)
        return self._own_run

    def _stop(self) -> None:
        for tracker in self.trackers:
            tracker.remove()
        if self._own_run is not None and not getattr(self._own_run, "_is_finished", False):
            self._own_run.finish()


def logged_step(trainer: Any) -> int:
    """The step Lightning's loggers give the metrics of the batch now running.

    It is the count of batches that stepped an optimizer (the fit loop's
    ``_batches_that_stepped``): the Trainer's ``global_step`` with one optimizer; with
    several, ``global_step`` counts each optimizer's steps while the loggers count batches.
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)
    return int(step) if isinstance(step, int) else int(trainer.global_step)


Group = tuple[nn.Module, list[torch.optim.Optimizer], str | None, Any]


def _groups(pl_module: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> list[Group]:
    """One tracker's ``(module, optimizers, tag, params)`` per optimizer, or one for all.

    Each optimizer is watched on the submodule that holds all its parameters (tagged by its
    path; ``optimizer_<i>`` when that is the whole module), on its own parameters only, so
    each step is measured on the backward that fed it. Two optimizers whose parameters lie
    in the same submodule cannot be told apart there: they are watched as one step.

    >>> class GAN(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.generator, self.discriminator = nn.Linear(2, 2), nn.Linear(2, 1)
    >>> gan = GAN()
    >>> opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (gan.generator, gan.discriminator)]
    >>> [(type(m).__name__, tag) for m, _, tag, _ in _groups(gan, opts)]
    [('Linear', 'generator'), ('Linear', 'discriminator')]
    """
    if len(optimizers) == 1:
        return [(pl_module, list(optimizers), None, None)]
    names = {id(p): n for n, p in pl_module.named_parameters()}
    homes: list[str | None] = []
    for optimizer in optimizers:
        held = [names.get(id(p)) for g in optimizer.param_groups for p in g["params"]]
        homes.append(_common_path([n for n in held if n is not None]) if all(held) else None)
    if None in homes or len(set(homes)) < len(homes):
        warnings.warn(
            "GradwandbCallback: the Trainer's optimizers hold parameters of the same submodule, "
            "so they are watched as one step (measured before the first of them steps); give "
            "each optimizer its own submodule (self.generator, self.discriminator) to watch "
            "them apart",
            RuntimeWarning,
            stacklevel=3,
        )
        return [(pl_module, list(optimizers), None, None)]
    groups: list[Group] = []
    for i, (optimizer, home) in enumerate(zip(optimizers, homes, strict=True)):
        assert home is not None
        mine = {id(p) for g in optimizer.param_groups for p in g["params"]}
        module = pl_module.get_submodule(home) if home else pl_module
        groups.append((module, [optimizer], home or f"optimizer_{i}", _HeldBy(frozenset(mine))))
    return groups


class _HeldBy:
    """``params=`` filter: the parameters one optimizer holds (a picklable predicate)."""

    def __init__(self, ids: frozenset[int]) -> None:
        self.ids = ids

    def __call__(self, name: str, param: nn.Parameter) -> bool:
        return id(param) in self.ids

    def __repr__(self) -> str:
        return f"<the {len(self.ids)} parameters of one optimizer>"


def _common_path(names: Sequence[str]) -> str:
    """The deepest module path holding every parameter name in ``names``.

    >>> _common_path(["generator.0.weight", "generator.2.bias"]), _common_path(["a.w", "b.w"])
    ('generator', '')
    """
    if not names:
        return ""
    parts = [n.split(".")[:-1] for n in names]
    common: list[str] = []
    for segments in zip(*parts, strict=False):
        if len(set(segments)) != 1:
            break
        common.append(segments[0])
    return ".".join(common)
