"""The user's own clipping, seen: statistics pre-clip, the coefficient their clip applied, and
torch's return value untouched."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import gradwandb
from gradwandb.live import user_clip
from gradwandb.live.sinks import MemorySink

ORIGINAL_NORM = torch.nn.utils.clip_grad_norm_


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _backward(model: nn.Module, seed: int, scale: float = 30.0) -> float:
    """A backward; returns the true global norm of the gradients it left."""
    g = torch.Generator().manual_seed(seed)
    (model(torch.randn(32, 6, generator=g)).pow(2).mean() * scale).backward()
    grads = [p.grad.double().reshape(-1) for p in model.parameters() if p.grad is not None]
    return torch.cat(grads).norm().item()


def test_clip_grad_norm_by_hand_logs_the_pre_clip_norm_and_torchs_coefficient() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sink = MemorySink()
    truths, returned = [], []
    with gradwandb.watch(model, opt, sink=sink, layers_every=2, hist_every=None) as tracker:
        assert user_clip.installed() and tracker in user_clip.listeners()
        for step in range(4):
            opt.zero_grad()
            truths.append(_backward(model, step))
            returned.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5).item())
            opt.step()
    assert tracker not in user_clip.listeners()  # removed: no longer routed through it
    for (step, row), truth, total in zip(sink.rows, truths, returned, strict=True):
        assert row["grad/global_norm"] == pytest.approx(truth, rel=1e-5)  # pre-clip
        assert total == pytest.approx(truth, rel=1e-5)
        assert row["grad/clip_coef"] == pytest.approx(min(1.0, 0.5 / (total + 1e-6)), rel=1e-6)
        assert row["grad/clip_threshold"] == 0.5
        assert row["grad/clip_rate"] == pytest.approx(1.0)  # every step clipped
        if step % 2 == 0:  # per-layer steps: every layer pre-clip too
            layers = [v for k, v in row.items() if k.startswith("grad_norm/")]
            assert len(layers) == 4
            assert sum(v * v for v in layers) == pytest.approx(truth**2, rel=1e-5)  # type: ignore[operator]


@pytest.mark.parametrize("foreach", [None, True, False])
def test_the_value_clip_grad_norm_returns_is_torchs_bit_for_bit(foreach: bool | None) -> None:
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 2).double())
    twin = copy.deepcopy(model)
    with gradwandb.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), sink=MemorySink()):
        for m in (model, twin):
            x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
            m[1](m[0](x).double()).sum().backward()
        ours = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1, foreach=foreach)
    theirs = ORIGINAL_NORM(twin.parameters(), 0.1, foreach=foreach)
    assert torch.equal(ours, theirs)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        assert torch.equal(p.grad, q.grad)  # clipped exactly alike


def test_a_clip_imported_before_watch_is_still_seen() -> None:
    from torch.nn.utils import clip_grad_norm_ as early  # bound before gradwandb patches

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink), warnings.catch_warnings():
        warnings.simplefilter("error")  # and no "unseen change" warning
        truth = _backward(model, 0)
        early(model.parameters(), 0.5)
        opt.step()
    row = sink.last()
    assert row["grad/global_norm"] == pytest.approx(truth, rel=1e-5)
    assert row["grad/clip_coef"] == pytest.approx(0.5 / truth, rel=1e-5)


def test_clip_grad_value_is_seen_and_its_coefficient_is_the_norm_ratio() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink):
        truth = _backward(model, 0)
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.01)
        after = torch.cat([p.grad.double().reshape(-1) for p in model.parameters()]).norm()  # type: ignore[union-attr]
        opt.step()
    row = sink.last()
    assert row["grad/global_norm"] == pytest.approx(truth, rel=1e-5)
    assert row["grad/clip_coef"] == pytest.approx(after.item() / truth, rel=1e-4)
    assert row["grad/clip_threshold"] == 0.01


def test_two_clips_in_one_step_report_the_stronger_bite() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink):
        truth = _backward(model, 0)
        first = torch.nn.utils.clip_grad_norm_(model[0].parameters(), 0.5).item()
        second = torch.nn.utils.clip_grad_norm_(model[2].parameters(), 0.5).item()
        opt.step()
    row = sink.last()
    assert row["grad/global_norm"] == pytest.approx(truth, rel=1e-5)  # before both clips
    weakest = min(0.5 / (first + 1e-6), 0.5 / (second + 1e-6), 1.0)
    assert row["grad/clip_coef"] == pytest.approx(weakest, rel=1e-5)


def test_without_an_optimizer_the_clip_joins_its_steps_row() -> None:
    model = _model()
    sink = MemorySink()
    coefs = []
    with gradwandb.watch(model, sink=sink):
        for step in range(3):
            model.zero_grad()
            _backward(model, step)
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5).item()
            coefs.append(min(1.0, 0.5 / (total + 1e-6)))
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-0.01)  # type: ignore[arg-type]
    merged: dict[int, dict[str, object]] = {}
    for step, row in sink.rows:
        merged.setdefault(step, {}).update(row)
    for step, coef in enumerate(coefs):
        assert merged[step]["grad/clip_coef"] == pytest.approx(coef, rel=1e-5)
        assert merged[step]["grad/clip_rate"] == pytest.approx(1.0)


def test_a_gradient_changed_where_gradwandb_cannot_see_is_reported_once() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink):
        for step in range(3):
            opt.zero_grad()
            _backward(model, step)
            with torch.no_grad():
                model[0].weight.grad.mul_(0.5)  # type: ignore[union-attr]
            if step == 0:
                with pytest.warns(RuntimeWarning, match=r"0\.weight changed between"):
                    opt.step()
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # once only
                    opt.step()
    assert sink.summaries["gradwandb/unseen_grad_change"] is True


def test_grad_scaler_unscale_is_a_change_gradwandb_knows() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink), warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.zero_grad()
        g = torch.Generator().manual_seed(0)
        scaler.scale(model(torch.randn(8, 6, generator=g)).pow(2).mean()).backward()
        scaler.unscale_(opt)
        truth = torch.cat([p.grad.double().reshape(-1) for p in model.parameters()]).norm()  # type: ignore[union-attr]
        scaler.step(opt)
        scaler.update()
    assert "gradwandb/unseen_grad_change" not in sink.summaries
    assert sink.last()["grad/global_norm"] == pytest.approx(truth.item(), rel=1e-5)


def test_torchs_own_functions_are_back_once_every_tracker_is_gone() -> None:
    code = """
import torch, gradwandb
original = torch.nn.utils.clip_grad_norm_
model = torch.nn.Linear(2, 1)
with gradwandb.watch(model, sink=gradwandb.MemorySink()):
    assert torch.nn.utils.clip_grad_norm_ is not original
assert torch.nn.utils.clip_grad_norm_ is original
assert torch.nn.utils.clip_grad.clip_grad_norm_ is original
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
