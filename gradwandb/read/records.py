"""The records of a run's ``.wandb`` file, as W&B's own reader gives them, and their caches.

:func:`find_run_file` finds the transaction log of a run directory; ``wandb leet inspect
--json`` prints its records as JSON lines; :func:`load` parses those into the stored parts of
a run (history rows, summary, alerts, config, W&B tags, whether it finished, exit code) as a
plain dict, cached in memory per (file, size, modification time) and, for a finished run, on
disk beside the run file (:data:`CACHE_NAME`). :func:`clear_cache` forgets the memory cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CACHE_NAME = ".gradwandb-read.json"  # beside the .wandb file; delete it freely
CACHE_VERSION = 2
_HEADER_BYTES = 7  # a .wandb file that holds only its header (the process died at once)
_SKIPPED = ("stats", "telemetry", "environment", "files", "artifact", "output", "header")


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
    name: str | None = None
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
            name = str(run["display_name"]) if run.get("display_name") else name
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
        "name": name,
        "complete": complete,
        "exit_code": exit_code,
    }


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


def load(file: Path, timeout: float, cache: bool) -> dict[str, Any]:
    """The stored parts of the run file ``file``, from a cache when ``cache`` allows."""
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
