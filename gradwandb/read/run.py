"""Read a W&B run back from its local ``.wandb`` file, with W&B's own reader.

``wandb leet inspect --json`` prints every record of the transaction log as a JSON line; this
module turns that into history rows, the final summary, alerts, the config and the run's state,
then gives a typed view of what gradwandb logged, built on :func:`gradwandb.keys.parse_key`.
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

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradwandb import keys as K
from gradwandb.keys import Keys, ParsedKey, parse_key, unescape

CACHE_NAME = ".gradwandb-read.json"  # beside the .wandb file; delete it freely
CACHE_VERSION = 1
_HEADER_BYTES = 7  # a .wandb file that holds only its header (the process died at once)
_SKIPPED = ("stats", "telemetry", "environment", "files", "artifact", "output", "header")
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

Series = list[tuple[int, Any]]


# -- records of the typed view -------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One finding as the run summary stored it (``gradwandb/findings``).

    A run written before findings were records stored lines (``"message; fix"``); those read
    back with ``kind`` and ``severity`` empty and ``layer``, ``step``, ``value`` None.
    """

    kind: str
    severity: str
    layer: str | None
    step: int | None
    value: float | None
    message: str
    fix: str

    @classmethod
    def from_stored(cls, item: Any) -> Finding:
        if isinstance(item, Mapping):
            step = item.get("step")
            return cls(
                kind=str(item.get("kind") or ""),
                severity=str(item.get("severity") or ""),
                layer=None if item.get("layer") is None else str(item["layer"]),
                step=None if step is None else int(step),
                value=_number(item.get("value")),
                message=str(item.get("message") or ""),
                fix=str(item.get("fix") or ""),
            )
        message, _, fix = str(item).partition("; ")
        return cls("", "", None, None, None, message, fix)


@dataclass(frozen=True)
class Histogram:
    """Bin counts and their ``len(counts) + 1`` edges."""

    counts: list[float]
    edges: list[float]


@dataclass(frozen=True)
class Table:
    """A logged table (a through-time curve, the parameter table): columns and rows."""

    columns: list[str]
    rows: list[list[Any]]

    def records(self) -> list[dict[str, Any]]:
        """The rows as ``{column: value}`` dicts."""
        return [dict(zip(self.columns, row, strict=False)) for row in self.rows]

    def column(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]


@dataclass(frozen=True)
class LayerMatrix:
    """One per-parameter statistic over the run: ``values[i][j]`` is layer ``names[i]`` at
    optimizer step ``steps[j]`` (None where that step did not log it). ``names`` are in
    forward (registration) order."""

    steps: list[int]
    names: list[str]
    values: list[list[float | None]]

    def row(self, name: str) -> list[float | None]:
        return self.values[self.names.index(name)]


# -- the view ------------------------------------------------------------------------------


