"""``gradwandb sweep``: programs launched as ``wandb agent`` launches them, the sweep's state
(interrupted and resumed, a crashing run), the checks before any run, and the sweeps/ files.

A probe program stands in for a training script: it records what it was given (arguments,
environment, the parameter file, and with W&B what ``wandb.config`` holds) in a ledger.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gradwandb.read.run import read_run
from gradwandb.read.sweep import SweepError, load_sweep
from gradwandb.read.sweep_runner import (
    FINISHED,
    PENDING,
    STATE_NAME,
    SweepState,
    _suggest,
    param_file_text,
    run_sweep,
)

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))

PROBE = textwrap.dedent(
    '''
    """A stand-in training program: records what it was given."""
    import json, os, sys, time
    from pathlib import Path

    if "--print-config-keys" in sys.argv:
        number = {"type": "float", "optional": False, "default": 0.0}
        print(json.dumps({"parameters": {
            "x": {"type": "int", "optional": False, "default": 0, "low": 0},
            "lr": number, "flag": {"type": "bool", "optional": False, "default": False},
            "name": {"type": "str", "optional": False, "default": ""},
            "clip": {**number, "optional": True},
        }, "metrics": ["score"]}))
        sys.exit(0)
    ledger = Path(os.environ["PROBE_LEDGER"])
    given = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("-"))
    record = {
        "argv": sys.argv[1:],
        "program": sys.argv[0],
        "env": {k: os.environ.get(k) for k in (
            "WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_DIR",
            "WANDB_MODE", "WANDB_RUN_GROUP")},
        "param_file": Path(os.environ["WANDB_SWEEP_PARAM_PATH"]).read_text(),
    }
    with ledger.open("a") as f:
        f.write(json.dumps({"start": given.get("x"), **record}) + "\\n")
    if os.environ.get("PROBE_WANDB"):
        import wandb
        run = wandb.init(project="probe")
        record["config"] = dict(run.config)
        record["group"] = run.group
        run.log({"score": 1.0})
        run.finish()
    hold = os.environ.get("PROBE_HOLD")
    held = hold and Path(hold).exists() and given.get("x") == "2"
    for _ in range(2400 if held else 0):
        time.sleep(0.05)  # x=2 started while the hold file exists: waits to be stopped
    if given.get("x") == os.environ.get("PROBE_CRASH_ON"):
        sys.exit(3)
    with ledger.open("a") as f:
        f.write(json.dumps({"done": given.get("x"), **record}) + "\\n")
    '''
)


def _sweep_file(tmp_path: Path, body: str, name: str = "probe.yaml") -> Path:
    (tmp_path / "probe.py").write_text(PROBE)
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _ledger(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


GRID = """\
    program: probe.py
    method: grid
    metric:
      name: score
      goal: maximize
    command:
      - ${env}
      - ${interpreter}
      - ${program}
      - ${args_no_hyphens}
    parameters:
      x:
        values: [1, 2, 3, 4]
