"""Launching a sweep's program as ``wandb agent`` launches it, and stopping it again.

- the same ``command`` macros: ``${env}``, ``${interpreter}`` (this Python, where the agent
  uses ``python`` from the PATH), ``${program}``, ``${args}`` (``--name=value``),
  ``${args_no_hyphens}`` (``name=value``), ``${args_no_equals}``, ``${args_no_boolean_flags}``,
  ``${args_json}``, ``${args_json_file}``, ``${args_append_hydra}``, ``${args_override_hydra}``
  and ``${envvar:NAME}`` (:func:`command_args`, :func:`expand_command`);
- the parameter file the agent writes (``wandb_version: 1`` then ``name: {value: ...}``,
  :func:`param_file_text`), at ``$WANDB_DIR/wandb/sweep-<id>/config-<run id>.yaml``, named by
  ``WANDB_SWEEP_PARAM_PATH``, so ``wandb.init`` puts the values in ``wandb.config``;
  ``WANDB_SWEEP_ID`` and ``WANDB_RUN_ID`` (:func:`launch`);
- a run the sweep stops gets SIGTERM, as from the agent, then SIGKILL if it stays
  (:func:`stop_programs`, :func:`terminate`).

Besides, ``WANDB_DIR`` is the sweep folder, ``WANDB_MODE`` is ``offline`` unless already set,
and ``WANDB_RUN_GROUP`` is the sweep's name, so the offline runs are grouped under the sweep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from gradwandb.read.sweep import SweepSpec

# -- the command line and the parameter file ---------------------------------------------------


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
        body = {k: {"value": plain(v)} for k, v in config.items()}
        text += "\n\n" + yaml.safe_dump(
            body, default_flow_style=False, allow_unicode=True, sort_keys=False
        )
    return text


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


# -- the program -------------------------------------------------------------------------------


def launch(
    spec: SweepSpec,
    *,
    sweep_id: str,
    group: str,
    run_id: str,
    config: Mapping[str, Any],
    folder: Path,
    cwd: Path,
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the program of run ``run_id`` with ``config``, as the agent would: its parameter
    file written, its environment set, its output to ``<folder>/logs/<run id>.log``. Returns
    the process and the log's path."""
    sweep_dir = folder / "wandb" / f"sweep-{sweep_id}"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    param_path = sweep_dir / f"config-{run_id}.yaml"
    json_path = sweep_dir / f"config-{run_id}.json"
    param_path.write_text(param_file_text(config))
    env = dict(os.environ)
    env.update(
        {
            "WANDB_SWEEP_ID": sweep_id,
            "WANDB_RUN_ID": run_id,
            "WANDB_SWEEP_PARAM_PATH": str(param_path),
            "WANDB_DIR": str(folder),
            "WANDB_RUN_GROUP": group,
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
        config,
        program=program,
        interpreter=sys.executable,
        json_file=str(json_path),
        environ=env,
    )
    if "${args_json_file}" in spec.command:
        json_path.write_text(command_args(config)["args_json"][0])
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{run_id}.log"
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
    return proc, log_path


def find_run_dir(folder: Path, run_id: str) -> str | None:
    """The newest W&B run directory of ``run_id`` under the sweep folder."""
    found = sorted((folder / "wandb").glob(f"*run-*-{run_id}"))
    found = [p for p in found if p.is_dir()]
    return str(found[-1]) if found else None


def stop_programs(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every program still running, then SIGKILL to any still there 10 s on."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 10.0
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def is_our_child(pid: int, run_id: str) -> bool:
    """Whether ``pid`` is still a program this sweep launched for ``run_id``."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"WANDB_RUN_ID={run_id}".encode() in environ.split(b"\0")


def terminate(pid: int) -> None:
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
def sigterm_as_interrupt() -> Iterator[None]:
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


def plain(value: Any) -> Any:
    """numpy scalars and containers as plain Python (yaml.safe_dump and json take those)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    item: Callable[[], Any] | None = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy":
        return item()
    return value
