"""The demo and the ``gradwandb`` command: a broken run and its fix at a small size, read back
with W&B's own reader; the models and the printing they rely on."""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from gradwandb import Finding
from gradwandb.cli import build_parser, main
from gradwandb.demo import DemoResult, DemoRun, describe_run, run_demo, use_offline_by_default
from gradwandb.models import (
    BOS,
    Seq2Seq,
    greedy_decode,
    orthogonal_recurrent,
    recurrent_radius,
    recurrent_weights,
    reversal_accuracy,
    reverse_batch,
    scaled_recurrent,
)
from gradwandb.read.run import RunLog, read_run

# Small, yet the contrast shows: the broken run's recurrence explodes from step 0 and it stays
# at chance; the fixed one is healthy and well under chance after 60 steps.
STEPS, VOCAB, HIDDEN = 60, 8, 32
SMALL = [
    "--steps", str(STEPS), "--batch", "32", "--seq-len", "6", "--vocab", str(VOCAB),
    "--hidden", str(HIDDEN), "--no-progress",
]  # fmt: skip
TINY = ["--steps", "3", "--batch", "4", "--seq-len", "5", "--vocab", "12", "--hidden", "8"]


@dataclass
class Demo:
    code: int
    out: str
    result: DemoResult
    logs: dict[str, RunLog]  # by run name


def offline_runs(root: Path) -> list[Path]:
    """The offline runs under ``root``, in no particular order: two runs started in the same
    second have names that sort by their random ids, not by when they started."""
    return sorted((root / "wandb").glob("offline-run-*"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch) -> Demo:
    """One small demo, both runs, through ``main``; ``run_demo``'s result kept on the side."""
    import gradwandb.demo

    results: list[DemoResult] = []
    original = gradwandb.demo.run_demo

    def keep(**kwargs: object) -> DemoResult:
        result = original(**kwargs)  # type: ignore[arg-type]
        results.append(result)
        return result

    monkeypatch_module.setattr(gradwandb.demo, "run_demo", keep)
    root = tmp_path_factory.mktemp("demo")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["demo", *SMALL, "--dir", str(root)])
    (result,) = results
    assert sorted(r.run_dir for r in result.runs) == offline_runs(root)
    logs = {run.name: read_run(run.run_dir) for run in result.runs}
    return Demo(code, out.getvalue(), result, logs)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_the_broken_run_explodes_and_the_fixed_one_is_healthy_and_learns(demo: Demo) -> None:
    broken, fixed = demo.result.broken, demo.result.fixed
    assert broken is not None and fixed is not None
    assert broken.verdict == "exploding"
    assert any(f.kind == "exploding" and f.severity == "error" for f in broken.findings)
    assert fixed.verdict == "healthy"
    assert not [f for f in fixed.findings if f.severity == "error"]
    assert fixed.chance_loss == pytest.approx(math.log(VOCAB - 1))
    assert fixed.final_loss < 0.8 * fixed.chance_loss  # it learns the task ...
    assert broken.final_loss > 0.9 * broken.chance_loss  # ... which the broken run does not
    assert fixed.accuracy > max(broken.accuracy, 2 * fixed.chance_accuracy)
    assert broken.peak_norm > 10 * fixed.peak_norm


def test_the_console_tells_the_story_and_says_where_the_runs_are(demo: Demo) -> None:
    assert demo.code == 0
    broken, fixed = demo.result.runs
    out = demo.out
    assert out.index("demo-broken") < out.index("diagnosis: exploding") < out.index("demo-fixed")
    assert out.index("demo-fixed") < out.index("diagnosis: healthy")
    flat = " ".join(out.split())  # findings and fixes are wrapped to the terminal
    assert broken.findings[0].message in flat and broken.findings[0].fix in flat
    for run in (broken, fixed):
        assert f"wandb leet {run.run_dir}" in out
        assert f"chance {run.chance_loss:.3f}" in out
    assert f"wandb sync {broken.run_dir} {fixed.run_dir}" in out


def test_each_run_summary_has_its_verdict_findings_and_results(demo: Demo) -> None:
    for run in demo.result.runs:
        summary = demo.logs[run.name].summary
        assert summary["gradwandb/verdict"] == run.verdict
        assert [f["kind"] for f in summary["gradwandb/findings"]] == [f.kind for f in run.findings]
        assert summary["accuracy"] == pytest.approx(run.accuracy)
        assert summary["final_loss"] == pytest.approx(run.final_loss)
        assert summary["chance_loss"] == pytest.approx(run.chance_loss)


def test_one_row_per_optimizer_step_with_loss_and_global_norm(demo: Demo) -> None:
    for log in demo.logs.values():
        rows = log.history
        assert [row["_step"] for row in rows] == list(range(STEPS))
        assert [row["gradwandb/step"] for row in rows] == list(range(STEPS))
        for row in rows:
            assert row["loss"] > 0
            assert row["grad/global_norm"] > 0
        accuracy = log.series("accuracy")
        assert [step for step, _ in accuracy] == [0, 50, STEPS - 1]
        assert all(0 <= a <= 1 for _, a in accuracy)


def test_only_the_fixed_run_clips(demo: Demo) -> None:
    fixed = demo.logs["demo-fixed"]
    coefs = [value for _, value in fixed.series("grad/clip_coef")]
    assert len(coefs) == STEPS and all(0 < c <= 1 for c in coefs)
    assert all(t == pytest.approx(1.0) for _, t in fixed.series("grad/clip_threshold"))
    broken = demo.logs["demo-broken"]
    assert all(c == 1.0 for _, c in broken.series("grad/clip_coef"))
    assert not broken.series("grad/clip_threshold")


