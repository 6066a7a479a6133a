"""NaN/Inf injected at a random place and step: the finding names that step and that layer,
and with the guard the weights and the optimizer state are exactly as before the bad step.

Two places, both inside backward (a change to ``.grad`` after backward would be a change
gradwandb does not see, which it reports instead): one parameter's gradient (a hook on that
parameter), or the gradient arriving at one layer's output (a hook on the output tensor, so
that layer and every layer before it in the forward turn non-finite; the origin is that
layer). Seeded trials, a tiny MLP, Adam.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import gradwandb
from gradwandb.live.sinks import MemorySink

STEPS = 7
TRIALS = 16  # per (guard, log_every): 64 trainings in all
LAYERS = (0, 2, 4)  # the Linear layers of _mlp


@dataclass(frozen=True)
class Fault:
    step: int
    where: str  # "param": one parameter's gradient; "output": the gradient at a layer's output
    layer: int  # index of the Linear in the Sequential
    param: str  # "weight" or "bias" (for "param")
    value: float  # NaN or Inf
    index: int  # which element

    @property
    def names(self) -> list[str | None]:
        """What the finding may name as the origin. A fault at the last layer's output is the
        model's output itself: every layer turns non-finite at once, which the finding reports
        as the loss or the output (no layer)."""
        if self.where == "param":
            return [f"{self.layer}.{self.param}"]
        if self.layer == LAYERS[-1]:
            return [None]
        return [f"{self.layer}.weight", f"{self.layer}.bias"]


def _fault(seed: int) -> Fault:
    rng = random.Random(seed)
    return Fault(
        step=rng.randrange(STEPS - 1),
        where=rng.choice(["param", "output"]),
        layer=rng.choice(LAYERS),
        param=rng.choice(["weight", "bias"]),
        value=rng.choice([math.nan, math.inf, -math.inf]),
        index=rng.randrange(8),
    )


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def _poison(t: Tensor, fault: Fault) -> Tensor:
    flat = t.clone().reshape(-1)
    flat[fault.index % flat.numel()] = fault.value
    return flat.reshape(t.shape)


def _inject(model: nn.Sequential, fault: Fault) -> list[Any]:
    """Hooks that make this step's backward carry the fault; remove them after the step."""
    target = model[fault.layer]
    if fault.where == "param":
        return [getattr(target, fault.param).register_hook(lambda g: _poison(g, fault))]

    def on_output(module: nn.Module, args: Any, out: Tensor) -> None:
        out.register_hook(lambda g: _poison(g, fault))

    return [target.register_forward_hook(on_output)]


def _state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    return copy.deepcopy(opt.state_dict())


def _same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a["state"].keys() != b["state"].keys():
        return False
    for key, entry in a["state"].items():
        other = b["state"][key]
        if entry.keys() != other.keys():
            return False
        for name, value in entry.items():
            if not torch.equal(torch.as_tensor(value), torch.as_tensor(other[name])):
                return False
    return True


def _train(seed: int, fault: Fault, *, guard: bool, log_every: int) -> dict[str, Any]:
    model = _mlp(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sink = MemorySink()
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"sink": sink}
    with gradwandb.watch(
        model, opt, sink=sink, guard=guard, log_every=log_every, layers_every=None, hist_every=None
    ) as tracker:
        for step in range(STEPS):
            x = torch.randn(16, 4, generator=gen)
            y = torch.randn(16, 3, generator=gen)
            bad = step == fault.step
            if bad:
                out["weights"] = [p.detach().clone() for p in model.parameters()]
                out["state"] = _state(opt)
                hooks = _inject(model, fault)
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            if bad:
                for hook in hooks:
                    hook.remove()
                out["weights_after"] = [p.detach().clone() for p in model.parameters()]
                out["state_after"] = _state(opt)
        out["diagnosis"] = tracker.diagnosis()
    return out


CASES = [
    pytest.param(guard, log_every, seed, id=f"guard={guard}-every={log_every}-seed={seed}")
    for guard in (False, True)
    for log_every in (1, 3)
    for seed in range(TRIALS)
]


@pytest.mark.parametrize(("guard", "log_every", "seed"), CASES)
def test_injected_fault_is_found_where_and_when_it_happened(
    guard: bool, log_every: int, seed: int
) -> None:
    fault = _fault(seed)
    got = _train(seed, fault, guard=guard, log_every=log_every)
    sink, diagnosis = got["sink"], got["diagnosis"]
    findings = [f for f in diagnosis.findings if f.kind == "nonfinite"]
    assert diagnosis.verdict == "nonfinite"
    assert findings, diagnosis.findings
    first = min(findings, key=lambda f: f.step)
    logged = [s for s, _ in sink.rows]
    if guard or log_every == 1:
        # the guard looks at every step, and logs the one it skipped
        assert first.step == fault.step, (fault, first)
        assert first.layer in fault.names, (fault, first)
        row = dict(sink.rows)[fault.step]
        assert row["grad/nonfinite"] >= 1
    else:
        # an unscheduled step is not looked at (no sync): the first logged step after it is
        assert first.step == min(s for s in logged if s >= fault.step), (fault, first)
        if first.step == fault.step:
            assert first.layer in fault.names, (fault, first)
    if guard:
        row = dict(sink.rows)[fault.step]
        assert row["guard/skipped"] == 1
        assert all(
            torch.equal(a, b) for a, b in zip(got["weights"], got["weights_after"], strict=True)
        )
        assert _same_state(got["state"], got["state_after"])
        assert math.isfinite(float(sink.last()["grad/global_norm"]))  # training went on
        assert sink.last()["guard/skipped_total"] == 1
    else:
        assert not all(  # without the guard the bad step reached the weights
            torch.equal(a, b) for a, b in zip(got["weights"], got["weights_after"], strict=True)
        )


def test_guard_state_includes_step_counts() -> None:
    """Adam's per-parameter step count is part of what the guard keeps."""
    fault = Fault(step=3, where="param", layer=2, param="weight", value=math.nan, index=1)
    got = _train(0, fault, guard=True, log_every=1)
    steps_before = [float(s["step"]) for s in got["state"]["state"].values()]
    steps_after = [float(s["step"]) for s in got["state_after"]["state"].values()]
    assert steps_before == steps_after == [3.0] * 6
