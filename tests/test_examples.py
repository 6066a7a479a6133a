"""Every ``examples/*.py`` runs, tiny, as a user would run it, and writes a W&B run.

The convention each example follows:

- ``GRADWANDB_EXAMPLE_STEPS`` sets its number of steps;
- it logs offline when ``WANDB_MODE`` is unset (the test unsets it), under ``WANDB_DIR``;
- it logs gradwandb's metrics, and prints the directory of the run it wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradwandb.read.run import read_run

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))
# The configured examples (gradwandb.config): tiny settings as name=value / --name=value
# arguments, the way a sweep agent passes them, taking their less common paths.
TINY = {
    "seq2seq.py": ["decoder=loop", "cell=lstm", "--layer_norm=true", "init=orthogonal",
                   "seq_len=4", "hidden_size=8", "emb_dim=4", "batch_size=4", "eval_size=8",
                   "bptt_every=1", "clip=1.0", "gate_bias=2"],
    "deep_mlp.py": ["depth=3", "width=8", "--residual=yes", "normalization=layer",
                    "init=kaiming", "batch_size=8", "eval_size=16", "optimizer=adam"],
}  # fmt: skip


def test_the_quickstart_is_among_the_examples() -> None:
    assert "quickstart.py" in [e.name for e in EXAMPLES]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs_and_writes_a_run(example: Path, tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_DIR": str(tmp_path), "GRADWANDB_EXAMPLE_STEPS": "3"}
    del env["WANDB_MODE"]  # the example must choose offline itself
    done = subprocess.run(
        [sys.executable, str(example), *TINY.get(example.name, [])],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert runs, f"{example.name} wrote no offline W&B run under {tmp_path}"
    for run_dir in runs:
        assert run_dir.name in done.stdout, f"{example.name} does not print where {run_dir} is"
        log = read_run(run_dir)
        assert log.history, f"{run_dir} has no history"
        logged = log.metric_keys()
        assert any(k.startswith("grad/") and k.endswith("global_norm") for k in logged)
        if example.name in TINY:  # the resolved config is recorded, the verdict written
            assert log.complete and log.verdict in ("healthy", "vanishing", "exploding")
            assert {"loss", "accuracy"} <= logged
            assert log.config["steps"] == 3 and len(log.series("loss")) == 3
            for arg in TINY[example.name]:
                name, _, _ = arg.lstrip("-").partition("=")
                assert name in log.config


def test_a_bad_config_stops_before_training_naming_the_key(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_DIR": str(tmp_path)}
    example = next(e for e in EXAMPLES if e.name == "deep_mlp.py")
    done = subprocess.run(
        [sys.executable, str(example), "depth=0", "width=8"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: bad configuration: depth=0 (command line): must be >= 1")
    assert not (tmp_path / "wandb").exists()  # no run was started


def test_a_run_that_goes_nonfinite_ends_early_with_its_verdict(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_DIR": str(tmp_path)}
    example = next(e for e in EXAMPLES if e.name == "deep_mlp.py")
    done = subprocess.run(
        [sys.executable, str(example), "lr=1e30", "steps=40", "depth=2", "width=8",
         "eval_size=16", "init=normal", "init_std=3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]  # a sweep goes on
    (run_dir,) = sorted((tmp_path / "wandb").glob("offline-run-*"))
    log = read_run(run_dir)
    assert log.summary["ended"] == "nonfinite" and log.verdict == "nonfinite"
    assert len(log.series("loss")) < 40


@pytest.mark.parametrize(("cell", "block"), [("lstm", 1), ("gru", 1), ("rnn", None)])
def test_gate_bias_sets_the_keep_the_state_gate_only(cell: str, block: int | None) -> None:
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location(
        "seq2seq_example", EXAMPLES[0].parent / "seq2seq.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(example)
    finally:
        del sys.modules[spec.name]
    config = example.Config(cell=cell, hidden_size=4, emb_dim=3)
    torch.manual_seed(0)
    model = example.Seq2Seq(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    example.keep_state(model, 2.0)
    for name, p in model.named_parameters():
        if block is None or ".bias_" not in name:
            assert torch.equal(p, before[name]), name  # nothing else moves
            continue
        rows = slice(block * 4, (block + 1) * 4)
        assert torch.all(p[rows] == (2.0 if ".bias_ih" in name else 0.0)), name
        rest = torch.ones(p.shape[0], dtype=torch.bool)
        rest[rows] = False
        assert torch.equal(p[rest], before[name][rest]), name
