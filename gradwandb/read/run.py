"""Read a W&B run back from its local ``.wandb`` file, with W&B's own reader.

``wandb leet inspect --json`` prints every record of the transaction log as a JSON line; this
module turns that into history rows, the final summary and alerts. It needs no server and no
training process, so reports and tests read exactly what W&B stored.

    log = read_run("wandb/offline-run-20260101_000000-abc123")
    log.series("grad/global_norm")   # [(step, value), ...]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunLog:
    """What a run stored: history rows in order, the final summary, alerts, config."""

    path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def series(self, key: str) -> list[tuple[int, Any]]:
        """``(W&B step, value)`` for every row that holds ``key``."""
        return [(row["_step"], row[key]) for row in self.history if key in row]

    def metric_keys(self) -> set[str]:
        """Every key that appears in any history row."""
        return {k for row in self.history for k in row}


def _wandb_command() -> list[str]:
    exe = Path(sys.executable).with_name("wandb")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("wandb")
    return [found] if found else [sys.executable, "-m", "wandb"]


def _regroup(item: dict[str, Any]) -> dict[str, Any]:
    """Fold the flattened fields of media values back: ``h._type``, ``h.bins`` -> ``h``."""
    media = {k[: -len("._type")] for k in item if k.endswith("._type")}
    out: dict[str, Any] = {}
    for key, value in item.items():
        owner = next((m for m in media if key.startswith(m + ".")), None)
        if owner is None:
            out[key] = value
        else:
            out.setdefault(owner, {})[key[len(owner) + 1 :]] = value
    return out


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


def read_run(path: str | Path, timeout: float = 120.0) -> RunLog:
    """Read the run at ``path`` (a ``.wandb`` file or its run directory)."""
    file = find_run_file(path)
    out = subprocess.run(
        [*_wandb_command(), "leet", "inspect", "--json", str(file)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    ).stdout
    log = RunLog(path=file)
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        kind = record.get("type")
        if kind == "history":
            log.history.append(_regroup(record["history"]["item"]))
        elif kind == "summary":
            log.summary.update(_regroup(record["summary"].get("update", {})))
        elif kind == "alert":
            log.alerts.append(record["alert"])
        elif kind == "run":
            log.config.update(record["run"].get("config", {}).get("update", {}))
    for key in ("_runtime", "_wandb.runtime"):
        log.summary.pop(key, None)
    return log
