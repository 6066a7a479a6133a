"""The Lightning callback in real tiny trainings, checked against the truth.

A callback of the test's own captures every gradient in ``on_before_optimizer_step``, which
Lightning runs after the closure (forward and backward of every accumulated micro-batch) and
after ``scaler.unscale_``, and before its own clipping: the accumulated, unscaled, pre-clip
gradients. The norms gradwandb logged to the offline W&B run, read back with W&B's own reader,
must equal norms recomputed from those copies; the clip coefficient must be the one the
Trainer's clip applied; each row must carry the ``trainer/global_step`` that WandbLogger gives
the loss of the same batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

L = pytest.importorskip("lightning.pytorch", reason="PyTorch Lightning is not installed")
PL = pytest.importorskip("pytorch_lightning", reason="pytorch_lightning is not installed")

from gradwandb.integrations import lightning as integration  # noqa: E402
from gradwandb.integrations.lightning import GradwandbCallback  # noqa: E402
from gradwandb.live.sinks import NullSink  # noqa: E402
from gradwandb.read.run import RunLog, read_run  # noqa: E402

STEPS, ACCUMULATE, CLIP = 3, 2, 0.5


def _norm(grads: Any) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))


def _data(n: int = 48) -> torch.utils.data.DataLoader[Any]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def _trainer(framework: Any, callbacks: list[Any], **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "max_steps": STEPS,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "callbacks": callbacks,
    }
    return framework.Trainer(**{**options, **kwargs})


def _module(framework: Any) -> Any:
    class Regressor(framework.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y) * 20  # big enough for the clip to bite
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return Regressor()


def _spy(framework: Any) -> Any:
    class Spy(framework.Callback):  # type: ignore[misc,name-defined]
        """Copies the gradients the optimizer is about to consume, before Lightning clips."""

        def __init__(self) -> None:
            self.grads: list[dict[str, Tensor]] = []
            self.steps: list[int] = []

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            self.grads.append(
                {n: p.grad.detach().double().clone() for n, p in pl_module.named_parameters()}
            )
            self.steps.append(trainer.fit_loop.epoch_loop._batches_that_stepped)

    return Spy()


def _grad_rows(log: RunLog, key: str = "grad/global_norm") -> list[dict[str, Any]]:
    return [row for row in log.history if key in row]


# -- 1. WandbLogger, accumulation, clip by norm, fp16 with a GradScaler ----------------------


@pytest.fixture(scope="module")
def by_norm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunLog, Any, Any]]:
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.plugins import MixedPrecision

    spy = _spy(L)
    callback = GradwandbCallback(layers_every=1, hist_every=None)
    logger = WandbLogger(project="gradwandb-tests", save_dir=str(tmp_path_factory.mktemp("wb")))
    trainer = _trainer(
        L,
        [spy, callback],
        logger=logger,
        accumulate_grad_batches=ACCUMULATE,
        gradient_clip_val=CLIP,
        # fp16 autocast with a GradScaler on CPU (precision="16-mixed" alone gives bf16 there)
        plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=1024.0))],
    )
    trainer.fit(_module(L), _data())
    run = logger.experiment
    assert callback.run is run  # the logger's run, not one of gradwandb's own
    run.finish()
    yield read_run(run.settings.sync_dir), spy, callback


def test_one_row_per_optimizer_step_on_the_trainers_step(by_norm: Any) -> None:
    log, spy, _ = by_norm
    rows = _grad_rows(log)
    assert len(spy.grads) == STEPS
    assert [r["gradwandb/step"] for r in rows] == list(range(STEPS))
    assert [r["trainer/global_step"] for r in rows] == spy.steps == list(range(STEPS))
    # the same W&B row holds the loss Lightning logged for that batch, at the same step
    assert all("train_loss" in r for r in rows)


def test_norms_are_the_accumulated_unscaled_pre_clip_ones(by_norm: Any) -> None:
    log, spy, _ = by_norm
    rows = _grad_rows(log)
    for row, grads in zip(rows, spy.grads, strict=True):
        truth = _norm(grads.values())
        assert truth > 10 * CLIP  # the clip bit: a post-clip norm would be 0.5
        assert row["grad/global_norm"] == pytest.approx(truth, rel=1e-5)
        for name, g in grads.items():
            assert row[f"grad_norm/{name}"] == pytest.approx(_norm([g]), rel=1e-5)


def test_the_clip_coefficient_is_lightnings_clip(by_norm: Any) -> None:
    log, spy, _ = by_norm
    for row, grads in zip(_grad_rows(log), spy.grads, strict=True):
        truth = _norm(grads.values())
        assert row["grad/clip_coef"] == pytest.approx(CLIP / (truth + 1e-6), rel=1e-5)
        assert row["grad/clip_threshold"] == CLIP


def test_the_scaler_was_seen_and_the_tracker_removed_at_the_end(by_norm: Any) -> None:
    log, _, callback = by_norm
    assert "amp/scale" in log.metric_keys()  # 16-mixed: Lightning's GradScaler was passed on
    (tracker,) = callback.trackers
    assert not tracker.active
    assert log.summary["gradwandb/verdict"] in ("healthy", "exploding")


# -- 2. pytorch_lightning, no logger: an offline run of its own; clip by value ---------------


@pytest.fixture(scope="module")
def by_value() -> tuple[RunLog, Any, Any]:
    spy = _spy(PL)
    callback = GradwandbCallback(project="gradwandb-tests")
    trainer = _trainer(
        PL, [spy, callback], logger=False, gradient_clip_val=0.05, gradient_clip_algorithm="value"
    )
    trainer.fit(_module(PL), _data())
    assert callback.run is not None and callback.run._is_finished  # its own, finished at the end
    return read_run(callback.run.settings.sync_dir), spy, callback


def test_without_a_logger_it_logs_to_an_offline_run_of_its_own(by_value: Any) -> None:
    log, spy, _ = by_value
    rows = _grad_rows(log)
    assert Path(log.run_dir).name.startswith("offline-run-")
    assert [r["trainer/global_step"] for r in rows] == spy.steps == list(range(STEPS))


def test_clip_by_value_reports_its_coefficient(by_value: Any) -> None:
    log, spy, _ = by_value
    rows = _grad_rows(log)
    for row, grads in zip(rows, spy.grads, strict=True):
        before = _norm(grads.values())
        after = _norm(g.clamp(-0.05, 0.05) for g in grads.values())
        assert row["grad/global_norm"] == pytest.approx(before, rel=1e-5)
        assert row["grad/clip_coef"] == pytest.approx(after / before, rel=1e-4)
        assert row["grad/clip_coef"] < 1.0


# -- 3. manual optimization with two optimizers (a GAN's two steps) --------------------------


class _TwoNets(L.LightningModule):  # type: ignore[misc,name-defined]
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4))
        self.discriminator = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        self.captured: list[tuple[str, float]] = []

    def _snapshot(self, part: str, module: nn.Module) -> None:
        self.captured.append((part, _norm(p.grad for p in module.parameters())))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, _ = batch
        opt_g, opt_d = self.optimizers()
        fake = self.generator(x)
        loss_d = self.discriminator(fake.detach()).pow(2).mean() * 10
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        self._snapshot("discriminator", self.discriminator)
        self.clip_gradients(opt_d, gradient_clip_val=0.1, gradient_clip_algorithm="norm")
        opt_d.step()
        loss_g = (self.discriminator(fake) - 1).pow(2).mean()
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        self._snapshot("generator", self.generator)
        opt_g.step()
        self.log("loss_g", loss_g)

    def configure_optimizers(self) -> Any:
        return (
            torch.optim.Adam(self.generator.parameters(), lr=1e-3),
            torch.optim.Adam(self.discriminator.parameters(), lr=1e-3),
        )


@pytest.fixture(scope="module")
def two_optimizers(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunLog, _TwoNets]:
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="gradwandb-tests", save_dir=str(tmp_path_factory.mktemp("wb")))
    module = _TwoNets()
    # global_step counts each optimizer's steps: two per batch
    trainer = _trainer(L, [GradwandbCallback()], logger=logger, max_steps=2 * STEPS)
    trainer.fit(module, _data())
    run = logger.experiment
    run.finish()
    return read_run(run.settings.sync_dir), module


def test_two_optimizers_are_tagged_apart_each_on_its_own_backward(two_optimizers: Any) -> None:
    log, module = two_optimizers
    for part in ("generator", "discriminator"):
        rows = _grad_rows(log, f"grad/{part}/global_norm")
        truth = [n for p, n in module.captured if p == part]
        assert len(rows) == len(truth) == STEPS
        got = [r[f"grad/{part}/global_norm"] for r in rows]
        assert got == pytest.approx(truth, rel=1e-5)
        # one batch per trainer/global_step, though global_step counts both optimizers' steps
        assert [r["trainer/global_step"] for r in rows] == list(range(STEPS))
    d_rows = _grad_rows(log, "grad/discriminator/clip_coef")
    d_truth = [n for p, n in module.captured if p == "discriminator"]
    for row, norm in zip(d_rows, d_truth, strict=True):
        assert row["grad/discriminator/clip_coef"] == pytest.approx(min(1, 0.1 / (norm + 1e-6)))
    g_rows = _grad_rows(log, "grad/generator/clip_coef")
    assert all(r["grad/generator/clip_coef"] == 1.0 for r in g_rows)  # never clipped


# -- the parts, without a training ------------------------------------------------------------


def test_a_trainer_of_either_package_accepts_the_callback() -> None:
    callback = GradwandbCallback()
    assert isinstance(callback, L.Callback) and isinstance(callback, PL.Callback)
    for framework in (L, PL):
        trainer = framework.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False)
        assert callback in trainer.callbacks


def test_every_rank_watches_and_only_rank_zero_logs() -> None:
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleNamespace(
        optimizers=[optimizer],
        is_global_zero=False,
        global_step=0,
        precision_plugin=SimpleNamespace(scaler=None),
        loggers=[],
    )
    callback = GradwandbCallback()
    callback.on_train_start(trainer, model)
    (tracker,) = callback.trackers
    assert tracker.active and isinstance(tracker.sink, NullSink) and callback.run is None
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    assert tracker.step == 1  # measured on this rank too (a collective would run here)
    callback.on_train_end(trainer, model)
    assert not tracker.active


def test_options_the_callback_sets_itself_are_refused_by_name() -> None:
    with pytest.raises(TypeError, match=r"sets scaler itself"):
        GradwandbCallback(scaler=None)
    with pytest.raises(TypeError, match=r"unknown option layer_every=.*layers_every"):
        GradwandbCallback(layer_every=3)


def test_optimizers_over_one_module_are_watched_as_one_step() -> None:
    model = nn.Linear(3, 1)
    opts = [torch.optim.SGD([model.weight], lr=0.1), torch.optim.SGD([model.bias], lr=0.1)]
    with pytest.warns(RuntimeWarning, match="watched as one step"):
        ((module, group, tag, params),) = integration._groups(model, opts)
    assert module is model and group == opts and tag is None and params is None
