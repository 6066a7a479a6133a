"""The new diagnosis on real tiny trainings: each condition is first confirmed with plain torch
(hooks and ``param.grad``, no gradwandb), then gradwandb must find it, name the layer or module
and give the fix; the healthy models stay without findings with every new rule on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import gradwandb
from gradwandb import keys as K
from gradwandb.live.diagnosis import DiagnosisObserver, Finding
from gradwandb.live.sinks import MemorySink
from tests.test_diagnosis_scenarios import LSTMNet, ResidualMLP, batches, sequences, train

# -- helpers ------------------------------------------------------------------------------------


def fit(
    model: nn.Module,
    data: list[tuple[Tensor, Tensor]],
    lr: float = 0.05,
    observer: bool = False,
    **watch: Any,
) -> tuple[gradwandb.Tracker, MemorySink, list[Finding]]:
    """Train with SGD under gradwandb; the findings. ``observer``: diagnosis through a
    :class:`DiagnosisObserver` given the watched parameters (for the unused rule)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sink = MemorySink()
    tracker = gradwandb.watch(model, opt, sink=sink, diagnose=not observer, **watch)
    diagnosis: DiagnosisObserver | None = None
    if observer:
        diagnosis = DiagnosisObserver(sink, tracker.keys, watched=list(model.named_parameters()))
        tracker.add_observer(diagnosis)
    for _ in train(model, opt, data):
        pass
    tracker.remove()
    findings = (diagnosis.diagnosis() if diagnosis else tracker.diagnosis()).findings
    return tracker, sink, list(findings)


def of_kind(findings: list[Finding], kind: str) -> list[Finding]:
    return [f for f in findings if f.kind == kind]


