"""Diagnosis through time: the rules on BPTT summaries, the timestep x step heatmap, and tiny
real trainings diagnosed out of the box by ``gradwandb.watch``."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

import gradwandb
import gradwandb.live.diagnosis.rules.through_time as recurrent_rules
import gradwandb.live.monitors.through_time as recurrent
from gradwandb.keys import SATURATED_FRAC, Keys
from gradwandb.live.diagnosis import Diagnoser, DiagnosisObserver, Finding, Thresholds
from gradwandb.live.monitors.through_time import HEATMAP, BPTTMonitor
from gradwandb.live.record import JUDGE, RecurrentSummary, StepRecord
from gradwandb.live.sinks import Image, MemorySink, Table, Value

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: no thread pool


def _param(module: nn.Module, name: str) -> torch.Tensor:
    """A parameter of ``module`` by name, typed as a tensor."""
    return module.get_parameter(name)


def _record(step: int, global_norm: float = 1.0) -> StepRecord:
    return StepRecord(step=step, names=[], norm=[], global_norm=global_norm)


def _report(
    step: int,
    summaries: dict[str, RecurrentSummary],
    module_type: str = "RNN",
    global_norm: float = 1.0,
    saturated: float | None = None,
) -> StepRecord:
    """The record of ``step`` as the monitors fill it: summaries through time (and the
    saturated fraction of each module's activations, when given)."""
    record = _record(step, global_norm)
    for module, summary in summaries.items():
        record.through_time[module] = replace(summary, step=step, module_type=module_type)
        record.module_types[module] = module_type
        if saturated is not None:
            record.activations[module] = {SATURATED_FRAC: saturated}
    return record


# -- the rules, on synthetic summaries ------------------------------------------------------

SHORT = RecurrentSummary(step=0, seq_len=40, horizon=3, decay_rate=0.8, first_last_ratio=1e-9)
HEALTHY_LSTM = RecurrentSummary(
    step=0, seq_len=40, horizon=30, decay_rate=0.05, first_last_ratio=0.2, spectral_radius=1.1
)
GROWING = RecurrentSummary(
    step=0, seq_len=8, horizon=0, decay_rate=-0.7, first_last_ratio=150.0, spectral_radius=2.0
)
BIG_RADIUS_DECAYING = RecurrentSummary(
    step=0, seq_len=40, horizon=30, decay_rate=0.1, first_last_ratio=0.1, spectral_radius=2.0
)
GROWING_SMALL_RADIUS = RecurrentSummary(
    step=0, seq_len=40, horizon=40, decay_rate=-0.1, first_last_ratio=50.0, spectral_radius=1.2
)
# A language model: a loss at every timestep keeps dL/dx_t flat (horizon 35 of 35, even
# growing toward the start) while the memory probe says the recurrence forgets in 6 steps.
LM_SHORT_MEMORY = RecurrentSummary(
    step=0,
    seq_len=35,
    horizon=35,
    decay_rate=-0.01,
    first_last_ratio=1.4,
    spectral_radius=2.0,
    memory_horizon=6,
    memory_decay_rate=0.9,
    memory_len=35,
)
# dL/dx_t fading (a loss on the last state of a long sequence) but a long memory: the
# memory decides.
LONG_MEMORY = replace(SHORT, memory_horizon=30, memory_decay_rate=0.02, memory_len=40)
# A healthy trained GRU: a gate block's raw radius far over the limit, memory decaying.
HEALTHY_GRU = RecurrentSummary(
    step=0,
    seq_len=12,
    horizon=12,
    decay_rate=-0.05,
    first_last_ratio=2.0,
    spectral_radius=1.94,
    memory_horizon=8,
    memory_decay_rate=0.1,
    memory_len=12,
)
GRU_MEMORY_GROWS = replace(HEALTHY_GRU, memory_horizon=1, memory_decay_rate=-0.4)


def _feed(
    summary: RecurrentSummary,
    reports: int,
    module_type: str = "RNN",
    global_norm: float = 1.0,
    saturated: float | None = None,
) -> list[tuple[int, list[Finding]]]:
    """One record a report (every 10 steps); the new findings through time of each."""
    d = Diagnoser()
    out = []
    for step in range(0, 10 * reports, 10):
        record = _report(step, {"encoder": summary}, module_type, global_norm, saturated)
        found = [f for f in d.update(record) if f.layer == "encoder"]
        out.append((step, found))
    return out


# (summary, module type, global norm, saturated, reports, expected: report index, kind, value)
Expected = tuple[int, str, float] | None
CASES: dict[str, tuple[RecurrentSummary, str, float, float | None, int, Expected]] = {
    "short horizon sustained": (SHORT, "RNN", 1.0, None, 5, (2, "vanishing", 3 / 40)),
    "short horizon, not yet sustained": (SHORT, "RNN", 1.0, None, 2, None),
    "healthy lstm": (HEALTHY_LSTM, "LSTM", 1.0, None, 5, None),
    "high radius and growth": (GROWING, "RNN", 1.0, None, 5, (0, "exploding", 2.0)),
    "high radius, decaying, small norm": (BIG_RADIUS_DECAYING, "RNN", 1.0, None, 5, None),
    # a huge global norm is the global rules' finding, not growth through time
    "high radius, global norm over": (BIG_RADIUS_DECAYING, "RNN", 500.0, None, 5, None),
    "lm: flat dL/dx_t, short memory": (
        LM_SHORT_MEMORY,
        "RNN",
        1.0,
        None,
        5,
        (2, "vanishing", 6 / 35),
    ),
    "fading dL/dx_t, long memory": (LONG_MEMORY, "RNN", 1.0, None, 5, None),
    "gru: radius 1.94, memory decaying": (HEALTHY_GRU, "GRU", 1.0, None, 5, None),
    "gru: radius and dL/dx_t growth, no probe": (
        replace(GROWING, memory_horizon=None),
        "GRU",
        1.0,
        None,
        5,
        None,
    ),
    "gru: memory grows": (GRU_MEMORY_GROWS, "GRU", 1.0, None, 5, (0, "exploding", math.exp(0.4))),
    "lstm: memory grows, small radius": (
        replace(GRU_MEMORY_GROWS, spectral_radius=0.9),
        "LSTM",
        1.0,
        None,
        5,
        (0, "exploding", math.exp(0.4)),
    ),
    "rnn: high radius, dL/dx_t grows, memory decays": (
        replace(GROWING, memory_horizon=3, memory_decay_rate=0.5, memory_len=8),
        "RNN",
        1.0,
        None,
        5,
        None,
    ),
    "rnn: high radius, memory grows": (
        replace(BIG_RADIUS_DECAYING, memory_horizon=2, memory_decay_rate=-0.3, memory_len=40),
        "RNN",
        1.0,
        None,
        5,
        (0, "exploding", 2.0),
    ),
    "rnn: memory grows, small radius": (
        replace(GROWING_SMALL_RADIUS, memory_horizon=2, memory_decay_rate=-0.3, memory_len=40),
        "RNN",
        1.0,
        None,
        5,
        None,
    ),
    "barely growing": (replace(GROWING, decay_rate=-0.05), "RNN", 1.0, None, 5, None),
    "nan memory": (
        replace(LM_SHORT_MEMORY, memory_decay_rate=math.nan),
        "RNN",
        1.0,
        None,
        5,
        None,
    ),
    "growth with a small radius": (GROWING_SMALL_RADIUS, "RNN", 1.0, None, 5, None),
    "saturated sustained": (HEALTHY_LSTM, "LSTM", 1.0, 0.8, 4, (2, "vanishing", 0.8)),
    "saturated under the limit": (HEALTHY_LSTM, "LSTM", 1.0, 0.3, 4, None),
    "short horizon of nan gradients": (SHORT, "RNN", math.nan, None, 5, None),
    "short horizon of inf gradients": (SHORT, "RNN", math.inf, None, 5, None),
    "nan summaries": (
        replace(SHORT, decay_rate=math.nan, first_last_ratio=math.nan),
        "RNN",
        1.0,
        None,
        5,
        None,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rules_through_time(case: str) -> None:
    summary, module_type, global_norm, saturated, reports, expected = CASES[case]
    results = _feed(summary, reports, module_type, global_norm, saturated)
    found = [(i, f) for i, (_, fs) in enumerate(results) for f in fs]
    if expected is None:
        assert found == []
        return
    index, kind, value = expected
    assert len(found) == 1  # reported once, however long it lasts
    at, finding = found[0]
    assert at == index
    assert (finding.kind, finding.layer, finding.severity) == (kind, "encoder", "error")
    assert finding.value == pytest.approx(value)
    assert finding.step == (0 if kind == "vanishing" else results[index][0])  # since when
    assert "'encoder'" in finding.message and finding.fix.startswith("try: ")
    assert f"({module_type})" in finding.message


def test_fixes_name_the_remedies_of_the_module_type() -> None:
    (_, rnn), *_ = [r for r in _feed(SHORT, 3, "RNN") if r[1]]
    (_, lstm), *_ = [r for r in _feed(SHORT, 3, "LSTM") if r[1]]
    (_, gru), *_ = [r for r in _feed(SHORT, 3, "GRU") if r[1]]
    (_, boom), *_ = [r for r in _feed(GROWING, 1, "RNN") if r[1]]
    (_, sat), *_ = [r for r in _feed(HEALTHY_LSTM, 3, "LSTM", saturated=0.9) if r[1]]
    assert "nn.LSTM or nn.GRU" in rnn[0].fix and "orthogonal" in rnn[0].fix
    assert "forget-gate bias" in lstm[0].fix and "truncated BPTT" in lstm[0].fix
    assert gru[0].fix.startswith("try: an update-gate bias") and "nn.LSTM" not in gru[0].fix
    assert "clip" in boom[0].fix and "spectral" in boom[0].fix and "learning rate" in boom[0].fix
    assert "saturated" in sat[0].message and "layer norm" in sat[0].fix


@pytest.mark.parametrize(
    ("rate", "seq_len", "wording"),
    [
        (-0.7, 8, "(x2.01 per timestep)"),
        (-0.001, 1000, "(x2.72 across the 1000 timesteps)"),
    ],
)
def test_growth_through_time_never_reads_x1(rate: float, seq_len: int, wording: str) -> None:
    summary = replace(GROWING, decay_rate=rate, seq_len=seq_len)
    [(_, [finding])] = _feed(summary, 1)
    assert finding.kind == "exploding" and wording in finding.message
    assert "x1 per" not in finding.message
    assert recurrent_rules._growth(-1e-6, 40) == "by a factor e**1e-06 per timestep"


def test_saturation_is_judged_at_reports_with_the_latest_fraction() -> None:
    d = Diagnoser(Thresholds(sustain=2))
    saturated = _record(0)
    saturated.activations["encoder"] = {SATURATED_FRAC: 0.9}  # measured, not yet reported
    assert d.update(saturated) == []
    found = d.update(_report(1, {"encoder": HEALTHY_LSTM}, "LSTM"))  # 1st report: 0.9
    found += d.update(_report(2, {"encoder": HEALTHY_LSTM}, "LSTM"))  # 2nd: still 0.9
    assert [(f.kind, f.layer, f.step, f.value) for f in found] == [("vanishing", "encoder", 1, 0.9)]


def test_a_broken_streak_starts_again_and_modules_are_apart() -> None:
    d = Diagnoser()
    ok = RecurrentSummary(step=0, seq_len=40, horizon=40, decay_rate=0.0)
    seen: list[Finding] = []
    for step, summary in enumerate([SHORT, SHORT, ok, SHORT, SHORT]):
        seen += d.update(_report(step, {"encoder": summary, "decoder": SHORT}))
    assert [(f.layer, f.step) for f in seen] == [("decoder", 0)]
    seen += d.update(_report(5, {"encoder": SHORT}))
    assert [(f.layer, f.step) for f in seen] == [("decoder", 0), ("encoder", 3)]
    assert d.diagnosis().verdict == "vanishing"


def test_findings_through_time_come_with_their_record_once() -> None:
    d = Diagnoser()
    new = d.update(_report(0, {"encoder": GROWING}))
    assert [f.kind for f in new] == ["exploding"]
    assert d.diagnosis().verdict == "exploding"
    assert d.update(_report(1, {"encoder": GROWING})) == []
    assert [f.layer for f in d.update(_report(2, {"decoder": GROWING}))] == ["decoder"]
    assert d.update(_record(3)) == []


def test_through_time_after_the_gradients_of_the_same_record() -> None:
    d = Diagnoser()
    record = _report(0, {"encoder": GROWING}, global_norm=500.0)
    assert [(f.kind, f.layer) for f in d.step_rules(record)] == [("exploding", None)]
    assert [(f.kind, f.layer) for f in d.time_rules(record)] == [("exploding", "encoder")]
    assert [f.layer for f in d.diagnosis().findings] == [None, "encoder"]


def test_new_thresholds_are_checked() -> None:
    t = Thresholds(horizon_frac=0.5, radius_limit=1.2, saturation=0.9)
    assert (t.horizon_frac, t.radius_limit, t.saturation) == (0.5, 1.2, 0.9)
    for bad in ({"horizon_frac": 1.5}, {"saturation": 2.0}, {"radius_limit": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Thresholds(**bad)  # type: ignore[arg-type]
    d = Diagnoser(Thresholds(horizon_frac=0.05, sustain=1))
    assert d.update(_report(0, {"encoder": SHORT})) == []  # 3/40 is over 0.05
    with pytest.raises(ValueError, match="saturated"):
        d.update(_report(1, {"encoder": SHORT}, saturated=1.5))
    broken = _record(2)
    broken.through_time[None] = SHORT  # type: ignore[index]
    with pytest.raises(TypeError, match="module"):
        d.update(broken)


def test_the_observer_alerts_and_writes_findings_through_time() -> None:
    sink = MemorySink()
    observer = DiagnosisObserver(sink, Keys("critic"))
    assert observer.stage == JUDGE
    row = observer(_report(0, {"encoder": GROWING}, global_norm=500.0))
    assert row["health/critic/exploding"] == 1.0
    # one alert for the gradients and one for the findings through time, as they were found
    assert [a.title for a in sink.alerts] == ["gradwandb: exploding gradients (critic)"] * 2
    assert "'encoder'" in sink.alerts[1].text
    records = sink.summaries["gradwandb/critic/findings"]
    assert [(r["kind"], r["layer"]) for r in records] == [
        ("exploding", None),
        ("exploding", "encoder"),
    ]
    assert sink.summaries["gradwandb/critic/verdict"] == observer.diagnosis().verdict == "exploding"


# -- the monitor: summaries, callback, heatmap ----------------------------------------------


def _train_monitor(
    monitor: BPTTMonitor, rnn: nn.RNNBase, lengths: list[int], seed: int = 0
) -> list[dict[str, Value]]:
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Value]] = []
    for step, length in enumerate(lengths):
        out, _ = rnn(torch.randn(2, length, 3, generator=gen))
        out[:, -1].sum().backward()
        rows.append(monitor(_record(step)) or {})
    return rows


def test_heatmap_data_equals_the_logged_curves() -> None:
    torch.manual_seed(0)
    rnn = nn.RNN(3, 6, batch_first=True)
    monitor = BPTTMonitor(rnn, every=1, spectral_every=None, heatmap_every=3, curve_every=1)
    monitor.attach()
    rows = _train_monitor(monitor, rnn, [5, 7, 4, 6])
    monitor.remove()
    steps, grid = monitor.heatmap_data("rnn")
    assert steps == [0, 1, 2, 3] and len(grid) == 7  # the longest sequence
    for j, row in enumerate(rows):
        table = row["bptt/rnn/curve"]
        assert isinstance(table, Table)
        curve = [float(r[1]) for r in table.rows]
        column = [grid[t][j] for t in range(len(grid))]
        assert column == [math.log10(x) for x in curve] + [None] * (7 - len(curve))
    images = [step for step, row in enumerate(rows) if f"bptt/rnn/{HEATMAP}" in row]
    assert images == [3]  # not at step 0: one column is no heatmap yet
    image = rows[3]["bptt/rnn/heatmap"]
    assert isinstance(image, Image) and image.png[:4] == b"\x89PNG"
    with pytest.raises(KeyError, match="'rnn'"):
        monitor.heatmap_data("encoder")


def test_heatmap_keeps_a_bounded_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recurrent, "HEATMAP_COLUMNS", 3)
    torch.manual_seed(0)
    rnn = nn.GRU(3, 4)
    monitor = BPTTMonitor(rnn, every=1, spectral_every=None, heatmap_every=None).attach()
    rows = _train_monitor(monitor, rnn, [4, 4, 4, 4, 4])
    monitor.remove()
    steps, grid = monitor.heatmap_data("gru")
    assert steps == [2, 3, 4] and all(len(r) == 3 for r in grid)
    assert not any(k.endswith("/heatmap") for row in rows for k in row)


def test_summaries_reach_the_record_with_the_latest_spectral_radius() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5, batch_first=True)
    monitor = BPTTMonitor(lstm, every=1, spectral_every=2, heatmap_every=None).attach()
    gen = torch.Generator().manual_seed(0)
    records, rows = [], []
    for step in range(3):
        out, _ = lstm(torch.randn(2, 6, 3, generator=gen))
        out[:, -1].sum().backward()
        records.append(_record(step))
        rows.append(monitor(records[-1]) or {})
    monitor.remove()
    summaries = [r.through_time["lstm"] for r in records]
    assert all(r.module_types == {"lstm": "LSTM"} for r in records)
    assert [(s.step, s.module_type) for s in summaries] == [(i, "LSTM") for i in range(3)]
    for summary, row in zip(summaries, rows, strict=True):
        assert summary.seq_len == row["bptt/lstm/seq_len"]
        assert summary.horizon == row["bptt/lstm/horizon"]
        assert summary.decay_rate == row["bptt/lstm/decay_rate"]
        assert summary.first_last_ratio == row["bptt/lstm/first_last_ratio"]
    radii = [v for k, v in rows[0].items() if k.endswith("/spectral_radius")]
    assert summaries[0].spectral_radius == max(radii)  # type: ignore[type-var]
    assert summaries[1].spectral_radius == summaries[0].spectral_radius  # kept until the next
    assert summaries[2].spectral_radius is not None
    assert monitor.summaries == {"lstm": summaries[2]}


# -- tiny real trainings, diagnosed by gradwandb.watch --------------------------------------


class Encoder(nn.Module):
    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.encoder = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.encoder(x)
        last: torch.Tensor = out[:, -1, :1]
        return last


def _train(
    model: Encoder, length: int, steps: int = 5, seed: int = 1
) -> tuple[MemorySink, list[Finding]]:
    """Remember the first input of a long sequence (a loss on the last output only)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sink = MemorySink()
    gen = torch.Generator().manual_seed(seed)
    with gradwandb.watch(model, opt, sink=sink, bptt_every=1) as tracker:
        for _ in range(steps):
            x = torch.randn(8, length, 4, generator=gen)
            loss = (model(x) - x[:, 0, :1]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        findings = tracker.diagnosis().findings
    return sink, [f for f in findings if f.layer == "encoder"]  # the findings through time


def test_vanilla_rnn_with_small_recurrent_weights_vanishes_through_time() -> None:
    torch.manual_seed(0)
    rnn = nn.RNN(4, 16, batch_first=True)
    with torch.no_grad():
        _param(rnn, "weight_hh_l0").mul_(0.3)
    sink, [finding] = _train(Encoder(rnn), length=30)
    assert (finding.kind, finding.step) == ("vanishing", 0)
    assert finding.value < 0.25 and "nn.LSTM or nn.GRU" in finding.fix
    assert any("'encoder'" in a.text for a in sink.alerts)  # the tracker's alerts got it
    assert any(r["layer"] == "encoder" for r in sink.summaries["gradwandb/findings"])


def test_lstm_with_forget_bias_one_keeps_its_horizon() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 16, batch_first=True)
    with torch.no_grad():
        _param(lstm, "bias_ih_l0")[16:32] = 1.0
        _param(lstm, "bias_hh_l0")[16:32] = 0.0
    sink, found = _train(Encoder(lstm), length=30)
    assert found == []
    horizons = [row["bptt/encoder/horizon"] for _, row in sink.rows]
    assert all(isinstance(h, int) and h >= 8 for h in horizons)


def test_rnn_with_twice_orthogonal_recurrence_explodes_through_time() -> None:
    torch.manual_seed(0)
    rnn = nn.RNN(4, 16, batch_first=True)
    with torch.no_grad():
        nn.init.orthogonal_(_param(rnn, "weight_hh_l0"))
        _param(rnn, "weight_hh_l0").mul_(2.0)
        _param(rnn, "weight_ih_l0").mul_(0.01)  # small inputs: tanh stays linear, growth shows
        _param(rnn, "bias_ih_l0").zero_()
        _param(rnn, "bias_hh_l0").zero_()
    _, found = _train(Encoder(rnn), length=8, steps=2)
    exploding = [f for f in found if f.kind == "exploding"]
    assert len(exploding) == 1
    assert exploding[0].value == pytest.approx(2.0, rel=1e-3)
    assert "spectral radius 2" in exploding[0].message
    assert "its memory (d h_T / d x_t) grows going back in time" in exploding[0].message


def test_a_healthy_trained_gru_seq2seq_is_not_exploding() -> None:
    # A gate block's raw spectral radius ends far over the limit in training (the gates
    # scale it by sigmoid/tanh derivatives); the memory probe says the recurrence is stable.
    from gradwandb.models import (
        Seq2Seq,
        recurrent_radius,
        reversal_accuracy,
        reverse_batch,
        seq2seq_loss,
    )

    torch.manual_seed(0)
    vocab, length = 6, 6
    model = Seq2Seq(vocab=vocab, hidden=32, cell="gru")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, bptt_every=10, alerts=False) as tracker:
        for _ in range(250):
            loss = seq2seq_loss(model, reverse_batch(32, length, vocab, gen))
            opt.zero_grad()
            loss.backward()
            opt.step()
        report = tracker.diagnosis()
    assert loss.item() < 0.5
    assert reversal_accuracy(model, reverse_batch(256, length, vocab, gen)) > 0.7
    assert recurrent_radius(model) > Thresholds().radius_limit
    reports = [r for _, r in sink.rows if "bptt/decoder/memory_decay_rate" in r]
    assert len(reports) == 25
    assert all(float(r["bptt/decoder/memory_decay_rate"]) > 0 for r in reports[-5:])  # type: ignore[arg-type]
    assert [f for f in report.findings if f.kind == "exploding"] == []
    assert report.verdict == "healthy"


def test_saturated_recurrent_outputs_are_diagnosed_when_activation_health_is_on() -> None:
    torch.manual_seed(0)

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.RNN(4, 16, batch_first=True)
            self.head = nn.Linear(16, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.encoder(x)
            return self.head(out[:, -1])

    model = Tagger()
    with torch.no_grad():
        model.encoder.weight_ih_l0.mul_(30.0)  # pre-activations far out: tanh pinned at +-1
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sink = MemorySink()
    gen = torch.Generator().manual_seed(1)
    # a tiny horizon_frac keeps the horizon rule quiet, so the saturation rule is the one heard
    quiet_horizon = Thresholds(horizon_frac=1e-9)
    with gradwandb.watch(
        model,
        opt,
        sink=sink,
        bptt_every=1,
        activations_every=1,
        layers_every=None,
        diagnose=quiet_horizon,
    ) as tracker:
        for _ in range(5):
            opt.zero_grad()
            model(torch.randn(8, 12, 4, generator=gen)).pow(2).mean().backward()
            opt.step()
        report = tracker.diagnosis()
    saturated = [r["act/encoder/saturated_frac"] for _, r in sink.rows]
    assert min(saturated) > 0.5  # type: ignore[type-var]
    found = [f for f in report.findings if f.layer == "encoder" and "saturat" in f.message]
    assert found and found[0].kind == "vanishing"
