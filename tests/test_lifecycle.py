"""Tracker lifecycle: watch, re-watch, remove, finish, errors, frozen parameters, tags.

A :class:`gradwandb.MemorySink` is used where W&B is not the point; real offline runs where the
run's life (finish, a second run, the active ``wandb.run``) is.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradwandb
from gradwandb.live.sinks import MemorySink, Value
from tests.conftest import read_back


def history_keys(log: Any) -> set[str]:
    """Every key in any history row of a read-back run."""
    return {k for row in log.history for k in row}


def tiny_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def batch(gen: torch.Generator, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 4, generator=gen), torch.randn(n, 2, generator=gen)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = batch(gen)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()


def hook_counts(opt: torch.optim.Optimizer) -> tuple[int, int]:
    wrapped = int("step" in vars(opt))  # gradwandb wraps the instance's step
    return len(opt._optimizer_step_pre_hooks) + wrapped, len(
        opt._optimizer_step_post_hooks
    ) + wrapped


def global_norm(model: nn.Module) -> float:
    norms = [p.grad.double().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(norms).norm().item()


def row_keys(sink: MemorySink) -> list[set[str]]:
    return [set(row) for _, row in sink.rows]


class CountingSink(MemorySink):
    """A MemorySink that also counts ``log`` calls (MemorySink merges rows of one step)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def log(self, row: Mapping[str, Value], step: int) -> None:
        self.calls.append(step)
        super().log(row, step)


# -- watching twice, removing, re-watching -----------------------------------------------


def test_watch_twice_replaces_first(wandb_run):
    run = wandb_run()
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = hook_counts(opt)
    first = gradwandb.watch(model, opt, run=run, hist_every=None)
    once = hook_counts(opt)
    assert once == (before[0] + 1, before[1] + 1)
    second = gradwandb.watch(model, opt, run=run, hist_every=None)
    assert hook_counts(opt) == once  # replaced, not doubled
    assert not first.active and second.active
    assert first.keys.tag is None and second.keys.tag is None
    records: dict[str, list[int]] = {"first": [], "second": []}
    first.add_observer(lambda r: records["first"].append(r.step))
    second.add_observer(lambda r: records["second"].append(r.step))
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x, y = batch(gen)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        run.log({"loss": loss.item()})
    assert records == {"first": [], "second": [0, 1, 2, 3]}
    second.remove()
    assert hook_counts(opt) == before
    log = read_back(run)
    assert len(log.history) == 4
    assert [v for _, v in log.series("gradwandb/step")] == [0, 1, 2, 3]
    assert len(log.series("grad/global_norm")) == 4
    keys = history_keys(log)
    assert not any("/sequential/" in k for k in keys)  # no tag for the same model


def test_watch_twice_same_sink_rows_not_doubled():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = CountingSink()
    gradwandb.watch(model, opt, sink=sink, hist_every=None)
    tracker = gradwandb.watch(model, opt, sink=sink, hist_every=None)
    train(model, opt, 3)
    assert sink.calls == [0, 1, 2]
    assert tracker.keys.tag is None
    assert "grad/global_norm" in sink.rows[0][1]
    tracker.remove()


def test_remove_then_rewatch_and_unwatch():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    before = hook_counts(opt)
    sink = MemorySink()
    tracker = gradwandb.watch(model, opt, sink=sink, scaler=scaler, hist_every=None)
    assert "step" in vars(scaler)  # gradwandb routes this instance's step through itself
    train(model, opt, 2)
    keys_first = row_keys(sink)
    assert len(keys_first) == 2
    tracker.remove()
    tracker.remove()  # harmless
    assert not tracker.active
    assert hook_counts(opt) == before
    assert "step" not in vars(scaler)
    train(model, opt, 1)
    assert len(sink.rows) == 2  # nothing logged while removed

    again = gradwandb.watch(model, opt, sink=sink, scaler=scaler, hist_every=None)
    assert again.active and again.keys.tag is None
    assert hook_counts(opt) == (before[0] + 1, before[1] + 1)
    train(model, opt, 2)
    assert len(sink.rows) == 4
    assert [step for step, _ in sink.rows] == [0, 1, 2, 3]  # the step index goes on
    assert row_keys(sink)[3] == keys_first[1]  # same keys as before the removal

    gradwandb.unwatch(model)
    assert not again.active
    assert hook_counts(opt) == before
    assert "step" not in vars(scaler)
    gradwandb.unwatch(model)  # nothing watched: harmless
    train(model, opt, 1)
    assert len(sink.rows) == 4