class View:
    """What one tracker (one tag) logged into a run. ``run.view(tag)`` makes one; the run
    itself is the view of the untagged tracker."""

    def __init__(self, run: RunLog, tag: str | None) -> None:
        self._run = run
        self.tag = tag or None
        self._keys = Keys(self.tag)
        self._cached_rows: list[tuple[int, dict[str, Any]]] | None = None
        self._cached_parsed: list[tuple[str, ParsedKey]] | None = None

    # what the tracker wrote once

    def _summary(self, key: str, default: Any = None) -> Any:
        return self._run.summary.get(self._keys.scalar(key), default)

    @property
    def verdict(self) -> str | None:
        """``healthy``, ``vanishing``, ``exploding`` or ``nonfinite``; None if not written."""
        value = self._summary(K.VERDICT)
        return None if value is None else str(value)

    @property
    def findings(self) -> list[Finding]:
        return [Finding.from_stored(item) for item in self._summary(K.FINDINGS, None) or []]

    @property
    def settings(self) -> dict[str, Any]:
        """What the tracker was asked to do; empty means unknown (an older run)."""
        value = self._summary(K.SETTINGS)
        return dict(value) if isinstance(value, Mapping) else {}

    @property
    def param_order(self) -> list[str]:
        """The watched parameters' names in forward (registration) order."""
        return [str(n) for n in self._summary(K.PARAM_ORDER, None) or []]

    @property
    def params(self) -> Table | None:
        """The ``gradwandb/params`` table (one row per parameter), None if not logged."""
        key = self._keys.scalar(K.PARAMS_TABLE)
        for row in self._run.history:
            if key in row:
                return self._run.table(row[key])
        return self._run.table(self._run.summary[key]) if key in self._run.summary else None

    # what the tracker wrote every logged step

    def _rows(self) -> list[tuple[int, dict[str, Any]]]:
        """``(optimizer step, row)`` for every history row this tracker wrote into."""
        if self._cached_rows is None:
            key = self._keys.scalar(K.STEP)
            self._cached_rows = [(int(r[key]), r) for r in self._run.history if key in r]
        return self._cached_rows

    def _parsed(self) -> list[tuple[str, ParsedKey]]:
        """Every history key of this tracker, parsed, in first-seen order."""
        if self._cached_parsed is None:
            self._cached_parsed = [
                (k, p) for k, p in self._run.parsed_keys().items() if p.tag == self.tag
            ]
        return self._cached_parsed

    def _select(self, **parts: Any) -> Iterator[tuple[str, ParsedKey]]:
        for key, p in self._parsed():
            if all(getattr(p, name) == value for name, value in parts.items()):
                yield key, p

    def steps(self) -> list[int]:
        """The optimizer steps this tracker logged."""
        return [step for step, _ in self._rows()]

    def key_series(self, key: str) -> Series:
        """``(optimizer step, value)`` of ``key`` (an exact key), numbers as floats."""
        return [(step, _value(row[key])) for step, row in self._rows() if key in row]

    def global_series(self, stat: str) -> Series:
        """``grad/<stat>`` over the steps: ``global_norm``, ``clip_coef``, ``nonfinite``,
        ``clip_rate``, ``clip_threshold``, ``clip_<extra>``, a statistic's own."""
        return self.key_series(self._keys.scalar(f"{K.GRAD}/{stat}"))

    def scalar_series(self, section: str, stat: str) -> Series:
        """A run-level series of any section: ``("amp", "scale")``, ``("guard", "skipped")``."""
        return self.key_series(self._keys.scalar(f"{section}/{stat}"))

    def health(self, signal: str) -> Series:
        """``health/<signal>``: ``spike_z``, ``exploding``, ``flow_ratio``, ..."""
        return self.key_series(K.health_key(self._keys, signal))

    def health_signals(self) -> list[str]:
        return [p.statistic for _, p in self._select(family=K.HEALTH)]

    def families(self) -> list[str]:
        """The per-parameter families logged (``grad_norm``, ..., statistics of one's own)."""
        return list(dict.fromkeys(p.family for _, p in self._parsed() if p.scope == K.PARAM))

    def names(self, family: str = K.GRAD_NORM) -> list[str]:
        """Parameters with ``family`` logged: forward order, then any others as first seen."""
        present = list(dict.fromkeys(p.subject or "" for _, p in self._select(family=family)))
        order = [n for n in self.param_order if n in set(present)]
        return order + [n for n in present if n not in set(order)]

    def layer_series(self, family: str, name: str) -> Series:
        return self.key_series(self._keys.param(family, name))

    def layer_matrix(self, family: str = K.GRAD_NORM) -> LayerMatrix:
        """``family`` (e.g. ``grad_norm``) for every parameter over the steps that logged it."""
        names = self.names(family)
        keys = [self._keys.param(family, n) for n in names]
        rows = [(s, r) for s, r in self._rows() if any(k in r for k in keys)]
        values = [[_number(r.get(k)) for _, r in rows] for k in keys]
        return LayerMatrix([s for s, _ in rows], names, values)

    def histograms(self, name: str, *, log10: bool = False) -> list[tuple[int, Histogram]]:
        """``grad_hist/<name>`` (or ``grad_log10_hist`` with ``log10``) over the steps."""
        family = K.GRAD_LOG10_HIST if log10 else K.GRAD_HIST
        key = self._keys.param(family, name)
        out = []
        for step, row in self._rows():
            hist = _histogram(row.get(key))
            if hist is not None:
                out.append((step, hist))
        return out

    def modules(self, section: str = K.BPTT) -> list[str]:
        """Module names with keys in ``section`` (``bptt``, ``act`` or ``rnn``)."""
        return list(dict.fromkeys(p.subject or "" for _, p in self._select(family=section)))

    def bptt(self, module: str, stat: str) -> Series:
        """``bptt/<module>/<stat>``: ``horizon``, ``decay_rate``, ``first_last_ratio``, ..."""
        return self.key_series(K.bptt_key(self._keys, module, stat))

    def curves(self, module: str, stat: str = K.CURVE) -> list[tuple[int, Table]]:
        """The through-time tables of ``module``: per step, one row per timestep. ``stat`` is
        ``curve`` (``bptt/<module>/curve``: the input and output gradient norms, dL/dx_t and
        dL/dh_t) or ``memory_curve`` (the memory probe's ||d h_T / d x_t||)."""
        key = K.bptt_key(self._keys, module, stat)
        out = []
        for step, row in self._rows():
            table = self._run.table(row.get(key))
            if table is not None:
                out.append((step, table))
        return out

    def spectra(
        self, module: str, stat: str = K.SPECTRAL_RADIUS
    ) -> dict[tuple[str, str | None], Series]:
        """``rnn/<module>/<weight>/<gate>/<stat>`` per ``(weight, gate)`` (gate None for a
        block without gates), in the order logged."""
        out: dict[tuple[str, str | None], Series] = {}
        for key, p in self._select(family=K.RNN_WEIGHTS, subject=module, statistic=stat):
            out[(p.weight or "", p.gate)] = self.key_series(key)
        return out

    def activations(self, module: str) -> dict[str, Series]:
        """``act/<module>/<stat>`` per statistic (``mean``, ``std``, ``dead_frac``, ...)."""
        return {
            p.statistic: self.key_series(k) for k, p in self._select(family=K.ACT, subject=module)
        }

    def images(self, key: str) -> list[tuple[int, Path]]:
        """The image files logged under ``key`` (``charts/grad_flow``, a bptt heatmap), tagged
        here, as paths inside the run directory."""
        full = self._keys.scalar(key)
        out = []
        for step, row in self._rows():
            path = self._run.media_path(row.get(full))
            if path is not None:
                out.append((step, path))
        return out


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
    ) -> None:
        self.path = path  # the .wandb file
        self.history = history if history is not None else []
        self.summary = summary if summary is not None else {}
        self.alerts = alerts if alerts is not None else []
        self.config = config if config is not None else {}
        self.wandb_tags = wandb_tags if wandb_tags is not None else []  # wandb.init(tags=...)
        self.complete = complete  # False for a run whose process died before finish()
        self.exit_code = exit_code
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


