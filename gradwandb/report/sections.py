"""The sections of a run report, one function per kind, each turning one run (one tracker's
view of it) into the HTML body of its cell: escaped text, tables and embedded pictures.

Each builder returns a cell even when the run holds nothing for it, saying why (no
histograms logged, no recurrent module monitored), so runs shown side by side stay aligned.
:data:`BUILDERS` lists them in page order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradwandb import keys as K
from gradwandb.read.run import RunLog, View
from gradwandb.report.downsample import MAX_COLUMNS, MAX_POINTS, bin_columns, thin_series
from gradwandb.report.html import esc, image, mapping_table, note, table

__all__ = ["BUILDERS", "Column", "Options", "choose_steps", "flatten"]

MAX_ROWS = 200  # heatmap rows (layers, timesteps) before they are binned too
MAX_HISTOGRAMS = 8  # layers whose histograms are drawn
MAX_CURVES = 5  # per-timestep curves drawn per module
MAX_TABLE_ROWS = 500  # rows of the parameter and findings tables


@dataclass(frozen=True)
class Options:
    """How a run is drawn: ``steps`` for the gradient-flow bars (None: first, middle and
    last per-layer step), and the budgets of points and heatmap columns."""

    steps: tuple[int, ...] | None = None
    max_points: int = MAX_POINTS
    max_columns: int = MAX_COLUMNS


@dataclass(frozen=True)
class Column:
    """One column of the page: a run (its :class:`RunLog`) and the tracker shown (``view``),
    headed by ``label``; ``where`` says where it was read from."""

    label: str
    where: str
    run: RunLog
    view: View


Builder = Callable[[Column, Options], str]


# -- the sections ------------------------------------------------------------------------------


def status(col: Column, opts: Options) -> str:
    """Verdict, how far the run got, where it lives; the incomplete note."""
    run, view = col.run, col.view
    steps = view.steps()
    verdict = view.verdict
    cls = f"v-{verdict}" if verdict in K.VERDICTS else "v-none"
    badge = f'<span class="verdict {cls}">{esc(verdict or "no verdict")}</span>'
    parts = [f"<p>{badge} &nbsp;{len(view.findings)} finding(s)</p>"]
    if not run.complete:
        last = f"up to optimizer step {steps[-1]}" if steps else "nothing gradwandb logged"
        parts.append(
            note(
                "Incomplete run: its process stopped before the run finished (killed or "
                f"crashed). Shown is what it wrote, {last}; the verdict and findings are "
                "written when the run finishes, so they may be missing.",
                warn=True,
            )
        )
    facts: list[list[Any]] = [
        ["read from", col.where],
        ["optimizer steps logged", len(steps)],
        ["steps", f"{steps[0]} .. {steps[-1]}" if steps else "none"],
        ["finished", "yes" if run.complete else "no"],
    ]
    if run.exit_code not in (None, 0):
        facts.append(["exit code", run.exit_code])
    if view.tag:
        facts.append(["tracker tag", view.tag])
    parts.append(table(["", ""], facts))
    return "".join(parts)


def global_norm(col: Column, opts: Options) -> str:
    """The global norm and the clip coefficient over the steps (log scale)."""
    from gradwandb.plots.lines import global_chart

    norms = [(s, v) for s, v in col.view.global_series("global_norm") if _number(v)]
    if not norms:
        return note("No global gradient norm was logged (grad/global_norm).")
    clip = [(s, v) for s, v in col.view.global_series("clip_coef") if _number(v)]
    thin, thin_clip = thin_series(norms, opts.max_points), thin_series(clip, opts.max_points)
    png = global_chart(
        [s for s, _ in thin.points],
        [float(v) for _, v in thin.points],
        band=_band(thin),
        clip_steps=[s for s, _ in thin_clip.points],
        clip=[float(v) for _, v in thin_clip.points],
        clip_band=_band(thin_clip),
    )
    finite = [float(v) for _, v in norms if math.isfinite(v)]
    bits = [image(png, "global gradient norm and clip coefficient")]
    if thin.note():
        bits.append(note(thin.note()))
    summary = [["max global norm", max(finite) if finite else "none finite"]]
    summary.append(["non-finite steps", sum(1 for _, v in norms if not math.isfinite(v))])
    if clip:
        rate = sum(1 for _, c in clip if c < 1.0) / len(clip)
        summary.append(["steps clipped", f"{rate:.1%}"])
    else:
        bits.append(note("No clip coefficient was logged (grad/clip_coef)."))
    bits.append(table(["", ""], summary))
    return "".join(bits)


def heatmap(col: Column, opts: Options) -> str:
    """log10 gradient norm, layer x per-layer step."""
    from gradwandb.plots.charts import norm_heatmap

    m = col.view.layer_matrix(K.GRAD_NORM)
    if not m.steps or not m.names:
        return note(
            "No per-layer gradient norms were logged: watch(..., layers_every=N) logs them "
            "every N steps (the run may have ended before the first one)."
        )
    logs = [[_log10(v) for v in row] for row in m.values]
    binned = bin_columns(m.steps, logs, opts.max_columns)
    names, values = m.names, binned.values
    row_note = ""
    if len(names) > MAX_ROWS:  # bin layers too: transpose, bin, transpose back
        rows = bin_columns(list(range(len(names))), _transpose(values), MAX_ROWS)
        names = [names[i] for i in rows.steps]
        values = _transpose(rows.values)
        row_note = f"{len(m.names)} layers in {len(names)} rows (largest of {rows.width} each)."
    png = norm_heatmap(binned.steps, names, values)
    parts = [image(png, "log10 gradient norm per layer and step")]
    for text in (binned.note(), row_note):
        if text:
            parts.append(note(text))
    return "".join(parts)


def flow(col: Column, opts: Options) -> str:
    """Mean and max |g| per layer at the chosen steps."""
    from gradwandb.plots.charts import flow_chart

    mean, top = col.view.layer_matrix(K.GRAD_MEAN_ABS), col.view.layer_matrix(K.GRAD_MAX_ABS)
    if not mean.steps or not top.steps:
        return note(
            "No per-layer mean/max |g| was logged (grad_mean_abs, grad_max_abs): "
            "watch(..., layers_every=N) logs them."
        )
    chosen, remarks = choose_steps(mean.steps, opts.steps)
    parts = [note(r) for r in remarks]
    for step in chosen:
        j, k = mean.steps.index(step), top.steps.index(step) if step in top.steps else None
        names, means, tops = [], [], []
        for name in mean.names:
            a = mean.row(name)[j]
            b = top.row(name)[k] if k is not None and name in top.names else None
            if a is not None and b is not None:
                names.append(name)
                means.append(a)
                tops.append(b)
        if not names:
            parts.append(note(f"Step {step}: no layer logged both mean and max |g|."))
            continue
        parts.append(
            image(flow_chart(names, means, tops, step=step), f"gradient flow, step {step}")
        )
    return "".join(parts)


def histograms(col: Column, opts: Options) -> str:
    """The gradient histograms of the last histogram step (up to :data:`MAX_HISTOGRAMS`)."""
    from gradwandb.plots.lines import histogram_chart

    view = col.view
    log10 = bool(view.names(K.GRAD_LOG10_HIST))  # log10|g| puts every layer on one axis
    names = view.names(K.GRAD_LOG10_HIST if log10 else K.GRAD_HIST)
    if not names:
        return note(
            "No gradient histograms were logged: watch(..., hist_every=N) logs them every N "
            "steps (the default is 100; a shorter run has only step 0's, if any)."
        )
    shown = _spread(names, MAX_HISTOGRAMS)
    per_name = {n: view.histograms(n, log10=log10) for n in shown}
    steps = sorted({s for hs in per_name.values() for s, _ in hs})
    if not steps:
        return note("The histogram keys hold no readable histogram.")
    last = steps[-1]
    panels = [(n, h.counts, h.edges) for n, hs in per_name.items() for s, h in hs if s == last]
    xlabel = "log10 |gradient value|" if log10 else "gradient value"
    png = histogram_chart(panels, step=last, xlabel=xlabel)
    parts = [image(png, f"gradient histograms, step {last}")]
    extra = f" ({len(shown)} of {len(names)} layers, spread over the model)"
    parts.append(
        note(f"Last of {len(steps)} histogram step(s)" + (extra if len(shown) < len(names) else ""))
    )
    return "".join(parts)


def through_time(col: Column, opts: Options) -> str:
    """Per-timestep (BPTT) curves and the timestep x step heatmap of each recurrent module."""
    from gradwandb.plots.charts import timestep_heatmap
    from gradwandb.plots.lines import curves_chart

    view = col.view
    modules = view.modules(K.BPTT)
    if not modules:
        return note(
            "No per-timestep (BPTT) gradients were logged: watch(..., bptt_every=N) records "
            "them for nn.RNN, nn.LSTM and nn.GRU modules."
        )
    parts = []
    for module in modules:
        parts.append(f"<h3>{esc(module)}</h3>")
        curves = view.curves(module, K.CURVE)
        series = [(s, _column(t, "input_grad_norm")) for s, t in curves]
        series = [(s, v) for s, v in series if v]
        if series:
            picked = [series[i] for i in _spread_index(len(series), MAX_CURVES)]
            parts.append(image(curves_chart(module, picked), f"{module}: dL/dx_t per timestep"))
            length = max(len(v) for _, v in series)
            grid = [
                [_log10(v[t]) if t < len(v) else None for _, v in series] for t in range(length)
            ]
            binned = bin_columns([s for s, _ in series], grid, opts.max_columns)
            png = timestep_heatmap(module, binned.steps, binned.values)
            parts.append(image(png, f"{module}: timestep x step heatmap"))
            if binned.note():
                parts.append(note(binned.note()))
        else:
            parts.append(note(f"{module}: no per-timestep curve table was readable."))
        memory = [(s, _column(t, "memory_norm")) for s, t in view.curves(module, K.MEMORY_CURVE)]
        memory = [(s, v) for s, v in memory if v]
        if memory:
            picked = [memory[i] for i in _spread_index(len(memory), MAX_CURVES)]
            png = curves_chart(module, picked, ylabel="memory ||dh_T/dx_t||")
            parts.append(image(png, f"{module}: memory curve"))
        stats = []
        for stat in (K.HORIZON, K.DECAY_RATE, K.FIRST_LAST_RATIO, K.MEMORY_HORIZON):
            values = [v for _, v in view.bptt(module, stat) if _number(v)]
            if values:
                stats.append([stat, values[-1]])
        if stats:
            parts.append(table(["latest", "value"], stats))
    return "".join(parts)


def findings(col: Column, opts: Options) -> str:
    """The verdict and every finding with the fix to try."""
    view = col.view
    items = view.findings
    if view.verdict is None:
        why = (
            "the run did not finish, and diagnosis writes them when it does"
            if not col.run.complete
            else "the tracker wrote none (diagnose=False, or a run logged without gradwandb)"
        )
        lead = note(f"No verdict or findings: {why}.")
    else:
        lead = f"<p>verdict: <b>{esc(view.verdict)}</b></p>"
    if not items:
        return lead + ("" if view.verdict is None else note("No findings: nothing to fix."))
    rows = []
    for f in items[:MAX_TABLE_ROWS]:
        where = f.layer or ""
        rows.append(
            "<tr>"
            f"<td>{esc(f.severity)}</td><td>{esc(f.kind)}</td><td>{esc(where)}</td>"
            f'<td class="num">{esc("" if f.step is None else f.step)}</td>'
            f'<td>{esc(f.message)}</td><td class="fix">{esc(f.fix)}</td></tr>'
        )
    head = "".join(f"<th>{h}</th>" for h in ("severity", "kind", "layer", "step", "what", "fix"))
    out = f"{lead}<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    if len(items) > MAX_TABLE_ROWS:
        out += note(f"First {MAX_TABLE_ROWS} of {len(items)} findings shown.")
    return out


def params(col: Column, opts: Options) -> str:
    """The parameter table the tracker logged at watch time."""
    t = col.view.params
    if t is None:
        return note("No parameter table was logged (gradwandb/params).")
    out = table(t.columns, t.rows[:MAX_TABLE_ROWS])
    if len(t.rows) > MAX_TABLE_ROWS:
        out += note(f"First {MAX_TABLE_ROWS} of {len(t.rows)} parameters shown.")
    return out


def settings(col: Column, opts: Options) -> str:
    """What the tracker was asked to do."""
    s = col.view.settings
    if not s:
        return note("No tracker settings were stored (an older run, or no gradwandb tracker).")
    return mapping_table(flatten(s), key="setting")


def config(col: Column, opts: Options) -> str:
    """The run's W&B config."""
    c = col.run.config
    if not c:
        return note("The run has no config.")
    return mapping_table(flatten(c), key="config")