def test_context_manager_removes_on_exit_and_on_error():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = hook_counts(opt)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink) as tracker:
        assert hook_counts(opt) == (before[0] + 1, before[1] + 1)
        train(model, opt, 1)
    assert not tracker.active
    assert hook_counts(opt) == before
    train(model, opt, 1)
    assert [s for s, _ in sink.rows] == [0]

    sink = MemorySink()
    with pytest.raises(KeyError, match="boom"), gradwandb.watch(model, opt, sink=sink) as tracker:
        train(model, opt, 2)
        raise KeyError("boom")
    assert not tracker.active
    assert hook_counts(opt) == before
    train(model, opt, 1)
    assert [s for s, _ in sink.rows] == [0, 1]


# -- the run's life ------------------------------------------------------------------------


def test_step_after_run_finish_is_harmless(wandb_run):
    run = wandb_run()
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    before = hook_counts(opt)
    tracker = gradwandb.watch(model, opt, run=run, scaler=scaler, hist_every=1)
    gen = torch.Generator().manual_seed(1)

    def step() -> None:
        x, y = batch(gen)
        opt.zero_grad()
        scaler.scale(F.mse_loss(model(x), y)).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(2):
        step()
    run.finish()
    weight = model[0].weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would raise here
        step()
        step()
    assert not torch.equal(weight, model[0].weight)  # training went on
    assert not tracker.active
    assert hook_counts(opt) == before
    assert "step" not in vars(scaler)
    tracker.remove()  # still harmless
    log = read_back(run)
    assert [v for _, v in log.series("gradwandb/step")] == [0, 1]
    assert len(log.history) == 2


def test_second_run_in_same_process(tmp_path):
    import wandb

    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    runs = []
    try:
        assert wandb.run is None, "another test left a global W&B run active"
        for steps in (2, 3):
            run = wandb.init(project="gradwandb-tests", dir=str(tmp_path))
            runs.append(run)
            assert wandb.run is run
            norms: list[float] = []
            tracker = gradwandb.watch(model, opt, hist_every=None)  # binds to wandb.run
            assert tracker.keys.tag is None
            tracker.add_observer(lambda r, norms=norms: norms.append(r.global_norm))
            train(model, opt, steps, seed=steps)
            run.log({"marker": steps})
            run.finish()
            assert not tracker.active
            log = read_back(run)
            assert [v for _, v in log.series("gradwandb/step")] == list(range(steps))
            assert [v for _, v in log.series("grad/global_norm")] == norms
            assert [v for _, v in log.series("marker")] == [steps]
            assert len(log.history) == steps
            assert wandb.run is None
    finally:
        for run in runs:
            run.finish()


def test_watch_without_run_says_how_to_start_one(monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "run", None)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = hook_counts(opt)
    with pytest.raises(RuntimeError) as info:
        gradwandb.watch(model, opt)
    message = str(info.value)
    assert "wandb.init" in message
    assert "offline" in message
    assert hook_counts(opt) == before


# -- internal errors -----------------------------------------------------------------------


class LogRaises(MemorySink):
    def log(self, row: Mapping[str, Value], step: int) -> None:
        raise OSError("disk full")


class AliveRaises(MemorySink):
    def alive(self) -> bool:
        raise ValueError("bad state")


