"""The table of what a sweep's runs did, read back from their run directories.

:func:`run_row` reads each finished run back with :func:`gradwandb.read.read_run` (never from
the program's printed output) into a row of verdict, final loss and accuracy, largest gradient
norm, clip rate and steps; :func:`markdown` and :func:`write_csv` render the rows.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gradwandb.read.run import find_run_file, read_run

RESULT_COLUMNS = (
    "run",
    "status",
    "verdict",
    "final_loss",
    "accuracy",
    "max_grad_norm",
    "clip_rate",
    "steps",
)


def run_row(run_dir: str | Path | None, status: str) -> dict[str, Any]:
    """What one run did, read back from its run directory: verdict, final loss and accuracy,
    the largest finite global gradient norm, the fraction of steps clipping bit, steps."""
    row: dict[str, Any] = {
        "status": status,
        "verdict": None,
        "final_loss": None,
        "accuracy": None,
        "max_grad_norm": None,
        "clip_rate": None,
        "steps": None,
    }
    if run_dir is None:
        return row
    try:
        find_run_file(run_dir)
        log = read_run(run_dir)
    except (FileNotFoundError, RuntimeError, OSError):
        return row
    row["verdict"] = log.verdict
    row["final_loss"] = _last(log.series("loss"))
    row["accuracy"] = _last(log.series("accuracy"))
    norms = [v for _, v in log.global_series("global_norm") if _finite(v)]
    row["max_grad_norm"] = max(norms) if norms else None
    coefs = [v for _, v in log.global_series("clip_coef") if _finite(v)]
    row["clip_rate"] = sum(1 for c in coefs if c < 1.0) / len(coefs) if coefs else None
    row["steps"] = len(log.steps()) or None  # optimizer steps gradwandb logged
    return row


def markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as a Markdown table of ``columns``."""
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow(["" if r.get(c) is None else r.get(c) for c in columns])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _last(series: Sequence[tuple[int, Any]]) -> float | None:
    """The last logged value of a series as a number (NaN and infinities included)."""
    for _, value in reversed(series):
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
            return float(value.replace("Infinity", "inf"))
    return None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)
