"""Run a W&B sweep on this machine, with no server: what ``gradwandb sweep`` does.

The open-source sweep engine (``sweeps``) suggests each run's configuration (grid, random,
bayes) and which runs hyperband stops; each run's program is launched as ``wandb agent``
launches it (:mod:`gradwandb.read.sweep_launch`: the same ``command`` macros, parameter file
and environment; a run the sweep stops gets SIGTERM, as from the agent), ``workers`` at a time.

The sweep folder holds the state (``sweep.json``, :mod:`gradwandb.read.sweep_state`: every
run's config, status, run directory), written after every change: a sweep interrupted (Ctrl-C,
SIGTERM, killed) and started again with the same folder finishes what is left and never redoes
a finished run; a run that crashes is recorded as failed and the sweep goes on. At the end the
table of runs (config -> verdict, final loss and accuracy, largest gradient norm, clip rate) is
printed and written as ``results.csv`` and ``results.md`` in the folder.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gradwandb.read.run import read_run
from gradwandb.read.sweep import METHODS_NEEDING_COUNT, SweepError, SweepSpec, engine
from gradwandb.read.sweep_launch import (
    command_args,
    expand_command,
    find_run_dir,
    launch,
    param_file_text,
    plain,
    sigterm_as_interrupt,
    stop_programs,
)
from gradwandb.read.sweep_results import RESULT_COLUMNS, markdown, run_row, write_csv
from gradwandb.read.sweep_state import (
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    STATE_NAME,
    STATE_VERSION,
    STOPPED,
    RunEntry,
    SweepState,
    new_id,
    open_state,
    recover,
    tally,
)

__all__ = [
    "EARLY_TERMINATE_SECONDS",
    "FAILED",
    "FINISHED",
    "PENDING",
    "POLL_SECONDS",
    "RUNNING",
    "STATE_NAME",
    "STATE_VERSION",
    "STOPPED",
    "STOP_GRACE_SECONDS",
    "RunEntry",
    "SweepResult",
    "SweepState",
    "command_args",
    "expand_command",
    "param_file_text",
    "run_sweep",
]

POLL_SECONDS = 0.5  # how often running programs are looked at
EARLY_TERMINATE_SECONDS = 5.0  # how often hyperband looks at the runs' metric
STOP_GRACE_SECONDS = 30.0  # SIGTERM, then SIGKILL after this long (the agent's kill delay)


@dataclass(frozen=True)
class SweepResult:
    folder: Path
    state: SweepState
    rows: list[dict[str, Any]]
    columns: list[str]
    table: str  # the Markdown table

    @property
    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.state.runs:
            out[r.status] = out.get(r.status, 0) + 1
        return out


def run_sweep(
    spec: SweepSpec,
    folder: str | Path,
    *,
    count: int | None = None,
    workers: int = 1,
    seed: int = 0,
    progress: bool = True,
    cwd: str | Path | None = None,
    out: TextIO | None = None,
) -> SweepResult:
    """Run (or finish) ``spec``'s sweep with its state in ``folder``: up to ``count`` runs in
    all (grid: default the whole grid), ``workers`` at a time; returns the table of runs.

    Raises :class:`SweepError` when ``folder`` holds another sweep, or a random or bayes sweep
    gets no ``count``. KeyboardInterrupt (Ctrl-C, or SIGTERM to this process) stops the
    running programs and leaves them to be run again on the next call.
    """
    from tqdm import tqdm

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / STATE_NAME
    cwd = Path(cwd or Path.cwd())
    if count is None and spec.method in METHODS_NEEDING_COUNT:
        raise SweepError(f"{spec.path}: a {spec.method} sweep needs --count (how many runs)")
    state = open_state(spec, state_path, seed)
    recover(state, folder)
    state.save(state_path)
    target = count if count is not None else _grid_size(spec)
    workers = max(1, workers)
    running: dict[str, subprocess.Popen[bytes]] = {}
    stopping: dict[str, float] = {}
    exhausted = False
    last_check = 0.0
    done = state.count(FINISHED, FAILED, STOPPED)
    bar = tqdm(
        total=max(target, done), initial=done, desc=spec.name, unit="run", disable=not progress
    )
    try:
        with sigterm_as_interrupt():
            while True:
                for entry in [r for r in state.runs if r.id in running]:
                    proc = running[entry.id]
                    code = proc.poll()
                    if code is None:
                        continue
                    del running[entry.id]
                    entry.exit_code = code
                    entry.pid = None
                    entry.run_dir = find_run_dir(folder, entry.id) or entry.run_dir
                    entry.status = (
                        STOPPED if entry.id in stopping else FINISHED if code == 0 else FAILED
                    )
                    stopping.pop(entry.id, None)
                    state.save(state_path)
                    bar.update(1)
                    bar.set_postfix(tally(state), refresh=True)
                while len(running) < workers:
                    todo = _next_pending(state)
                    if todo is None and not exhausted and len(state.runs) < target:
                        todo = _suggest(spec, state, folder)
                        exhausted = todo is None
                    if todo is None:
                        break
                    running[todo.id] = _launch(spec, state, todo, folder, cwd)
                    state.save(state_path)
                if not running:
                    break
                now = time.monotonic()
                if "early_terminate" in spec.config and now - last_check > EARLY_TERMINATE_SECONDS:
                    last_check = now
                    for run_id in _to_stop(spec, state, folder, running):
                        if run_id not in stopping:
                            running[run_id].terminate()
                            stopping[run_id] = now
                for run_id, since in stopping.items():
                    if now - since > STOP_GRACE_SECONDS and run_id in running:
                        running[run_id].kill()
                time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        _interrupt(state, running)
        state.save(state_path)
        bar.close()
        raise
    bar.close()
    return _finish(spec, state, folder, out)


# -- choosing and stopping runs ----------------------------------------------------------------


def _next_pending(state: SweepState) -> RunEntry | None:
    return next((r for r in state.runs if r.status == PENDING), None)


def _grid_size(spec: SweepSpec) -> int:
    if spec.method != "grid":
        return 1
    size = 1
    for param in spec.config["parameters"].values():
        if isinstance(param, Mapping) and "values" in param:
            size *= len(param["values"])
        elif isinstance(param, Mapping) and "min" in param and "max" in param:
            size *= int(param["max"]) - int(param["min"]) + 1
    return size


def _suggest(spec: SweepSpec, state: SweepState, folder: Path) -> RunEntry | None:
    """The engine's next configuration, added to the state (None: the grid is done)."""
    import numpy as np

    random.seed(state.seed * 100_003 + len(state.runs))  # the random search draws from here
    np.random.seed((state.seed * 100_003 + len(state.runs)) % 2**32)  # and bayes from numpy
    suggestion = engine().next_run(spec.config, _engine_runs(spec, state, folder))
    if suggestion is None:
        return None
    config = {str(k): plain(v["value"]) for k, v in suggestion.config.items()}
    entry = RunEntry(id=new_id(), config=config)
    state.runs.append(entry)
    return entry


