"""Run a W&B sweep on this machine, with no server: what ``gradwandb sweep`` does.

The open-source sweep engine (``sweeps``) suggests each run's configuration (grid, random,
bayes) and which runs hyperband stops; each run's program is launched as ``wandb agent``
launches it:

- the same ``command`` macros: ``${env}``, ``${interpreter}`` (this Python, where the agent
  uses ``python`` from the PATH), ``${program}``, ``${args}`` (``--name=value``),
  ``${args_no_hyphens}`` (``name=value``), ``${args_no_equals}``, ``${args_no_boolean_flags}``,
  ``${args_json}``, ``${args_json_file}``, ``${args_append_hydra}``, ``${args_override_hydra}``
  and ``${envvar:NAME}``;
- the parameter file the agent writes (``wandb_version: 1`` then ``name: {value: ...}``), at
  ``$WANDB_DIR/wandb/sweep-<id>/config-<run id>.yaml``, named by ``WANDB_SWEEP_PARAM_PATH``, so
  ``wandb.init`` puts the values in ``wandb.config``; ``WANDB_SWEEP_ID`` and ``WANDB_RUN_ID``;
- a run the sweep stops gets SIGTERM, as from the agent.

Besides, ``WANDB_DIR`` is the sweep folder, ``WANDB_MODE`` is ``offline`` unless already set,
and ``WANDB_RUN_GROUP`` is the sweep's name, so the offline runs are grouped under the sweep.

The sweep folder holds the state (``sweep.json``: every run's config, status, run directory),
written after every change: a sweep interrupted (Ctrl-C, SIGTERM, killed) and started again
with the same folder finishes what is left and never redoes a finished run; a run that crashes
is recorded as failed and the sweep goes on. At the end the table of runs (config -> verdict,
final loss and accuracy, largest gradient norm, clip rate) is printed and written as
``results.csv`` and ``results.md`` in the folder.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import yaml

from gradwandb.read.run import read_run
from gradwandb.read.sweep import (
    METHODS_NEEDING_COUNT,
    RESULT_COLUMNS,
    SweepError,
    SweepSpec,
    engine,
    markdown,
    run_row,
    write_csv,
)

STATE_NAME = "sweep.json"
STATE_VERSION = 1
PENDING, RUNNING, FINISHED, FAILED, STOPPED = "pending", "running", "finished", "failed", "stopped"
POLL_SECONDS = 0.5  # how often running programs are looked at
EARLY_TERMINATE_SECONDS = 5.0  # how often hyperband looks at the runs' metric
STOP_GRACE_SECONDS = 30.0  # SIGTERM, then SIGKILL after this long (the agent's kill delay)
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
        tmp.write_text(json.dumps(asdict(self), indent=1, default=_plain))
        os.replace(tmp, path)

    def count(self, *statuses: str) -> int:
        return sum(1 for r in self.runs if r.status in statuses)


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
    state = _open_state(spec, state_path, seed)
    _recover(state, folder)
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
        with _sigterm_as_interrupt():
            while True:
                for entry in [r for r in state.runs if r.id in running]:
                    proc = running[entry.id]
                    code = proc.poll()
                    if code is None:
                        continue
                    del running[entry.id]
                    entry.exit_code = code
                    entry.pid = None
                    entry.run_dir = _run_dir(folder, entry.id) or entry.run_dir
                    entry.status = (
                        STOPPED if entry.id in stopping else FINISHED if code == 0 else FAILED
                    )
                    stopping.pop(entry.id, None)
                    state.save(state_path)
                    bar.update(1)
                    bar.set_postfix(_tally(state), refresh=True)
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


# -- state -------------------------------------------------------------------------------------


def _open_state(spec: SweepSpec, path: Path, seed: int) -> SweepState:
    config = _plain(spec.config)
    if path.exists():
        state = SweepState.load(path)
        if state.config != config:
            raise SweepError(
                f"{path.parent} holds the state of another sweep ({state.file}); "
                "give this one its own --dir"
            )
        return state
    return SweepState(
        sweep_id=_new_id(), name=spec.name, file=str(spec.path.resolve()), config=config, seed=seed
    )


def _recover(state: SweepState, folder: Path) -> None:
    """Runs the state calls running were cut off (the sweep was interrupted or killed): one
    that finished all the same counts; any other is stopped if still alive and run again."""
    for entry in state.runs:
        if entry.status != RUNNING:
            continue
        if entry.pid is not None and _is_our_child(entry.pid, entry.id):
            _terminate(entry.pid)
        run_dir = _run_dir(folder, entry.id)
        if run_dir is not None and _finished_whole(run_dir):
            entry.status, entry.run_dir, entry.exit_code = FINISHED, run_dir, 0
        else:
            entry.status, entry.run_dir, entry.exit_code = PENDING, None, None
            entry.id = _new_id()  # a fresh W&B run; the cut-off one stays on disk
        entry.pid = None


def _finished_whole(run_dir: str) -> bool:
    try:
        log = read_run(run_dir, cache=False)
    except (FileNotFoundError, RuntimeError, OSError):
        return False
    return log.complete and log.exit_code == 0 and log.summary.get("ended") != "stopped"


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
    config = {str(k): _plain(v["value"]) for k, v in suggestion.config.items()}
    entry = RunEntry(id=_new_id(), config=config)
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
        run_dir = r.run_dir or _run_dir(folder, r.id)
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


def command_args(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Every argument form of a run's parameters, as the agent spells them.

    >>> forms = command_args({"lr": 0.1, "layer_norm": False, "clip": None})
    >>> forms["args"], forms["args_no_hyphens"]
    (['--lr=0.1', '--layer_norm=False', '--clip=None'], ['lr=0.1', 'layer_norm=False', 'clip=None'])
    >>> forms["args_no_boolean_flags"], forms["args_json"]
    (['--lr=0.1', '--clip=None'], ['{"lr": 0.1, "layer_norm": false, "clip": null}'])
    """
    flags, bare, no_equals, no_booleans, append, override = [], [], [], [], [], []
    for name, value in config.items():
        flag = f"{name}={value}"
        flags.append("--" + flag)
        bare.append(flag)
        no_equals += [f"--{name}", str(value)]
        append.append("+" + flag)
        override.append("++" + flag)
        if isinstance(value, bool):
            if value:
                no_booleans.append("--" + name)
        else:
            no_booleans.append("--" + flag)
    return {
        "args": flags,
        "args_no_hyphens": bare,
        "args_no_equals": no_equals,
        "args_no_boolean_flags": no_booleans,
        "args_json": [json.dumps(dict(config))],
        "args_append_hydra": append,
        "args_override_hydra": override,
    }