@pytest.mark.parametrize(
    ("sink_class", "failed_at"), [(LogRaises, 1), (AliveRaises, 0)], ids=["post-hook", "pre-hook"]
)
def test_internal_error_warns_once_and_switches_off(sink_class, failed_at):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = hook_counts(opt)
    tracker = gradwandb.watch(model, opt, sink=sink_class(), hist_every=None)
    weights = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(5):
            weights.append(model[2].weight.detach().clone())
            train(model, opt, 1, seed=i)
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1, [str(w.message) for w in caught]
    assert "gradwandb" in str(runtime[0].message)
    assert not tracker.active
    assert tracker.step == failed_at  # it stopped counting inside step 0
    # training went on: every step changed the weights
    weights.append(model[2].weight.detach().clone())
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(weights))
    tracker.remove()
    assert hook_counts(opt) == before


# -- frozen, unused, unfrozen parameters ---------------------------------------------------


class Partial(nn.Module):
    """``frozen`` is frozen at first, ``unused`` never takes part in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(4, 6)
        self.body = nn.Linear(6, 6)
        self.unused = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(torch.tanh(self.frozen(x)))))


@pytest.mark.parametrize("with_optimizer", [True, False], ids=["optimizer", "backward"])
def test_frozen_and_unused_parameters(with_optimizer):
    torch.manual_seed(0)
    model = Partial()
    opt = torch.optim.SGD(model.parameters(), lr=0.1) if with_optimizer else None
    sink = MemorySink()
    tracker = gradwandb.watch(model, opt, sink=sink, hist_every=1)
    gen = torch.Generator().manual_seed(1)
    unfreeze_at, steps = 3, 6
    expected = []
    for i in range(steps):
        if i == unfreeze_at:
            model.frozen.requires_grad_(True)
        x, y = batch(gen)
        model.zero_grad()
        F.mse_loss(model(x), y).backward()
        expected.append((global_norm(model), model.frozen.weight.grad))
        if opt is not None:
            opt.step()
    tracker.remove()
    assert [s for s, _ in sink.rows] == list(range(steps))
    for step, row in sink.rows:
        assert not any(k.endswith(("/unused.weight", "/unused.bias")) for k in row)
        frozen_keys = {k for k in row if k.endswith(("/frozen.weight", "/frozen.bias"))}
        if step < unfreeze_at:
            assert frozen_keys == set()
        else:
            assert {"grad_norm/frozen.weight", "grad_hist/frozen.bias"} <= frozen_keys
            assert row["grad_norm/frozen.weight"] == pytest.approx(
                expected[step][1].double().norm().item(), rel=1e-6
            )
        assert "grad_norm/body.weight" in row and "grad_norm/head.bias" in row
        assert row["grad/global_norm"] == pytest.approx(expected[step][0], rel=1e-6)


def test_backward_fallback_all_frozen_at_watch_then_unfrozen():
    model = tiny_model()
    model.requires_grad_(False)
    sink = MemorySink()
    with pytest.warns(UserWarning, match="frozen"):
        tracker = gradwandb.watch(model, sink=sink, hist_every=None)
    model.requires_grad_(True)
    train_steps = 2
    gen = torch.Generator().manual_seed(1)
    for _ in range(train_steps):
        x, y = batch(gen)
        model.zero_grad()
        F.mse_loss(model(x), y).backward()
    tracker.remove()
    assert [s for s, _ in sink.rows] == [0, 1]


# -- without an optimizer ------------------------------------------------------------------


def test_without_optimizer_one_row_per_backward_same_keys():
    sinks = {}
    norms: dict[bool, list[float]] = {True: [], False: []}
    for with_optimizer in (True, False):
        model = tiny_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sink = sinks[with_optimizer] = MemorySink()
        tracker = gradwandb.watch(
            model, opt if with_optimizer else None, sink=sink, layers_every=None, hist_every=None
        )
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            x, y = batch(gen)
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            norms[with_optimizer].append(global_norm(model))
            opt.step()  # unwatched in the fallback mode: the backward is the step
        assert tracker.step == 5
        tracker.remove()
    assert [s for s, _ in sinks[False].rows] == [0, 1, 2, 3, 4]
    assert row_keys(sinks[False]) == row_keys(sinks[True])
    assert "grad/global_norm" in sinks[False].rows[0][1]
    for with_optimizer, sink in sinks.items():
        logged = [v for _, v in sink.series("grad/global_norm")]
        assert logged == pytest.approx(norms[with_optimizer], rel=1e-6)
    # same model, same data, same updates: the two modes log the same numbers
    assert norms[False] == pytest.approx(norms[True], rel=1e-6)


# -- gradient accumulation -----------------------------------------------------------------


def test_gradient_accumulation_logs_accumulated_norm():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = CountingSink()
    tracker = gradwandb.watch(model, opt, sink=sink, hist_every=None)
    gen = torch.Generator().manual_seed(2)
    accumulated, last_micro = [], []
    for _ in range(3):
        opt.zero_grad()
        for micro in range(4):
            x, y = batch(gen)
            if micro == 3:
                partial = [p.grad.clone() for p in model.parameters()]
            (F.mse_loss(model(x), y) / 4).backward()
        accumulated.append(global_norm(model))
        last = [p.grad - g for p, g in zip(model.parameters(), partial, strict=True)]
        last_micro.append(torch.stack([g.double().norm() for g in last]).norm().item())
        opt.step()
    tracker.remove()
    assert sink.calls == [0, 1, 2]  # one row per optimizer step, not per micro-batch
    logged = [v for _, v in sink.series("grad/global_norm")]
    assert logged == pytest.approx(accumulated, rel=1e-6)
    for value, micro in zip(logged, last_micro, strict=True):
        assert value != pytest.approx(micro, rel=1e-2)


# -- tags ----------------------------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 3)


def test_tags_for_models_in_one_run(wandb_run):
    run = wandb_run()
    torch.manual_seed(0)
    first, encoder, encoder2, critic, other = (
        tiny_model(),
        Encoder(),
        Encoder(),
        Encoder(),
        Encoder(),
    )
    t_first = gradwandb.watch(first, run=run)
    t_enc = gradwandb.watch(encoder, run=run)
    t_enc2 = gradwandb.watch(encoder2, run=run)
    t_critic = gradwandb.watch(critic, run=run, name="critic")
    assert t_first.keys.tag is None
    assert t_enc.keys.tag == "encoder"
    assert t_enc2.keys.tag == "encoder_2"
    assert t_critic.keys.tag == "critic"
    assert t_critic.keys.scalar("grad/global_norm") == "grad/critic/global_norm"
    assert t_critic.keys.param("grad_norm", "proj.weight") == "grad_norm/critic/proj.weight"

    with pytest.raises(ValueError, match="critic"):
        gradwandb.watch(other, run=run, name="critic")
    with pytest.raises(ValueError, match="encoder"):
        gradwandb.watch(other, run=run, name="encoder")
    # the same model may take its own name again, and keeps its tag when re-watched
    assert gradwandb.watch(critic, run=run, name="critic").keys.tag == "critic"
    assert gradwandb.watch(encoder, run=run).keys.tag == "encoder"
    assert gradwandb.watch(first, run=run).keys.tag is None
    for model in (first, encoder, encoder2, critic):
        gradwandb.unwatch(model)


def test_refused_rewatch_keeps_existing_tracker():
    sink = MemorySink()
    torch.manual_seed(0)
    critic, encoder = Encoder(), Encoder()
    gradwandb.watch(critic, sink=sink, name="critic")
    tracker = gradwandb.watch(encoder, sink=sink)
    with pytest.raises(ValueError):
        gradwandb.watch(encoder, sink=sink, name="critic")
    assert tracker.active


@pytest.mark.parametrize("scheduler_first", [True, False])
def test_lr_schedulers_work_whether_made_before_or_after_watch(scheduler_first: bool) -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even torch's "overridden after" warning
        if scheduler_first:
            sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
        tracker = gradwandb.watch(model, opt, sink=sink)
        if not scheduler_first:
            sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
        train(model, opt, 1)
        sched.step()
        train(model, opt, 1)
        sched.step()
        tracker.remove()
        train(model, opt, 1)
        sched.step()
    assert len(sink.rows) == 2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 8)
