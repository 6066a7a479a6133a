"""The typed view of what one tracker logged into a run, read over its :class:`RunLog`.

:class:`View` answers in gradwandb's terms, built on :func:`gradwandb.keys.parse_key`: global
and per-layer series, layer matrices (:class:`LayerMatrix`), histograms (:class:`Histogram`),
through-time curves and the parameter table (:class:`Table`), spectra, activations, images,
findings (:class:`Finding`), the verdict and the tracker's settings. The helpers at the end
turn values as W&B stored them (NaN as a string, packed histogram bins) into Python ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradwandb import keys as K
from gradwandb.keys import Keys, ParsedKey

if TYPE_CHECKING:  # the run holds its views; a view only needs the run's type
    from gradwandb.read.run import RunLog

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

Series = list[tuple[int, Any]]


# -- records of the typed view ---------------------------------------------------------------


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


# -- the view --------------------------------------------------------------------------------


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
