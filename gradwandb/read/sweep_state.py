"""The state of a local sweep: every run's config, status and run directory, in ``sweep.json``.

:class:`SweepState` is written after every change (:meth:`SweepState.save`, replacing the file
whole), so a sweep interrupted and started again with the same folder picks up from it:
:func:`open_state` refuses a folder that holds another sweep, and :func:`recover` settles the
runs the state still calls running (one that finished all the same counts; any other is stopped
if still alive and run again under a fresh id).
"""

from __future__ import annotations

import json
import os
import secrets
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gradwandb.read.run import read_run
from gradwandb.read.sweep import SweepError, SweepSpec
from gradwandb.read.sweep_launch import find_run_dir, is_our_child, plain, terminate

STATE_NAME = "sweep.json"
STATE_VERSION = 1
PENDING, RUNNING, FINISHED, FAILED, STOPPED = "pending", "running", "finished", "failed", "stopped"
_ID_ALPHABET = string.ascii_lowercase + string.digits


@dataclass
class RunEntry:
    """One run of the sweep, as the state file keeps it."""

    id: str  # the W&B run id (WANDB_RUN_ID)
    config: dict[str, Any]  # parameter -> value
    status: str = PENDING
    run_dir: str | None = None
    exit_code: int | None = None
    pid: int | None = None
    attempts: int = 0
    log: str | None = None  # the program's output


@dataclass
class SweepState:
    sweep_id: str
    name: str
    file: str
    config: dict[str, Any]
    seed: int
    runs: list[RunEntry] = field(default_factory=list)
    version: int = STATE_VERSION

    @classmethod
    def load(cls, path: Path) -> SweepState:
        data = json.loads(path.read_text())
        runs = [RunEntry(**r) for r in data.pop("runs", [])]
        return cls(**data, runs=runs)

    def save(self, path: Path) -> None:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, default=plain))
        os.replace(tmp, path)

    def count(self, *statuses: str) -> int:
        return sum(1 for r in self.runs if r.status in statuses)


def open_state(spec: SweepSpec, path: Path, seed: int) -> SweepState:
    config = plain(spec.config)
    if path.exists():
        state = SweepState.load(path)
        if state.config != config:
            raise SweepError(
                f"{path.parent} holds the state of another sweep ({state.file}); "
                "give this one its own --dir"
            )
        return state
    return SweepState(
        sweep_id=new_id(), name=spec.name, file=str(spec.path.resolve()), config=config, seed=seed
    )


def recover(state: SweepState, folder: Path) -> None:
    """Runs the state calls running were cut off (the sweep was interrupted or killed): one
    that finished all the same counts; any other is stopped if still alive and run again."""
    for entry in state.runs:
        if entry.status != RUNNING:
            continue
        if entry.pid is not None and is_our_child(entry.pid, entry.id):
            terminate(entry.pid)
        run_dir = find_run_dir(folder, entry.id)
        if run_dir is not None and _finished_whole(run_dir):
            entry.status, entry.run_dir, entry.exit_code = FINISHED, run_dir, 0
        else:
            entry.status, entry.run_dir, entry.exit_code = PENDING, None, None
            entry.id = new_id()  # a fresh W&B run; the cut-off one stays on disk
        entry.pid = None


def _finished_whole(run_dir: str) -> bool:
    try:
        log = read_run(run_dir, cache=False)
    except (FileNotFoundError, RuntimeError, OSError):
        return False
    return log.complete and log.exit_code == 0 and log.summary.get("ended") != "stopped"


def tally(state: SweepState) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in state.runs:
        if r.status != PENDING:
            out[r.status] = out.get(r.status, 0) + 1
    return out


def new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
