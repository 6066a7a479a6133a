"""Statistics as plug-ins: a user's own statistic reaches the row, the record and the run,
computed on the schedule it asks for, in the step's one host transfer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gradwandb
from gradwandb.live.record import JUDGE, StepRecord
from gradwandb.live.stats import kernels as S
from gradwandb.read.run import read_run

ROOT = Path(__file__).resolve().parents[1]


def _rms(view: gradwandb.GradientView) -> torch.Tensor:
    return torch.stack([g.double().pow(2).mean().sqrt() for g in view.grads])


def _train(steps: int, **watch: Any) -> tuple[gradwandb.MemorySink, list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = gradwandb.MemorySink()
    seen = []
    with gradwandb.watch(model, opt, sink=sink, **watch):
        for i in range(steps):
            opt.zero_grad()
            g = torch.Generator().manual_seed(i)
            model(torch.randn(9, 5, generator=g)).pow(2).mean().backward()
            seen.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
            opt.step()
    return sink, seen


def test_a_per_tensor_statistic_equals_recomputation_on_its_tier() -> None:
    rms = gradwandb.Statistic("grad_rms", _rms)  # tier "layers"
    sink, seen = _train(5, statistics=[rms], layers_every=2, hist_every=None)
    rows = dict(sink.rows)
    for step, grads in enumerate(seen):
        logged = {k: v for k, v in rows[step].items() if k.startswith("grad_rms/")}
        if step % 2:
            assert logged == {}  # not its step
            continue
        assert set(logged) == {f"grad_rms/{n}" for n in grads}
        for name, g in grads.items():
            want = g.double().pow(2).mean().sqrt().item()
            assert logged[f"grad_rms/{name}"] == pytest.approx(want, rel=1e-12)


def test_a_per_run_statistic_is_logged_under_grad() -> None:
    top = gradwandb.Statistic("max_of_max", lambda v: torch.stack(
        [g.abs().max() for g in v.grads]).max().double(), tier="log")  # fmt: skip
    sink, seen = _train(3, statistics=[top])
    for (_, row), grads in zip(sink.rows, seen, strict=True):
        want = max(g.abs().max().item() for g in grads.values())
        assert row["grad/max_of_max"] == pytest.approx(want, rel=1e-6)


def test_state_persists_between_steps_and_none_logs_nothing() -> None:
    def delta(view: gradwandb.GradientView) -> torch.Tensor | None:
        previous, view.state["previous"] = view.state.get("previous"), view.norms.clone()
        return None if previous is None else view.norms - previous

    sink, seen = _train(3, statistics=[gradwandb.Statistic("norm_delta", delta, tier="log")])
    rows = [row for _, row in sink.rows]
    assert not any(k.startswith("norm_delta/") for k in rows[0])
    for step in (1, 2):
        for name in seen[step]:
            want = seen[step][name].double().norm() - seen[step - 1][name].double().norm()
            assert rows[step][f"norm_delta/{name}"] == pytest.approx(
                want.item(), rel=1e-5, abs=1e-7
            )


def test_an_after_step_statistic_sees_the_weights_before_and_after() -> None:
    def moved(view: gradwandb.GradientView) -> torch.Tensor | None:
        if view.snapshot is None:
            return None
        return torch.stack(
            [(p.detach() - s).abs().max() for p, s in zip(view.params, view.snapshot, strict=True)]
        ).double()

    stat = gradwandb.Statistic("max_move", moved, after_step=True)
    sink, seen = _train(2, statistics=[stat], layers_every=1)
    for (_, row), grads in zip(sink.rows, seen, strict=True):
        for name, g in grads.items():  # plain SGD: the move is lr * |g|
            assert row[f"max_move/{name}"] == pytest.approx(0.1 * g.abs().max().item(), rel=1e-5)


def test_user_statistics_ride_the_one_transfer_of_a_logged_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = {"to_host": 0, "fn": 0}
    original = S.to_host

    def to_host(named: Any) -> Any:
        calls["to_host"] += 1
        return original(named)

    def counted(view: gradwandb.GradientView) -> torch.Tensor:
        calls["fn"] += 1
        return _rms(view)

    monkeypatch.setattr(S, "to_host", to_host)
    stat = gradwandb.Statistic("grad_rms", counted, tier="log")
    sink, _ = _train(6, statistics=[stat], log_every=3, layers_every=None, hist_every=None)
    assert [s for s, _ in sink.rows] == [0, 3]
    assert calls == {"to_host": 2, "fn": 2}  # nothing at all on the four other steps


def test_a_statistic_reaches_the_rules_through_the_record() -> None:
    seen: list[dict[str, Any]] = []

    class Rule:
        stage = JUDGE

        def __call__(self, record: StepRecord) -> None:
            seen.append(record.get("grad_rms"))

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stat = gradwandb.Statistic("grad_rms", _rms, tier="log")
    with gradwandb.watch(model, opt, sink=gradwandb.MemorySink(), statistics=[stat]) as tracker:
        tracker.add_observer(Rule())
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    assert list(seen[0]) == ["weight", "bias"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: gradwandb.Statistic("grad rms", _rms), "letters, digits"),
        (lambda: gradwandb.Statistic("9lives", _rms), "starting with a letter"),
        (lambda: gradwandb.Statistic("grad_rms", 5), "fn must be a callable"),  # type: ignore[arg-type]
        (lambda: gradwandb.Statistic("grad_rms", _rms, tier="often"), "tier must be one of"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_statistic_is_named(make: Any, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        make()


@pytest.mark.parametrize(
    ("statistics", "message"),
    [
        ("grad_rms", "list of gradwandb.Statistic"),
        ([_rms], "hold gradwandb.Statistic objects"),
        ([gradwandb.Statistic("grad_norm", _rms)], "already taken"),
        ([gradwandb.Statistic("global_norm", _rms)], "already taken"),
        ([gradwandb.Statistic("a", _rms), gradwandb.Statistic("a", _rms)], "already taken"),
    ],
)
def test_watch_names_a_bad_statistics_argument(statistics: Any, message: str) -> None:
    model = nn.Linear(2, 2)
    with pytest.raises((TypeError, ValueError), match=message):
        gradwandb.watch(model, sink=gradwandb.MemorySink(), statistics=statistics)


def test_a_statistic_that_returns_the_wrong_length_switches_tracking_off() -> None:
    stat = gradwandb.Statistic("bad", lambda v: v.norms[:1], tier="log")
    with pytest.warns(RuntimeWarning, match="internal error.*one per tensor"):
        sink, _ = _train(2, statistics=[stat])
    assert sink.rows == []  # reported once; training went on


def test_the_custom_statistic_example_is_read_back_from_its_run(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_DIR": str(tmp_path), "GRADWANDB_EXAMPLE_STEPS": "4"}
    del env["WANDB_MODE"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "custom_statistic.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    log = read_run(run_dir)
    series = log.series("grad_cosine/0.weight")
    assert [step for step, _ in series] == [1, 2, 3]  # none on the first step: no previous
    assert all(-1.0 <= value <= 1.0 for _, value in series)