"""


def test_the_program_gets_what_wandb_agent_gives_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args
    from wandb.sdk.lib.config_util import save_config_file_from_dict

    path = _sweep_file(
        tmp_path,
        """\
        name: agent-parity
        program: probe.py
        method: grid
        metric: {name: score, goal: maximize}
        command:
          - ${env}
          - ${interpreter}
          - ${program}
          - ${args}
          - ${args_no_hyphens}
          - ${args_json_file}
        parameters:
          x: {values: [7]}
          lr: {value: 0.1}
          flag: {value: true}
          name: {value: two words}
          clip: {value: null}
        """,
    )
    ledger = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("PROBE_LEDGER", str(ledger))
    monkeypatch.setenv("PROBE_WANDB", "1")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    spec = load_sweep(path, cwd=tmp_path)
    result = run_sweep(spec, tmp_path / "out", progress=False, cwd=tmp_path)
    (run,) = result.state.runs
    assert run.status == FINISHED
    done = [r for r in _ledger(ledger) if "done" in r]
    assert len(done) == 1
    got = done[0]

    assert run.config == {"x": 7, "lr": 0.1, "flag": True, "name": "two words", "clip": None}
    params = {k: {"value": v} for k, v in run.config.items()}  # in the engine's order
    forms = create_sweep_command_args({"args": params})  # the agent's own spelling
    folder = (tmp_path / "out").resolve()
    sweep_dir = folder / "wandb" / f"sweep-{result.state.sweep_id}"
    json_file = sweep_dir / f"config-{run.id}.json"
    assert got["argv"] == [*forms["args"], *forms["args_no_hyphens"], str(json_file)]
    assert json.loads(json_file.read_text()) == json.loads(forms["args_json"][0])
    assert got["program"] == "probe.py"  # as written, run from the sweep's folder like the agent

    expected = tmp_path / "agent-params.yaml"
    save_config_file_from_dict(str(expected), params)  # the file wandb's agent writes
    assert got["param_file"] == expected.read_text()
    assert got["env"] == {
        "WANDB_SWEEP_ID": result.state.sweep_id,
        "WANDB_RUN_ID": run.id,
        "WANDB_SWEEP_PARAM_PATH": str(sweep_dir / f"config-{run.id}.yaml"),
        "WANDB_DIR": str(folder),
        "WANDB_MODE": "offline",
        "WANDB_RUN_GROUP": "agent-parity",
    }
    # wandb.init read the parameter file: the swept values are in wandb.config
    assert got["config"] == {"x": 7, "lr": 0.1, "flag": True, "name": "two words", "clip": None}
    assert got["group"] == "agent-parity"
    assert run.run_dir is not None and Path(run.run_dir).parent == folder / "wandb"
    assert read_run(run.run_dir).config["x"] == 7
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert [(r["run"], r["status"]) for r in rows] == [(run.id, "finished")]


def test_a_crashing_run_is_recorded_failed_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _sweep_file(tmp_path, GRID)
    monkeypatch.setenv("PROBE_LEDGER", str(tmp_path / "ledger.jsonl"))
    monkeypatch.setenv("PROBE_CRASH_ON", "2")
    result = run_sweep(load_sweep(path, cwd=tmp_path), tmp_path / "out", workers=2,
                       progress=False, cwd=tmp_path, out=io.StringIO())  # fmt: skip
    by_x = {r.config["x"]: (r.status, r.exit_code) for r in result.state.runs}
    assert by_x == {1: ("finished", 0), 2: ("failed", 3), 3: ("finished", 0), 4: ("finished", 0)}
    assert "| failed |" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.parametrize("how", ["ctrl-c", "killed"])
def test_an_interrupted_sweep_resumes_without_redoing_finished_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    path = _sweep_file(tmp_path, GRID)
    ledger = tmp_path / "ledger.jsonl"
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv("PROBE_LEDGER", str(ledger))
    monkeypatch.setenv("PROBE_HOLD", str(hold))
    folder = tmp_path / "out"
    code = (
        "from gradwandb.read.sweep import load_sweep\n"
        "from gradwandb.read.sweep_runner import run_sweep\n"
        f"run_sweep(load_sweep({str(path)!r}), {str(folder)!r}, progress=False)\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path)
    state_path = folder / STATE_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until x=1 is done and x=2 is held running
        if any(r.get("start") == "2" for r in _ledger(ledger)) and state_path.exists():
            break
        time.sleep(0.1)
    else:
        runner.kill()
        pytest.fail("the sweep never reached its second run")
    runner.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    runner.wait(timeout=60)
    state = SweepState.load(state_path)
    assert [r.status for r in state.runs][:1] == [FINISHED]
    if how == "ctrl-c":  # the sweep stopped its run itself and marked it to do again
        assert state.runs[1].status == PENDING
    hold.unlink()

    result = run_sweep(load_sweep(path, cwd=tmp_path), folder, progress=False, cwd=tmp_path,
                       out=io.StringIO())  # fmt: skip
    assert [(r.config["x"], r.status) for r in result.state.runs] == [
        (1, "finished"), (2, "finished"), (3, "finished"), (4, "finished")]  # fmt: skip
    records = _ledger(ledger)
    assert sorted(r["done"] for r in records if "done" in r) == ["1", "2", "3", "4"]
    assert [r["start"] for r in records if "start" in r].count("1") == 1  # never redone


def test_hyperband_stops_the_running_runs_behind_at_a_band(tmp_path: Path) -> None:
    """The real engine decides from the real runs' histories: at the first band (3 values of
    the metric), the running runs in the worse half are stopped; finished runs and the better
    running ones are not."""
    import wandb

    from gradwandb.read.sweep_runner import RUNNING, RunEntry, _to_stop

    body = GRID + "    early_terminate:\n      type: hyperband\n      min_iter: 3\n      eta: 2\n"
    spec = load_sweep(_sweep_file(tmp_path, body), cwd=tmp_path)
    folder = tmp_path / "out"
    state = SweepState(sweep_id="s", name="probe", file="probe.yaml", config=spec.config, seed=0)
    for x, status in [(1, RUNNING), (2, FINISHED), (3, RUNNING), (4, FINISHED)]:
        run = wandb.init(project="probe", dir=str(folder), id=f"run{x}", reinit="create_new")
        for _ in range(4):
            run.log({"score": float(x)})  # maximize: the larger x, the better
        run.finish()
        state.runs.append(RunEntry(id=f"run{x}", config={"x": x}, status=status))
    running = {"run1": object(), "run3": object()}
    assert _to_stop(spec, state, folder, running) == ["run1"]
    state.runs[0].status = FINISHED  # nothing running: nothing to stop
    assert _to_stop(spec, state, folder, {"run3": object()}) == []


def _refused(tmp_path: Path, body: str) -> str:
    path = _sweep_file(tmp_path, body)
    with pytest.raises(SweepError) as raised:
        load_sweep(path, cwd=tmp_path)
    return str(raised.value)


def test_refused_before_any_run_with_the_line_named(tmp_path: Path) -> None:
    head = "program: probe.py\nmethod: grid\nmetric: {name: score, goal: maximize}\n"
    message = _refused(tmp_path, head + "parameters:\n  x: {values: [1]}\n  depth: {value: 3}\n")
    assert message.startswith(f"{tmp_path / 'probe.yaml'}:6: parameter 'depth' is not")

    message = _refused(tmp_path, head + "parameters:\n  x: {values: [1, -1]}\n")
    assert ":5: parameter 'x': value -1 is rejected by probe.py: must be >= 0" in message

    body = "program: probe.py\nmethod: grid\nmetric:\n  name: loss\nparameters:\n  x: {value: 1}\n"
    assert ":4: metric 'loss' is never logged by probe.py (it logs score)" in _refused(
        tmp_path, body
    )

    flow = head + "command: [${env}, ${interpreter}, ${program}]\nparameters:\n  x: {value: 1}\n"
    assert ":4: not valid YAML" in _refused(tmp_path, flow)
    assert "block list" in _refused(tmp_path, flow)

    cap = head + "run_cap: 3\nparameters:\n  x: {value: 1}\n"
    assert ":4: Additional properties are not allowed ('run_cap' was unexpected)" in _refused(
        tmp_path, cap
    )

    grid = head + "parameters:\n  lr: {min: 0.1, max: 1.0}\n"
    assert ":5: the sweep engine cannot run this" in _refused(tmp_path, grid)

    missing = "program: nowhere.py\nmethod: grid\nparameters:\n  x: {value: 1}\n"
    assert ":1: program 'nowhere.py' not found" in _refused(tmp_path, missing)


def test_random_search_is_seeded_and_gives_plain_values(tmp_path: Path) -> None:
    path = _sweep_file(
        tmp_path,
        """\
        program: probe.py
        method: random
        parameters:
          lr: {distribution: log_uniform_values, min: 0.001, max: 1.0}
          x: {values: [1, 2, 3]}
        """,
    )
    spec = load_sweep(path, cwd=tmp_path, describe_program=False)

    def draws(seed: int) -> list[dict[str, Any]]:
        state = SweepState("s", "s", str(path), spec.config, seed)
        return [e.config for e in (_suggest(spec, state, tmp_path) for _ in range(3)) if e]

    first = draws(5)
    assert first == draws(5) and first != draws(6)
    assert all(type(c["lr"]) is float for c in first)
    assert yaml.safe_load(param_file_text(first[0]))["lr"] == {"value": first[0]["lr"]}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_sweep_file_is_one_the_program_runs(path: Path) -> None:
    spec = load_sweep(path, cwd=ROOT)  # engine schema, program, parameters, metric: or raises
    assert spec.program_path.is_file()
    assert spec.schema is not None and set(spec.config["parameters"]) <= set(spec.schema)
    assert spec.metrics is not None and spec.metric in spec.metrics
    assert spec.command == ("${env}", "${interpreter}", "${program}", "${args_no_hyphens}")
    for name in ("lr", "init_std"):
        param = spec.config["parameters"].get(name, {})
        if "distribution" in param:
            assert param["distribution"] == "log_uniform_values"


def test_smoke_sweep_runs_end_to_end_offline(tmp_path: Path) -> None:
    env = {**os.environ}
    env.pop("WANDB_DIR", None)
    folder = tmp_path / "smoke"
    done = subprocess.run(
        [sys.executable, "-m", "gradwandb", "sweep", "sweeps/smoke.yaml", "--count", "2",
         "--workers", "2", "--dir", str(folder), "--no-progress"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert {r["init"]: r["verdict"] for r in rows}["normal"] in ("exploding", "nonfinite")
    assert all(r["verdict"] and r["final_loss"] and r["max_grad_norm"] for r in rows)
    assert "| run | init | status | verdict |" in done.stdout
    runs = sorted((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(read_run(r).complete for r in runs)
