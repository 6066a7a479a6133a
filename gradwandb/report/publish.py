"""A W&B Report of runs or a sweep, built with ``wandb_workspaces.reports.v2`` (the
``gradwandb[reports]`` extra), then saved to the server.

Building is pure: :func:`build_wandb_report` makes the Report object from what the runs
logged (verdicts, findings, layer names, the sweep's parameters) and touches no server.
:func:`save_report` is the only step that needs an API key and a network; without them it
raises :class:`PublishError` saying how to log in and how to make the offline page instead.
A Runset bound to an entity and project asks the server for the project even to serialize,
so tests build with ``bind_runsets=False`` and serialize offline.

    report = build_wandb_report("my-team", "translate", runs=[brief_of("broken", log)])
    print(save_report(report))      # the report's URL
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from gradwandb import keys as K
from gradwandb.read.run import Finding, RunLog
from gradwandb.report.sweep import SweepData

__all__ = [
    "INSTALL_HINT",
    "LOGIN_HINT",
    "PublishError",
    "RunBrief",
    "brief_of",
    "build_wandb_report",
    "save_report",
    "summary_markdown",
]

INSTALL_HINT = "pip install 'gradwandb[reports]'"
LOGIN_HINT = (
    "log in with `wandb login` (or set WANDB_API_KEY) and run this again; with no account, "
    "write the offline HTML page instead: gradwandb report RUN [RUN ...] -o report.html "
    "(or gradwandb report --sweep SWEEP -o sweep.html)"
)
MAX_LAYER_PANELS = 12  # per-layer grad_norm line plots (the regex panel shows every layer)
_RUN_ID = re.compile(r"[\w.-]+\Z")


class PublishError(RuntimeError):
    """The report could not be built or saved; the message says what to do."""


@dataclass(frozen=True)
class RunBrief:
    """What the Report needs of one run: its W&B id, a label, verdict, findings, layers."""

    id: str
    label: str
    verdict: str | None
    complete: bool = True
    findings: list[Finding] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)


def run_id(run: RunLog) -> str:
    """The W&B run id of ``run`` (``run-<id>.wandb`` offline; the id for a run read online)."""
    stem = run.path.stem
    return stem[4:] if stem.startswith("run-") else stem


def brief_of(label: str, run: RunLog) -> RunBrief:
    """The :class:`RunBrief` of a run read back (its untagged tracker, else its first)."""
    view = run.view(run.tags[0] if run.tags else None)
    return RunBrief(
        id=run_id(run),
        label=label,
        verdict=view.verdict,
        complete=run.complete,
        findings=view.findings,
        layers=view.names(K.GRAD_NORM),
    )


def workspaces() -> Any:
    """``wandb_workspaces.reports.v2``, or a :class:`PublishError` naming the extra."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        raise PublishError(
            f"W&B Reports need the wandb-workspaces package: {INSTALL_HINT}"
        ) from None
    return wr


