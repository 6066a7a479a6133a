"""The Hugging Face Trainer callback in real tiny trainings, checked against the truth.

The truth: a post-accumulate-grad hook of the test's own on every parameter keeps a copy of
the gradient each time a backward adds to it; at ``on_pre_optimizer_step`` the latest copies
are the accumulated gradients before the Trainer's clip (which has already run by then). The
norms gradwandb logged to the offline W&B run, read back with W&B's own reader, must equal
norms recomputed from those copies, and the Trainer's own ``grad_norm``; the clip coefficient
must be the one ``accelerator.clip_grad_norm_`` applied; each row must carry the
``train/global_step`` the Trainer's W&B callback gives the loss of the same step.
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

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
pytest.importorskip("accelerate", reason="accelerate is not installed")

from gradwandb.integrations.huggingface import GradwandbCallback, torch_optimizer  # noqa: E402
from gradwandb.read.run import RunLog, read_run  # noqa: E402

STEPS, ACCUMULATE, CLIP = 3, 2, 0.5


def _norm(grads: Any) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))


class Regressor(nn.Module):
    """A model the Trainer can train: keyword inputs in, a dict with the loss out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hidden = nn.Linear(4, 16)
        self.out = nn.Linear(16, 1)

    def forward(self, x: Tensor, labels: Tensor) -> dict[str, Tensor]:
        y = self.out(torch.tanh(self.hidden(x)))
        return {"loss": nn.functional.mse_loss(y.float(), labels) * 20, "logits": y}


class Points(torch.utils.data.Dataset[dict[str, Tensor]]):
    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class Spy(transformers.TrainerCallback):  # type: ignore[misc,name-defined]
    """Keeps each optimizer step's accumulated gradients, as they were before the clip."""

    def __init__(self, model: nn.Module) -> None:
        self.latest: dict[str, Tensor] = {}
        self.grads: list[dict[str, Tensor]] = []
        self.steps: list[int] = []
        for name, p in model.named_parameters():
            p.register_post_accumulate_grad_hook(self._keeper(name))

    def _keeper(self, name: str) -> Any:
        def keep(p: Tensor) -> None:
            assert p.grad is not None
            self.latest[name] = p.grad.detach().double().clone()

        return keep

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.grads.append(dict(self.latest))
        self.steps.append(state.global_step + 1)  # the step the Trainer logs this one at


def _train(out: Path, callback: GradwandbCallback, **args: Any) -> Spy:
    model = Regressor()
    spy = Spy(model)
    options: dict[str, Any] = {
        "max_steps": STEPS,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": ACCUMULATE,
        "logging_steps": 1,
        "learning_rate": 0.05,
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "report_to": "none",
    }
    training_args = transformers.TrainingArguments(str(out), **{**options, **args})
    trainer = transformers.Trainer(
        model=model, args=training_args, train_dataset=Points(), callbacks=[spy, callback]
    )
    trainer.train()
    return spy


def _grad_rows(log: RunLog) -> list[dict[str, Any]]:
    return [row for row in log.history if "grad/global_norm" in row]


# -- 1. report_to="wandb", accumulation, max_grad_norm > 0 -----------------------------------


@pytest.fixture(scope="module")
def clipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunLog, Spy, Any]]:
    import wandb

    callback = GradwandbCallback(layers_every=1, hist_every=None)
    spy = _train(tmp_path_factory.mktemp("out"), callback, report_to="wandb", max_grad_norm=CLIP)
    run = callback.run
    assert run is wandb.run  # the run report_to="wandb" opened
    run.finish()
    yield read_run(run.settings.sync_dir), spy, callback


def test_one_row_per_optimizer_step_on_the_trainers_step(clipped: Any) -> None:
    log, spy, _ = clipped
    rows = _grad_rows(log)
    assert [r["gradwandb/step"] for r in rows] == list(range(STEPS))
    assert [r["train/global_step"] for r in rows] == spy.steps == list(range(1, STEPS + 1))
    assert all("train/loss" in r for r in rows)  # the same W&B row as the Trainer's loss


def test_norms_are_the_accumulated_pre_clip_ones(clipped: Any) -> None:
    log, spy, _ = clipped
    for row, grads in zip(_grad_rows(log), spy.grads, strict=True):
        truth = _norm(grads.values())
        assert truth > 4 * CLIP  # the clip bit
        assert row["grad/global_norm"] == pytest.approx(truth, rel=1e-5)
        assert row["grad/global_norm"] == pytest.approx(row["train/grad_norm"], rel=1e-5)
        for name, g in grads.items():
            assert row[f"grad_norm/{name}"] == pytest.approx(_norm([g]), rel=1e-5)


