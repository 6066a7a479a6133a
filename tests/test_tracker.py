"""What the tracker logs, against direct recomputation from ``param.grad`` on seeded tiny models."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

import gradwandb
from gradwandb.live.sinks import Histogram, MemorySink

Step = Callable[[], None]


def _mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)
    ).to(dtype)


def _backward(model: nn.Module, seed: int, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x = torch.randn(16, 6, generator=g).to(dtype)
    (model(x).float().pow(2).mean() * scale).backward()


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_logged_statistics_equal_recomputation_from_param_grad() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    seen: list[dict[str, torch.Tensor]] = []
    with gradwandb.watch(model, opt, sink=sink, layers_every=1, hist_every=None):
        for i in range(3):
            opt.zero_grad()
            _backward(model, i)
            seen.append(_grads(model))
            opt.step()
    assert [s for s, _ in sink.rows] == [0, 1, 2]
    for (step, row), grads in zip(sink.rows, seen, strict=True):
        assert row["gradwandb/step"] == step
        flat = torch.cat([g.reshape(-1).double() for g in grads.values()])
        assert row["grad/global_norm"] == pytest.approx(flat.norm().item(), rel=1e-6)
        assert row["grad/nonfinite"] == 0
        assert row["grad/clip_coef"] == 1.0
        for name, g in grads.items():
            gd = g.double()
            assert row[f"grad_norm/{name}"] == pytest.approx(gd.norm().item(), rel=1e-6)
            assert row[f"grad_mean_abs/{name}"] == pytest.approx(gd.abs().mean().item(), rel=1e-6)
            assert row[f"grad_max_abs/{name}"] == pytest.approx(gd.abs().max().item(), rel=1e-6)


@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_clipping_matches_clip_grad_norm(max_norm: float) -> None:
    ours, theirs = _mlp(), _mlp()
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.5)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.5)
    sink = MemorySink()
    coefs = []
    with gradwandb.watch(ours, opt_ours, sink=sink, clip=max_norm, hist_every=None):
        for i in range(4):
            for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
                opt.zero_grad()
                _backward(model, i)
            total = nn.utils.clip_grad_norm_(theirs.parameters(), max_norm)
            coefs.append(min(1.0, max_norm / (total.item() + 1e-6)))
            opt_ours.step()
            opt_theirs.step()
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    logged = [v for _, v in sink.series("grad/clip_coef")]
    assert logged == pytest.approx(coefs, rel=1e-5)
    bit = [c < 1.0 for c in coefs]
    assert [v for _, v in sink.series("grad/clip_rate")] == pytest.approx(
        [sum(bit[: i + 1]) / (i + 1) for i in range(4)]
    )
    assert all(v == max_norm for _, v in sink.series("grad/clip_threshold"))


def test_clipping_leaves_a_nonfinite_step_alone() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, clip=0.01, hist_every=None):
        _backward(model, 0)
        first = model[0].weight
        assert first.grad is not None
        first.grad[0, 0] = math.nan
        first.grad[1, :2] = math.inf
        before = _grads(model)
        opt.step()
    row = sink.last()
    assert row["grad/clip_coef"] == 1.0
    assert row["grad/nonfinite"] == 1
    assert row["grad_nonfinite/0.weight"] == 3
    assert math.isnan(row["grad/global_norm"])  # type: ignore[arg-type]
    after = _grads(model)
    torch.testing.assert_close(after["2.weight"], before["2.weight"])  # not scaled by NaN


def test_histograms_weight_norms_and_update_ratio() -> None:
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, hist_every=2):
        for i in range(3):
            opt.zero_grad()
            _backward(model, i)
            grads = _grads(model)
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            opt.step()
            row = sink.last()
            has_detail = i % 2 == 0
            assert ("grad_hist/0.weight" in row) == has_detail
            if not has_detail:
                continue
            for name, p in model.named_parameters():
                hist = row[f"grad_hist/{name}"]
                assert isinstance(hist, Histogram)
                assert sum(hist.counts) == p.numel()
                assert len(hist.edges) == len(hist.counts) + 1
                assert hist.edges[-1] == pytest.approx(grads[name].abs().max().item(), rel=1e-6)
                log_hist = row[f"grad_log10_hist/{name}"]
                assert isinstance(log_hist, Histogram)
                assert sum(log_hist.counts) == int((grads[name] != 0).sum())
                assert row[f"grad_zero_frac/{name}"] == 0.0
                old = before[name].double()
                assert row[f"param_norm/{name}"] == pytest.approx(old.norm().item(), rel=1e-6)
                moved = (p.detach().double() - old).norm() / old.norm()
                assert row[f"update_ratio/{name}"] == pytest.approx(moved.item(), rel=1e-5)


def test_log_every_and_disabled_histograms() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, log_every=3, hist_every=None) as tracker:
        for i in range(7):
            opt.zero_grad()
            _backward(model, i)
            opt.step()
    assert tracker.step == 7
    assert [s for s, _ in sink.rows] == [0, 3, 6]
    assert not any(k.startswith("grad_hist/") for _, row in sink.rows for k in row)


def test_frozen_and_unused_parameters_are_skipped() -> None:
    model = _mlp()
    model[0].requires_grad_(False)
    spare = nn.Linear(3, 3)  # registered, never used in forward
    model.add_module("spare", spare)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, hist_every=1):
        x = torch.randn(4, 6)
        model[:5](x).sum().backward()
        opt.step()
    row = sink.last()
    assert "grad_norm/2.weight" in row
    assert not any("0.weight" in k or "spare" in k for k in row if "/" in k and "params" not in k)
    assert sink.summaries["gradwandb/params_frozen"] == 6 * 8 + 8


def test_sparse_embedding_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 4, sparse=True), nn.Flatten(), nn.Linear(12, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, hist_every=1, clip=1e-3):
        model(torch.tensor([[1, 1, 5], [2, 1, 7]])).pow(2).sum().backward()
        grad = model[0].weight.grad
        assert grad is not None and grad.is_sparse
        dense = grad.to_dense().double()
        opt.step()
    row = sink.last()
    assert row["grad_norm/0.weight"] == pytest.approx(dense.norm().item(), rel=1e-6)
    assert row["grad_mean_abs/0.weight"] == pytest.approx(dense.abs().mean().item(), rel=1e-6)
    assert row["grad_max_abs/0.weight"] == pytest.approx(dense.abs().max().item(), rel=1e-6)
    assert row["grad_zero_frac/0.weight"] == pytest.approx((dense == 0).double().mean().item())
    hist = row["grad_hist/0.weight"]
    assert isinstance(hist, Histogram) and sum(hist.counts) == 80
    assert row["grad/clip_coef"] < 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gradients(dtype: torch.dtype) -> None:
    model = _mlp(dtype=dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, hist_every=1):
        _backward(model, 0)
        grads = _grads(model)
        opt.step()
    row = sink.last()
    for name, g in grads.items():
        assert g.dtype == dtype
        assert row[f"grad_norm/{name}"] == pytest.approx(g.double().norm().item(), rel=1e-6)
        assert row[f"grad_max_abs/{name}"] == pytest.approx(g.double().abs().max().item(), rel=1e-6)


def test_gradients_are_untouched_without_clipping() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwandb.watch(model, opt, sink=MemorySink(), hist_every=1):
        _backward(model, 0)
        before = _grads(model)
        opt.step()
    after = _grads(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_vanishing_and_nonfinite_layers_on_a_histogram_step() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, hist_every=1):
        _backward(model, 0)
        assert model[0].weight.grad is not None and model[4].weight.grad is not None
        model[0].weight.grad.mul_(1e-24)  # squares underflow float32
        model[4].weight.grad[0, :3] = torch.tensor([math.nan, math.inf, 0.0])
        grads = _grads(model)
        opt.step()
    row = sink.last()
    tiny = grads["0.weight"].double()
    assert row["grad_norm/0.weight"] == pytest.approx(tiny.norm().item(), rel=1e-6)
    assert row["grad/nonfinite"] == 1
    assert row["grad_nonfinite/4.weight"] == 2
    assert row["grad_nonfinite/0.weight"] == 0
    bad = grads["4.weight"]
    finite = bad[torch.isfinite(bad)]
    hist = row["grad_hist/4.weight"]
    assert isinstance(hist, Histogram)
    assert sum(hist.counts) == finite.numel()
    assert hist.edges[-1] == pytest.approx(finite.abs().max().item(), rel=1e-6)
    assert row["grad_zero_frac/4.weight"] == pytest.approx((finite == 0).sum().item() / bad.numel())


def test_default_tiers_global_every_step_layers_every_10_histograms_every_100() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink):
        for i in range(101):
            opt.zero_grad()
            _backward(model, i)
            opt.step()
    steps = {family: [s for s, row in sink.rows if f"{family}/0.weight" in row] for family in
             ("grad_norm", "grad_max_abs", "update_ratio", "grad_hist")}  # fmt: skip
    every_10 = list(range(0, 101, 10))
    assert steps["grad_norm"] == steps["grad_max_abs"] == steps["update_ratio"] == every_10
    assert steps["grad_hist"] == [0, 100]
    assert all("grad/global_norm" in row for _, row in sink.rows)


def test_a_zero_gradient_is_not_taken_for_underflow() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, layers_every=1, hist_every=None):
        _backward(model, 0)
        assert model[0].bias.grad is not None and model[2].bias.grad is not None
        model[0].bias.grad.zero_()
        model[2].bias.grad.fill_(1e-30)  # squares underflow float32: recomputed exactly
        opt.step()
    row = sink.last()
    assert row["grad_norm/0.bias"] == 0.0
    assert row["grad_norm/2.bias"] == pytest.approx(1e-30 * math.sqrt(8), rel=1e-6)


def test_bad_steps_name_their_layers_off_the_layer_schedule() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sink = MemorySink()
    weights = copy.deepcopy(model.state_dict())
    with gradwandb.watch(model, opt, sink=sink, layers_every=None, hist_every=None):
        for step in range(3):
            model.load_state_dict(weights)  # an Inf step must not leave NaN weights behind
            opt.zero_grad()
            _backward(model, step)
            assert model[2].weight.grad is not None
            if step == 1:
                model[2].weight.grad[0, 0] = math.inf
            if step == 2:  # every gradient vanishes below float32's squares
                for p in model.parameters():
                    assert p.grad is not None
                    p.grad.mul_(1e-30)
            grads = _grads(model)
            opt.step()
    quiet, inf_step, tiny_step = (row for _, row in sink.rows)
    assert not any(k.startswith("grad_norm/") for k in quiet)
    assert inf_step["grad/nonfinite"] == 1
    assert inf_step["grad_nonfinite/2.weight"] == 1
    assert "grad_norm/0.weight" in inf_step and "grad_nonfinite/0.weight" not in inf_step
    flat = torch.cat([g.reshape(-1).double() for g in grads.values()])
    assert tiny_step["grad/global_norm"] == pytest.approx(flat.norm().item(), rel=1e-6)
    assert tiny_step["grad_norm/4.weight"] == pytest.approx(
        grads["4.weight"].double().norm().item(), rel=1e-6
    )


def test_a_policy_logs_its_extra_signals() -> None:
    class Halve(gradwandb.ClipPolicy):
        def clip_(self, grads, norms, total, params):  # type: ignore[no-untyped-def]
            half = torch.full_like(total, 0.5)
            gradwandb.live.clip.policy.scale_(grads, half.float())
            return gradwandb.ClipResult(coef=half, extras={"zscore": total * 0 + 3.0})

    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, clip=Halve(), hist_every=None):
        _backward(model, 0)
        before = _grads(model)
        opt.step()
        after = _grads(model)
    row = sink.last()
    assert row["grad/clip_coef"] == 0.5 and row["grad/clip_zscore"] == 3.0
    assert "grad/clip_threshold" not in row
    assert torch.allclose(after["0.weight"], before["0.weight"] * 0.5)


def test_finite_gradients_whose_float32_squares_overflow_get_a_finite_norm() -> None:
    model = nn.Linear(4, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1e-30)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, clip=1.0, layers_every=1):
        model.weight.grad = torch.full((1, 4), 2e19)  # norm 4e19: past float32's sqrt(max)
        opt.step()
    row = sink.last()
    assert row["grad/global_norm"] == pytest.approx(4e19, rel=1e-6)
    assert row["grad_norm/weight"] == pytest.approx(4e19, rel=1e-6)
    assert row["grad/nonfinite"] == 0
    assert row["grad/clip_coef"] == pytest.approx(1 / 4e19, rel=1e-5)
    assert model.weight.grad is not None
    assert model.weight.grad.double().norm().item() == pytest.approx(1.0, rel=1e-5)  # scaled


def test_the_guard_skips_an_overflowing_gradient_like_a_nonfinite_one() -> None:
    model = nn.Linear(4, 1, bias=False)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)  # g*g would overflow its second moment
    before = model.weight.detach().clone()
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, guard=True):
        model.weight.grad = torch.full((1, 4), 2e19)
        opt.step()
        assert torch.equal(model.weight.detach(), before) and not opt.state  # skipped
        model.weight.grad = torch.full((1, 4), 1e3)  # a large but sound one goes through
        opt.step()
    skipped = [v for _, v in sink.series("guard/skipped")]
    assert skipped == [1, 0]
    assert not torch.equal(model.weight.detach(), before)  # only the second step moved it
    assert torch.isfinite(model.weight).all()
