"""Read a W&B run back from its local ``.wandb`` file, with W&B's own reader.

``wandb leet inspect --json`` prints every record of the transaction log as a JSON line;
:mod:`gradwandb.read.records` turns that into history rows, the final summary, alerts, the
config and the run's state, and :mod:`gradwandb.read.view` gives a typed view of what
gradwandb logged, built on :func:`gradwandb.keys.parse_key`. This module holds the entry point,
:func:`read_run`, and :class:`RunLog`, the run as stored and the view of its untagged tracker.
It needs no server and no training process, and imports nothing of the live wing (no torch, no
``wandb`` module: only W&B's command-line reader).

    run = read_run("wandb/offline-run-20260101_000000-abc123")
    run.global_series("global_norm")      # [(optimizer step, value), ...] of grad/global_norm
    run.layer_matrix("grad_norm")         # steps, names in forward order, values per layer
    run.verdict, run.findings, run.complete
    run.view("critic").layer_matrix("grad_norm")   # a second watched model, by its tag

Reads are cached: in memory per (file, size, modification time), and for a finished run on disk
beside the run file (:data:`CACHE_NAME`), so a report or a notebook that reads the same run
again pays for W&B's reader once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradwandb import keys as K
from gradwandb.keys import ParsedKey, parse_key, unescape
from gradwandb.read.records import CACHE_NAME, CACHE_VERSION, clear_cache, find_run_file, load
from gradwandb.read.view import Finding, Histogram, LayerMatrix, Series, Table, View, _last

__all__ = [
    "CACHE_NAME",
    "CACHE_VERSION",
    "Finding",
    "Histogram",
    "LayerMatrix",
    "RunLog",
    "Series",
    "Table",
    "View",
    "clear_cache",
    "find_run_file",
    "read_run",
]


class RunLog(View):
    """What a run stored: history rows in order, the final summary, alerts, config, and
    whether the run finished (``complete``). It is also the view of the untagged tracker;
    :meth:`view` gives a tagged one. Treat the rows and the summary as read-only."""

    def __init__(
        self,
        path: Path,
        history: list[dict[str, Any]] | None = None,
        summary: dict[str, Any] | None = None,
        alerts: list[dict[str, Any]] | None = None,
        config: dict[str, Any] | None = None,
        wandb_tags: list[str] | None = None,
        complete: bool = False,
        exit_code: int | None = None,
        name: str | None = None,
    ) -> None:
        self.path = path  # the .wandb file
        self.history = history if history is not None else []
        self.summary = summary if summary is not None else {}
        self.alerts = alerts if alerts is not None else []
        self.config = config if config is not None else {}
        self.wandb_tags = wandb_tags if wandb_tags is not None else []  # wandb.init(tags=...)
        self.complete = complete  # False for a run whose process died before finish()
        self.exit_code = exit_code
        self.name = name  # the run's display name in W&B (wandb.init(name=...)), if it has one
        self._index: dict[str, ParsedKey] | None = None
        self._tables: dict[str, Table | None] = {}
        super().__init__(self, None)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The history rows (the same list as :attr:`history`)."""
        return self.history

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    def series(self, key: str) -> list[tuple[int, Any]]:
        """``(W&B step, value)`` for every row that holds ``key``, values as W&B stored them."""
        return [(row["_step"], row[key]) for row in self.history if key in row]

    def metric_keys(self) -> set[str]:
        """Every key that appears in any history row."""
        return {k for row in self.history for k in row}

    def view(self, tag: str | None) -> View:
        """What the tracker with ``tag`` logged (None: the untagged one)."""
        return self if not tag else View(self, tag)

    def run_families(self) -> tuple[str, ...]:
        """Per-parameter families of this run: built-in, registered, stored under
        :data:`gradwandb.keys.FAMILIES`, and any section whose keys end in watched names."""
        stored: list[str] = []
        orders: set[str] = set()
        value: Any
        for key, value in self.summary.items():
            p = parse_key(key)
            if p is None or p.family != K.GRADWANDB:
                continue
            if p.statistic == _last(K.SETTINGS) and isinstance(value, Mapping):
                value = value.get("statistics")  # the statistics of one's own it was given
            elif p.statistic not in (_last(K.FAMILIES), _last(K.PARAM_ORDER)):
                continue
            if not isinstance(value, list):
                continue
            if p.statistic == _last(K.PARAM_ORDER):
                orders.update(str(v) for v in value)
            else:
                stored += [str(v) for v in value if isinstance(v, str)]
        guessed: list[str] = []
        for key in self.metric_keys():
            section, _, rest = key.partition("/")
            if section in K.SECTIONS or section in guessed or not rest:
                continue
            if unescape(rest.rsplit("/", 1)[-1]) in orders and rest.count("/") <= 1:
                guessed.append(section)
        usable = []
        for name in [*stored, *guessed]:
            try:
                K.check_family(name)
            except ValueError:
                continue
            usable.append(name)
        return K.param_families(usable)

    def parsed_keys(self) -> dict[str, ParsedKey]:
        """Every history key gradwandb wrote, parsed (user keys left out)."""
        if self._index is None:
            families = self.run_families()
            index: dict[str, ParsedKey] = {}
            for row in self.history:
                for key in row:
                    if key not in index and not key.startswith("_"):
                        p = parse_key(key, families=families)
                        if p is not None:
                            index[key] = p
            self._index = index
        return self._index

    @property
    def tags(self) -> list[str | None]:
        """The trackers' tags in this run (None for the untagged one), first seen first."""
        seen: dict[str | None, None] = {}
        marks = (_last(K.STEP), _last(K.PARAM_ORDER))
        for key in [*self.summary, *self.metric_keys()]:
            p = parse_key(key)
            if p is not None and p.family == K.GRADWANDB and p.statistic in marks:
                seen.setdefault(p.tag)
        return sorted(seen, key=lambda t: (t is not None, t or ""))

    def media_path(self, value: Any) -> Path | None:
        """The file of a logged media value (table, image), inside the run's ``files``."""
        stored = value.get("path") if isinstance(value, Mapping) else None
        return self.run_dir / "files" / stored if isinstance(stored, str) else None

    def table(self, value: Any) -> Table | None:
        """A logged table value (a ``table-file`` reference, or inline), loaded."""
        if not isinstance(value, Mapping):
            return None
        if "columns" in value and "data" in value:
            return Table([str(c) for c in value["columns"]], [list(r) for r in value["data"]])
        path = self.media_path(value)
        if path is None or not str(value.get("_type", "")).startswith("table"):
            return None
        cached = self._tables.get(str(path), False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        try:
            stored = json.loads(path.read_text())
            table: Table | None = Table(
                [str(c) for c in stored["columns"]], [list(r) for r in stored["data"]]
            )
        except (OSError, ValueError, KeyError, TypeError):
            table = None
        self._tables[str(path)] = table
        return table


def read_run(path: str | Path, timeout: float = 120.0, *, cache: bool = True) -> RunLog:
    """Read the run at ``path`` (a ``.wandb`` file or its run directory).

    ``cache=False`` reads the file again with W&B's reader, and stores nothing. A run whose
    process is still writing, or died, reads back with what it stored so far and
    ``complete`` False.
    """
    file = find_run_file(path)
    data = load(file, timeout, cache)
    return RunLog(
        path=file,
        history=[dict(row) for row in data["history"]],
        summary=dict(data["summary"]),
        alerts=list(data["alerts"]),
        config=dict(data["config"]),
        wandb_tags=list(data["wandb_tags"]),
        complete=bool(data["complete"]),
        exit_code=data["exit_code"],
        name=data.get("name"),
    )
