"""The demo and the ``gradwandb`` command: a tiny run, read back with W&B's own reader."""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gradwandb.cli import build_parser, main
from gradwandb.demo import run_demo, use_offline_by_default
from gradwandb.models import Seq2Seq
from gradwandb.read.run import RunLog, read_run

STEPS, VOCAB, HIDDEN = 4, 12, 8
TINY = [
    "--steps", str(STEPS), "--batch", "4", "--seq-len", "5", "--vocab", str(VOCAB),
    "--hidden", str(HIDDEN), "--no-progress",
]  # fmt: skip


@dataclass
class Demo:
    code: int
    out: str
    run_dir: Path
    log: RunLog


def only_run(root: Path) -> Path:
    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under {root}, found {runs}"
    return runs[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """One tiny demo run through ``main``, with a clip low enough to bite."""
    root = tmp_path_factory.mktemp("demo")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["demo", *TINY, "--clip", "0.05", "--dir", str(root)])
    run_dir = only_run(root)
    return Demo(code, out.getvalue(), run_dir, read_run(run_dir))


def test_demo_exits_zero_and_says_where_the_run_is(demo: Demo) -> None:
    assert demo.code == 0
    assert str(demo.run_dir) in demo.out
    assert f"wandb sync {demo.run_dir}" in demo.out
    assert f"wandb leet {demo.run_dir}" in demo.out
    verdict = demo.log.summary["gradwandb/verdict"]
    assert f"diagnosis: {verdict}" in demo.out  # the printed verdict is the run's


def test_one_row_per_optimizer_step_with_loss_and_global_norm(demo: Demo) -> None:
    rows = demo.log.history
    assert [row["_step"] for row in rows] == list(range(STEPS))
    assert [row["gradwandb/step"] for row in rows] == list(range(STEPS))
    for row in rows:
        assert row["loss"] > 0
        assert row["grad/global_norm"] > 0


def test_clip_coef_is_in_unit_interval_and_clipping_bit(demo: Demo) -> None:
    coefs = [value for _, value in demo.log.series("grad/clip_coef")]
    assert len(coefs) == STEPS
    assert all(0 < c <= 1 for c in coefs)
    assert min(coefs) < 1  # --clip 0.05 is far below the global norm of a fresh model
    assert all(t == pytest.approx(0.05) for _, t in demo.log.series("grad/clip_threshold"))


def test_every_parameter_has_its_keys(demo: Demo) -> None:
    keys = demo.log.metric_keys()
    assert "grad_norm/encoder.weight_ih_l0" in keys
    assert "grad_norm/decoder.weight_hh_l0" in keys
    for name, _ in Seq2Seq(VOCAB, HIDDEN).named_parameters():
        assert f"grad_norm/{name}" in keys
        assert f"grad_hist/{name}" in keys  # step 0 is a histogram step


def test_summary_counts_the_model_parameters(demo: Demo) -> None:
    expected = sum(p.numel() for p in Seq2Seq(VOCAB, HIDDEN).parameters())
    assert demo.log.summary["gradwandb/params_total"] == expected


def test_config_records_the_demo_arguments(demo: Demo) -> None:
    config = demo.log.config
    assert (config["steps"], config["hidden"], config["cell"]) == (STEPS, HIDDEN, "rnn")
    assert config["clip"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--steps", "0"),
        ("--steps", "three"),
        ("--batch", "-1"),
        ("--hidden", "0"),
        ("--vocab", "1"),
        ("--lr", "0"),
        ("--lr", "nan"),
        ("--clip", "-1"),
        ("--cell", "transformer"),
    ],
)
def test_bad_values_are_argparse_errors_naming_the_flag(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_clip_none_turns_clipping_off() -> None:
    assert build_parser().parse_args(["demo", "--clip", "none"]).clip is None
    assert build_parser().parse_args(["demo", "--clip", "2.5"]).clip == 2.5


def test_cli_defaults_are_run_demo_defaults() -> None:
    args = vars(build_parser().parse_args(["demo"]))
    for name, param in inspect.signature(run_demo).parameters.items():
        if name == "progress":
            assert args["no_progress"] is not param.default
        else:
            assert args[name] == param.default, name


@pytest.mark.parametrize("bad", [{"steps": 0}, {"vocab": 1}, {"cell": "tcn"}, {"clip": 0.0}])
def test_run_demo_rejects_bad_arguments(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        run_demo(**bad)  # type: ignore[arg-type]


def test_offline_unless_the_mode_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_ERROR_REPORTING", raising=False)
    use_offline_by_default(online=True)
    assert "WANDB_MODE" not in os.environ
    use_offline_by_default()
    assert os.environ["WANDB_MODE"] == "offline"
    assert os.environ["WANDB_ERROR_REPORTING"] == "false"
    monkeypatch.setenv("WANDB_MODE", "online")
    use_offline_by_default()
    assert os.environ["WANDB_MODE"] == "online"


def test_console_script_runs_the_demo(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("gradwandb")
    assert script.exists(), "the gradwandb console script is not installed"
    env = {**os.environ, "WANDB_DIR": str(tmp_path)}
    del env["WANDB_MODE"]  # the demo must choose offline itself
    done = subprocess.run(
        [str(script), "demo", *TINY, "--steps", "3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir = only_run(tmp_path)
    assert f"wandb sync {run_dir}" in done.stdout
    assert list(run_dir.glob("*.wandb"))


def test_python_dash_m_gradwandb() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gradwandb", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gradwandb ")
