"""The reader: a real offline W&B run read back through :func:`gradwandb.read.read_run` gives
the values the tracker logged, family by family; findings, settings, config, tags, the run's
state; caches that never serve a stale file; no live wing imported."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gradwandb
from gradwandb import keys as K
from gradwandb.keys import Keys, parse_key
from gradwandb.live.sinks import Histogram, Image, MemorySink, Table
from gradwandb.read import read_run
from gradwandb.read import records as reader

STEPS = 4


class Net(nn.Module):
    """Linear -> tanh -> GRU -> vanilla RNN -> ReLU -> Linear, over [batch, time, features]."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 6)
        self.squash = nn.Tanh()
        self.gru = nn.GRU(6, 5, batch_first=True)
        self.rnn = nn.RNN(5, 4, batch_first=True)
        self.relu = nn.ReLU()
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.squash(self.inp(x)))
        h, _ = self.rnn(h)
        return self.out(self.relu(h))


def tee(tracker: Any) -> MemorySink:
    """Copy every row and summary the tracker sends to its W&B sink into a MemorySink."""
    memory = MemorySink()
    sink = tracker.sink
    log, summary = sink.log, sink.summary

    def both_log(row: Any, step: int) -> None:
        memory.log(row, step)
        log(row, step)

    def both_summary(values: Any) -> None:
        memory.summary(values)
        summary(values)

    sink.log, sink.summary = both_log, both_summary
    return memory


def train(run: Any, name: str | None = None, seed: int = 0) -> tuple[Net, MemorySink]:
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tracker = gradwandb.watch(
        model,
        opt,
        run=run,
        name=name,
        layers_every=1,
        hist_every=2,
        bptt_every=1,
        activations_every=1,
        charts=False,
    )
    memory = tee(tracker)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(STEPS):
        opt.zero_grad()
        model(torch.randn(3, 7, 3, generator=gen)).pow(2).mean().backward()
        opt.step()
    tracker.remove()
    return model, memory


def finished(run: Any) -> Path:
    run.finish()
    return Path(run.settings.sync_dir)


def same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    return bool(got == want)


def check_row_values(view: Any, memory: MemorySink, tag: str | None) -> set[str]:
    """Every key of every logged row, read back through the typed view; the families seen."""
    seen: set[str] = set()
    for step, row in memory.rows:
        for key, want in row.items():
            parts = parse_key(key)
            assert parts is not None, f"the tracker wrote {key!r}, which parse_key cannot read"
            assert parts.tag == tag
            seen.add(parts.family)
            if isinstance(want, Histogram):
                hists = dict(
                    view.histograms(parts.subject, log10=parts.family == K.GRAD_LOG10_HIST)
                )
                assert hists[step].counts == pytest.approx(list(want.counts))
                assert hists[step].edges == pytest.approx(list(want.edges))
            elif isinstance(want, Table):
                if parts.family == K.BPTT:
                    got = dict(view.curves(parts.subject, parts.statistic))[step]
                else:
                    assert key == Keys(tag).scalar(K.PARAMS_TABLE)
                    got = view.params
                assert got.columns == list(want.columns)
                assert got.rows == [list(r) for r in want.rows]
            elif isinstance(want, Image):
                assert dict(view.images(key if tag is None else _untagged(key)))[step].exists()
            else:
                got = dict(view.key_series(key))[step]
                assert same(got, want), (key, step, got, want)
    return seen


def _untagged(key: str) -> str:
    parts = parse_key(key)
    assert parts is not None
    return parts.__class__(parts.family, None, parts.subject, parts.statistic).key()


