"""The run report: RUN arguments in, one self-contained HTML page out.

Each section (:data:`gradwandb.report.sections.BUILDERS`) becomes a row with one cell per run,
so a run and its fix read side by side. Every run is read once (through the reader's cache)
and every section draws from that one read.

    write_report(["wandb/offline-run-...-broken", "wandb/offline-run-...-fixed"], "report.html")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradwandb.read.run import RunLog
from gradwandb.report.html import Section, note, page
from gradwandb.report.sections import BUILDERS, Column, Options
from gradwandb.report.sources import ReportError, columns_of, load_run

__all__ = ["render_report", "write_report"]


def render_report(
    runs: Sequence[str | Path | RunLog],
    *,
    steps: Sequence[int] | None = None,
    title: str | None = None,
    progress: bool = False,
    api: Any = None,
    options: Options | None = None,
) -> str:
    """The HTML page of ``runs`` (offline run directories, ``entity/project/run_id`` paths,
    or runs already read), shown side by side. ``steps`` picks the optimizer steps of the
    gradient-flow bars (default: the first, middle and last per-layer step)."""
    from tqdm import tqdm

    if not runs:
        raise ReportError("no run given; pass one or more run directories")
    opts = options or Options()
    if steps is not None:
        opts = Options(tuple(steps), opts.max_points, opts.max_columns)
    columns: list[Column] = []
    for spec in tqdm(runs, desc="reading", unit="run", disable=not progress):
        columns += columns_of(*load_run(spec, api))
    sections = []
    work = tqdm(total=len(BUILDERS) * len(columns), desc="drawing", disable=not progress)
    with work:
        for key, heading, build in BUILDERS:
            cells = []
            for col in columns:
                try:
                    cells.append(build(col, opts))
                except ValueError as error:  # a value a chart cannot draw: say so, go on
                    cells.append(note(f"This section could not be drawn: {error}", warn=True))
                work.update()
            sections.append(Section(key, heading, cells))
    labels = [c.label for c in columns]
    name = title or (
        f"Gradient report: {labels[0]}" if len(labels) == 1 else "Gradient report: runs compared"
    )
    verdicts = ", ".join(f"{c.label}: {c.view.verdict or 'no verdict'}" for c in columns)
    return page(name, verdicts, labels, sections)


def write_report(
    runs: Sequence[str | Path | RunLog],
    out: str | Path = "report.html",
    **options: Any,
) -> Path:
    """Write :func:`render_report` of ``runs`` to ``out``; returns its path.

    >>> write_report([])
    Traceback (most recent call last):
    ...
    gradwandb.report.sources.ReportError: no run given; pass one or more run directories
    """
    text = render_report(runs, **options)
    path = Path(out)
    path.write_text(text, encoding="utf-8")
    return path
