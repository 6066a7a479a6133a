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


def test_the_quickstart_is_among_the_examples() -> None:
    assert "quickstart.py" in [e.name for e in EXAMPLES]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs_and_writes_a_run(example: Path, tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_DIR": str(tmp_path), "GRADWANDB_EXAMPLE_STEPS": "3"}
    del env["WANDB_MODE"]  # the example must choose offline itself
    done = subprocess.run(
        [sys.executable, str(example)],
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
