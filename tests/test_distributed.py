"""Several processes (2 gloo ranks on the CPU): DDP, FSDP2 and FSDP1 log the numbers of the
full model, clip like ``clip_grad_norm_`` over the full gradient, skip a NaN step on every
rank, run the documented number of collectives, and only rank 0 writes a W&B run.

One spawned job (tests/distributed_job.py) trains every layout once; the tests below read
what each rank wrote and compare it with an unsharded replica that saw the whole batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import distributed_job as J

pytestmark = pytest.mark.filterwarnings("ignore")
LAYOUTS = ("ddp", "fsdp2", "fsdp1", "tp")
REL = 1e-5


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return J.spawn(tmp_path_factory.mktemp("distributed"))


def _close(got: Any, want: float, rel: float = REL) -> bool:
    return isinstance(got, float) and abs(got - want) <= rel * max(abs(want), 1e-12)


def _rows(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {k: row for k, row in result["rows"]}


@pytest.mark.parametrize("kind", LAYOUTS)
def test_names_are_the_users(ranks: list[dict[str, Any]], kind: str) -> None:
    for result in ranks:
        assert result[kind]["names"] == [
            f"{layer}.{p}" for layer in (0, 2, 4) for p in ("weight", "bias")
        ]


@pytest.mark.parametrize("kind", [*LAYOUTS, "fsdp2_torch_clip"])
def test_every_norm_is_the_full_gradients(ranks: list[dict[str, Any]], kind: str) -> None:
    ref = ranks[0]["reference"]
    for rank, result in enumerate(ranks):
        rows = _rows(result[kind])
        assert sorted(rows) == sorted(J.LOGGED), (rank, sorted(rows))
        for k in J.LOGGED:
            row, want = rows[k], ref[k]
            assert _close(row["grad/global_norm"], want["global_norm"]), (kind, rank, k)
            if k not in J.LAYERS:
                assert not any(key.startswith("grad_norm/") for key in row)
                continue
            for name, norm in want["norm"].items():
                assert _close(row[f"grad_norm/{name}"], norm), (kind, rank, k, name)
                assert _close(row[f"grad_mean_abs/{name}"], want["mean_abs"][name])
                assert _close(row[f"grad_max_abs/{name}"], want["max_abs"][name])
                assert _close(row[f"grad_std/{name}"], want["std"][name], 1e-4)
                assert _close(row[f"param_norm/{name}"], want["param_norm"][name])
                ratio = row[f"update_ratio/{name}"]
                assert _close(ratio, want["update_ratio"][name], 1e-4), (kind, k, name)


@pytest.mark.parametrize("kind", LAYOUTS)
def test_histograms_are_of_the_full_tensor(ranks: list[dict[str, Any]], kind: str) -> None:
    ref = ranks[0]["reference"]
    for k in J.HIST:
        row = _rows(ranks[0][kind])[k]
        for name, counts in ref[k]["hist"].items():
            got = row[f"grad_hist/{name}"]["counts"]
            assert sum(got) == sum(counts), (kind, name)
            assert got == counts, (kind, name)


@pytest.mark.parametrize("kind", [*LAYOUTS, "fsdp2_torch_clip"])
def test_clipping_is_clip_grad_norm_over_the_full_gradient(
    ranks: list[dict[str, Any]], kind: str
) -> None:
    ref = ranks[0]["reference"]
    for result in ranks:
        rows = _rows(result[kind])
        for k in J.LOGGED:
            assert ref[k]["coef"] < 1.0  # the clip bites
            assert _close(rows[k]["grad/clip_coef"], ref[k]["coef"], 1e-5), (kind, k)
        for name, want in ref[-1]["weights"].items():
            got = result[kind]["weights"][name]
            assert len(got) == len(want)
            assert all(abs(a - b) <= 1e-5 for a, b in zip(got, want, strict=True)), (kind, name)


@pytest.mark.parametrize("kind", LAYOUTS)
def test_a_nan_on_one_rank_skips_the_step_on_every_rank(
    ranks: list[dict[str, Any]], kind: str
) -> None:
    guarded = [result[f"{kind}_guard"] for result in ranks]
    for result in guarded:
        rows = _rows(result)
        assert rows[1]["guard/skipped"] == 1, kind
        assert [rows[k]["guard/skipped"] for k in sorted(J.LOGGED - {1})] == [0, 0, 0]
    assert guarded[0]["weights"] == guarded[1]["weights"]  # the replicas did not diverge
    noclip = ranks[0]["reference_noclip"]
    assert guarded[0]["weights"] != noclip[-1]["weights"]  # one step fewer than the replica


def _expected_calls(kind: str, *, guard: bool) -> list[list[str]]:
    """The documented cost: per step, the collectives gradwandb adds."""
    out = []
    for k in range(J.STEPS):
        calls = ["all_reduce"] if guard else []  # the guard's flag, every step
        if kind == "fsdp1" and not guard:
            calls.append("all_reduce")  # FSDP1's own clip_grad_norm_ (not gradwandb's)
        if kind != "ddp":  # sharded: the one SUM (clip or log), MAX + update SUM per layer step
            clipped = not guard and kind != "fsdp1"
            if k in J.LOGGED or clipped:
                calls.append("all_reduce")
            if k in J.LAYERS:
                calls += ["all_reduce", "all_reduce"]
            if k in J.HIST:
                calls.append("all_reduce")
        if guard and k == 1 and kind != "ddp":
            calls.append("all_reduce")  # the NaN step counts the bad elements of the full tensor
        out.append(calls)
    return out


@pytest.mark.parametrize("kind", LAYOUTS)
def test_collectives_per_step_are_the_documented_cost(
    ranks: list[dict[str, Any]], kind: str
) -> None:
    for result in ranks:
        assert result[kind]["calls"] == _expected_calls(kind, guard=False), kind
        assert result[f"{kind}_guard"]["calls"] == _expected_calls(kind, guard=True), kind


def test_only_rank_0_writes_a_run(ranks: list[dict[str, Any]]) -> None:
    import gradwandb

    run_dir = ranks[0]["wandb"] and ranks[0].get("run_dir")
    assert run_dir and "run_dir" not in ranks[1]
    runs = list(Path(run_dir).parent.glob("offline-run-*"))
    assert len(runs) == 1, runs
    run = gradwandb.read_run(run_dir)
    ref = ranks[0]["reference"]
    rows = [row for row in run.rows if "grad/global_norm" in row]
    assert [int(row["gradwandb/step"]) for row in rows] == sorted(J.LOGGED)
    for row in rows:
        k = int(row["gradwandb/step"])
        assert _close(float(row["grad/global_norm"]), ref[k]["global_norm"]), k
    assert _close(float(rows[0]["grad_norm/0.weight"]), ref[0]["norm"]["0.weight"])
    assert not any(key.startswith(("grad_norm/module.", "grad_norm/_")) for key in rows[0])