def test_the_clip_coefficient_is_the_trainers_clip(clipped: Any) -> None:
    log, spy, callback = clipped
    for row, grads in zip(_grad_rows(log), spy.grads, strict=True):
        truth = _norm(grads.values())
        assert row["grad/clip_coef"] == pytest.approx(CLIP / (truth + 1e-6), rel=1e-5)
        assert row["grad/clip_threshold"] == CLIP
    assert callback.tracker is not None and not callback.tracker.active  # removed at the end
    assert log.summary["gradwandb/verdict"] in ("healthy", "exploding")


# -- 2. max_grad_norm=0, bf16 autocast on CPU, no W&B reporting: a run of its own -------------


@pytest.fixture(scope="module")
def unclipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunLog, Spy, Any]:
    callback = GradwandbCallback(project="gradwandb-tests")
    spy = _train(tmp_path_factory.mktemp("out"), callback, max_grad_norm=0.0, bf16=True)
    assert callback.run is not None and callback.run._is_finished  # its own, finished at the end
    return read_run(callback.run.settings.sync_dir), spy, callback


def test_without_clipping_the_norms_are_measured_and_nothing_clips(unclipped: Any) -> None:
    log, spy, _ = unclipped
    rows = _grad_rows(log)
    assert Path(log.run_dir).name.startswith("offline-run-")
    assert [r["train/global_step"] for r in rows] == list(range(1, STEPS + 1))
    for row, grads in zip(rows, spy.grads, strict=True):
        assert row["grad/global_norm"] == pytest.approx(_norm(grads.values()), rel=1e-5)
        assert row["grad/clip_coef"] == 1.0
    # the Trainer measures with a clip to max_norm=inf: that is no clip, no threshold
    assert not {"grad/clip_threshold", "grad/clip_rate"} & log.metric_keys()


# -- the parts, without a Trainer -------------------------------------------------------------


def _state(step: int = 0, zero: bool = True) -> Any:
    return SimpleNamespace(global_step=step, is_world_process_zero=zero)


def test_a_lazily_made_optimizer_is_watched_at_the_first_step(wandb_run: Any) -> None:
    run = wandb_run()
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    callback = GradwandbCallback(run=run)
    callback.on_train_begin(None, _state(), None, model=model, optimizer=None)
    assert callback.tracker is None
    callback.on_step_begin(None, _state(), None, model=model, optimizer=optimizer)
    assert callback.tracker is not None and callback.tracker.optimizer is optimizer
    callback.on_train_end(None, _state(), None)
    assert not callback.tracker.active


def test_other_processes_watch_and_do_not_log(wandb_run: Any) -> None:
    from gradwandb.live.sinks import NullSink

    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    callback = GradwandbCallback()
    callback.on_train_begin(None, _state(zero=False), None, model=model, optimizer=optimizer)
    assert callback.tracker is not None and isinstance(callback.tracker.sink, NullSink)
    assert callback.run is None
    callback.on_train_end(None, _state(), None)


def test_accelerates_optimizer_under_a_grad_scaler_steps_through_the_tracker(
    wandb_run: Any,
) -> None:
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    from gradwandb.live.sinks import MemorySink

    Accelerator(cpu=True)  # the state AcceleratedOptimizer reads
    model = Regressor()
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    accelerated = AcceleratedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.01), device_placement=False, scaler=scaler
    )
    assert torch_optimizer(accelerated) is accelerated.optimizer
    callback = GradwandbCallback(run=wandb_run())
    callback.on_train_begin(None, _state(), None, model=model, optimizer=accelerated)
    assert callback.tracker is not None
    sink = MemorySink()
    callback.tracker.sink = sink  # read the rows in memory
    truth = []
    for step in range(3):
        data = Points()[step]
        loss = model(data["x"][None], data["labels"][None])["loss"]
        scaler.scale(loss).backward()
        truth.append(_norm(p.grad / scaler.get_scale() for p in model.parameters()))
        accelerated.step()  # scaler.step(inner): unscales, then steps the inner optimizer
        accelerated.zero_grad()
    assert [row["grad/global_norm"] for _, row in sink.rows] == pytest.approx(truth, rel=1e-5)
    assert not accelerated.step_was_skipped
    callback.on_train_end(None, _state(), None)
    assert accelerated._optimizer_original_step_method == type(accelerated.optimizer).step.__get__(
        accelerated.optimizer
    )
