"""The memory probe, ||d h_T / d x_t||, against the analytic decay of a tanh RNN and against
independent autograd computations: unrolled cells that share the module's weights, and the
whole model of a language-model-shaped training (a loss at every timestep), where the probe's
memory must come out short while dL/dx_t is flat."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_sequence

import gradwandb
import gradwandb.live.monitors.through_time as recurrent
from gradwandb.live.monitors.memory import PROBE_SEQUENCES, unit_rows
from gradwandb.live.monitors.through_time import BPTTMonitor, curve_summary
from gradwandb.live.record import StepRecord
from gradwandb.live.sinks import MemorySink, Table, Value

Row = dict[str, Value]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: no thread pool


def _record(step: int) -> StepRecord:
    return StepRecord(step=step, names=[], norm=[], global_norm=0.0)


def _memory(row: Row, name: str) -> list[float]:
    table = row[f"bptt/{name}/memory_curve"]
    assert isinstance(table, Table) and table.columns == ("timestep", "memory_norm")
    assert [r[0] for r in table.rows] == list(range(len(table.rows)))
    return [float(r[1]) for r in table.rows]


def _inputs(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=gen, dtype=torch.float64)


# -- the reference: unrolled cells sharing the module's weights --------------------------


def _cell(rnn: nn.RNNBase, layer: int, suffix: str) -> nn.RNNCellBase:
    width = rnn.input_size if layer == 0 else rnn.hidden_size * (1 + rnn.bidirectional)
    cell: nn.RNNCellBase
    if isinstance(rnn, nn.LSTM):
        cell = nn.LSTMCell(width, rnn.hidden_size, dtype=torch.float64)
    elif isinstance(rnn, nn.GRU):
        cell = nn.GRUCell(width, rnn.hidden_size, dtype=torch.float64)
    else:
        cell = nn.RNNCell(
            width, rnn.hidden_size, nonlinearity=rnn.nonlinearity, dtype=torch.float64
        )
    for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(cell, part, getattr(rnn, f"{part}_l{layer}{suffix}"))
    return cell


def _final_top_forward(rnn: nn.RNNBase, xs: Sequence[Tensor], h0: Tensor | None) -> Tensor:
    """The top layer's final forward-direction state of ``rnn`` on per-timestep inputs ``xs``
    (each [B, F]), one cell step at a time; ``h0`` [L*D, B, H] or None (an LSTM's c0 is 0)."""
    dirs = 2 if rnn.bidirectional else 1
    layer_in = list(xs)
    top = xs[0]
    for layer in range(rnn.num_layers):
        outs_by_dir = []
        for d, suffix in enumerate(("", "_reverse")[:dirs]):
            cell = _cell(rnn, layer, suffix)
            zero = xs[0].new_zeros(xs[0].shape[0], rnn.hidden_size)
            h = zero if h0 is None else h0[layer * dirs + d]
            c = zero
            outs: list[Tensor] = [zero] * len(xs)
            order = range(len(xs)) if d == 0 else reversed(range(len(xs)))
            for t in order:
                if isinstance(cell, nn.LSTMCell):
                    h, c = cell(layer_in[t], (h, c))
                else:
                    h = cell(layer_in[t], h)
                outs[t] = h
            if d == 0:
                top = h
            outs_by_dir.append(outs)
        layer_in = [torch.cat([o[t] for o in outs_by_dir], dim=-1) for t in range(len(xs))]
    return top


def _reference(rnn: nn.RNNBase, x: Tensor, h0: Tensor | None = None) -> list[float]:
    """||d (v . h_T) / d x_t|| averaged over the first sequences of ``x`` [B, T, F], with the
    probe's unit vectors v: one backward per sequence and timestep-wise leaves."""
    k = min(PROBE_SEQUENCES, x.shape[0])
    xs = [x[:k, t].detach().clone().requires_grad_() for t in range(x.shape[1])]
    top = _final_top_forward(rnn, xs, None if h0 is None else h0[:, :k])
    v = unit_rows(k, top.shape[-1], like=top)
    grads = torch.autograd.grad((top * v).sum(), xs)
    return [float(g.norm(dim=-1).mean()) for g in grads]


def _make(kind: type[nn.RNNBase], seed: int = 0, **kwargs: Any) -> nn.RNNBase:
    torch.manual_seed(seed)
    return kind(5, 7, dtype=torch.float64, **kwargs)


def _probe_row(rnn: nn.RNNBase, x: Tensor, h0: Tensor | None = None) -> Row:
    """One monitored forward/backward of ``rnn`` on ``x`` [B, T, F] with a loss at every
    timestep; the monitor's row."""
    monitor = BPTTMonitor(rnn, every=1, spectral_every=None, heatmap_every=None).attach()
    inp = x if rnn.batch_first else x.transpose(0, 1)
    out, _ = rnn(inp) if h0 is None else rnn(inp, h0)
    out.tanh().pow(2).sum().backward()
    row = monitor(_record(0))
    monitor.remove()
    rnn.zero_grad()
    assert row is not None
    return row


# -- the analytic decay ------------------------------------------------------------------


def _contracting_rnn(scale: float, seed: int) -> nn.RNN:
    """A tanh RNN with weight_hh = scale * orthogonal, weight_ih orthogonal and no bias."""
    torch.manual_seed(seed)
    rnn = nn.RNN(16, 16, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        nn.init.orthogonal_(rnn.weight_hh_l0)
        rnn.weight_hh_l0.mul_(scale)
        nn.init.orthogonal_(rnn.weight_ih_l0)
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    return rnn


def test_memory_of_a_contracting_tanh_rnn_halves_at_each_step_back() -> None:
    # Tiny inputs keep tanh linear: d h_T / d x_t = (W_hh)^(T-1-t) W_ih, and with both
    # orthogonal up to the 0.5, ||v^T (W_hh)^k W_ih|| = 0.5**k exactly: ln 2 per step back.
    rnn = _contracting_rnn(0.5, seed=0)
    x = _inputs((8, 20, 16), seed=1, scale=1e-5)
    row = _probe_row(rnn, x)
    memory = _memory(row, "rnn")
    assert memory == pytest.approx([0.5 ** (19 - t) for t in range(20)], rel=1e-5)
    assert memory == pytest.approx(_reference(rnn, x), rel=1e-9)
    assert row["bptt/rnn/memory_decay_rate"] == pytest.approx(math.log(2.0), rel=1e-5)
    assert row["bptt/rnn/memory_first_last_ratio"] == pytest.approx(0.5**19, rel=1e-4)
    assert row["bptt/rnn/memory_horizon"] == 4  # 0.5**3 >= 0.1 > 0.5**4
    # ... while the loss at every timestep keeps dL/dx_t flat: it reaches every timestep
    assert row["bptt/rnn/horizon"] == 20
    assert 0.5 < float(row["bptt/rnn/first_last_ratio"]) < 2.0  # type: ignore[arg-type]


def test_memory_of_an_orthogonal_recurrence_stays_flat() -> None:
    rnn = _contracting_rnn(1.0, seed=2)
    row = _probe_row(rnn, _inputs((8, 30, 16), seed=3, scale=1e-5))
    assert _memory(row, "rnn") == pytest.approx([1.0] * 30, rel=1e-6)
    assert abs(float(row["bptt/rnn/memory_decay_rate"])) < 1e-6  # type: ignore[arg-type]
    assert row["bptt/rnn/memory_horizon"] == 30


# -- against unrolled cells --------------------------------------------------------------


@pytest.mark.parametrize("kind", [nn.RNN, nn.LSTM, nn.GRU])
@pytest.mark.parametrize(
    ("layers", "bidirectional", "batch_first", "with_state"),
    [(1, False, True, False), (2, False, False, True), (2, True, True, False)],
)
def test_memory_matches_unrolled_cells(
    kind: type[nn.RNNBase], layers: int, bidirectional: bool, batch_first: bool, with_state: bool
) -> None:
    rnn = _make(kind, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    x = _inputs((6, 9, 5), seed=4)  # 6 sequences: the probe takes the first 4
    h0 = _inputs((layers * (1 + bidirectional), 6, 7), seed=5) if with_state else None
    if kind is nn.LSTM and h0 is not None:
        row = _probe_row(rnn, x, (h0, torch.zeros_like(h0)))  # type: ignore[arg-type]
    else:
        row = _probe_row(rnn, x, h0)
    name = kind.__name__.lower()
    assert _memory(row, name) == pytest.approx(_reference(rnn, x, h0), rel=1e-9, abs=1e-15)
    summary = curve_summary(_memory(row, name))
    assert row[f"bptt/{name}/memory_horizon"] == summary["horizon"]
    assert row[f"bptt/{name}/memory_decay_rate"] == summary["decay_rate"]


def test_packed_input_probes_the_sequences_of_full_length() -> None:
    rnn = _make(nn.GRU, batch_first=True)
    x = _inputs((5, 7, 5), seed=6)
    lengths = [4, 7, 2, 7, 7]  # full-length sequences 1, 3, 4 (packed order: 1, 3, 4, 0, 2)
    packed = pack_sequence([x[i, :n] for i, n in enumerate(lengths)], enforce_sorted=False)
    monitor = BPTTMonitor(rnn, every=1, spectral_every=None, heatmap_every=None).attach()
    out, h_n = rnn(packed)
    (out.data.pow(2).sum() + h_n.sum()).backward()
    row = monitor(_record(0)) or {}
    monitor.remove()
    assert _memory(row, "gru") == pytest.approx(_reference(rnn, x[[1, 3, 4]]), rel=1e-9)


def test_unbatched_input_is_probed_as_one_sequence() -> None:
    rnn = _make(nn.LSTM)
    x = _inputs((6, 5), seed=7)
    monitor = BPTTMonitor(rnn, every=1, spectral_every=None, heatmap_every=None).attach()
    out, _ = rnn(x)
    out.sum().backward()
    row = monitor(_record(0)) or {}
    monitor.remove()
    assert _memory(row, "lstm") == pytest.approx(_reference(rnn, x.unsqueeze(1).transpose(0, 1)))


# -- outside the user's training ---------------------------------------------------------


def test_the_probe_leaves_gradients_random_state_and_dropout_alone() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 7, num_layers=2, dropout=0.3, batch_first=True, dtype=torch.float64)
    monitor = BPTTMonitor(lstm, every=1, spectral_every=None, heatmap_every=None).attach()
    x = _inputs((6, 8, 5), seed=8)
    out, _ = lstm(x)
    out.pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in lstm.named_parameters() if p.grad is not None}
    same = {n: p.grad for n, p in lstm.named_parameters()}
    rng = torch.get_rng_state()
    row = monitor(_record(0)) or {}
    monitor.remove()
    assert "bptt/lstm/memory_curve" in row
    assert torch.equal(torch.get_rng_state(), rng)  # no random number of the user's drawn
    assert lstm.dropout == 0.3 and lstm.training
    for name, p in lstm.named_parameters():
        assert p.grad is same[name]  # the same tensors, with the same values
        torch.testing.assert_close(p.grad, grads[name], rtol=0, atol=0)
    # inter-layer dropout is off in the probe: it is the cells' memory, without noise
    lstm.dropout = 0.0
    assert _memory(row, "lstm") == pytest.approx(_reference(lstm, x), rel=1e-9)


def test_the_probe_runs_on_monitored_steps_only_and_on_the_first_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = recurrent.memory_norms

    def counted(module: nn.RNNBase, probe: Any, seed: int = 0) -> Tensor:
        calls.append(len(probe.inputs))
        return real(module, probe, seed)

    monkeypatch.setattr(recurrent, "memory_norms", counted)
    rnn = _make(nn.RNN, batch_first=True)
    monitor = BPTTMonitor(rnn, every=2, spectral_every=None, heatmap_every=None).attach()
    first, second = _inputs((4, 6, 5), seed=9), _inputs((4, 6, 5), seed=10)
    rows = []
    for step in range(4):
        for x in (first, second):  # two micro-batches a step
            rnn(x)[0].pow(2).sum().backward()
        rows.append(monitor(_record(step)) or {})
    monitor.remove()
    assert calls == [1, 1]  # steps 0 and 2, one call each: the first micro-batch's
    assert ["bptt/rnn/memory_horizon" in r for r in rows] == [True, False, True, False]
    assert _memory(rows[0], "rnn") == pytest.approx(_reference(rnn, first), rel=1e-9)


def test_a_probe_that_fails_warns_once_and_the_curves_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> Tensor:
        raise RuntimeError("no probe today")

    monkeypatch.setattr(recurrent, "memory_norms", broken)
    rnn = _make(nn.GRU, batch_first=True)
    monitor = BPTTMonitor(rnn, every=1, spectral_every=None, heatmap_every=None).attach()
    rows: list[Row] = []
    with pytest.warns(RuntimeWarning, match="no probe today.*memory probe is switched off") as w:
        for step in range(3):
            rnn(_inputs((2, 5, 5), seed=step))[0].sum().backward()
            record = _record(step)
            rows.append(monitor(record) or {})
            assert record.through_time["gru"].memory_horizon is None
    monitor.remove()
    assert len(w) == 1
    assert all("bptt/gru/horizon" in r and "bptt/gru/memory_horizon" not in r for r in rows)


def test_probe_sequences_zero_turns_it_off_and_bad_values_are_refused() -> None:
    rnn = _make(nn.RNN, batch_first=True)
    monitor = BPTTMonitor(rnn, every=1, spectral_every=None, probe_sequences=0).attach()
    rnn(_inputs((2, 5, 5), seed=0))[0].sum().backward()
    record = _record(0)
    row = monitor(record) or {}
    monitor.remove()
    assert "bptt/rnn/horizon" in row and not any("memory" in k for k in row)
    assert record.through_time["rnn"].memory_horizon is None
    for bad in (-1, 1.5, True, "4"):
        with pytest.raises(ValueError, match="probe_sequences must be an int >= 0"):
            BPTTMonitor(rnn, probe_sequences=bad)  # type: ignore[arg-type]
    two = BPTTMonitor(rnn, every=1, spectral_every=None, probe_sequences=2).attach()
    x = _inputs((5, 6, 5), seed=1)
    rnn(x)[0].sum().backward()
    row = two(_record(0)) or {}
    two.remove()
    assert _memory(row, "rnn") == pytest.approx(_reference(rnn, x[:2]), rel=1e-9)


def test_the_probe_works_without_an_optimizer() -> None:
    # without an optimizer the step ends at the end of the backward, inside autograd
    rnn = _make(nn.GRU, batch_first=True)
    sink = MemorySink()
    x = _inputs((3, 6, 5), seed=11)
    with gradwandb.watch(rnn, sink=sink, bptt_every=1):
        rnn(x)[0].pow(2).sum().backward()
    [(_, row)] = sink.rows
    assert _memory(row, "gru") == pytest.approx(_reference(rnn, x), rel=1e-9)


# -- a language model: a loss at every timestep ------------------------------------------


class LanguageModel(nn.Module):
    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden, dtype=torch.float64)
        self.rnn = nn.RNN(hidden, hidden, batch_first=True, dtype=torch.float64)
        self.head = nn.Linear(hidden, vocab, dtype=torch.float64)

    def forward(self, tokens: Tensor) -> Tensor:
        out, _ = self.rnn(self.embedding(tokens))
        logits: Tensor = self.head(out)
        return logits