def summary_markdown(runs: Sequence[RunBrief], sweep: SweepData | None = None) -> str:
    """The Markdown block: each run's verdict, findings and fixes; a sweep's tally."""
    lines = []
    for r in runs:
        state = "" if r.complete else " (incomplete: the run did not finish)"
        lines.append(f"### {_md(r.label)}: **{_md(r.verdict or 'no verdict')}**{state}")
        if not r.findings:
            lines.append("No findings." if r.verdict else "")
        for f in r.findings:
            where = f" ({_md(f.layer)})" if f.layer else ""
            at = f" at step {f.step}" if f.step is not None else ""
            lines.append(f"- **{_md(f.kind or 'finding')}**{where}{at}: {_md(f.message)}")
            if f.fix:
                lines.append(f"  - fix: {_md(f.fix)}")
        lines.append("")
    if sweep is not None:
        lines.append(f"### Sweep {_md(sweep.name)}: {len(sweep.rows)} runs")
        cols = ["run", *sweep.params, "verdict", "final_loss", "max_grad_norm"]
        lines.append("| " + " | ".join(_md(c) for c in cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for row in sweep.rows:
            cells = [_md(_cell(row.get(c))) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines).strip() + "\n"


def build_wandb_report(
    entity: str,
    project: str,
    *,
    runs: Sequence[RunBrief] = (),
    sweep: SweepData | None = None,
    title: str | None = None,
    bind_runsets: bool = True,
) -> Any:
    """The Report (not saved): a Markdown block of verdicts and fixes, line plots of
    ``grad/global_norm`` and ``grad/clip_coef``, a ``grad_norm/*`` section, and for a sweep
    parallel coordinates and parameter importance. Its runsets select the given runs (by id)
    in ``entity/project``; ``bind_runsets=False`` leaves their entity and project empty, so
    the report serializes with no server."""
    wr = workspaces()
    if not entity or not project:
        raise PublishError(
            f"a W&B Report needs --entity and --project (got {entity!r}, {project!r})"
        )
    ids = [r.id for r in runs] + [str(row["run"]) for row in (sweep.rows if sweep else [])]
    if not ids:
        raise PublishError("nothing to report: pass runs or a sweep")
    for i in ids:
        if not _RUN_ID.match(i):
            raise PublishError(f"run id {i!r} is not a W&B run id (letters, digits, _ . -)")
    where = (
        {"entity": entity, "project": project} if bind_runsets else {"entity": "", "project": ""}
    )
    quoted = ", ".join(f"'{i}'" for i in dict.fromkeys(ids))
    runset = wr.Runset(name="gradwandb runs", filters=f"Metric('ID') in [{quoted}]", **where)
    step = K.STEP

    def grid(panels: list[Any]) -> Any:
        return wr.PanelGrid(runsets=[runset], panels=panels)

    blocks: list[Any] = [
        wr.H1(text="Gradient health"),
        wr.MarkdownBlock(text=summary_markdown(runs, sweep)),
        wr.H2(text="Global gradient norm and clipping"),
        grid(
            [
                wr.LinePlot(
                    title=K.GLOBAL_NORM,
                    x=step,
                    y=[K.GLOBAL_NORM],
                    log_y=True,
                    title_x="optimizer step",
                ),
                wr.LinePlot(
                    title=K.CLIP_COEF, x=step, y=[K.CLIP_COEF], log_y=True, title_x="optimizer step"
                ),
                wr.LinePlot(title=K.NONFINITE, x=step, y=[K.NONFINITE], title_x="optimizer step"),
            ]
        ),
        wr.H2(text=f"{K.GRAD_NORM}/*"),
    ]
    layers = list(dict.fromkeys(n for r in runs for n in r.layers))
    layer_panels = [
        wr.LinePlot(
            title=f"{K.GRAD_NORM}/* (every layer)",
            x=step,
            metric_regex=f"{K.GRAD_NORM}/.*",
            log_y=True,
            title_x="optimizer step",
        ),
    ]
    for name in layers[:MAX_LAYER_PANELS]:
        key = K.Keys().param(K.GRAD_NORM, name)
        layer_panels.append(wr.LinePlot(title=key, x=step, y=[key], log_y=True))
    blocks.append(grid(layer_panels))
    if sweep is not None:
        target = sweep.metric or "loss"
        columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(p)) for p in sweep.params]
        columns.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(target)))
        columns.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(K.GLOBAL_NORM)))
        blocks += [
            wr.H2(text=f"Sweep {sweep.name}"),
            grid(
                [
                    wr.ParallelCoordinatesPlot(title="parameters -> outcome", columns=columns),
                    wr.ParameterImportancePlot(with_respect_to=target),
                ]
            ),
        ]
    name = title or (f"Gradient health: sweep {sweep.name}" if sweep else "Gradient health")
    return wr.Report(
        entity=entity,
        project=project,
        title=name[:128],
        blocks=blocks,
        description="Made by gradwandb from what the runs logged.",
    )


def save_report(report: Any, *, timeout: float = 10.0) -> str:
    """Save ``report`` to W&B and return its URL; :class:`PublishError` without an API key,
    without a network, or when the server refuses it."""
    import wandb

    try:
        api = wandb.Api(timeout=int(timeout))
        if not getattr(api, "api_key", None):
            raise wandb.errors.UsageError("no API key")
    except wandb.errors.UsageError:
        raise PublishError(f"no W&B API key found: {LOGIN_HINT}") from None
    base = str(api.settings.get("base_url") or "https://api.wandb.ai")
    _reachable(base, timeout)
    try:
        report.save()
        return str(report.url)
    except Exception as error:
        first = (str(error).strip().splitlines() or [repr(error)])[0]
        raise PublishError(f"W&B did not save the report ({first}); {LOGIN_HINT}") from None


def _reachable(base_url: str, timeout: float) -> None:
    url = urlparse(base_url)
    host = url.hostname or base_url
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise PublishError(
            f"cannot reach the W&B server at {base_url} ({error.strerror or error}); check the "
            f"network (or WANDB_BASE_URL), or {LOGIN_HINT.split('; ', 1)[1]}"
        ) from None


def _md(text: Any) -> str:
    """Text for W&B's Markdown: no raw HTML, no table breaks."""
    return (
        str(text)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