def sigmoid_mlp(std: float, depth: int = 8, width: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        nn.init.normal_(linear.weight, std=std)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def pinned_fractions(model: nn.Module, x: Tensor) -> list[float]:
    """Plain torch: the fraction of each sigmoid's outputs above 0.99 or below 0.01."""
    out: list[float] = []
    hooks = [
        m.register_forward_hook(
            lambda m, a, y: out.append(float(((y > 0.99) | (y < 0.01)).float().mean()))
        )
        for m in model.modules()
        if isinstance(m, nn.Sigmoid)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


# -- saturation, dead units ---------------------------------------------------------------------


def test_a_saturated_sigmoid_mlp_is_vanishing_for_its_saturation() -> None:
    model = sigmoid_mlp(std=4.0)
    data = batches((32, 16), (32, 1), 12)
    pinned = pinned_fractions(model, data[0][0])
    assert len(pinned) == 8 and all(0.4 < p < 0.8 for p in pinned) and max(pinned) > 0.7
    tracker, sink, findings = fit(model, data, activations_every=1)
    assert tracker.diagnosis().verdict == "vanishing"
    saturated = [f for f in findings if "saturated" in f.message]
    assert saturated and all(f.layer is not None and f.step == 0 for f in saturated)
    severe = [f for f in saturated if f.kind == "vanishing"]
    modules = [f"{2 * i + 1}" for i in range(8)]
    assert {f.layer for f in severe} <= set(modules) and len(severe) >= 4
    worst = max(severe, key=lambda f: f.value)
    assert worst.severity == "error" and "derivative is ~0" in worst.message
    assert "Xavier" in worst.fix and "ReLU or GELU" in worst.fix
    assert any(a.title == "gradwandb: vanishing gradients" for a in sink.alerts)


def test_a_93_percent_saturated_mlp_is_not_healthy() -> None:
    model = sigmoid_mlp(std=20.0, depth=4)
    data = batches((32, 16), (32, 1), 6)
    assert min(pinned_fractions(model, data[0][0])) > 0.9
    tracker, _, findings = fit(model, data, activations_every=1)
    assert tracker.diagnosis().verdict == "vanishing"
    assert len([f for f in of_kind(findings, "vanishing") if "saturated" in f.message]) == 4


def relu_stack() -> nn.Sequential:
    """Three ReLU layers; 14 of the first layer's 32 units get a bias of -20: dead."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    with torch.no_grad():
        model[0].bias[:14] = -20.0
    return model


def test_a_partly_dead_relu_stack_warns_of_its_dead_units() -> None:
    model = relu_stack()
    data = batches((64, 8), (64, 1), 8)
    with torch.no_grad():
        alive = (model[1](model[0](data[0][0])) > 0).any(0)
    assert float((~alive).float().mean()) == pytest.approx(14 / 32)  # plain torch: 44% dead
    tracker, sink, findings = fit(model, data, lr=0.01, activations_every=1)
    dead = of_kind(findings, "dead_units")
    assert [(f.layer, f.step, f.severity) for f in dead] == [("1", 0, "warning")]
    assert "44%" in dead[0].message and "LeakyReLU or GELU" in dead[0].fix
    assert tracker.diagnosis().verdict == "healthy" and sink.alerts == []


# -- unused parameters --------------------------------------------------------------------------


class TwoHeads(nn.Module):
    """A body and two heads; only ``head`` reaches the loss, ``aux`` is cut off by detach."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(6, 8)
        self.head = nn.Linear(8, 2)
        self.aux = nn.Linear(8, 2)  # never called
        self.side = nn.Linear(8, 2)  # called, its output detached
        self.frozen = nn.Linear(8, 2)  # frozen on purpose
        self.frozen.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.body(x))
        return self.head(h) + self.side(h).detach() + 0 * self.frozen(h)


def test_an_unused_head_and_a_detached_branch_are_named_a_frozen_one_is_not() -> None:
    model = TwoHeads()
    data = batches((16, 6), (16, 2), 6)
    F.mse_loss(model(data[0][0]), data[0][1]).backward()
    none = {n for n, p in model.named_parameters() if p.grad is None}
    assert none == {
        "aux.weight",
        "aux.bias",
        "side.weight",
        "side.bias",
        "frozen.weight",
        "frozen.bias",
    }
    model.zero_grad(set_to_none=True)
    _, _, findings = fit(model, data, observer=True, layers_every=1)
    unused = of_kind(findings, "unused")
    assert [f.layer for f in unused] == ["aux.weight", "aux.bias", "side.weight", "side.bias"]
    assert all(f.step == 0 and f.severity == "warning" for f in unused)
    assert "cut off from the loss by .detach()" in unused[0].message
    assert "reaches the loss" in unused[0].fix


# -- clipping -----------------------------------------------------------------------------------


def test_a_too_tight_clip_divides_the_learning_rate() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    data = batches((32, 8), (32, 1), 14)
    F.mse_loss(model(data[0][0]), data[0][1]).backward()
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3))
    assert 0.1 < norm < 10.0  # plain torch: the norm is ~1, so clip=1e-3 scales by ~1e-3
    model.zero_grad(set_to_none=True)
    tracker, sink, findings = fit(model, data, clip=1e-3)
    (clipping,) = of_kind(findings, "clipping")
    assert clipping.step == 0 and clipping.severity == "warning"
    assert (
        "clip=0.001" in clipping.message
        and "divides the effective learning rate" in clipping.message
    )
    factor = float(clipping.message.split("rate by ~")[1].split(";")[0])
    norms = sorted(v for _, v in sink.series("grad/global_norm")[:10])
    assert norms[0] / 1e-3 <= factor <= norms[-1] / 1e-3  # 1 / the coefficient: norm / clip
    assert "95th-99th percentile" in clipping.message and "PercentileClip" in clipping.fix
    assert tracker.diagnosis().verdict == "healthy" and sink.alerts == []


def test_a_clip_that_bites_now_and_then_is_no_finding() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    data = batches((32, 8), (32, 1), 14)
    _, _, findings = fit(model, data, clip=1.0)
    assert findings == []


# -- a weak layer in the middle -----------------------------------------------------------------


class Scale(nn.Module):
    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: Tensor) -> Tensor:
        return x * self.c


def weak_middle() -> nn.Sequential:
    """The middle layer's input is scaled by 1e-4 (its weights by 1e4 to compensate): its
    weight gradient is ~4 decades below both neighbours, whose gradients are normal."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), Scale(1e-4), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    )
    with torch.no_grad():
        model[3].weight.mul_(1e4)
    return model


def test_a_weak_middle_layer_is_named() -> None:
    model = weak_middle()
    data = batches((32, 8), (32, 1), 6)
    F.mse_loss(model(data[0][0]), data[0][1]).backward()
    norms = {n: float(p.grad.norm()) for n, p in model.named_parameters()}
    assert norms["3.weight"] < 1e-3 * min(norms["0.weight"], norms["5.weight"])  # plain torch
    model.zero_grad(set_to_none=True)
    tracker, _, findings = fit(model, data, lr=1e-6, layers_every=1)
    flow = of_kind(findings, "flow")
    assert [(f.layer, f.step) for f in flow] == [("3.weight", 0)]
    assert (
        "below both its neighbours '0.weight'" in flow[0].message
        and "'5.weight'" in flow[0].message
    )
    assert tracker.diagnosis().verdict == "vanishing"


# -- a forward-born NaN -------------------------------------------------------------------------


class Root(nn.Module):
    """sqrt of its input: NaN wherever the input is negative."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sqrt(x)