# -- values as W&B stored them ---------------------------------------------------------------


def _last(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def _number(value: Any) -> float | None:
    """A stored number as a float: W&B stores NaN and infinities as strings."""
    kind = type(value)
    if kind is float:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return float(value)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    return None


def _value(value: Any) -> Any:
    """Numbers (NaN and infinities included) as floats; anything else unchanged."""
    number = _number(value)
    return value if number is None else number


def _histogram(value: Any) -> Histogram | None:
    if not isinstance(value, Mapping) or value.get("_type") != "histogram":
        return None
    counts = [float(c) for c in value.get("values", [])]
    if "bins" in value:
        edges = [float(e) for e in value["bins"]]
    else:  # packed: evenly spaced bins
        packed = value.get("packedBins", {})
        lo, size, n = float(packed["min"]), float(packed["size"]), int(packed["count"])
        edges = [lo + i * size for i in range(n + 1)]
    return Histogram(counts, edges)


def _regroup(item: Mapping[str, Any]) -> dict[str, Any]:
    """Fold the flattened fields of media values back: ``h._type``, ``h.bins`` -> ``h``.

    A media value's fields are flattened with ``.``; a key ending in ``._type`` whose value is
    a string names one. With nested names (``a`` and ``a.b`` both media) a field belongs to the
    longest owner it extends.
    """
    media = sorted(
        (
            k[: -len("._type")]
            for k, v in item.items()
            if k.endswith("._type") and isinstance(v, str)
        ),
        key=len,
        reverse=True,
    )
    if not media:
        return dict(item)
    out: dict[str, Any] = {}
    for key, value in item.items():
        owner = next((m for m in media if key.startswith(m + ".")), None)
        if owner is None:
            out[key] = value
        else:
            out.setdefault(owner, {})[key[len(owner) + 1 :]] = value
    return out


# -- reading the transaction log -------------------------------------------------------------


def find_run_file(path: str | Path) -> Path:
    """The ``.wandb`` file at ``path``: the file itself, or the one in a run directory."""
    p = Path(path)
    if p.is_file():
        return p
    files = sorted(p.glob("*.wandb"))
    if not files:
        raise FileNotFoundError(
            f"no .wandb file in {p}; pass a run directory such as wandb/offline-run-*"
        )
    return files[0]


def _core_binary() -> str | None:
    """W&B's reader binary inside the installed ``wandb`` package, found without importing it."""
    spec = importlib.util.find_spec("wandb")
    for location in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(location) / "bin" / "wandb-core"
        if binary.exists():
            return str(binary)
    return None


def _wandb_command() -> list[str]:
    exe = Path(sys.executable).with_name("wandb")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("wandb")
    return [found] if found else [sys.executable, "-m", "wandb"]


def _inspect(file: Path, timeout: float) -> tuple[int, str, str]:
    """``leet inspect --json`` of ``file``: straight through W&B's binary when it is there
    (no Python start-up), else through the ``wandb`` command."""
    core = _core_binary()
    commands = []
    if core is not None:
        wandb_dir = str(file.resolve().parent.parent)
        commands.append(
            [
                core,
                "leet",
                "inspect",
                "--no-observability",
                "--json",
                "--run-file",
                str(file),
                wandb_dir,
            ]
        )
    commands.append([*_wandb_command(), "leet", "inspect", "--json", str(file)])
    result = None
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode == 0 or result.stdout.strip():
            break
    assert result is not None
    return result.returncode, result.stdout, result.stderr


def _record_type(line: str) -> str:
    start = line.find('"type":"', 0, 64)
    if start < 0:
        return ""
    start += len('"type":"')
    return line[start : line.find('"', start)]


def _parse(lines: Iterable[str]) -> dict[str, Any]:
    """The stored parts of a run from its records (JSON lines)."""
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    alerts: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    tags: list[str] = []
    exit_code: int | None = None
    complete = False
    for line in lines:
        if not line.startswith("{") or _record_type(line) in _SKIPPED:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a record cut short by a dying process
        kind = record.get("type")
        if kind == "history":
            history.append(_regroup(record["history"].get("item", {})))
        elif kind == "summary":
            update = record["summary"]
            summary.update(_regroup(update.get("update", {})))
            for gone in update.get("remove", []) or []:
                summary.pop(gone if isinstance(gone, str) else ".".join(gone), None)
        elif kind == "alert":
            alerts.append(record["alert"])
        elif kind == "run":
            run = record["run"]
            config.update(run.get("config", {}).get("update", {}))
            tags = [str(t) for t in run.get("tags", [])]
        elif kind == "config":
            config.update(record["config"].get("update", {}))
        elif kind == "exit":
            complete = True
            code = record["exit"].get("exit_code", 0)
            exit_code = int(code) if code is not None else 0
    config.pop("_wandb", None)
    for key in ("_runtime", "_wandb.runtime"):
        summary.pop(key, None)
    return {
        "history": history,
        "summary": summary,
        "alerts": alerts,
        "config": config,
        "wandb_tags": tags,
        "complete": complete,
        "exit_code": exit_code,
    }


# -- caches ----------------------------------------------------------------------------------


@dataclass
class _Memory:
    entries: dict[tuple[str, int, int], dict[str, Any]] = field(default_factory=dict)
    limit: int = 8  # runs kept; the oldest goes first


_memory = _Memory()


def clear_cache() -> None:
    """Forget every run read in this process (the files on disk stay)."""
    _memory.entries.clear()


def _stamp(file: Path) -> tuple[str, int, int]:
    st = file.stat()
    return str(file.resolve()), st.st_size, st.st_mtime_ns


def _load_disk(file: Path, stamp: tuple[str, int, int]) -> dict[str, Any] | None:
    try:
        stored = json.loads((file.parent / CACHE_NAME).read_text())
    except (OSError, ValueError):
        return None
    source = stored.get("source", {}) if isinstance(stored, dict) else {}
    same = source.get("name") == file.name and [source.get("size"), source.get("mtime_ns")] == [
        stamp[1],
        stamp[2],
    ]
    if stored.get("version") != CACHE_VERSION or not same:
        return None
    data = stored.get("data")
    return data if isinstance(data, dict) else None


def _save_disk(file: Path, stamp: tuple[str, int, int], data: dict[str, Any]) -> None:
    target = file.parent / CACHE_NAME
    tmp = target.with_name(f"{CACHE_NAME}.{os.getpid()}.tmp")
    source = {"name": file.name, "size": stamp[1], "mtime_ns": stamp[2]}
    try:
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "source": source, "data": data}))
        os.replace(tmp, target)
    except (OSError, TypeError, ValueError):
        tmp.unlink(missing_ok=True)  # a read-only run directory: no disk cache, that's all