def expand_command(
    template: Sequence[str],
    config: Mapping[str, Any],
    *,
    program: str,
    interpreter: str,
    json_file: str,
    environ: Mapping[str, str],
) -> list[str]:
    """The command line of one run: ``template`` with every macro replaced."""
    forms: dict[str, list[str]] = {
        **command_args(config),
        "env": ["/usr/bin/env"] if os.name != "nt" else [],
        "interpreter": [interpreter],
        "program": [program],
        "args_json_file": [json_file],
    }
    out: list[str] = []
    for chunk in template:
        chunk = _envvars(str(chunk), environ)
        if chunk.startswith("${") and chunk.endswith("}"):
            out += forms.get(chunk[2:-1], [])
        else:
            out.append(chunk)
    return out


def param_file_text(config: Mapping[str, Any]) -> str:
    """The parameter file as the agent writes it: ``wandb_version: 1``, then
    ``name: {value: ...}`` per parameter, in order."""
    text = "wandb_version: 1"
    if config:
        body = {k: {"value": _plain(v)} for k, v in config.items()}
        text += "\n\n" + yaml.safe_dump(
            body, default_flow_style=False, allow_unicode=True, sort_keys=False
        )
    return text


def _launch(
    spec: SweepSpec, state: SweepState, entry: RunEntry, folder: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    sweep_dir = folder / "wandb" / f"sweep-{state.sweep_id}"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    param_path = sweep_dir / f"config-{entry.id}.yaml"
    json_path = sweep_dir / f"config-{entry.id}.json"
    param_path.write_text(param_file_text(entry.config))
    env = dict(os.environ)
    env.update(
        {
            "WANDB_SWEEP_ID": state.sweep_id,
            "WANDB_RUN_ID": entry.id,
            "WANDB_SWEEP_PARAM_PATH": str(param_path),
            "WANDB_DIR": str(folder),
            "WANDB_RUN_GROUP": state.name,
        }
    )
    env.setdefault("WANDB_MODE", "offline")
    if env["WANDB_MODE"] == "offline":
        env.setdefault("WANDB_ERROR_REPORTING", "false")
    program = spec.program
    if program and not (cwd / program).is_file():
        program = str(spec.program_path)  # found beside the sweep file, not where we run
    command = expand_command(
        spec.command,
        entry.config,
        program=program,
        interpreter=sys.executable,
        json_file=str(json_path),
        environ=env,
    )
    if "${args_json_file}" in spec.command:
        json_path.write_text(command_args(entry.config)["args_json"][0])
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{entry.id}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the sweep, which stops its runs itself
        )
    entry.status, entry.pid, entry.log = RUNNING, proc.pid, str(log_path)
    entry.attempts += 1
    return proc


def _envvars(chunk: str, environ: Mapping[str, str]) -> str:
    """``${envvar:NAME}`` -> the variable's value (the name itself when unset, as the agent)."""
    while "${envvar:" in chunk:
        start = chunk.index("${envvar:")
        end = chunk.find("}", start)
        if end < 0:
            break
        name = chunk[start + len("${envvar:") : end]
        chunk = chunk[:start] + environ.get(name, name) + chunk[end + 1 :]
    return chunk


def _run_dir(folder: Path, run_id: str) -> str | None:
    """The newest W&B run directory of ``run_id`` under the sweep folder."""
    found = sorted((folder / "wandb").glob(f"*run-*-{run_id}"))
    found = [p for p in found if p.is_dir()]
    return str(found[-1]) if found else None


def _interrupt(state: SweepState, running: dict[str, subprocess.Popen[bytes]]) -> None:
    """Stop every running program; their runs go back to pending with fresh ids."""
    for proc in running.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 10.0
    for proc in running.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    for entry in state.runs:
        if entry.id in running:
            entry.status, entry.pid, entry.run_dir, entry.exit_code = PENDING, None, None, None
            entry.id = _new_id()


def _is_our_child(pid: int, run_id: str) -> bool:
    """Whether ``pid`` is still a program this sweep launched for ``run_id``."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"WANDB_RUN_ID={run_id}".encode() in environ.split(b"\0")


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)
    with suppress(OSError):
        os.kill(pid, signal.SIGKILL)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous: Any = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
        f"\n{len(rows)} runs ({', '.join(f'{v} {k}' for k, v in sorted(_tally(state).items()))}); "
        f"table in {folder / 'results.csv'} and {folder / 'results.md'}, "
        f"runs under {folder / 'wandb'}\n"
    )
    return SweepResult(folder, state, rows, columns, table)


def _tally(state: SweepState) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in state.runs:
        if r.status != PENDING:
            out[r.status] = out.get(r.status, 0) + 1
    return out


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def _plain(value: Any) -> Any:
    """numpy scalars and containers as plain Python (yaml.safe_dump and json take those)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    item: Callable[[], Any] | None = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy":
        return item()
    return value