BUILDERS: tuple[tuple[str, str, Builder], ...] = (
    ("status", "Run", status),
    ("global", "Global gradient norm and clip coefficient", global_norm),
    ("heatmap", "Gradient norm per layer (log10)", heatmap),
    ("flow", "Gradient flow", flow),
    ("histograms", "Gradient histograms", histograms),
    ("bptt", "Through time (BPTT)", through_time),
    ("findings", "Verdict and findings", findings),
    ("params", "Parameters", params),
    ("settings", "Tracker settings", settings),
    ("config", "Config", config),
)


# -- helpers ----------------------------------------------------------------------------------


def choose_steps(
    logged: Sequence[int], wanted: Sequence[int] | None
) -> tuple[list[int], list[str]]:
    """The per-layer steps to draw the flow at, and remarks on any step moved to the nearest
    logged one. Default: the first, middle and last logged step.

    >>> choose_steps([0, 10, 20, 30], None)
    ([0, 20, 30], [])
    >>> choose_steps([0, 10, 20], [12])
    ([10], ['step 12 logged no per-layer values; the nearest that did, 10, is shown'])
    """
    if not logged:
        return [], []
    if wanted is None:
        return list(dict.fromkeys([logged[0], logged[len(logged) // 2], logged[-1]])), []
    out, remarks = [], []
    for step in wanted:
        near = min(logged, key=lambda s: (abs(s - step), s))
        if near != step:
            remarks.append(
                f"step {step} logged no per-layer values; the nearest that did, {near}, is shown"
            )
        out.append(near)
    return list(dict.fromkeys(out)), remarks


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"a.b": value}``; lists and other values kept whole.

    >>> flatten({"a": {"b": 1, "c": [2]}, "d": None})
    {'a.b': 1, 'a.c': [2], 'd': None}
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _log10(value: float | None) -> float | None:
    if value is None:
        return None
    if value == 0.0:
        return -math.inf
    if not math.isfinite(value) or value < 0:
        return math.nan if value != math.inf else math.inf
    return math.log10(value)


def _band(thin: Any) -> Any:
    if thin.stride == 1:
        return None
    return ([s for s, _ in thin.points], thin.low, thin.high)


def _transpose(grid: Sequence[Sequence[float | None]]) -> list[list[float | None]]:
    return [list(col) for col in zip(*grid, strict=True)] if grid else []


def _spread_index(n: int, k: int) -> list[int]:
    """``k`` indices of ``range(n)`` evenly spread, the first and the last included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _spread(items: Sequence[str], k: int) -> list[str]:
    return [items[i] for i in _spread_index(len(items), k)]


def _column(t: Any, name: str) -> list[float | None]:
    if name not in t.columns:
        return []
    out: list[float | None] = []
    for v in t.column(name):
        if isinstance(v, str):
            v = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v)
        out.append(float(v) if _number(v) else None)
    return out