def test_language_model_memory_is_short_while_the_input_gradient_is_flat() -> None:
    vocab, length = 20, 35
    torch.manual_seed(0)
    lm = LanguageModel(vocab, 32)
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    sink = MemorySink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a spike finding or two: not ours
        with gradwandb.watch(lm, opt, sink=sink, bptt_every=10) as tracker:
            for _ in range(31):
                tokens = torch.randint(0, vocab, (16, length + 1), generator=gen)
                logits = lm(tokens[:, :-1])
                loss = nn.functional.cross_entropy(
                    logits.reshape(-1, vocab), tokens[:, 1:].flatten()
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
            report = tracker.diagnosis()
    reports = [(s, r) for s, r in sink.rows if "bptt/rnn/horizon" in r]
    assert [s for s, _ in reports] == [0, 10, 20, 30]
    for _, row in reports:
        assert row["bptt/rnn/seq_len"] == length
        assert row["bptt/rnn/horizon"] == length  # dL/dx_t: flat, it lands everywhere
        assert 0.3 < float(row["bptt/rnn/first_last_ratio"]) < 3.0  # type: ignore[arg-type]
        assert int(row["bptt/rnn/memory_horizon"]) <= 6  # type: ignore[call-overload]
        assert float(row["bptt/rnn/memory_first_last_ratio"]) < 1e-6  # type: ignore[arg-type]
    # the rules judge the memory: the recurrence forgets within a few of 35 steps
    [finding] = [f for f in report.findings if f.layer == "rnn"]
    assert finding.kind == "vanishing" and "memory" in finding.message
    assert finding.value == pytest.approx(float(reports[-1][1]["bptt/rnn/memory_horizon"]) / length)  # type: ignore[arg-type]

    # independent: at the last report's weights (after its step), through the whole model,
    # the last timestep's loss alone reaches as far back as the memory says ...
    _, last = reports[-1]
    tokens = torch.randint(0, vocab, (16, length + 1), generator=gen)
    x = lm.embedding(tokens[:, :-1]).detach().requires_grad_()
    out, h_n = lm.rnn(x)
    last_loss = nn.functional.cross_entropy(lm.head(out[:, -1]), tokens[:, -1])
    (g,) = torch.autograd.grad(last_loss, x)
    reach = curve_summary(g.norm(dim=-1).mean(0).tolist())["horizon"]
    assert abs(int(reach) - int(last["bptt/rnn/memory_horizon"])) <= 1  # type: ignore[call-overload]
    # ... and the probe is d(v . h_T)/dx_t of the model's own recurrence on the recorded inputs
    batch = torch.randint(0, vocab, (16, length + 1), generator=gen)
    monitor = BPTTMonitor(lm, every=1, spectral_every=None, heatmap_every=None).attach()
    lm(batch[:, :-1]).sum().backward()
    row = monitor(_record(0)) or {}
    monitor.remove()
    x = lm.embedding(batch[:4, :-1]).detach().requires_grad_()
    _, h_n = lm.rnn(x)
    v = unit_rows(4, 32, like=h_n)
    (g,) = torch.autograd.grad((h_n[-1] * v).sum(), x)
    assert _memory(row, "rnn") == pytest.approx(g.norm(dim=-1).mean(0).tolist(), rel=1e-9)
