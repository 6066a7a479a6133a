"""Diagnosis wired into real tiny trainings: verdicts, findings, alerts, the run summary, guard.

Each scenario trains a seeded model for a few dozen steps and checks the verdict the tracker
reaches, the layers its findings name, the alerts it sends and what the run summary says. The
non-finite guard is checked bit for bit: a skipped step leaves weights and optimizer state
exactly as they were. A :class:`gradwandb.MemorySink` is used unless W&B is the point.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import gradwandb
from gradwandb.keys import FINDING_FIELDS
from gradwandb.live.alerts import MAX_ALERTS_PER_KIND
from gradwandb.live.diagnosis import Finding, Thresholds
from gradwandb.live.sinks import MemorySink
from tests.conftest import read_back

Batch = tuple[Tensor, Tensor]
MakeOptimizer = Callable[[Any], torch.optim.Optimizer]


# -- models --------------------------------------------------------------------------------


def deep_sigmoid_mlp(depth: int = 8, width: int = 16) -> nn.Sequential:
    """Sigmoids with weights of std 0.01: each layer shrinks the backward signal ~100x."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        nn.init.normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def deep_linear(depth: int = 6, width: int = 32) -> nn.Sequential:
    """Linear layers with weights of std 1 (Xavier would be ~0.18): each one amplifies ~5x."""
    torch.manual_seed(0)
    layers = [nn.Linear(width, width) for _ in range(depth)]
    for linear in layers:
        nn.init.normal_(linear.weight, std=1.0)
    return nn.Sequential(*layers)


