"""What a report is made from: each RUN argument turned into a :class:`RunLog`, or a clear
:class:`ReportError` naming the argument and what was expected.

A RUN is an offline run directory (or its ``.wandb`` file), read with
:func:`gradwandb.read.read_run` (cached), or ``entity/project/run_id``, read from W&B through
:mod:`gradwandb.report.online`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradwandb.read.run import RunLog, find_run_file, read_run
from gradwandb.report.online import is_run_path, online_run
from gradwandb.report.sections import Column

__all__ = ["RUN_SHAPE", "ReportError", "columns_of", "load_run"]

RUN_SHAPE = (
    "a run directory holds one run-<id>.wandb file, e.g. wandb/offline-run-20260101_000000-"
    "abc123 as W&B writes it offline (or pass a W&B run as entity/project/run_id)"
)


class ReportError(ValueError):
    """A report that cannot be made from what it was given (the command exits with 2)."""


def load_run(spec: str | Path | RunLog, api: Any = None) -> tuple[str, str, RunLog]:
    """``(label, where it was read from, run)`` of one RUN argument."""
    if isinstance(spec, RunLog):
        return spec.name or spec.run_dir.name, str(spec.run_dir), spec
    text = str(spec)
    path = Path(text)
    if path.exists():
        try:
            find_run_file(path)
        except FileNotFoundError:
            inside = sorted(p.name for p in path.glob("*/*.wandb")) if path.is_dir() else []
            hint = f"; it holds {len(inside)} run(s) a level down, pass one" if inside else ""
            raise ReportError(f"{text} is not a W&B run: {RUN_SHAPE}{hint}") from None
        try:
            run = read_run(path)
        except (RuntimeError, OSError, ValueError) as error:
            raise ReportError(f"{text}: W&B's reader could not read it ({error})") from None
        return run.name or run.run_dir.name, str(run.run_dir), run
    if is_run_path(text):
        try:
            run = online_run(text, api)
            return run.name or text, f"W&B run {text}", run
        except Exception as error:  # the server's own error, as one line
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ReportError(
                f"{text}: could not read the run from W&B ({first}); log in with `wandb login`, "
                "or pass an offline run directory"
            ) from None
    raise ReportError(f"{text}: no such file or directory; {RUN_SHAPE}")


def columns_of(label: str, where: str, run: RunLog) -> list[Column]:
    """One page column per tracker in ``run`` (the untagged one first)."""
    tags = run.tags or [None]
    return [Column(f"{label} [{tag}]" if tag else label, where, run, run.view(tag)) for tag in tags]
