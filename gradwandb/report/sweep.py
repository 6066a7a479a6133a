"""The sweep report: what a sweep's runs did, as a phase diagram (two swept parameters as a
grid, cells coloured by verdict, one panel per value of the others), each parameter against
each outcome, and the table.

A sweep is read into :class:`SweepData` from a local sweep folder as ``gradwandb sweep``
writes it (``sweep.json`` and the runs under ``wandb/``; each run read back with
:func:`gradwandb.read.read_run`, cached), or from W&B (``entity/project/sweep_id``) through
``wandb.Api().sweep`` with :func:`api_sweep`, which needs only the shape of that object.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwandb.keys import VERDICTS
from gradwandb.report.html import Section, esc, image, note, page, value_text
from gradwandb.report.online import is_run_path
from gradwandb.report.sources import ReportError

__all__ = [
    "OUTCOMES",
    "SWEEP_SHAPE",
    "SweepData",
    "api_sweep",
    "load_sweep_data",
    "local_sweep",
    "render_sweep_report",
    "write_sweep_report",
]

OUTCOMES = ("final_loss", "accuracy", "max_grad_norm", "clip_rate")
OUTCOME_COLUMNS = ("status", "verdict", *OUTCOMES, "steps")
SWEEP_SHAPE = (
    "a sweep folder is what `gradwandb sweep FILE --dir DIR` writes: DIR/sweep.json, "
    "DIR/results.csv and the runs under DIR/wandb/ (or pass a W&B sweep as "
    "entity/project/sweep_id)"
)
MAX_GRID_VALUES = 12  # a parameter with more distinct values is no grid axis
MAX_FACETS = 12


@dataclass(frozen=True)
class SweepData:
    """One row per run: ``run`` (the W&B run id), the swept parameters, then
    :data:`OUTCOME_COLUMNS`."""

    name: str
    where: str
    params: list[str]
    metric: str | None
    rows: list[dict[str, Any]]

    @property
    def columns(self) -> list[str]:
        return ["run", *self.params, *OUTCOME_COLUMNS]


def swept_parameters(config: Mapping[str, Any]) -> list[str]:
    """Parameters of a sweep config that take more than one value, in the file's order.

    >>> swept_parameters({"parameters": {"lr": {"values": [1, 2]}, "x": {"value": 3},
    ...                                  "y": {"min": 0.0, "max": 1.0}}})
    ['lr', 'y']
    """
    out = []
    for name, spec in dict(config.get("parameters") or {}).items():
        if not isinstance(spec, Mapping):
            continue
        if "value" in spec and "values" not in spec:
            continue
        if "values" in spec and len(list(spec["values"])) < 2:
            continue
        out.append(str(name))
    return out


def local_sweep(folder: str | Path) -> SweepData:
    """Read a sweep folder written by ``gradwandb sweep``."""
    from gradwandb.read.sweep_results import run_row
    from gradwandb.read.sweep_state import STATE_NAME, SweepState

    path = Path(folder)
    state_file = path / STATE_NAME
    if not state_file.is_file():
        what = "no such folder" if not path.exists() else f"no {STATE_NAME} in it"
        raise ReportError(f"{folder}: not a sweep folder ({what}); {SWEEP_SHAPE}")
    try:
        state = SweepState.load(state_file)
    except (ValueError, TypeError, KeyError) as error:
        raise ReportError(
            f"{state_file}: not a sweep state file ({error}); {SWEEP_SHAPE}"
        ) from None
    params = swept_parameters(state.config) or sorted({k for r in state.runs for k in r.config})
    rows = []
    for entry in state.runs:
        if entry.status == "pending":
            continue
        row = run_row(entry.run_dir, entry.status)
        rows.append({"run": entry.id, **{k: entry.config.get(k) for k in params}, **row})
    metric = (state.config.get("metric") or {}).get("name")
    return SweepData(state.name, str(path), params, metric, rows)


def api_sweep(sweep: Any, where: str) -> SweepData:
    """:class:`SweepData` of a sweep object as ``wandb.Api().sweep(path)`` gives it (its
    ``config`` and ``runs``, each with ``id``, ``state``, ``config``, ``summary`` and
    ``scan_history(keys=...)``)."""
    config = dict(getattr(sweep, "config", {}) or {})
    params = swept_parameters(config)
    rows = []
    for run in sweep.runs:
        summary = dict(getattr(run, "summary", {}) or {})
        history = list(run.scan_history(keys=["grad/global_norm", "grad/clip_coef"]))
        norms = [_num(r.get("grad/global_norm")) for r in history]
        finite = [v for v in norms if v is not None and math.isfinite(v)]
        coefs = [v for r in history if (v := _num(r.get("grad/clip_coef"))) is not None]
        rows.append(
            {
                "run": run.id,
                **{k: dict(run.config).get(k) for k in params},
                "status": run.state,
                "verdict": summary.get("gradwandb/verdict"),
                "final_loss": _num(summary.get("loss")),
                "accuracy": _num(summary.get("accuracy")),
                "max_grad_norm": max(finite) if finite else None,
                "clip_rate": sum(c < 1.0 for c in coefs) / len(coefs) if coefs else None,
                "steps": summary.get("gradwandb/step"),
            }
        )
    metric = (config.get("metric") or {}).get("name")
    return SweepData(str(config.get("name") or where), where, params, metric, rows)


def load_sweep_data(spec: str | Path, api: Any = None) -> SweepData:
    """A local sweep folder, or ``entity/project/sweep_id`` read from W&B."""
    text = str(spec)
    if Path(text).exists() or not is_run_path(text):
        return local_sweep(text)
    try:
        if api is None:
            import wandb

            api = wandb.Api()
        return api_sweep(api.sweep(text), f"W&B sweep {text}")
    except ReportError:
        raise
    except Exception as error:
        first = (str(error).strip().splitlines() or [repr(error)])[0]
        raise ReportError(
            f"{text}: could not read the sweep from W&B ({first}); log in with `wandb login`, "
            "or pass a local sweep folder"
        ) from None


# -- the page --------------------------------------------------------------------------------


def render_sweep_report(
    sweep: SweepData, *, title: str | None = None, progress: bool = False
) -> str:
    """The HTML page of a sweep: phase diagram, parameter-versus-outcome plots, table."""
    from tqdm import tqdm

    outcomes = [o for o in OUTCOMES if any(_num(r.get(o)) is not None for r in sweep.rows)]
    steps = tqdm(total=2 + len(sweep.params), desc="drawing", disable=not progress)
    with steps:
        phase = _phase_section(sweep)
        steps.update()
        plots = []
        for param in sweep.params:
            plots.append(_outcome_cell(sweep, param, outcomes))
            steps.update()
        table_html = _table(sweep)
        steps.update()
    sections = [
        Section("phase", "Phase diagram", [phase]),
        Section(
            "outcomes",
            "Parameters against outcomes",
            ["".join(plots) or note("No swept parameter to plot.")],
        ),
        Section("table", "Runs", [table_html]),
    ]
    counts: dict[str, int] = {}
    for r in sweep.rows:
        counts[str(r.get("verdict") or "no verdict")] = counts.get(str(r.get("verdict")), 0) + 1
    tally = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    sub = f"{len(sweep.rows)} runs ({tally}) read from {sweep.where}"
    return page(title or f"Sweep report: {sweep.name}", sub, [sweep.name], sections)


def write_sweep_report(
    sweep: str | Path | SweepData, out: str | Path = "sweep-report.html", **options: Any
) -> Path:
    """Write :func:`render_sweep_report` of ``sweep`` (a folder, a W&B path or the data)."""
    api = options.pop("api", None)
    data = sweep if isinstance(sweep, SweepData) else load_sweep_data(sweep, api)
    path = Path(out)
    path.write_text(render_sweep_report(data, **options), encoding="utf-8")
    return path


def _phase_section(sweep: SweepData) -> str:
    from gradwandb.plots.verdicts import phase_chart

    if not sweep.rows:
        return note("The sweep has no finished or failed run yet.")
    values = {p: _distinct(r.get(p) for r in sweep.rows) for p in sweep.params}
    axes = [p for p in sweep.params if 1 <= len(values[p]) <= MAX_GRID_VALUES]
    if not axes:
        return note(
            "No phase diagram: no swept parameter takes a few distinct values (a grid sweep "
            "has them; random and bayes search are in the plots below)."
        )
    axes.sort(key=lambda p: -len(values[p]))
    x = axes[0]
    y = axes[1] if len(axes) > 1 else None
    rest = axes[2:]
    facets = list(itertools.product(*(values[p] for p in rest)))
    left_out = [p for p in sweep.params if p not in axes]
    parts = []
    if len(facets) > MAX_FACETS:
        parts.append(note(f"First {MAX_FACETS} of {len(facets)} panels shown."))
        facets = facets[:MAX_FACETS]
    cells: dict[Any, str | None] = {}
    labels: dict[Any, str] = {}
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in sweep.rows:
        key = (tuple(_key(r.get(p)) for p in rest), _key(r.get(x)), _key(r.get(y)) if y else "")
        groups.setdefault(key, []).append(r)
    for key, rs in groups.items():
        verdict = _worst([r.get("verdict") for r in rs])
        cells[key] = verdict
        norm = _num(rs[0].get("max_grad_norm"))
        text = verdict or "no verdict"
        if norm is not None and len(rs) == 1:
            text += f"\n{norm:.3g}"
        elif len(rs) > 1:
            text += f"\n{len(rs)} runs"
        labels[key] = text
    png = phase_chart(
        x,
        [_key(v) for v in values[x]],
        y or "",
        [_key(v) for v in values[y]] if y else [""],
        cells,
        facet_names=rest,
        facets=[tuple(_key(v) for v in f) for f in facets] or [()],
        labels=labels,
    )
    parts.insert(0, image(png, "phase diagram: verdict per grid cell"))
    parts.append(
        note(
            "Each cell: the verdict (the most severe of its runs) and the largest global "
            "gradient norm before clipping."
            + (f" Not on the grid (too many values): {', '.join(left_out)}." if left_out else "")
        )
    )
    return "".join(parts)


def _outcome_cell(sweep: SweepData, param: str, outcomes: Sequence[str]) -> str:
    from gradwandb.plots.verdicts import outcome_chart

    rows = [r for r in sweep.rows if r.get(param) is not None]
    if not rows or not outcomes:
        return ""
    out = [f"<h3>{esc(param)}</h3>"]
    for outcome in outcomes:
        png = outcome_chart(
            param,
            [r[param] for r in rows],
            outcome,
            [_num(r.get(outcome)) for r in rows],
            [r.get("verdict") for r in rows],
        )
        out.append(image(png, f"{outcome} against {param}"))
    return f'<div style="display:flex;flex-wrap:wrap;gap:8px">{"".join(out)}</div>'


def _table(sweep: SweepData) -> str:
    cols = sweep.columns
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = []
    for r in sweep.rows:
        cells = []
        for c in cols:
            v = r.get(c)
            text = "" if v is None else esc(value_text(v))
            if c == "verdict" and v in VERDICTS:
                text = f'<span class="verdict v-{esc(v)}">{text}</span>'
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _worst(verdicts: Iterable[Any]) -> str | None:
    known = [v for v in verdicts if v in VERDICTS]
    return max(known, key=VERDICTS.index) if known else None


def _distinct(values: Iterable[Any]) -> list[Any]:
    seen = list(dict.fromkeys(_key(v) for v in values if v is not None))
    try:
        return sorted(seen)
    except TypeError:
        return seen


def _key(value: Any) -> Any:
    """A hashable, comparable stand-in for a config value (lists as tuples)."""
    if isinstance(value, list):
        return tuple(_key(v) for v in value)
    if isinstance(value, dict):
        return str(value)
    return value


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