class RNNNet(nn.Module):
    """A vanilla tanh RNN over the sequence, a linear head on its last state."""

    def __init__(self, std: float | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.RNN(4, 32, batch_first=True)
        self.head = nn.Linear(32, 1)
        if std is not None:
            for name, p in self.rnn.named_parameters():
                if name.startswith("weight"):
                    nn.init.normal_(p, std=std)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class LSTMNet(nn.Module):
    """An LSTM with PyTorch's default init, a linear head on its last state."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(4, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class Block(nn.Module):
    """Pre-norm residual block: x + fc2(gelu(fc1(norm(x))))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ResidualMLP(nn.Module):
    def __init__(self, width: int = 32, depth: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(8, width)
        self.blocks = nn.Sequential(*[Block(width) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.blocks(self.inp(x)))


class NanGrad(nn.Linear):
    """A linear layer whose backward emits NaN (into its output's gradient) at given calls.

    Its own weight and bias then get NaN gradients, and so does every layer before it; the
    layers after it stay finite. Call ``i`` is the forward of optimizer step ``i``.
    """

    def __init__(self, n_in: int, n_out: int, bad: Callable[[int], bool]) -> None:
        super().__init__(n_in, n_out)
        self.bad = bad
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        if self.bad(self.calls):
            y.register_hook(lambda g: g * float("nan"))
        self.calls += 1
        return y


def faulty_mlp(bad: Callable[[int], bool]) -> nn.Sequential:
    """Layer ``2`` (a NaN-emitting linear) between two healthy ones."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), NanGrad(8, 8, bad), nn.Tanh(), nn.Linear(8, 2))


# -- data and training ---------------------------------------------------------------------


def batches(
    shape_x: tuple[int, ...], shape_y: tuple[int, ...], n: int, seed: int = 1
) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(*shape_x, generator=gen), torch.randn(*shape_y, generator=gen))
        for _ in range(n)
    ]


def sequences(n: int, seed: int = 1) -> list[Batch]:
    """Sequences of 25 steps of 4 features; the target is a sum of the first feature."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(16, 25, 4, generator=gen)
        out.append((x, x[..., 0].sum(-1, keepdim=True) / 5))
    return out


def train(model: nn.Module, opt: torch.optim.Optimizer, data: list[Batch]) -> Iterator[int]:
    """One optimizer step per batch, yielding the step index just before ``opt.step()``."""
    for i, (x, y) in enumerate(data):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        yield i
        opt.step()


def run_scenario(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: list[Batch],
    sink: MemorySink | None = None,
    **watch: Any,
) -> tuple[gradwandb.Tracker, MemorySink]:
    sink = MemorySink() if sink is None else sink
    tracker = gradwandb.watch(model, opt, sink=sink, **watch)
    for _ in train(model, opt, data):
        pass
    return tracker, sink


def error_layers(tracker: gradwandb.Tracker, kind: str) -> list[str | None]:
    return [
        f.layer for f in tracker.diagnosis().findings if f.kind == kind and f.severity == "error"
    ]


def state_of(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict())}


def assert_bit_identical(a: Any, b: Any, where: str = "") -> None:
    """Tensors equal bit for bit (NaN == NaN), recursively through dicts and lists."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)), where
    elif isinstance(a, Mapping):
        assert set(a) == set(b), where
        for key in a:
            assert_bit_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bit_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# -- verdicts ------------------------------------------------------------------------------


def test_deep_sigmoid_mlp_with_tiny_init_is_vanishing_in_its_early_layers() -> None:
    model = deep_sigmoid_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker, sink = run_scenario(model, opt, batches((32, 16), (32, 1), 20), layers_every=1)
    diagnosis = tracker.diagnosis()
    assert diagnosis.verdict == "vanishing"
    vanishing = error_layers(tracker, "vanishing")
    assert {"0.weight", "2.weight", "4.weight"} <= set(vanishing)
    assert not {"14.weight", "16.weight"} & set(vanishing)  # the layers nearest the loss are fine
    assert error_layers(tracker, "flow") == ["0.weight"]  # earliest layer against the latest
    # every finding carries its fix; the rows carry the signals
    assert all(f.fix.startswith("try:") for f in diagnosis.findings)
    assert sink.rows[-1][1]["health/vanishing"] == 1.0
    assert sink.rows[0][1]["health/vanishing"] == 0.0  # not sustained yet at the first step
    assert sink.rows[-1][1]["health/vanishing_layers"] >= 6
    # one alert per kind, naming the first layer, with the fix; biases (warnings) page no one
    assert [(a.title, a.level) for a in sink.alerts] == [
        ("gradwandb: vanishing gradients", "WARN"),
        ("gradwandb: gradient flow blocked", "WARN"),
    ]
    assert "'0.weight'" in sink.alerts[0].text and "try:" in sink.alerts[0].text
    assert ".bias" not in sink.alerts[0].text
    tracker.remove()
    assert sink.summaries["gradwandb/verdict"] == "vanishing"
    findings = sink.summaries["gradwandb/findings"]
    assert findings == [f.to_record() for f in diagnosis.findings]  # records, not lines
    assert all(list(r) == list(FINDING_FIELDS) for r in findings)
    assert all(r["fix"].startswith("try: ") and r["fix"].count("try:") == 1 for r in findings)


def test_deep_linear_net_with_large_init_is_exploding() -> None:
    model = deep_linear()
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)  # stays finite: this is about init
    tracker, sink = run_scenario(model, opt, batches((32, 32), (32, 32), 20), layers_every=1)
    diagnosis = tracker.diagnosis()
    assert diagnosis.verdict == "exploding"
    first = diagnosis.findings[0]
    assert (first.kind, first.layer, first.step) == ("exploding", None, 0)
    assert first.value == pytest.approx(sink.rows[0][1]["grad/global_norm"])
    assert "0.weight" in error_layers(tracker, "exploding")
    assert "LSTM" not in first.fix  # a feed-forward net gets feed-forward fixes
    assert [(a.title, a.level) for a in sink.alerts] == [
        ("gradwandb: exploding gradients", "ERROR")
    ]
    assert sink.rows[0][1]["health/exploding"] == 1.0
    tracker.remove()
    assert sink.summaries["gradwandb/verdict"] == "exploding"


def test_rnn_with_large_init_and_high_learning_rate_is_exploding() -> None:
    model = RNNNet(std=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker, sink = run_scenario(model, opt, sequences(15), layers_every=1)
    norms = [v for _, v in sink.series("grad/global_norm")]
    assert all(isinstance(v, float) and v == v for v in norms)  # still finite: exploding, not NaN
    assert max(norms) > 1e6
    diagnosis = tracker.diagnosis()
    assert diagnosis.verdict == "exploding"
    assert {"rnn.weight_hh_l0", "rnn.weight_ih_l0"} <= set(error_layers(tracker, "exploding"))
    recurrent = next(f for f in diagnosis.findings if f.layer == "rnn.weight_hh_l0")
    # the owning module is an nn.RNN (layer types from watch): clip, and gated cells
    assert "clip" in recurrent.fix and "nn.LSTM or nn.GRU" in recurrent.fix
    exploding = [a for a in sink.alerts if a.title == "gradwandb: exploding gradients"]
    assert sink.alerts[0] == exploding[0] and exploding[0].level == "ERROR"
    assert "'rnn.weight_hh_l0'" in exploding[0].text  # the first layer over the limit, step 0
    assert len(exploding) == MAX_ALERTS_PER_KIND  # new layers at steps 0, 1, 3, ... capped
    tracker.remove()


def test_well_initialized_lstm_stays_healthy() -> None:
    model = LSTMNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tracker, sink = run_scenario(model, opt, sequences(30), layers_every=1)
    assert tracker.diagnosis().verdict == "healthy"
    assert error_layers(tracker, "vanishing") == error_layers(tracker, "exploding") == []
    assert sink.alerts == []
    assert all(row["health/exploding"] == row["health/vanishing"] == 0.0 for _, row in sink.rows)
    tracker.remove()
    assert sink.summaries["gradwandb/verdict"] == "healthy"


def test_residual_mlp_with_layer_norm_stays_healthy() -> None:
    model = ResidualMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(2)
    data = []
    for _ in range(30):
        x = torch.randn(32, 8, generator=gen)
        data.append((x, torch.sin(x.sum(-1, keepdim=True))))
    tracker, sink = run_scenario(model, opt, data, layers_every=1)
    assert tracker.diagnosis().verdict == "healthy"
    assert sink.alerts == []
    # the gradient reaches the first layer within a decade or two of the last
    assert all(abs(row["health/flow_ratio"]) < 2.0 for _, row in sink.rows)
    tracker.remove()
    assert sink.summaries["gradwandb/verdict"] == "healthy"


def test_nan_from_a_layer_is_nonfinite_at_that_step_naming_the_layer() -> None:
    k = 5
    model = faulty_mlp(lambda step: step >= k)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tracker, sink = run_scenario(model, opt, batches((16, 6), (16, 2), 8))  # layers_every=10
    diagnosis = tracker.diagnosis()
    assert diagnosis.verdict == "nonfinite"
    first = next(f for f in diagnosis.findings if f.kind == "nonfinite")
    assert (first.step, first.layer) == (k, "2.bias")  # the faulty layer, first in backward
    assert "'2.weight', '0.bias', '0.weight'" in first.message  # and those it reached
    row = dict(sink.rows[k][1])
    assert row["grad/nonfinite"] == 4
    assert row["grad_nonfinite/2.bias"] == 8 and row["grad_nonfinite/0.weight"] == 48
    assert row["health/nonfinite"] == 1.0
    assert all(r["grad/nonfinite"] == 0 and r["health/nonfinite"] == 0.0 for _, r in sink.rows[:k])
    nonfinite_alerts = [a for a in sink.alerts if a.title == "gradwandb: NaN/Inf gradients"]
    assert nonfinite_alerts[0].level == "ERROR"
    assert "'2.bias'" in nonfinite_alerts[0].text and "guard=True" in nonfinite_alerts[0].text
    assert "guard/skipped" not in row  # the guard is off by default
    tracker.remove()


# -- the guard -----------------------------------------------------------------------------

OPTIMIZERS: dict[str, MakeOptimizer] = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd-foreach": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=False),
    "adam-foreach": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=False),
    "adamw-foreach": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=True),
}


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_guard_skips_the_bad_step_bit_for_bit_and_training_goes_on(make: MakeOptimizer) -> None:
    k, steps = 4, 9
    data = batches((16, 6), (16, 2), steps)
    model = faulty_mlp(lambda step: step == k)
    opt = make(model.parameters())
    sink = MemorySink()
    tracker = gradwandb.watch(model, opt, sink=sink, guard=True)
    for i in train(model, opt, data):
        if i == k:
            before = state_of(model, opt)
    tracker.remove()
    assert [v for _, v in sink.series("guard/skipped")] == [int(i == k) for i in range(steps)]
    assert [v for _, v in sink.series("guard/skipped_total")] == [int(i >= k) for i in range(steps)]
    assert tracker.step == steps
    assert tracker.diagnosis().verdict == "nonfinite"

    # the same training without batch k, no tracker: bit-identical weights and state
    reference = faulty_mlp(lambda step: False)
    ref_opt = make(reference.parameters())
    for _ in train(reference, ref_opt, data[:k] + data[k + 1 :]):
        pass
    assert_bit_identical(state_of(model, opt), state_of(reference, ref_opt))
    assert not torch.equal(before["model"]["0.weight"], model[0].weight)  # later steps ran


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_guard_leaves_weights_and_state_untouched_at_the_bad_step(make: MakeOptimizer) -> None:
    k = 3
    model = faulty_mlp(lambda step: step == k)
    opt = make(model.parameters())
    gradwandb.watch(model, opt, sink=MemorySink(), guard=True)
    for i, (x, y) in enumerate(batches((16, 6), (16, 2), k + 2)):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        before = state_of(model, opt)
        opt.step()
        after = state_of(model, opt)
        if i == k:
            assert_bit_identical(after, before)
            assert all(p.grad is None for p in model.parameters())  # cleared
        else:
            assert not torch.equal(after["model"]["4.weight"], before["model"]["4.weight"])
    gradwandb.unwatch(model)


def test_guard_n_stops_after_n_bad_steps_in_a_row_naming_the_layers() -> None:
    k = 3
    model = faulty_mlp(lambda step: step >= k)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sink = MemorySink()
    tracker = gradwandb.watch(model, opt, sink=sink, guard=2)
    steps = train(model, opt, batches((16, 6), (16, 2), 10))
    with pytest.raises(gradwandb.StopTraining) as info:
        for i in steps:
            if i == k:
                before = state_of(model, opt)
    message = str(info.value)
    assert "2 optimizer steps in a row" in message and f"steps {k}-{k + 1}" in message
    assert "2.weight" in message and "2.bias" in message and "4.weight" not in message
    assert "guard=True" in message  # how to skip without stopping
    assert tracker.step == k + 2  # the step that raised was counted and logged
    assert_bit_identical(state_of(model, opt), before)  # both bad steps were skipped
    assert [v for _, v in sink.series("guard/skipped")][k:] == [1, 1]
    assert sink.last()["guard/skipped_total"] == 2
    assert tracker.active  # StopTraining went through the shield; tracking did not fail
    tracker.remove()
    assert sink.summaries["gradwandb/verdict"] == "nonfinite"


def test_guard_n_counts_only_bad_steps_in_a_row() -> None:
    model = faulty_mlp(lambda step: step in (2, 4, 6))  # never two in a row
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, guard=2):
        for _ in train(model, opt, batches((16, 6), (16, 2), 8)):
            pass
    assert sink.last()["guard/skipped_total"] == 3


def test_guard_without_optimizer_zeroes_the_gradients_for_a_hand_written_update() -> None:
    k, lr = 2, 0.1
    model = faulty_mlp(lambda step: step == k)
    sink = MemorySink()
    tracker = gradwandb.watch(model, sink=sink, guard=True)
    for i, (x, y) in enumerate(batches((16, 6), (16, 2), 5)):
        model.zero_grad()
        F.mse_loss(model(x), y).backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None for g in grads)  # never None: the update below must not raise
        assert all(bool((g == 0).all()) for g in grads if g is not None) == (i == k)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            for p in model.parameters():  # the word-LM shape: an update by hand
                assert p.grad is not None
                p.add_(p.grad, alpha=-lr)
        moved = not torch.equal(before["4.weight"], model[4].weight)
        assert moved == (i != k)
        if i == k:
            for n, p in model.named_parameters():
                assert torch.equal(before[n], p.detach()), n
    assert [v for _, v in sink.series("guard/skipped")] == [0, 0, 1, 0, 0]
    tracker.remove()

    # guard=1: StopTraining comes out of backward()
    model = faulty_mlp(lambda step: step == 1)
    gradwandb.watch(model, sink=MemorySink(), guard=1)
    x, y = batches((16, 6), (16, 2), 1)[0]
    F.mse_loss(model(x), y).backward()
    with pytest.raises(gradwandb.StopTraining, match=r"2\.bias"):
        F.mse_loss(model(x), y).backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    gradwandb.unwatch(model)


def test_guard_skips_gradients_whose_squares_overflow_like_nonfinite_ones() -> None:
    w = nn.Parameter(torch.ones(4))
    holder = nn.ParameterList([w])
    opt = torch.optim.SGD([w], lr=1e-20)
    sink = MemorySink()
    with gradwandb.watch(holder, opt, sink=sink, guard=True):
        (w * 1e20).sum().backward()  # each grad 1e20: its float32 sum of squares overflows
        opt.step()
    assert w.detach().tolist() == [1.0] * 4  # skipped: an optimizer's g*g would overflow
    assert sink.last()["guard/skipped"] == 1
    assert sink.last()["grad/global_norm"] == pytest.approx(2e20, rel=1e-6)  # logged exactly


def test_guard_leaves_an_amp_overflow_to_the_grad_scaler() -> None:
    k = 2
    model = faulty_mlp(lambda step: step == k)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, scaler=scaler, guard=1) as tracker:
        for x, y in batches((16, 6), (16, 2), 5):  # guard=1 would stop at a bad step it saw
            opt.zero_grad()
            scaler.scale(F.mse_loss(model(x), y)).backward()
            scaler.step(opt)
            scaler.update()
    assert [v for _, v in sink.series("amp/overflow_skip")] == [0, 0, 1, 0, 0]
    assert [s for s, _ in sink.series("guard/skipped")] == [0, 1, 3, 4]  # not on the AMP skip
    assert sink.last()["guard/skipped_total"] == 0
    assert tracker.diagnosis().verdict == "healthy"  # an AMP skip is no gradient problem


# -- alerts, thresholds, the summary -------------------------------------------------------


def test_alerts_once_per_kind_and_layer_at_most_a_few_per_kind() -> None:
    depth = 5

    def bad_at(j: int) -> Callable[[int], bool]:
        return lambda step: step == 2 + 2 * j  # layer j misbehaves once, at its own step

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for j in range(depth):
        layers += [NanGrad(8, 8, bad_at(j)), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker, sink = run_scenario(model, opt, batches((16, 8), (16, 2), 14), guard=True)
    origins = [f.layer for f in tracker.diagnosis().findings if f.kind == "nonfinite"]
    assert origins == [f"{2 * j}.bias" for j in range(depth)]  # five layers, five findings
    assert len(sink.alerts) == MAX_ALERTS_PER_KIND < depth
    for j, alert in enumerate(sink.alerts):
        assert f"'{2 * j}.bias'" in alert.text
    tracker.remove()
    assert len(sink.summaries["gradwandb/findings"]) == depth  # the summary has them all


class AlertRaises(MemorySink):
    def alert(self, title: str, text: str, level: str) -> None:
        raise ConnectionError("no network")


def test_a_failing_alert_never_breaks_training_or_logging() -> None:
    model = deep_linear(depth=3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)
    sink = AlertRaises()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker, _ = run_scenario(model, opt, batches((8, 32), (8, 32), 4), sink, layers_every=1)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "alert" in messages[0] and "no network" in messages[0]
    assert tracker.active and tracker.diagnosis().verdict == "exploding"
    assert [s for s, _ in sink.rows] == [0, 1, 2, 3]  # every step logged
    tracker.remove()


def test_diagnose_off_and_custom_thresholds() -> None:
    data = batches((16, 6), (16, 2), 4)
    model = faulty_mlp(lambda step: False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker, sink = run_scenario(model, opt, data, diagnose=False)
    diagnosis = tracker.diagnosis()
    assert (diagnosis.verdict, list(diagnosis.findings)) == ("healthy", [])
    assert not any(k.startswith("health/") for _, row in sink.rows for k in row)
    tracker.remove()
    assert "gradwandb/verdict" not in sink.summaries

    # the same model and data: healthy by default, exploding under a tiny limit
    verdicts = []
    for diagnose in (True, Thresholds(explode_global=1e-3, explode_norm=1e-3)):
        model = faulty_mlp(lambda step: False)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        tracker, sink = run_scenario(model, opt, data, diagnose=diagnose)
        verdicts.append(tracker.diagnosis().verdict)
        tracker.remove()
    assert verdicts == ["healthy", "exploding"]


def test_health_signals_on_every_row_and_tagged_for_a_second_model() -> None:
    sink = MemorySink()
    first, second = faulty_mlp(lambda step: False), deep_linear()
    params = list(first.parameters()) + list(second.parameters())
    opt = torch.optim.SGD(params, lr=1e-9)
    t1 = gradwandb.watch(first, opt, sink=sink)  # layers_every=10: steps 1-9 are global-only
    t2 = gradwandb.watch(second, opt, sink=sink, name="critic")
    for x, y in batches((16, 32), (16, 32), 12):
        opt.zero_grad()
        (F.mse_loss(first(x[:, :6]), y[:, :2]) + F.mse_loss(second(x), y)).backward()
        opt.step()
    for _, row in sink.rows:
        assert {"health/exploding", "health/critic/exploding", "health/spike_z"} <= set(row)
    assert "health/flow_ratio" in sink.rows[0][1] and "health/flow_ratio" not in sink.rows[1][1]
    assert sink.last()["health/critic/exploding"] == 1.0  # std-1 weights, 6 layers
    assert sink.last()["health/exploding"] == 0.0
    assert all(a.title == "gradwandb: exploding gradients (critic)" for a in sink.alerts)
    t1.remove()
    t2.remove()
    assert sink.summaries["gradwandb/verdict"] == "healthy"
    assert sink.summaries["gradwandb/critic/verdict"] == "exploding"


def count_host_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count every way a tensor's value reaches the host (each is a sync on an accelerator)."""
    counts = {"to_host": 0, "item": 0, "tolist": 0, "__float__": 0, "__bool__": 0, "__int__": 0}
    from gradwandb.live.stats import kernels as statistics

    original_to_host = statistics.to_host

    def to_host(named: Any) -> Any:
        counts["to_host"] += 1
        return original_to_host(named)

    monkeypatch.setattr(statistics, "to_host", to_host)
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        method = getattr(Tensor, name)

        def counted(self: Tensor, *args: Any, _name: str = name, _method: Any = method) -> Any:
            counts[_name] += 1
            return _method(self, *args)

        monkeypatch.setattr(Tensor, name, counted)
    return counts


def test_cost_diagnosis_reads_nothing_more_and_the_guard_one_value_a_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = 6
    data = batches((16, 6), (16, 2), steps)
    counts: dict[tuple[bool, bool], dict[str, int]] = {}
    for diagnose in (False, True):
        for guard in (False, True):
            model = faulty_mlp(lambda step: False)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            tracker = gradwandb.watch(model, opt, sink=MemorySink(), diagnose=diagnose, guard=guard)
            with monkeypatch.context() as patch:
                reads = count_host_reads(patch)
                for _ in train(model, opt, data):
                    pass
            tracker.remove()
            counts[diagnose, guard] = dict(reads)
    for guard in (False, True):
        assert counts[True, guard] == counts[False, guard]  # diagnosis reads host numbers only
        assert counts[True, guard]["to_host"] == steps  # one transfer per logged step
    reads = {guard: sum(counts[True, guard].values()) for guard in (False, True)}
    assert reads[True] - reads[False] == steps  # the guard: one more value a step, the norm


# -- on a real offline W&B run -------------------------------------------------------------


def test_alerts_and_verdict_read_back_from_a_wandb_run(wandb_run: Callable[..., Any]) -> None:
    run = wandb_run()
    k = 3
    model = faulty_mlp(lambda step: step == k)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tracker = gradwandb.watch(model, opt, run=run, guard=True, hist_every=None)
    for x, y in batches((16, 6), (16, 2), 6):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        run.log({"loss": loss.item()})
    log = read_back(run)  # finishes the run: the verdict is written on the way out
    assert not tracker.active
    assert [(a["title"], a["level"]) for a in log.alerts] == [
        ("gradwandb: NaN/Inf gradients", "ERROR")
    ]
    assert "'2.bias'" in log.alerts[0]["text"] and "try:" in log.alerts[0]["text"]
    assert log.summary["gradwandb/verdict"] == "nonfinite"
    (record,) = log.summary["gradwandb/findings"]
    assert set(record) == set(FINDING_FIELDS)
    finding = Finding.from_record(record)
    assert finding == tracker.diagnosis().findings[0]
    assert (finding.kind, finding.severity, finding.layer, finding.step) == (
        "nonfinite",
        "error",
        "2.bias",
        k,
    )
    assert f"step {k}" in finding.message and finding.fix.startswith("try: ")
    assert "guard=True" not in finding.fix  # the guard is on already
    assert [v for _, v in log.series("guard/skipped")] == [0, 0, 0, 1, 0, 0]
    assert [v for _, v in log.series("health/nonfinite")] == [0, 0, 0, 1, 0, 0]
    assert [s for s, _ in log.series("loss")] == list(range(6))  # one row per step, as before


def test_healthy_run_reads_back_healthy_without_alerts(wandb_run: Callable[..., Any]) -> None:
    run = wandb_run()
    model = LSTMNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tracker = gradwandb.watch(model, opt, run=run, hist_every=None)
    for _ in train(model, opt, sequences(12)):
        pass
    tracker.remove()  # the verdict is written at removal too
    log = read_back(run)
    assert log.alerts == []
    assert log.summary["gradwandb/verdict"] == "healthy"
    assert log.summary["gradwandb/findings"] == []
    assert len(log.series("health/exploding")) == 12


class Finishing:
    """An observer with ``finish()``: counts its calls and what it saw."""

    def __init__(self) -> None:
        self.records = 0
        self.finished = 0

    def __call__(self, record: Any) -> None:
        self.records += 1

    def finish(self) -> None:
        self.finished += 1


def test_the_tracker_finishes_its_observers_once_when_removed() -> None:
    model = faulty_mlp(lambda step: False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker, sink = run_scenario(model, opt, batches((16, 6), (16, 2), 3))
    observer = Finishing()
    tracker.add_observer(observer)
    for _ in train(model, opt, batches((16, 6), (16, 2), 2)):
        pass
    tracker.remove()
    tracker.remove()
    assert (observer.records, observer.finished) == (2, 1)
    assert sink.summaries["gradwandb/verdict"] == "healthy"  # the diagnosis observer finished


def test_the_tracker_finishes_its_observers_when_the_run_finishes(
    wandb_run: Callable[..., Any],
) -> None:
    run = wandb_run()
    model = faulty_mlp(lambda step: False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = gradwandb.watch(model, opt, run=run, hist_every=None)
    observer = Finishing()
    tracker.add_observer(observer)
    for _ in train(model, opt, batches((16, 6), (16, 2), 2)):
        pass
    log = read_back(run)
    assert observer.finished == 1 and not tracker.active
    tracker.remove()
    assert observer.finished == 1
    assert log.summary["gradwandb/verdict"] == "healthy"
    assert log.summary["gradwandb/findings"] == []
