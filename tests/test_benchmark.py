"""Smoke test of ``benchmarks/overhead.py --quick``: it runs, and reports every variant.

Timings are never asserted on: a unit test on a shared machine cannot time anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "overhead.py"
MODELS = ("seq2seq", "mlp")
VARIANTS = ("bare", "wandb.watch", "gradwandb", "gradwandb+bptt", "gradwandb+hist", "floor")


def test_quick_benchmark_reports_every_variant(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    env = dict(os.environ, WANDB_DIR=str(tmp_path / "wandb"))  # conftest made it offline
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    results = json.loads(out.read_text())
    assert results["config"]["quick"] is True
    assert set(results["models"]) == set(MODELS)
    for model in MODELS:
        variants = results["models"][model]["variants"]
        assert set(variants) == set(VARIANTS)
        for variant in VARIANTS:
            assert variants[variant]["median_ms"] > 0
            assert len(variants[variant]["rounds_ms"]) == results["config"]["rounds"]
            assert all(t > 0 for t in variants[variant]["rounds_ms"])

    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    for model in MODELS:
        for variant in VARIANTS:
            assert sum(r.startswith(f"| {model} | {variant} |") for r in rows) == 1, proc.stdout
