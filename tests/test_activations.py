"""Activation health, against direct recomputation on seeded tiny float64 models."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_sequence

import gradwandb
from gradwandb.keys import Keys, act_key
from gradwandb.live.monitors.activations import ActivationMonitor, kind_of
from gradwandb.live.record import FILL, StepRecord
from gradwandb.live.sinks import Value

Row = dict[str, Value]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: no thread pool


def _record(step: int) -> StepRecord:
    return StepRecord(step=step, names=[], norm=[], global_norm=0.0)


def _close(expected: float) -> object:
    return pytest.approx(expected, rel=1e-9, abs=1e-12)


def _direct(y: Tensor) -> dict[str, float]:
    """zero_frac, mean and population std, computed directly."""
    return {
        "zero_frac": (y == 0).double().mean().item(),
        "mean": y.mean().item(),
        "std": y.std(correction=0).item(),
    }


def _check(row: Row, name: str, expected: dict[str, float]) -> None:
    for stat, value in expected.items():
        assert row[f"act/{name}/{stat}"] == _close(value), stat


def _mlp(act: nn.Module, scale: float, bias: float | None = None, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    first = nn.Linear(5, 16)
    with torch.no_grad():
        first.weight.mul_(scale)
        if bias is not None:
            first.bias.fill_(bias)
    return nn.Sequential(first, act, nn.Linear(16, 1)).double()


def _step(monitor: ActivationMonitor, model: nn.Module, step: int, *inputs: Tensor) -> Row | None:
    """Forward (and backward) every input as part of ``step``, then report ``step``."""
    for x in inputs:
        model(x).sum().backward()
    return monitor(_record(step))


def test_tanh_saturation_equals_direct_count() -> None:
    model = _mlp(nn.Tanh(), scale=20.0)
    monitor = ActivationMonitor(model, every=1).attach()
    x = torch.randn(32, 5, dtype=torch.float64)
    row = _step(monitor, model, 0, x)
    assert row is not None
    y = model[:2](x).detach()
    saturated = (y.abs() > 0.99).double().mean().item()
    assert saturated > 0.5  # large weights: most units in the flat tails
    _check(row, "1", {"saturated_frac": saturated, **_direct(y)})
    assert "act/1/dead_frac" not in row
    assert monitor.modules == ["1"]


def test_saturation_threshold_is_configurable() -> None:
    model = _mlp(nn.Tanh(), scale=1.0)
    monitor = ActivationMonitor(model, every=1, saturation=0.6).attach()
    x = torch.randn(64, 5, dtype=torch.float64)
    row = _step(monitor, model, 0, x)
    assert row is not None
    frac = (model[:2](x).abs() > 0.6).double().mean().item()
    assert 0.0 < frac < 1.0
    assert row["act/1/saturated_frac"] == _close(frac)


def test_relu_dead_units_equal_direct_count() -> None:
    model = _mlp(nn.ReLU(), scale=1.0, bias=-1.5, seed=1)
    monitor = ActivationMonitor(model, every=1).attach()
    x = torch.randn(16, 5, dtype=torch.float64)
    row = _step(monitor, model, 0, x)
    assert row is not None
    y = model[:2](x).detach()
    dead = (y == 0).all(dim=0).double().mean().item()
    assert 0.0 < dead < 1.0  # the negative bias kills some units, not all
    _check(row, "1", {"dead_frac": dead, **_direct(y)})
    assert row["act/1/zero_frac"] > dead  # live units are zero on part of the batch too
    assert "act/1/saturated_frac" not in row


def test_sigmoid_saturation_counts_both_tails() -> None:
    model = _mlp(nn.Sigmoid(), scale=8.0, seed=2)
    monitor = ActivationMonitor(model, every=1).attach()
    x = torch.randn(32, 5, dtype=torch.float64)
    row = _step(monitor, model, 0, x)
    assert row is not None
    y = model[:2](x).detach()
    low, high = (y < 0.01).double().mean().item(), (y > 0.99).double().mean().item()
    assert low > 0 and high > 0
    _check(row, "1", {"saturated_frac": low + high, **_direct(y)})


def test_leaky_relu_and_gelu_dead_means_never_positive() -> None:
    torch.manual_seed(3)
    first, second = nn.Linear(4, 12), nn.Linear(12, 12)
    with torch.no_grad():
        first.bias.fill_(-1.0)
        second.bias.fill_(-0.1)
    model = nn.Sequential(first, nn.LeakyReLU(0.1), second, nn.GELU()).double()
    monitor = ActivationMonitor(model, every=1).attach()
    x = torch.randn(8, 4, dtype=torch.float64)
    row = _step(monitor, model, 0, x)
    assert row is not None
    for path, end in (("1", 2), ("3", 4)):
        y = model[:end](x).detach()
        dead = (y <= 0).all(dim=0).double().mean().item()
        assert 0.0 < dead < 1.0
        _check(row, path, {"dead_frac": dead, **_direct(y)})


def test_forwards_of_one_step_are_pooled() -> None:
    model = _mlp(nn.ReLU(), scale=1.0, bias=-1.0, seed=4)
    monitor = ActivationMonitor(model, every=1).attach()
    a, b = torch.randn(3, 5, dtype=torch.float64), torch.randn(11, 5, dtype=torch.float64) + 2
    row = _step(monitor, model, 0, a, b)
    assert row is not None
    ya, yb = model[:2](a).detach(), model[:2](b).detach()
    y = torch.cat([ya, yb])
    dead = (y == 0).all(dim=0).double().mean().item()
    # pooling matters: some unit is dead in the first forward only
    assert (ya == 0).all(dim=0).double().mean().item() > dead
    _check(row, "1", {"dead_frac": dead, **_direct(y)})


def test_module_reused_with_two_widths_pools_all_but_dead_frac() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.act = nn.Linear(3, 4), nn.Linear(4, 6), nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            y: Tensor = self.act(self.b(self.act(self.a(x))))
            return y

    torch.manual_seed(5)
    model = Twice().double()
    monitor = ActivationMonitor(model, every=1).attach()
    x = torch.randn(7, 3, dtype=torch.float64)
    row = _step(monitor, model, 0, x)
    assert row is not None
    h = model.act(model.a(x)).detach()
    y = torch.cat([h.reshape(-1), model.act(model.b(h)).detach().reshape(-1)])
    _check(row, "act", _direct(y))
    assert "act/act/dead_frac" not in row


def test_unmonitored_steps_and_no_grad_forwards_capture_nothing() -> None:
    model = _mlp(nn.Tanh(), scale=3.0)
    clock = [0]
    monitor = ActivationMonitor(model, every=2, clock=lambda: clock[0]).attach()
    x = torch.randn(4, 5, dtype=torch.float64)
    clock[0] = 1
    assert _step(monitor, model, 1, x) is None
    assert all(t.count == 0 and t.mean is None for t in monitor._taps)
    clock[0] = 2
    with torch.no_grad():
        model(x + 100.0)  # evaluation: not counted
        expected = _direct(model[:2](x))
    row = _step(monitor, model, 2, x)
    assert row is not None
    _check(row, "1", expected)
    assert monitor(_record(2)) is None  # reported once


def test_without_clock_follows_records() -> None:
    model = _mlp(nn.Sigmoid(), scale=1.0)
    monitor = ActivationMonitor(model, every=2).attach()
    x = torch.randn(4, 5, dtype=torch.float64)
    assert _step(monitor, model, 0, x) is not None
    assert _step(monitor, model, 1, x) is None
    row = _step(monitor, model, 2, x)
    assert row is not None and "act/1/saturated_frac" in row


def test_data_of_a_step_never_reported_is_dropped() -> None:
    model = _mlp(nn.Tanh(), scale=1.0)
    clock = [0]
    monitor = ActivationMonitor(model, every=1, clock=lambda: clock[0]).attach()
    x, z = torch.randn(4, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    model(x + 50.0)  # step 0, whose record never comes
    clock[0] = 1
    row = _step(monitor, model, 1, z)
    assert row is not None
    _check(row, "1", _direct(model[:2](z).detach()))


def test_remove_leaves_no_hooks() -> None:
    model = _mlp(nn.ReLU(), scale=1.0)
    before = [dict(m._forward_hooks) for m in model.modules()]
    with ActivationMonitor(model, every=1) as monitor:
        assert monitor.attached and len(model[1]._forward_hooks) == 1
        monitor.attach()  # a second call does nothing
        assert len(model[1]._forward_hooks) == 1
    assert not monitor.attached
    assert [dict(m._forward_hooks) for m in model.modules()] == before
    assert _step(monitor, model, 0, torch.randn(2, 5, dtype=torch.float64)) is None
    assert "detached" in repr(monitor)


@pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")
def test_recurrent_outputs() -> None:
    torch.manual_seed(6)
    lstm = nn.LSTM(3, 4, batch_first=True).double()
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(6.0)
    monitor = ActivationMonitor(lstm, every=1).attach()
    seqs = [torch.randn(n, 3, dtype=torch.float64) for n in (5, 3, 2)]
    packed = pack_sequence(seqs)
    out, _ = lstm(packed)
    out.data.sum().backward()
    row = monitor(_record(0))
    assert row is not None
    y = lstm(packed)[0].data.detach()  # the real timesteps only, no padding
    assert y.shape[0] == 10
    _check(row, "lstm", {"saturated_frac": (y.abs() > 0.99).double().mean().item(), **_direct(y)})

    relu_rnn = nn.RNN(3, 4, nonlinearity="relu")
    projected = nn.LSTM(3, 4, proj_size=2)
    assert (kind_of(nn.GRU(3, 4)), kind_of(relu_rnn), kind_of(projected)) == (
        "tanh",
        "relu",
        "linear",
    )
    monitor = ActivationMonitor(projected, every=1).attach()
    projected(torch.randn(5, 2, 3))[0].sum().backward()
    row = monitor(_record(0))
    assert row is not None
    assert sorted(row) == ["act/lstm/mean", "act/lstm/std", "act/lstm/zero_frac"]


def test_low_precision_outputs() -> None:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh()).to(torch.bfloat16)
    monitor = ActivationMonitor(model, every=1).attach()
    x = torch.randn(6, 5, dtype=torch.bfloat16)
    model(x).float().sum().backward()
    row = monitor(_record(0))
    assert row is not None
    y = model(x).detach().float()
    assert row["act/1/mean"] == pytest.approx(y.mean().item(), rel=1e-6, abs=1e-6)


def test_tagged_keys_and_module_choice() -> None:
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh())
    monitor = ActivationMonitor(model, every=1, modules=["3"], keys=Keys("critic")).attach()
    model(torch.randn(4, 2)).sum().backward()
    row = monitor(_record(0))
    assert row is not None
    assert sorted(row) == [
        act_key(Keys("critic"), "3", s) for s in ("mean", "saturated_frac", "std", "zero_frac")
    ]
    assert sorted(row)[0] == "act/critic/3/mean"


def test_internal_error_is_reported_once_and_switches_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _mlp(nn.Tanh(), scale=1.0)
    monitor = ActivationMonitor(model, every=1).attach()

    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(monitor._taps[0], "add", broken)
    x = torch.randn(2, 5, dtype=torch.float64)
    with pytest.warns(
        RuntimeWarning, match="ActivationMonitor: internal error.*boom.*switched off"
    ):
        model(x)
    model(x).sum().backward()  # training goes on, no second warning
    assert monitor(_record(0)) is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every": 0}, ValueError, "every must be at least 1"),
        ({"every": 2.5}, TypeError, "2.5"),
        ({"saturation": 1.5}, ValueError, "1.5"),
        ({"saturation": 0.3}, ValueError, "0.3"),
        ({"saturation": "high"}, TypeError, "'high'"),
        ({"modules": ["nope"]}, ValueError, "'nope'.*\\['1'\\]"),
        ({"modules": ["0"]}, ValueError, "'0' is a Linear"),
        ({"modules": "1"}, TypeError, "'1'"),
        ({"modules": []}, ValueError, "modules is empty"),
        ({"keys": "critic"}, TypeError, "'critic'"),
        ({"clock": 3}, TypeError, "3"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ActivationMonitor(_mlp(nn.ReLU(), scale=1.0), **kwargs)  # type: ignore[arg-type]


def test_bad_model() -> None:
    with pytest.raises(TypeError, match="'model'"):
        ActivationMonitor("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Linear has no nn\.Tanh"):
        ActivationMonitor(nn.Linear(2, 2))


def test_end_to_end_with_watch() -> None:
    model = _mlp(nn.Tanh(), scale=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sink = gradwandb.MemorySink()
    tracker = gradwandb.watch(model, opt, sink=sink)
    mon = ActivationMonitor(model, every=2, keys=tracker.keys, clock=lambda: tracker.step)
    tracker.add_observer(mon.attach())
    tracker.on_remove(mon.remove)
    torch.manual_seed(9)
    expected: dict[int, Tensor] = {}
    for step in range(5):
        x = torch.randn(8, 5, dtype=torch.float64)
        half = [x[:3], x[3:]]  # two micro-batches
        for part in half:
            model(part).pow(2).mean().backward()
        with torch.no_grad():
            expected[step] = model[:2](x)  # the weights the forwards saw
        opt.step()
        opt.zero_grad()
    tracker.remove()
    assert not mon.attached
    rows = dict(sink.rows)
    assert sorted(rows) == [0, 1, 2, 3, 4]
    for step, row in rows.items():
        act = sorted(k for k in row if k.startswith("act/"))
        if step % 2:
            assert act == []
            continue
        assert act == ["act/1/mean", "act/1/saturated_frac", "act/1/std", "act/1/zero_frac"]
        y = expected[step]
        sat = (y.abs() > 0.99).double().mean().item()
        _check(row, "1", {"saturated_frac": sat, **_direct(y)})


def test_watch_logs_activation_health_when_asked() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = gradwandb.MemorySink()
    hidden = []
    with gradwandb.watch(model, opt, sink=sink, activations_every=2):
        for _ in range(3):
            opt.zero_grad()
            x = torch.randn(5, 3)
            hidden.append(torch.tanh(model[0](x)).detach())
            model(x).sum().backward()
            opt.step()
    rows = dict(sink.rows)
    assert rows[0]["act/1/mean"] == pytest.approx(hidden[0].mean().item(), rel=1e-5)
    assert rows[2]["act/1/mean"] == pytest.approx(hidden[2].mean().item(), rel=1e-5)
    assert "act/1/saturated_frac" in rows[0] and "act/1/saturated_frac" in rows[2]
    assert not any(k.startswith("act/") for k in rows[1])


def test_the_record_gets_the_measures_of_the_modules_reported() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh()).double()
    monitor = ActivationMonitor(model, every=1).attach()
    assert monitor.stage == FILL  # before the diagnosis, which reads the record
    model(torch.randn(6, 2, dtype=torch.float64)).sum().backward()
    record = _record(0)
    row = monitor(record)
    assert row is not None
    assert sorted(record.activations) == ["1", "3"]
    assert record.module_types == {"1": "ReLU", "3": "Tanh"}
    for name, measures in record.activations.items():
        assert measures == {stat: row[act_key(Keys(), name, stat)] for stat in measures}
    assert sorted(record.activations["1"]) == ["dead_frac", "mean", "std", "zero_frac"]
    assert sorted(record.activations["3"]) == ["mean", "saturated_frac", "std", "zero_frac"]
    assert monitor.latest("3", "saturated_frac") == record.activations["3"]["saturated_frac"]
    with torch.no_grad():  # step 1: no forward with autograd on, nothing measured
        model(torch.randn(6, 2, dtype=torch.float64))
    quiet = _record(1)
    assert monitor(quiet) is None
    assert quiet.activations == {} and quiet.module_types == {}
    assert monitor.latest("3", "saturated_frac") is not None  # the last step reported
    monitor.remove()
