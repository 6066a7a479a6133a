"""Real offline W&B runs, read back with W&B's own reader: keys, steps and values as contracted.

Each test trains a tiny seeded model for a few optimizer steps, finishes the run, reads the
``.wandb`` file back (:func:`tests.conftest.read_back`) and checks what W&B stored against
numbers recomputed here from ``param.grad``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradwandb
from tests.conftest import read_back

N = 6  # optimizer steps per run
REL = 1e-6


def history_keys(log: Any) -> set[str]:
    """Every key in any history row of a read-back run."""
    return {k for row in log.history for k in row}


def tiny_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def batch(gen: torch.Generator, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 4, generator=gen), torch.randn(n, 2, generator=gen)


def grad_norms(model: nn.Module) -> dict[str, float]:
    """Per-parameter L2 norms of the current gradients, in float64."""
    return {
        name: torch.linalg.vector_norm(p.grad.double()).item()
        for name, p in model.named_parameters()
        if p.grad is not None
    }


def global_of(norms: dict[str, float]) -> float:
    return math.sqrt(sum(v * v for v in norms.values()))


def capture_grads(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[dict[str, Any]]:
    """Record the gradients the optimizer is about to consume, in a step pre-hook.

    Registered after ``gradwandb.watch``, so it runs after gradwandb's own pre-hook, on the
    same (accumulated, AMP-unscaled) gradients.
    """
    seen: list[dict[str, Any]] = []

    def hook(opt: Any, args: Any, kwargs: Any) -> None:
        seen.append(
            {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        )

    optimizer.register_step_pre_hook(hook)
    return seen


def rows_with(log: Any, key: str) -> list[dict[str, Any]]:
    return [row for row in log.history if key in row]


def by_step(log: Any, key: str = "gradwandb/step") -> dict[int, dict[str, Any]]:
    """History rows keyed by optimizer step (asserting each step has exactly one row)."""
    rows = rows_with(log, key)
    out = {row[key]: row for row in rows}
    assert len(out) == len(rows), f"{key} repeated: {[r[key] for r in rows]}"
    return out


def assert_close(actual: float, expected: float, rel: float = REL) -> None:
    assert actual == pytest.approx(expected, rel=rel, abs=1e-12), (actual, expected)


# -- the step axis -------------------------------------------------------------------------

PATTERNS = ["after", "never", "every3", "step_after", "step_before", "twice"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_step_axis_user_logging_patterns(wandb_run, pattern):
    run = wandb_run()
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    tracker = gradwandb.watch(model, opt, run=run, hist_every=None)
    user_steps = []
    for i in range(N):
        x, y = batch(gen)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        mine = {"loss": loss.item(), "user_step": i}
        if pattern == "step_before":
            run.log(mine, step=i)
        opt.step()
        if pattern == "after" or (pattern == "every3" and i % 3 == 0):
            run.log(mine)
        elif pattern == "step_after":
            run.log(mine, step=i)
        elif pattern == "twice":
            run.log(mine)
            run.log({"lr": 0.05, "user_step2": i})
        if pattern != "never" and (pattern != "every3" or i % 3 == 0):
            user_steps.append(i)
    assert tracker.step == N
    log = read_back(run)

    # Nothing dropped: every optimizer step has exactly one row with its global norm.
    grads = by_step(log)
    assert sorted(grads) == list(range(N))
    assert all("grad/global_norm" in row for row in grads.values())
    assert len(log.series("grad/global_norm")) == N
    # in W&B step order, the optimizer steps come in order
    assert [v for _, v in log.series("gradwandb/step")] == list(range(N))
    if pattern == "twice":  # the user's own rows are all there too
        assert [r["user_step"] for r in rows_with(log, "user_step")] == list(range(N))
        assert [r["user_step2"] for r in rows_with(log, "user_step2")] == list(range(N))
        return

    # One row per optimizer step, no trailing row added at finish.
    assert len(log.history) == N
    assert [row["_step"] for row in log.history] == list(range(N))
    # The user's metrics share the row of the grads of the same optimizer step.
    assert [row["user_step"] for row in rows_with(log, "user_step")] == user_steps
    for row in rows_with(log, "user_step"):
        assert row["gradwandb/step"] == row["user_step"]
        assert "loss" in row and "grad/global_norm" in row
    if pattern in ("after", "step_after", "step_before"):
        for k, row in grads.items():
            assert row["_step"] == k  # W&B's step is the optimizer step


# -- values --------------------------------------------------------------------------------


def test_logged_norms_equal_recomputation(wandb_run):
    run = wandb_run()
    model = tiny_model(3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    tracker = gradwandb.watch(model, opt, run=run, layers_every=1, hist_every=None)
    seen = capture_grads(opt, model)
    gen = torch.Generator().manual_seed(4)
    for _ in range(4):
        x, y = batch(gen)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    tracker.remove()
    log = read_back(run)
    rows = by_step(log)
    assert sorted(rows) == [0, 1, 2, 3]
    names = [n for n, _ in model.named_parameters()]
    for k, grads in enumerate(seen):
        norms = {n: torch.linalg.vector_norm(g.double()).item() for n, g in grads.items()}
        assert set(norms) == set(names)
        row = rows[k]
        assert_close(row["grad/global_norm"], global_of(norms))
        for n in names:
            assert_close(row[f"grad_norm/{n}"], norms[n])
            assert_close(row[f"grad_max_abs/{n}"], grads[n].abs().max().item())
            assert_close(row[f"grad_mean_abs/{n}"], grads[n].double().abs().mean().item())
        assert row["grad/nonfinite"] == 0


# -- histograms ----------------------------------------------------------------------------


def test_histograms_read_back(wandb_run):
    run = wandb_run()
    model = tiny_model(5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = gradwandb.watch(model, opt, run=run, hist_every=1)
    seen = capture_grads(opt, model)
    gen = torch.Generator().manual_seed(6)
    for _ in range(2):
        x, y = batch(gen)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    tracker.remove()
    log = read_back(run)
    rows = by_step(log)
    assert sorted(rows) == [0, 1]
    for k, grads in enumerate(seen):
        for name, g in grads.items():
            hist = rows[k][f"grad_hist/{name}"]
            assert hist["_type"] == "histogram"
            assert len(hist["bins"]) == len(hist["values"]) + 1
            assert sum(hist["values"]) == g.numel()
            scale = g.abs().max().item()
            assert_close(hist["bins"][0], -scale)
            assert_close(hist["bins"][-1], scale)

            logh = rows[k][f"grad_log10_hist/{name}"]
            assert logh["_type"] == "histogram"
            assert len(logh["bins"]) == len(logh["values"]) + 1
            nonzero = int((g != 0).sum())
            assert sum(logh["values"]) == nonzero
            # the largest |g| falls inside the log10 histogram's range
            assert logh["bins"][0] <= math.log10(scale) <= logh["bins"][-1]
            assert rows[k][f"grad_zero_frac/{name}"] == pytest.approx(1 - nonzero / g.numel())


# -- parameter info ------------------------------------------------------------------------


def test_parameter_info_summary_and_table(wandb_run):
    run = wandb_run()
    model = tiny_model(7)  # Linear(4, 8): 40 parameters, frozen; Linear(8, 2): 18 trainable
    model[0].requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    tracker = gradwandb.watch(model, opt, run=run, layers_every=1, hist_every=None)
    gen = torch.Generator().manual_seed(8)
    for _ in range(3):
        x, y = batch(gen)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    tracker.remove()
    log = read_back(run)
    assert log.summary["gradwandb/params_total"] == 58
    assert log.summary["gradwandb/params_trainable"] == 18
    assert log.summary["gradwandb/params_frozen"] == 40
    tables = log.series("gradwandb/params")
    assert len(tables) == 1  # logged once, with the first row
    step, table = tables[0]
    assert step == 0
    assert table["_type"] == "table-file"
    assert (table["nrows"], table["ncols"]) == (4, 6)
    data = json.loads((Path(run.settings.files_dir) / table["path"]).read_text())
    assert data["columns"] == ["name", "shape", "count", "dtype", "trainable", "watched"]
    by_name = {r[0]: r for r in data["data"]}
    assert by_name["0.weight"][1:5] == ["(8, 4)", 32, "float32", False]
    assert by_name["2.weight"][1:5] == ["(2, 8)", 16, "float32", True]
    # the frozen layer never has a gradient, so it never gets keys
    keys = history_keys(log)
    assert not any(k.endswith(("/0.weight", "/0.bias")) for k in keys)
    assert len(log.series("grad_norm/2.weight")) == 3


# -- clipping ------------------------------------------------------------------------------


def test_clipping_coef_and_rate(wandb_run):
    run = wandb_run()
    model = tiny_model(9)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    max_norm = 1.0
    tracker = gradwandb.watch(model, opt, run=run, clip=max_norm, hist_every=None)
    after_clip = capture_grads(opt, model)  # runs after gradwandb clipped in its pre-hook
    gen = torch.Generator().manual_seed(10)
    loss_scale = [0.01, 100.0, 0.01, 100.0, 100.0, 0.01]  # under, over, under, over, over, under
    pre_clip = []
    for s in loss_scale:
        x, y = batch(gen)
        opt.zero_grad()
        (s * F.mse_loss(model(x), y)).backward()
        pre_clip.append(global_of(grad_norms(model)))
        opt.step()
    tracker.remove()
    log = read_back(run)
    rows = by_step(log)
    assert sorted(rows) == list(range(len(loss_scale)))
    clipped = 0
    for k, norm in enumerate(pre_clip):
        row = rows[k]
        over = norm > max_norm
        assert over == (loss_scale[k] > 1)  # the test data does what it says
        clipped += over
        assert_close(row["grad/global_norm"], norm)  # logged before clipping
        expected = max_norm / (norm + 1e-6) if over else 1.0
        assert_close(row["grad/clip_coef"], expected)
        assert_close(row["grad/clip_rate"], clipped / (k + 1))
        assert row["grad/clip_threshold"] == max_norm
        # and the optimizer really consumed the clipped gradients
        applied = global_of(
            {n: torch.linalg.vector_norm(g.double()).item() for n, g in after_clip[k].items()}
        )
        assert_close(applied, norm * expected, rel=1e-5)


# -- AMP -----------------------------------------------------------------------------------


def test_amp_grad_scaler_cpu_overflow_and_unscaled_norm(wandb_run):
    assert hasattr(torch.amp, "GradScaler")
    run = wandb_run()
    model = tiny_model(11)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    assert scaler.is_enabled()
    tracker = gradwandb.watch(model, opt, run=run, scaler=scaler, layers_every=1, hist_every=None)
    unscaled = capture_grads(opt, model)
    gen = torch.Generator().manual_seed(12)
    overflow_at = 2
    expected_norm, scales = {}, []
    for i in range(N):
        x, y = batch(gen)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        scales.append(scale)
        if i == overflow_at:
            model[0].weight.grad[0, 0] = float("inf")
        else:
            # the norm of the scaled gradients divided by the scale (a power of two: exact)
            expected_norm[i] = global_of(grad_norms(model)) / scale
        scaler.step(opt)
        scaler.update()
        run.log({"loss": loss.item()})
    assert tracker.step == N
    assert len(unscaled) == N - 1  # the optimizer did not run on the overflow step
    tracker.remove()
    assert "step" not in vars(scaler)
    log = read_back(run)
    rows = by_step(log)
    assert sorted(rows) == list(range(N))
    assert len(log.history) == N
    assert scales[overflow_at + 1] == scales[overflow_at] / 2  # the scaler did back off
    pre_hook = iter(unscaled)
    for k in range(N):
        row = rows[k]
        assert "loss" in row
        assert row["amp/scale"] == scales[k]
        if k == overflow_at:
            assert row["amp/overflow_skip"] == 1
            assert "grad/global_norm" not in row
            assert not any(key.startswith("grad_norm/") for key in row)
            continue
        assert row["amp/overflow_skip"] == 0
        assert_close(row["grad/global_norm"], expected_norm[k])
        grads = next(pre_hook)
        norms = {n: torch.linalg.vector_norm(g.double()).item() for n, g in grads.items()}
        assert_close(row["grad/global_norm"], global_of(norms))
        for n, v in norms.items():
            assert_close(row[f"grad_norm/{n}"], v)
    assert [s for s, v in log.series("amp/overflow_skip") if v == 1] == [overflow_at]


# -- two models in one run ----------------------------------------------------------------


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_two_models_in_one_run(wandb_run):
    run = wandb_run()
    torch.manual_seed(13)
    gen_model, disc = Generator(), Discriminator()
    opt_g = torch.optim.Adam(gen_model.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    tracker_g = gradwandb.watch(gen_model, opt_g, run=run, layers_every=1, hist_every=None)
    tracker_d = gradwandb.watch(disc, opt_d, run=run, layers_every=1, hist_every=None)
    assert tracker_g.keys.tag is None
    assert tracker_d.keys.tag == "discriminator"
    seen_g = capture_grads(opt_g, gen_model)
    seen_d = capture_grads(opt_d, disc)
    gen = torch.Generator().manual_seed(14)
    for _ in range(N):
        real = torch.randn(16, 4, generator=gen)
        z = torch.randn(16, 2, generator=gen)
        opt_d.zero_grad()
        fake = gen_model(z).detach()
        d_loss = F.softplus(-disc(real)).mean() + F.softplus(disc(fake)).mean()
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad()
        g_loss = F.softplus(-disc(gen_model(z))).mean()
        g_loss.backward()
        opt_g.step()
        run.log({"d_loss": d_loss.item(), "g_loss": g_loss.item()})
    log = read_back(run)
    assert len(log.history) == N
    keys = history_keys(log)
    assert "grad/global_norm" in keys and "grad/discriminator/global_norm" in keys
    for name, _ in gen_model.named_parameters():
        assert f"grad_norm/{name}" in keys
    for name, _ in disc.named_parameters():
        assert f"grad_norm/discriminator/{name}" in keys
    # the same parameter name in both models: the tag keeps the two series apart
    assert not any(k.startswith("grad_norm/generator/") for k in keys)
    rows_g = by_step(log, "gradwandb/step")
    rows_d = by_step(log, "gradwandb/discriminator/step")
    assert sorted(rows_g) == sorted(rows_d) == list(range(N))
    for k in range(N):
        assert rows_g[k] is rows_d[k]  # both models' step k share a row with the user's losses
        row = rows_g[k]
        assert "d_loss" in row
        ng = {n: torch.linalg.vector_norm(g.double()).item() for n, g in seen_g[k].items()}
        nd = {n: torch.linalg.vector_norm(g.double()).item() for n, g in seen_d[k].items()}
        assert_close(row["grad/global_norm"], global_of(ng))
        assert_close(row["grad/discriminator/global_norm"], global_of(nd))
        assert_close(row["grad_norm/net.0.weight"], ng["net.0.weight"])
        assert_close(row["grad_norm/discriminator/net.0.weight"], nd["net.0.weight"])
        assert row["grad_norm/net.0.weight"] != row["grad_norm/discriminator/net.0.weight"]
    tracker_g.remove()
    tracker_d.remove()