def test_round_trip_every_family(wandb_run: Any) -> None:
    run = wandb_run(config={"lr": 0.05, "model": {"hidden": 5}}, tags=["smoke"])
    model, memory = train(run)
    log = read_run(finished(run))

    families = check_row_values(log, memory, None)
    assert {"grad", "gradwandb", "health", "bptt", "act", "rnn", *K.PARAM_FAMILIES[:3]} <= families

    names = [n for n, _ in model.named_parameters()]
    assert log.param_order == names
    assert log.steps() == [s for s, _ in memory.rows] == list(range(STEPS))
    matrix = log.layer_matrix("grad_norm")
    assert matrix.names == names and matrix.steps == list(range(STEPS))
    for step, row in memory.rows:
        for i, name in enumerate(names):
            assert matrix.values[i][step] == row[f"grad_norm/{name}"]
    assert [v for _, v in log.global_series("global_norm")] == [
        r["grad/global_norm"] for _, r in memory.rows
    ]
    assert log.modules("bptt") == ["gru", "rnn"]
    assert set(log.modules("act")) >= {"squash", "relu"}
    spectra = log.spectra("rnn")
    assert list(spectra) == [("weight_hh_l0", None)]  # a vanilla RNN: one block, no gates
    assert sorted(g for _, g in log.spectra("gru")) == ["n", "r", "z"]
    assert set(log.activations("relu")) >= {"dead_frac", "mean"}
    assert set(log.health_signals()) >= {"spike_z", "exploding"}

    assert log.verdict == memory.summaries["gradwandb/verdict"]
    stored = memory.summaries["gradwandb/findings"]
    assert len(log.findings) == len(stored)
    settings = log.settings  # written at watch time
    assert (settings["layers_every"], settings["hist_every"], settings["bptt_every"]) == (1, 2, 1)
    assert log.config == {"lr": 0.05, "model": {"hidden": 5}}
    assert log.wandb_tags == ["smoke"]
    assert log.tags == [None]
    assert log.complete and log.exit_code == 0
    assert [r["name"] for r in log.params.records()] == names


def test_two_models_read_per_tag(wandb_run: Any) -> None:
    run = wandb_run()
    _, first = train(run)
    _, second = train(run, name="critic", seed=1)
    log = read_run(finished(run))
    assert log.tags == [None, "critic"]
    check_row_values(log, first, None)
    critic = log.view("critic")
    check_row_values(critic, second, "critic")
    assert critic.verdict == second.summaries["gradwandb/critic/verdict"]
    assert critic.param_order == log.param_order
    assert critic.layer_matrix().values != log.layer_matrix().values  # other seed, other numbers


def test_hostile_names_survive_wandb(wandb_run: Any) -> None:
    """Keys built from names with ``/``, ``%``, dots, spaces and unicode come back whole."""
    run = wandb_run()
    names = ["critic/0.weight", "50%", "a b.c", "ünï/cødé", "%2F"]
    keys = Keys("x/y")
    row: dict[str, Any] = {keys.scalar(K.STEP): 0}
    for i, name in enumerate(names):
        row[keys.param("grad_norm", name)] = float(i)
        row[K.bptt_key(keys, name, K.HORIZON)] = i
    run.log(row)
    log = read_run(finished(run))
    assert log.tags == ["x/y"]
    view = log.view("x/y")
    assert sorted(view.names("grad_norm")) == sorted(view.modules("bptt")) == sorted(names)
    assert [dict(view.layer_series("grad_norm", n))[0] for n in names] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_findings_settings_and_nonfinite_as_stored(wandb_run: Any) -> None:
    run = wandb_run()
    run.log({"gradwandb/step": 0, "grad/global_norm": float("nan"), "grad/clip_coef": 1.0})
    run.log({"gradwandb/step": 1, "grad/global_norm": float("inf")})
    record = {"kind": "nonfinite", "severity": "error", "layer": "0.weight", "step": 0,
              "value": math.nan, "message": "NaN in 0.weight", "fix": "lower the lr"}  # fmt: skip
    run.summary["gradwandb/findings"] = [record]
    run.summary["gradwandb/verdict"] = "nonfinite"
    run.summary["gradwandb/critic/findings"] = ["norm 1e-9 in 0.weight; raise the lr; or not"]
    log = read_run(finished(run))
    norms = log.global_series("global_norm")
    assert math.isnan(norms[0][1]) and norms[1] == (1, math.inf)
    (finding,) = log.findings
    assert (finding.kind, finding.severity, finding.layer, finding.step) == (
        "nonfinite", "error", "0.weight", 0
    )  # fmt: skip
    assert finding.value is not None and math.isnan(finding.value)
    assert (finding.message, finding.fix) == ("NaN in 0.weight", "lower the lr")
    assert log.verdict == "nonfinite"
    (old,) = log.view("critic").findings  # the old form: "message; fix"
    assert (old.kind, old.layer, old.message, old.fix) == (
        "", None, "norm 1e-9 in 0.weight", "raise the lr; or not"
    )  # fmt: skip
    assert log.settings == {}  # not written: unknown
    assert log.view("critic").verdict is None


def test_plug_in_family_read_from_settings(wandb_run: Any) -> None:
    run = wandb_run()
    run.summary["gradwandb/settings"] = {"statistics": ["grad_snr"]}
    run.log({"gradwandb/step": 0, "grad_snr/w": 2.0, "grad/grad_snr": 3.0})
    log = read_run(finished(run))
    assert "grad_snr" in log.families()
    assert log.layer_series("grad_snr", "w") == [(0, 2.0)]
    assert log.global_series("grad_snr") == [(0, 3.0)]
    assert parse_key("grad_snr/w") is None  # nothing registered process-wide