def test_every_parameter_has_its_keys(demo: Demo) -> None:
    for log in demo.logs.values():
        keys = log.metric_keys()
        for param, _ in Seq2Seq(VOCAB, HIDDEN).named_parameters():
            assert f"grad_norm/{param}" in keys
            assert f"grad_hist/{param}" in keys  # step 0 is a histogram step
        assert "bptt/encoder/horizon" in keys  # the encoder is watched through time


def test_summary_counts_the_model_parameters(demo: Demo) -> None:
    expected = sum(p.numel() for p in Seq2Seq(VOCAB, HIDDEN).parameters())
    for run in demo.result.runs:  # the fix changes no layer
        assert run.params == expected
        assert demo.logs[run.name].summary["gradwandb/params_total"] == expected


def test_config_records_the_demo_arguments_and_each_setup(demo: Demo) -> None:
    broken, fixed = (demo.logs[n].config for n in ("demo-broken", "demo-fixed"))
    for config in (broken, fixed):
        assert (config["steps"], config["hidden"], config["vocab"]) == (STEPS, HIDDEN, VOCAB)
    assert (broken["cell"], broken["clip"], broken["recurrent_init"]) == ("rnn", None, "scaled")
    assert broken["recurrent_radius"] == pytest.approx(5.0)
    assert (fixed["cell"], fixed["recurrent_init"]) == ("rnn", "orthogonal")
    assert fixed["clip"] == pytest.approx(1.0)


def test_only_trains_one_run(tmp_path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        result = run_demo(
            steps=2, batch=4, seq_len=4, vocab=6, hidden=8, only="fixed", cell="lstm",
            clip=None, dir=tmp_path, progress=False,
        )  # fmt: skip
    assert result.broken is None and result.fixed is not None
    assert result.runs == (result.fixed,) and result.run_dir == result.fixed.run_dir
    assert offline_runs(tmp_path) == [result.fixed.run_dir]
    assert "demo-broken" not in out.getvalue()
    assert result.fixed.setup == "nn.LSTM, orthogonal recurrent weights, no clipping"


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
        ("--only", "both"),
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


@pytest.mark.parametrize(
    "bad", [{"steps": 0}, {"vocab": 1}, {"cell": "tcn"}, {"clip": 0.0}, {"only": "both"}]
)
def test_run_demo_rejects_bad_arguments(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        run_demo(**bad)  # type: ignore[arg-type]


def test_a_fix_shared_by_findings_is_printed_once() -> None:
    fix = "try: clip the global norm"
    findings = tuple(
        Finding("exploding", layer, 0, 200.0, f"gradient norm of {layer} is 200", fix, "error")
        for layer in ("a.weight", "b.weight", "c.weight", "d.weight")
    )
    run = DemoRun(
        name="demo-broken", setup="", run_dir=Path("run"), steps=1, final_loss=2.0,
        chance_loss=2.0, accuracy=0.1, chance_accuracy=0.1, median_norm=1.0, peak_norm=200.0,
        params=1, seconds=1.0, offline=True, verdict="exploding", findings=findings,
    )  # fmt: skip
    text = describe_run(run)
    assert text.count(fix) == 1
    assert "gradient norm of c.weight" in text and "gradient norm of d.weight" not in text
    assert "(1 more in the run summary: gradwandb/findings)" in text
    assert "diagnosis: healthy" in describe_run(replace(run, verdict="healthy", findings=()))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_recurrent_inits_set_the_spectral_radius(cell: str) -> None:
    torch.manual_seed(0)
    model = Seq2Seq(vocab=6, hidden=64, cell=cell)
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    assert len(recurrent_weights(model)) == 2 * gates  # encoder and decoder
    assert all(w.shape == (64, 64) for w in recurrent_weights(model))
    scaled_recurrent(model, 5.0)
    assert 4.0 < recurrent_radius(model) < 6.5
    orthogonal_recurrent(model)
    assert recurrent_radius(model) == pytest.approx(1.0, abs=1e-5)
    for block in recurrent_weights(model):
        torch.testing.assert_close(block @ block.T, torch.eye(64), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="radius"):
        scaled_recurrent(model, 0.0)


def test_greedy_decoding_feeds_the_model_its_own_output() -> None:
    torch.manual_seed(0)
    model = Seq2Seq(vocab=9, hidden=16, cell="gru")
    batch = reverse_batch(5, 7, 9, torch.Generator().manual_seed(1))
    src = batch[0]
    decoded = greedy_decode(model, src)
    assert decoded.shape == (5, 7) and decoded.dtype == torch.long
    fed = torch.cat([torch.full((5, 1), BOS), decoded[:, :-1]], dim=1)
    with torch.no_grad():
        assert torch.equal(model(src, fed).argmax(-1), decoded)
    expected = (decoded == batch[2]).float().mean().item()
    assert reversal_accuracy(model, batch) == pytest.approx(expected)
    assert model.training  # measuring leaves the mode as it was


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
        [str(script), "demo", *TINY, "--no-progress", "--only", "broken"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    (run,) = offline_runs(tmp_path)
    assert f"wandb sync {run}" in done.stdout
    assert list(run.glob("*.wandb"))


def test_python_dash_m_gradwandb() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gradwandb", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gradwandb ")