def _load(file: Path, timeout: float, cache: bool) -> dict[str, Any]:
    stamp = _stamp(file)
    if cache:
        if stamp in _memory.entries:
            return _memory.entries[stamp]
        data = _load_disk(file, stamp)
        if data is not None:
            _remember(stamp, data)
            return data
    rc, out, err = _inspect(file, timeout)
    data = _parse(out.splitlines())
    if rc != 0 and not data["history"] and not data["summary"] and stamp[1] > _HEADER_BYTES:
        raise RuntimeError(f"wandb leet inspect could not read {file} (exit {rc}): {err.strip()}")
    if rc != 0:
        data["complete"] = False  # the reader stopped early: a file cut short
    if cache:
        _remember(stamp, data)
        if data["complete"]:
            _save_disk(file, stamp, data)
    return data


def _remember(stamp: tuple[str, int, int], data: dict[str, Any]) -> None:
    entries = _memory.entries
    for old in [k for k in entries if k[0] == stamp[0]]:
        del entries[old]  # an older state of the same file
    entries[stamp] = data
    while len(entries) > _memory.limit:
        del entries[next(iter(entries))]


def read_run(path: str | Path, timeout: float = 120.0, *, cache: bool = True) -> RunLog:
    """Read the run at ``path`` (a ``.wandb`` file or its run directory).

    ``cache=False`` reads the file again with W&B's reader, and stores nothing. A run whose
    process is still writing, or died, reads back with what it stored so far and
    ``complete`` False.
    """
    file = find_run_file(path)
    data = _load(file, timeout, cache)
    return RunLog(
        path=file,
        history=[dict(row) for row in data["history"]],
        summary=dict(data["summary"]),
        alerts=list(data["alerts"]),
        config=dict(data["config"]),
        wandb_tags=list(data["wandb_tags"]),
        complete=bool(data["complete"]),
        exit_code=data["exit_code"],
    )