def small_run(wandb_run: Any) -> Path:
    run = wandb_run()
    for step in range(3):
        run.log({"gradwandb/step": step, "grad/global_norm": 0.5 + step})
    return finished(run)


def test_the_run_name_is_read_back(wandb_run: Any) -> None:
    named = wandb_run(name="baseline <lr 0.1>")
    named.log({"loss": 1.0})
    assert read_run(finished(named)).name == "baseline <lr 0.1>"


def test_a_run_cut_short_reads_as_incomplete(wandb_run: Any, tmp_path: Path) -> None:
    source = reader.find_run_file(small_run(wandb_run))
    whole = read_run(source, cache=False)
    assert whole.complete

    header_only = tmp_path / "died" / "run-died.wandb"  # the process died at once
    header_only.parent.mkdir()
    header_only.write_bytes(source.read_bytes()[:7])
    empty = read_run(header_only.parent)
    assert not empty.complete and empty.history == [] and empty.exit_code is None

    data = source.read_bytes()
    for cut in (len(data) // 2, len(data) - 40):  # killed mid-run
        cut_dir = tmp_path / f"cut{cut}"
        cut_dir.mkdir()
        (cut_dir / source.name).write_bytes(data[:cut])
        part = read_run(cut_dir)
        assert not part.complete
        assert len(part.history) <= len(whole.history)
        assert part.history == whole.history[: len(part.history)]
        assert not (cut_dir / reader.CACHE_NAME).exists()  # an unfinished run: no disk cache


def test_repeated_reads_use_the_caches(wandb_run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = small_run(wandb_run)
    calls: list[Path] = []
    inspect = reader._inspect

    def counting(file: Path, timeout: float) -> tuple[int, str, str]:
        calls.append(file)
        return inspect(file, timeout)

    monkeypatch.setattr(reader, "_inspect", counting)
    reader.clear_cache()
    first = read_run(run_dir)
    assert len(calls) == 1 and (run_dir / reader.CACHE_NAME).exists()
    again = read_run(run_dir)  # memory
    reader.clear_cache()
    from_disk = read_run(run_dir)  # the JSON beside the run file
    assert len(calls) == 1
    assert first.history == again.history == from_disk.history
    assert first.summary == from_disk.summary and from_disk.complete

    again.history.clear()  # a caller's changes stay with its own copy
    assert read_run(run_dir).history == first.history

    file = reader.find_run_file(run_dir)
    with file.open("ab") as f:  # the file changed: neither cache may answer
        f.write(b"\0")
    read_run(run_dir)
    assert len(calls) == 2
    read_run(run_dir, cache=False)
    assert len(calls) == 3


def test_a_stale_or_broken_disk_cache_is_ignored(wandb_run: Any) -> None:
    run_dir = small_run(wandb_run)
    reader.clear_cache()
    good = read_run(run_dir)
    cache = run_dir / reader.CACHE_NAME
    stored = json.loads(cache.read_text())
    stored["source"]["size"] += 1
    stored["data"]["history"] = []
    cache.write_text(json.dumps(stored))
    reader.clear_cache()
    assert read_run(run_dir).history == good.history
    cache.write_text("{not json")
    reader.clear_cache()
    assert read_run(run_dir).history == good.history


def test_a_read_only_run_directory_still_reads(wandb_run: Any, tmp_path: Path) -> None:
    source = small_run(wandb_run)
    assert read_run(source, cache=False).complete  # W&B has written the whole file
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    copy.chmod(0o555)
    try:
        reader.clear_cache()
        assert len(read_run(copy).history) == 3
    finally:
        copy.chmod(0o755)


def test_the_reading_wing_imports_no_live_wing() -> None:
    """``gradwandb.read`` loads with the package's ``__init__`` left out: no live wing, no
    torch, no ``wandb`` module (W&B is read through its command-line reader)."""
    package = Path(gradwandb.__file__).parent
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('gradwandb')\n"
        f"pkg.__path__ = [{str(package)!r}]\n"
        "sys.modules['gradwandb'] = pkg\n"
        "import gradwandb.read\n"
        "from gradwandb.read import read_run\n"
        "bad = [m for m in sys.modules if m.startswith(('gradwandb.live', 'torch', 'wandb'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
