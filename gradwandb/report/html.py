"""The page: one self-contained HTML file, every picture embedded as a ``data:`` URI, the
style inline, no script, no font or stylesheet fetched from anywhere.

Every text that comes from a run (names, config values, messages) goes through :func:`esc`;
the helpers here build only from escaped pieces, so a value such as ``<script>`` shows as text.

>>> esc("<script>alert(1)</script>")
'&lt;script&gt;alert(1)&lt;/script&gt;'
>>> table(["name", "value"], [["lr", "<b>"]])
'<table><thead><tr><th>name</th><th>value</th></tr></thead><tbody><tr><td>lr</td><td>&lt;b&gt;</td></tr></tbody></table>'
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Section", "esc", "image", "note", "page", "table", "value_text"]

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:0;color:#222;background:#fafafa}
header{padding:14px 24px;background:#1f2d3d;color:#fff}
header h1{margin:0;font-size:20px}header p{margin:4px 0 0;color:#cbd5e1;font-size:13px}
main{padding:8px 24px 40px}
section{margin:18px 0 4px}
section>h2{font-size:16px;margin:0 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
.row{display:grid;gap:16px;align-items:start}
.cell{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:10px;min-width:0;
overflow-x:auto}
.cell h3{font-size:13px;margin:0 0 6px;color:#555;word-break:break-all}
img{max-width:100%;height:auto;display:block;margin:4px 0}
table{border-collapse:collapse;font-size:12px;margin:4px 0}
th,td{border:1px solid #e0e0e0;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#666;font-size:12px;font-style:italic;margin:4px 0}
.warn{background:#fff4e5;border:1px solid #f0b35b;border-radius:6px;padding:8px 10px;
margin:6px 0}
.verdict{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600}
.v-healthy{background:#1a9850}.v-vanishing{background:#4575b4}
.v-exploding{background:#f46d43}.v-nonfinite{background:#a50026}.v-none{background:#888}
.fix{color:#1f5130}code{font-size:12px}
"""


@dataclass
class Section:
    """One kind of content (e.g. the heatmap), with one cell per run shown side by side.

    ``cells[i]`` is the HTML body for run ``i`` (already escaped); ``key`` identifies the
    section in the page (``id="..."``) for tests and links."""

    key: str
    title: str
    cells: list[str] = field(default_factory=list)


def esc(text: Any) -> str:
    """``text`` as HTML text (quotes included, so it is safe in attributes too)."""
    return html.escape(str(text), quote=True)


def image(png: bytes, alt: str) -> str:
    """An ``<img>`` holding ``png`` inline as a ``data:`` URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def note(text: str, *, warn: bool = False) -> str:
    """A short remark (why a section is empty, how it was thinned); ``warn`` makes it a box."""
    return f'<div class="warn">{esc(text)}</div>' if warn else f'<p class="note">{esc(text)}</p>'


def value_text(value: Any) -> str:
    """A value as a short plain text: floats with 4 significant digits, the rest as ``str``."""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; every header and cell escaped, numbers right-aligned."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cls = ' class="num"' if num else ""
            cells.append(f"<td{cls}>{esc(value_text(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def mapping_table(values: Mapping[str, Any], *, key: str = "key", value: str = "value") -> str:
    """A two-column table of a (flattened) mapping, keys sorted."""
    return table([key, value], [[k, values[k]] for k in sorted(values)])


def page(title: str, subtitle: str, headings: Sequence[str], sections: Sequence[Section]) -> str:
    """The whole document: a header, then each section as a row of one cell per run, each
    cell headed by ``headings[i]`` when there are several runs."""
    columns = max(1, len(headings))
    grid = f"grid-template-columns:repeat({columns},minmax(0,1fr))"
    parts = []
    for s in sections:
        cells = []
        for i, body in enumerate(s.cells):
            head = f"<h3>{esc(headings[i])}</h3>" if columns > 1 and i < len(headings) else ""
            cells.append(f'<div class="cell">{head}{body}</div>')
        parts.append(
            f'<section id="{esc(s.key)}"><h2>{esc(s.title)}</h2>'
            f'<div class="row" style="{grid}">{"".join(cells)}</div></section>'
        )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f"<main>{''.join(parts)}</main></body></html>\n"
    )