def _engine_runs(spec: SweepSpec, state: SweepState, folder: Path) -> list[Any]:
    """The state's runs as the engine's ``SweepRun`` records (with their metric for bayes)."""
    sweeps = engine()
    RunState, SweepRun = sweeps.RunState, sweeps.SweepRun
    states = {
        PENDING: RunState.pending,
        RUNNING: RunState.running,
        FINISHED: RunState.finished,
        FAILED: RunState.failed,
        STOPPED: RunState.finished,
    }
    metric = spec.metric
    runs = []
    for r in state.runs:
        summary: dict[str, Any] = {}
        history: list[dict[str, Any]] = []
        if metric and r.status in (FINISHED, STOPPED) and r.run_dir and spec.method == "bayes":
            history = _metric_history(r.run_dir, metric, cache=True)
            if history:
                summary = dict(history[-1])
        runs.append(
            SweepRun(
                name=r.id,
                state=states[r.status],
                config={k: {"value": v} for k, v in r.config.items()},
                summaryMetrics=summary,
                sampledHistory=history,  # the field's alias; `history=` is ignored
            )
        )
    return runs


def _metric_history(run_dir: str, metric: str, *, cache: bool) -> list[dict[str, Any]]:
    try:
        log = read_run(run_dir, cache=cache)
    except (FileNotFoundError, RuntimeError, OSError):
        return []
    out = []
    for _, value in log.series(metric):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append({metric: float(value)})
    return out


def _to_stop(
    spec: SweepSpec, state: SweepState, folder: Path, running: Mapping[str, Any]
) -> list[str]:
    """The running runs hyperband stops, from every run's metric history so far."""
    sweeps = engine()
    RunState, SweepRun = sweeps.RunState, sweeps.SweepRun
    metric = spec.metric
    if metric is None:
        return []
    runs = []
    for r in state.runs:
        if r.status not in (RUNNING, FINISHED, STOPPED):
            continue
        run_dir = r.run_dir or find_run_dir(folder, r.id)
        if run_dir is None:
            continue
        r.run_dir = run_dir
        live = r.status == RUNNING
        history = _metric_history(run_dir, metric, cache=not live)
        runs.append(
            SweepRun(
                name=r.id,
                state=RunState.running if live else RunState.finished,
                config={k: {"value": v} for k, v in r.config.items()},
                sampledHistory=history,
            )
        )
    if not runs:
        return []
    stopped = sweeps.stop_runs(spec.config, runs)
    return [str(r.name) for r in stopped if r.name in running]


# -- launching ---------------------------------------------------------------------------------


def _launch(
    spec: SweepSpec, state: SweepState, entry: RunEntry, folder: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    proc, log_path = launch(
        spec,
        sweep_id=state.sweep_id,
        group=state.name,
        run_id=entry.id,
        config=entry.config,
        folder=folder,
        cwd=cwd,
    )
    entry.status, entry.pid, entry.log = RUNNING, proc.pid, str(log_path)
    entry.attempts += 1
    return proc


def _interrupt(state: SweepState, running: dict[str, subprocess.Popen[bytes]]) -> None:
    """Stop every running program; their runs go back to pending with fresh ids."""
    stop_programs(running.values())
    for entry in state.runs:
        if entry.id in running:
            entry.status, entry.pid, entry.run_dir, entry.exit_code = PENDING, None, None, None
            entry.id = new_id()


# -- the end -----------------------------------------------------------------------------------


def _finish(spec: SweepSpec, state: SweepState, folder: Path, out: TextIO | None) -> SweepResult:
    swept = spec.swept
    columns = ["run", *swept, *RESULT_COLUMNS[1:]]
    rows = []
    for entry in state.runs:
        if entry.status == PENDING:
            continue
        row = run_row(entry.run_dir, entry.status)
        rows.append({"run": entry.id, **{k: entry.config.get(k) for k in swept}, **row})
    table = markdown(rows, columns)
    write_csv(folder / "results.csv", rows, columns)
    (folder / "results.md").write_text(f"# Sweep {spec.name} ({spec.path})\n\n{table}")
    stream = out if out is not None else sys.stdout
    stream.write(table)
    stream.write(
        f"\n{len(rows)} runs ({', '.join(f'{v} {k}' for k, v in sorted(tally(state).items()))}); "
        f"table in {folder / 'results.csv'} and {folder / 'results.md'}, "
        f"runs under {folder / 'wandb'}\n"
    )
    return SweepResult(folder, state, rows, columns, table)