def sqrt_net() -> nn.Sequential:
    """Identity weights into a tanh, then a sqrt: NaN exactly where an input is negative."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), Root(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(6))
        model[0].bias.zero_()
    return model


def nan_data(bad: Callable[[int], bool], n: int = 8) -> list[tuple[Tensor, Tensor]]:
    """Positive inputs, negative ones on the bad steps (the sqrt then makes NaN)."""
    out = []
    for i, (x, y) in enumerate(batches((16, 6), (16, 2), n)):
        clean = x.abs() + 0.5
        out.append((-clean if bad(i) else clean, y))
    return out


def test_a_forward_born_nan_is_named_at_its_module() -> None:
    k = 3
    model = sqrt_net()
    data = nan_data(lambda i: i == k)
    outputs: list[tuple[str, bool]] = []
    hooks = [
        m.register_forward_hook(
            lambda m, a, y, name=name: outputs.append((name, bool(torch.isfinite(y).all())))
        )
        for name, m in model.named_modules()
        if name
    ]
    with torch.no_grad():
        model(data[0][0])
        assert all(ok for _, ok in outputs)  # plain torch: a clean batch stays finite
        outputs.clear()
        model(data[k][0])
    for h in hooks:
        h.remove()
    assert outputs == [("0", True), ("1", True), ("2", False), ("3", False)]  # born in '2'
    tracker, sink, findings = fit(model, data, lr=0.01, activations_every=1, guard=True)
    nonfinite = of_kind(findings, "nonfinite")
    assert [(f.layer, f.step) for f in nonfinite] == [("2", k)]  # not "the loss itself"
    assert "born in the forward of '2' (Root)" in nonfinite[0].message
    assert "sqrt or log" in nonfinite[0].fix
    assert tracker.diagnosis().verdict == "nonfinite"
    assert sink.rows[k][1]["act/2/forward_nonfinite"] == K.FORWARD_MADE
    assert not any("forward_nonfinite" in key for _, row in sink.rows if _ != k for key in row)


def test_without_activations_the_step_after_a_nan_names_the_module() -> None:
    k = 2
    model = sqrt_net()
    data = nan_data(lambda i: i in (k, k + 1))
    _, _, findings = fit(model, data, lr=0.01, guard=True)  # the guard keeps weights finite
    nonfinite = of_kind(findings, "nonfinite")
    assert [(f.layer, f.step) for f in nonfinite] == [(None, k), ("2", k + 1)]
    assert f"checked on the step after NaN/Inf gradients at step {k}" in nonfinite[1].message


# -- healthy models stay quiet ------------------------------------------------------------------


def test_a_healthy_lstm_raises_nothing_with_activations_on() -> None:
    model = LSTMNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sink = MemorySink()
    tracker = gradwandb.watch(model, opt, sink=sink, layers_every=1, activations_every=2)
    for _ in train(model, opt, sequences(20)):
        pass
    tracker.remove()
    assert tracker.diagnosis().findings == () and sink.alerts == []


def test_a_healthy_residual_mlp_raises_nothing_with_the_new_rules() -> None:
    model = ResidualMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(2)
    data = []
    for _ in range(20):
        x = torch.randn(32, 8, generator=gen)
        data.append((x, torch.sin(x.sum(-1, keepdim=True))))
    sink = MemorySink()
    tracker = gradwandb.watch(model, opt, sink=sink, layers_every=1, diagnose=False)
    observer = DiagnosisObserver(sink, tracker.keys, watched=list(model.named_parameters()))
    tracker.add_observer(observer)
    for _ in train(model, opt, data):
        pass
    tracker.remove()
    assert observer.diagnosis().findings == ()


def test_a_healthy_relu_mlp_raises_nothing_with_activations_and_clipping() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 1)
    )
    _, sink, findings = fit(
        model, batches((32, 8), (32, 1), 20), layers_every=1, activations_every=1, clip=1.0
    )
    assert findings == [] and sink.alerts == []
