"""Per-timestep (BPTT) gradients and recurrent weight health, against direct recomputation.

The reference for dL/dx_t unrolls the SAME weights step by step with RNNCell/LSTMCell/GRUCell
(the module's own parameters, shared) and reads ``x_t.grad`` of one leaf per timestep; the
reference for the output side reads the gradient of the stacked outputs. Models are float64,
so the monitor and the reference agree to rounding (rel 1e-9).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

import gradwandb
import gradwandb.live.monitors.sequence_capture as capture
import gradwandb.live.monitors.through_time as recurrent
import gradwandb.plots.charts as plots
from gradwandb.keys import Keys
from gradwandb.live.monitors.through_time import (
    BPTTMonitor,
    PowerIteration,
    curve_summary,
    rnn_key,
    timestep_norm_sums,
)
from gradwandb.live.record import FILL, RecurrentSummary, StepRecord
from gradwandb.live.sinks import MemorySink, Table, Value
from gradwandb.models import Seq2Seq, reverse_batch, seq2seq_loss

Row = dict[str, Value]


def _close(expected: object) -> Any:
    """Equal to rounding: float64 models, the same arithmetic up to summation order."""
    return pytest.approx(expected, rel=1e-9, abs=1e-12)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: no thread pool


def _record(step: int) -> StepRecord:
    return StepRecord(step=step, names=[], norm=[], global_norm=0.0)


def _curve(row: Row, name: str) -> dict[str, list[float]]:
    table = row[f"bptt/{name}/curve"]
    assert isinstance(table, Table)
    columns = list(table.columns)
    assert [r[0] for r in table.rows] == list(range(len(table.rows)))
    return {c: [float(r[i]) for r in table.rows] for i, c in enumerate(columns) if i}


# -- the reference: the same weights, one cell step at a time ------------------------------


def _cell(rnn: nn.RNNBase, layer: int, suffix: str) -> nn.RNNCellBase:
    """A cell that shares the module's parameters for ``layer`` and direction ``suffix``."""
    size = rnn.input_size if layer == 0 else rnn.hidden_size * (2 if rnn.bidirectional else 1)
    cell: nn.RNNCellBase
    if isinstance(rnn, nn.LSTM):
        cell = nn.LSTMCell(size, rnn.hidden_size, dtype=torch.float64)
    elif isinstance(rnn, nn.GRU):
        cell = nn.GRUCell(size, rnn.hidden_size, dtype=torch.float64)
    else:
        cell = nn.RNNCell(size, rnn.hidden_size, nonlinearity=rnn.nonlinearity, dtype=torch.float64)
    for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(cell, part, getattr(rnn, f"{part}_l{layer}{suffix}"))
    return cell


def _unroll(rnn: nn.RNNBase, xs: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Top-layer outputs per timestep and final hidden states (PyTorch's order) of ``rnn``
    run on the per-timestep inputs ``xs`` (each [B, D])."""
    layer_in = list(xs)
    finals: list[Tensor] = []
    steps = range(len(xs))
    for layer in range(rnn.num_layers):
        per_direction = []
        for suffix, order in (("", steps), ("_reverse", reversed(steps)))[
            : 2 if rnn.bidirectional else 1
        ]:
            cell = _cell(rnn, layer, suffix)
            h = xs[0].new_zeros(xs[0].shape[0], rnn.hidden_size)
            c = torch.zeros_like(h)
            outs: list[Tensor] = [h] * len(xs)
            for t in order:
                if isinstance(cell, nn.LSTMCell):
                    h, c = cell(layer_in[t], (h, c))
                else:
                    h = cell(layer_in[t], h)
                outs[t] = h
            per_direction.append(outs)
            finals.append(h)
        layer_in = [torch.cat([o[t] for o in per_direction], dim=-1) for t in steps]
    return layer_in, finals


def _loss(out: Tensor, h_n: Tensor, gen: torch.Generator) -> Tensor:
    """A fixed nonlinear loss of the output sequence [B, T, F] and the final states."""
    a = torch.randn(out.shape[-1], 3, generator=gen, dtype=torch.float64)
    b = torch.randn(h_n.shape[-2:], generator=gen, dtype=torch.float64)
    return torch.tanh(out @ a).pow(2).sum() + (h_n * b).sum()


def _reference(rnn: nn.RNNBase, x: Tensor, seed: int) -> tuple[list[float], list[list[float]]]:
    """Per-timestep batch-mean norms of dL/dx_t and (per direction) of dL/dout_t; x [B, T, D]."""
    xs = [x[:, t].detach().clone().requires_grad_() for t in range(x.shape[1])]
    outs, finals = _unroll(rnn, xs)
    out = torch.stack(outs, dim=1)
    out.retain_grad()  # the gradient the heads send: the stack is not in the recurrence
    _loss(out, torch.stack(finals), torch.Generator().manual_seed(seed)).backward()
    assert out.grad is not None
    rnn.zero_grad()
    dirs = 2 if rnn.bidirectional else 1
    inputs = [float(xt.grad.norm(dim=-1).mean()) for xt in xs if xt.grad is not None]
    halves = out.grad.unflatten(-1, (dirs, -1)).norm(dim=-1).mean(0)  # [T, dirs]
    return inputs, halves.T.tolist()


def _module_run(rnn: nn.RNNBase, x: Tensor, seed: int) -> Row:
    """One monitored forward/backward of ``rnn`` on ``x`` [B, T, D]; the monitor's row."""
    monitor = BPTTMonitor(rnn, every=1, spectral_every=None).attach()
    out, state = rnn(x if rnn.batch_first else x.transpose(0, 1))
    out = out if rnn.batch_first else out.transpose(0, 1)
    h_n = state[0] if isinstance(state, tuple) else state
    _loss(out, h_n, torch.Generator().manual_seed(seed)).backward()
    row = monitor(_record(0))
    monitor.remove()
    rnn.zero_grad()
    assert row is not None
    return row


def _make(kind: type[nn.RNNBase], seed: int = 0, **kwargs: object) -> nn.RNNBase:
    torch.manual_seed(seed)
    return kind(5, 7, dtype=torch.float64, **kwargs)  # type: ignore[arg-type]


def _inputs(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=gen, dtype=torch.float64)


# -- per-timestep norms against the unrolled reference ---------------------------------------


@pytest.mark.parametrize("kind", [nn.RNN, nn.LSTM, nn.GRU])
@pytest.mark.parametrize("batch_first", [True, False])
def test_per_timestep_norms_match_unrolled_cells(kind: type[nn.RNNBase], batch_first: bool) -> None:
    rnn = _make(kind, batch_first=batch_first)
    x = _inputs((4, 9, 5), seed=1)  # raw data: the monitor makes it require grad
    row = _module_run(rnn, x, seed=2)
    ref_in, ref_out = _reference(rnn, x, seed=2)
    name = kind.__name__.lower()
    curve = _curve(row, name)
    assert curve["input_grad_norm"] == _close(ref_in)
    assert curve["output_grad_norm"] == _close(ref_out[0])
    summary = curve_summary(ref_in, 0.1)
    for stat in ("first_last_ratio", "decay_rate", "horizon", "seq_len"):
        assert row[f"bptt/{name}/{stat}"] == _close(summary[stat])
    assert row[f"bptt/{name}/seq_len"] == 9
    assert x.grad is None  # the caller's tensor is untouched


def test_bidirectional_splits_the_output_per_direction() -> None:
    rnn = _make(nn.GRU, batch_first=True, bidirectional=True)
    x = _inputs((3, 8, 5), seed=3)
    row = _module_run(rnn, x, seed=4)
    ref_in, ref_out = _reference(rnn, x, seed=4)
    curve = _curve(row, "gru")
    assert set(curve) == {"input_grad_norm", "output_grad_norm_forward", "output_grad_norm_reverse"}
    assert curve["input_grad_norm"] == _close(ref_in)
    assert curve["output_grad_norm_forward"] == _close(ref_out[0])
    assert curve["output_grad_norm_reverse"] == _close(ref_out[1])
    assert ref_out[0] != pytest.approx(ref_out[1], rel=1e-3)  # the split is not trivial


@pytest.mark.parametrize("kind", [nn.LSTM, nn.RNN])
def test_multi_layer_input_side_is_the_bottom_layer_input(kind: type[nn.RNNBase]) -> None:
    rnn = _make(kind, num_layers=3, batch_first=True, bidirectional=kind is nn.RNN)
    x = _inputs((3, 6, 5), seed=5)
    row = _module_run(rnn, x, seed=6)
    ref_in, ref_out = _reference(rnn, x, seed=6)  # the output is the top layer's
    curve = _curve(row, kind.__name__.lower())
    assert curve["input_grad_norm"] == _close(ref_in)
    outputs = [v for k, v in curve.items() if k.startswith("output")]
    assert outputs == [_close(r) for r in ref_out]


def test_input_that_already_requires_grad_is_hooked_in_place() -> None:
    rnn = _make(nn.LSTM, batch_first=True)
    x = _inputs((2, 5, 5), seed=7).requires_grad_()
    row = _module_run(rnn, x, seed=8)
    assert x.grad is not None
    expected = x.grad.norm(dim=-1).mean(0).tolist()
    assert _curve(row, "lstm")["input_grad_norm"] == _close(expected)


def test_packed_sequences_of_mixed_lengths_mask_the_padding() -> None:
    rnn = _make(nn.LSTM, batch_first=True)
    lengths = [5, 3, 7, 2]
    seqs = [_inputs((n, 5), seed=10 + i) for i, n in enumerate(lengths)]
    heads = [_inputs((n, 7), seed=20 + i) for i, n in enumerate(lengths)]
    finals = [_inputs((7,), seed=30 + i) for i in range(len(lengths))]

    def loss(out: Sequence[Tensor], h_n: Sequence[Tensor]) -> Tensor:
        terms = [torch.tanh(o * w).pow(2).sum() for o, w in zip(out, heads, strict=True)]
        return sum(terms, torch.zeros((), dtype=torch.float64)) + sum(
            ((h * f).sum() for h, f in zip(h_n, finals, strict=True)),
            torch.zeros((), dtype=torch.float64),
        )

    monitor = BPTTMonitor(rnn, every=1, spectral_every=None).attach()
    packed, (h_n, _) = rnn(pack_sequence(seqs, enforce_sorted=False))
    padded, _ = pad_packed_sequence(packed, batch_first=True)
    loss([padded[b, :n] for b, n in enumerate(lengths)], list(h_n[-1])).backward()
    curve = _curve(monitor(_record(0)) or {}, "lstm")
    monitor.remove()

    # per-sequence reference: each sequence alone, through the unrolled cells
    grads_in: list[list[float]] = []
    grads_out: list[list[float]] = []
    for seq, head, final in zip(seqs, heads, finals, strict=True):
        xs = [seq[t : t + 1].clone().requires_grad_() for t in range(len(seq))]
        outs, (h,) = _unroll(rnn, xs)
        out = torch.cat(outs)
        out.retain_grad()
        (torch.tanh(out * head).pow(2).sum() + (h[0] * final).sum()).backward()
        assert out.grad is not None
        grads_in.append([float(x.grad.norm()) for x in xs if x.grad is not None])
        grads_out.append(out.grad.norm(dim=-1).tolist())
    for got, per_seq in (
        (curve["input_grad_norm"], grads_in),
        (curve["output_grad_norm"], grads_out),
    ):
        expected = []
        for t in range(max(lengths)):
            present = [g[t] for g in per_seq if len(g) > t]
            expected.append(sum(present) / len(present))
        assert got == _close(expected)
    assert curve["input_grad_norm"][6] == _close(grads_in[2][6])  # one sequence


def test_timestep_norm_sums_layouts_agree() -> None:
    g = _inputs((3, 4, 6), seed=40)  # [B, T, F]
    by_batch = timestep_norm_sums(g, batch_first=True, directions=2)
    by_time = timestep_norm_sums(g.transpose(0, 1).contiguous(), directions=2)
    expected = g.unflatten(-1, (2, 3)).norm(dim=-1).sum(0).T  # [2, T]
    torch.testing.assert_close(by_batch, expected)
    torch.testing.assert_close(by_time, expected)
    unbatched = timestep_norm_sums(g[1])
    torch.testing.assert_close(unbatched[0], g[1].norm(dim=-1))


# -- the shape of the curve: decay, flat, horizon --------------------------------------------


def _linear_regime_rnn(scale: float, seed: int) -> nn.RNN:
    """A tanh RNN with weight_hh = scale * orthogonal, weight_ih = I and no bias."""
    torch.manual_seed(seed)
    rnn = nn.RNN(16, 16, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        nn.init.orthogonal_(rnn.weight_hh_l0)
        rnn.weight_hh_l0.mul_(scale)
        rnn.weight_ih_l0.copy_(torch.eye(16))
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    return rnn


def _last_state_run(rnn: nn.RNNBase, x: Tensor, seed: int) -> tuple[Row, list[float]]:
    """Loss on the final state only (an encoder); the monitor's row and the reference curve."""
    monitor = BPTTMonitor(rnn, every=1, spectral_every=None).attach()
    _, state = rnn(x)
    h_n = state[0] if isinstance(state, tuple) else state
    weights = _inputs(h_n.shape[-1:], seed=seed).to(h_n.dtype)
    (h_n[-1] @ weights).sum().backward()
    row = monitor(_record(0))
    monitor.remove()
    assert row is not None
    if not isinstance(rnn, nn.RNN):
        return row, []
    xs = [x[:, t].detach().clone().requires_grad_() for t in range(x.shape[1])]
    _, finals = _unroll(rnn, xs)
    (finals[-1] @ weights).sum().backward()
    return row, [float(xt.grad.norm(dim=-1).mean()) for xt in xs if xt.grad is not None]


def test_small_recurrent_weights_decay_at_the_analytic_rate() -> None:
    # In the linear regime (small inputs: tanh' ~ 1) dL/dh_t = (W^T)^(T-1-t) dL/dh_{T-1}, and
    # with W = 0.5 * orthogonal its norm halves at each step back: ln(norm) has slope ln 2.
    rnn = _linear_regime_rnn(0.5, seed=0)
    row, reference = _last_state_run(rnn, _inputs((8, 20, 16), seed=50, scale=1e-3), seed=51)
    rate = row["bptt/rnn/decay_rate"]
    assert rate == _close(curve_summary(reference)["decay_rate"])
    assert rate == pytest.approx(math.log(2.0), rel=1e-3)
    assert row["bptt/rnn/first_last_ratio"] == pytest.approx(0.5**19, rel=1e-2)
    assert row["bptt/rnn/horizon"] == 4  # 0.5**3 >= 0.1 > 0.5**4


def test_orthogonal_recurrence_with_small_inputs_stays_flat() -> None:
    rnn = _linear_regime_rnn(1.0, seed=1)
    row, reference = _last_state_run(rnn, _inputs((8, 30, 16), seed=52, scale=1e-3), seed=53)
    assert _curve(row, "rnn")["input_grad_norm"] == _close(reference)
    assert abs(float(row["bptt/rnn/decay_rate"])) < 1e-3  # type: ignore[arg-type]
    assert row["bptt/rnn/first_last_ratio"] == pytest.approx(1.0, rel=1e-2)
    assert row["bptt/rnn/horizon"] == 30


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lstm_keeps_a_longer_horizon_than_a_vanilla_rnn(seed: int) -> None:
    # Same task: 40 random inputs, a loss on the final state. PyTorch's default init for both;
    # the LSTM's forget-gate bias set to 1, as usual.
    x = _inputs((16, 40, 8), seed=100 + seed).float()
    torch.manual_seed(seed)
    rnn = nn.RNN(8, 32, batch_first=True)
    torch.manual_seed(seed)
    lstm = nn.LSTM(8, 32, batch_first=True)
    with torch.no_grad():
        lstm.bias_ih_l0[32:64] = 1.0
        lstm.bias_hh_l0[32:64] = 0.0
    row_rnn, _ = _last_state_run(rnn, x, seed=200 + seed)
    row_lstm, _ = _last_state_run(lstm, x, seed=200 + seed)
    assert row_lstm["bptt/lstm/horizon"] >= row_rnn["bptt/rnn/horizon"] + 3  # type: ignore[operator]
    assert row_lstm["bptt/lstm/decay_rate"] < row_rnn["bptt/rnn/decay_rate"]  # type: ignore[operator]


def test_curve_summary_by_hand() -> None:
    norms = [0.01, 1.0, 0.02, 0.5, 1.0, 2.0, 4.0]
    s = curve_summary(norms, 0.2)
    assert s["seq_len"] == 7
    assert s["first_last_ratio"] == pytest.approx(0.01 / 4.0)
    assert s["horizon"] == 3  # 4, 2, 1 >= 0.2 * 4; then 0.5 < 0.8 (the 1.0 before does not count)
    ts = torch.arange(7, dtype=torch.float64)
    ys = torch.tensor(norms, dtype=torch.float64).log()
    slope = ((ts - ts.mean()) * (ys - ys.mean())).sum() / ((ts - ts.mean()) ** 2).sum()
    assert s["decay_rate"] == pytest.approx(float(slope), rel=1e-12)
    zero = curve_summary([0.0, 1.0, 0.0])
    assert zero["horizon"] == 0 and "first_last_ratio" not in zero and "decay_rate" not in zero
    assert curve_summary([0.0, 0.0]) == {"seq_len": 2, "horizon": 0}


# -- recurrent weight health ------------------------------------------------------------------


def _matrices() -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(60)
    n = 24
    a = torch.randn(n, n, generator=gen, dtype=torch.float64) / math.sqrt(n)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    mats = {f"random{i}": torch.randn(n, n, generator=gen, dtype=torch.float64) for i in range(4)}
    mats.update(symmetric=(a + a.T) / 2, orthogonal=0.9 * q, rotation=1.3 * q @ q)
    return mats


@pytest.mark.parametrize("name", list(_matrices()))
def test_spectral_radius_and_sigma_max_match_linalg(name: str) -> None:
    # Tolerances (documented in PowerIteration): after the first call and two more, radius
    # within 1.5% at worst (1e-2 here), sigma_max 1e-6; orthogonal and symmetric to rounding.
    w = _matrices()[name]
    est = PowerIteration()
    for _ in range(3):
        ((radius, sigma),) = est.estimate(w)
    rho = float(torch.linalg.eigvals(w).abs().max())
    assert radius == pytest.approx(rho, rel=1e-2 if name.startswith("random") else 1e-9)
    assert sigma == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-6)


def test_power_iteration_batches_tracks_changes_and_restarts_from_zero() -> None:
    mats = _matrices()
    batch = torch.stack([mats["symmetric"], mats["orthogonal"], torch.zeros(24, 24).double()])
    est = PowerIteration(iters=10)
    est.estimate(batch)
    result = est.estimate(batch)
    assert result[2] == (0.0, 0.0) or max(result[2]) < 1e-100
    changed = batch.clone()
    changed[2] = mats["random0"]  # zero init, then the weights move: the iteration recovers
    for _ in range(5):
        result = est.estimate(changed)
    for (radius, sigma), w in zip(result, changed, strict=True):
        assert radius == pytest.approx(float(torch.linalg.eigvals(w).abs().max()), rel=1e-3)
        assert sigma == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-6)
    float32 = PowerIteration().estimate(mats["orthogonal"].float())
    assert float32[0] == pytest.approx((0.9, 0.9), rel=1e-5)


def test_monitor_logs_each_gate_block_of_each_recurrent_weight() -> None:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("rnn", nn.LSTM(4, 6, num_layers=2, bidirectional=True))
    monitor = BPTTMonitor(model, every=None, spectral_every=2, keys=Keys("critic"))
    rows = [monitor(_record(k)) for k in range(7)]
    assert [r is not None for r in rows] == [True, False, True, False, True, False, True]
    row = rows[-1]
    assert row is not None
    lstm = model.rnn
    for layer in (0, 1):
        for suffix in ("", "_reverse"):
            weight = f"weight_hh_l{layer}{suffix}"
            blocks = getattr(lstm, weight).detach().double().view(4, 6, 6)
            for gate, w in zip("ifgo", blocks, strict=True):
                key = rnn_key(Keys("critic"), "rnn", weight, gate, "spectral_radius")
                assert key == f"rnn/critic/rnn/{weight}/{gate}/spectral_radius"
                rho = float(torch.linalg.eigvals(w).abs().max())
                assert row[key] == pytest.approx(rho, rel=3e-2)
                sigma_key = key.replace("spectral_radius", "sigma_max")
                assert row[sigma_key] == pytest.approx(
                    float(torch.linalg.matrix_norm(w, 2)), rel=1e-4
                )
    assert len(row) == 2 * 2 * 4 * 2


def test_vanilla_rnn_and_projected_lstm_weights() -> None:
    torch.manual_seed(0)
    rnn = nn.RNN(3, 5)
    row = BPTTMonitor(rnn, every=None, spectral_every=1)(_record(0)) or {}
    w = rnn.weight_hh_l0.detach().double()
    radius, sigma = (
        rnn_key(Keys(), "rnn", "weight_hh_l0", None, s) for s in ("spectral_radius", "sigma_max")
    )
    assert set(row) == {radius, sigma}  # one block, no gates
    assert row[sigma] == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-4)
    lstm = nn.LSTM(3, 6, proj_size=2)
    row = BPTTMonitor(lstm, every=None, spectral_every=1)(_record(0)) or {}
    square = lstm.weight_hr_l0.detach() @ lstm.weight_hh_l0.detach()[6:12]  # the f block's map
    assert row["rnn/lstm/weight_hh_l0/f/sigma_max"] == pytest.approx(
        float(torch.linalg.matrix_norm(square.double(), 2)), rel=1e-4
    )


# -- steps, hooks, errors ---------------------------------------------------------------------


def _encoder_step(rnn: nn.Module, seed: int) -> list[float]:
    """A forward/backward through ``rnn`` (batch first); the batch-mean input-grad norms."""
    x = _inputs((2, 4, 5), seed=seed).requires_grad_()
    out, _ = rnn(x)
    out.pow(2).sum().backward()
    assert x.grad is not None
    norms: list[float] = x.grad.norm(dim=-1).mean(0).tolist()
    return norms


def test_curves_belong_to_the_step_they_are_logged_at() -> None:
    rnn = _make(nn.GRU, batch_first=True)
    opt = torch.optim.SGD(rnn.parameters(), lr=0.01)
    sink = MemorySink()
    with gradwandb.watch(rnn, opt, sink=sink, log_every=2) as tracker:
        monitor = BPTTMonitor(
            rnn, every=3, spectral_every=None, clock=lambda: tracker.step, curve_every=1
        )
        tracker.add_observer(monitor.attach())
        expected = {}
        for step in range(8):
            opt.zero_grad()
            expected[step] = _encoder_step(rnn, seed=step)
            opt.step()
    logged = {s: _curve(r, "gru")["input_grad_norm"] for s, r in sink.rows if "bptt/gru/curve" in r}
    assert sorted(logged) == [0, 6]  # monitored (0, 3, 6) and logged (0, 2, 4, 6)
    for step, curve in logged.items():
        assert curve == _close(expected[step])

    # without a clock the monitor follows the records: exact when every step is logged ...
    sink = MemorySink()
    with gradwandb.watch(rnn, opt, sink=sink) as tracker:
        monitor = BPTTMonitor(rnn, every=3, spectral_every=None, curve_every=1)
        tracker.add_observer(monitor.attach())
        for step in range(7):
            opt.zero_grad()
            expected[step] = _encoder_step(rnn, seed=10 + step)
            opt.step()
        monitor.remove()
    logged = {s: _curve(r, "gru")["input_grad_norm"] for s, r in sink.rows if "bptt/gru/curve" in r}
    assert sorted(logged) == [0, 3, 6]
    for step, curve in logged.items():
        assert curve == _close(expected[step])


def test_micro_batches_of_one_step_are_pooled() -> None:
    rnn = _make(nn.RNN, batch_first=True)
    monitor = BPTTMonitor(rnn, every=1, spectral_every=None).attach()
    first = _encoder_step(rnn, seed=1)
    second = _encoder_step(rnn, seed=2)  # same batch size: the mean of the two means
    curve = _curve(monitor(_record(0)) or {}, "rnn")["input_grad_norm"]
    assert curve == _close([(a + b) / 2 for a, b in zip(first, second, strict=True)])
    assert monitor(_record(1)) is None  # reported once


def test_nothing_on_unmonitored_steps_and_no_hooks_after_remove() -> None:
    model = Seq2Seq(vocab=12, hidden=8)
    monitor = BPTTMonitor(model, every=2, spectral_every=None)
    hooked = [model.encoder, model.decoder]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in hooked)
    monitor.attach().attach()  # twice: hooked once
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in hooked] == [2, 2]
    batch = reverse_batch(2, 5, 12, torch.Generator().manual_seed(0))
    monitor(_record(0))  # now step 1: not monitored
    seq2seq_loss(model, batch).backward()
    assert monitor(_record(1)) is None
    with torch.no_grad():  # a monitored step's forward without grad: nothing captured
        seq2seq_loss(model, batch)
    assert monitor(_record(2)) is None
    loss = seq2seq_loss(model, batch)  # step 3: not monitored
    assert monitor(_record(3)) is None
    loss = seq2seq_loss(model, batch)  # step 4: monitored, hooks on the tensors
    monitor.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in [model, *hooked])
    loss.backward()  # the tensor hooks went too
    assert monitor(_record(4)) is None
    assert not monitor.attached


def test_an_internal_error_never_reaches_the_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    rnn = _make(nn.RNN, batch_first=True)
    monitor = BPTTMonitor(rnn, every=1, spectral_every=None).attach()

    def broken(*args: object, **kwargs: object) -> Tensor:
        raise RuntimeError("boom")

    monkeypatch.setattr(capture, "timestep_norm_sums", broken)  # what the backward hook calls
    with pytest.warns(RuntimeWarning, match="BPTTMonitor: internal error.*boom"):
        _encoder_step(rnn, seed=0)  # the error is in the backward's tensor hook
    monkeypatch.undo()
    assert monitor(_record(0)) is None
    _encoder_step(rnn, seed=1)  # switched off, training goes on
    monitor.remove()


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "match"),
    [
        (lambda: nn.Linear(2, 2), {}, ValueError, "no nn.RNN, nn.LSTM or nn.GRU"),
        (lambda: Seq2Seq(5, 4), {"modules": ["encoderr"]}, ValueError, "'encoderr' is not in"),
        (lambda: Seq2Seq(5, 4), {"modules": "encoder"}, TypeError, r"\['encoder'\]"),
        (lambda: Seq2Seq(5, 4), {"modules": []}, ValueError, "pass None"),
        (lambda: Seq2Seq(5, 4), {"horizon_factor": 1.5}, ValueError, "horizon_factor .* 1.5"),
        (lambda: Seq2Seq(5, 4), {"every": 0}, ValueError, "every must be at least 1"),
        (lambda: Seq2Seq(5, 4), {"spectral_every": 2.5}, TypeError, "spectral_every"),
        (lambda: Seq2Seq(5, 4), {"keys": "critic"}, TypeError, "gradwandb.Keys"),
        (lambda: Seq2Seq(5, 4), {"curve_every": 0}, ValueError, "curve_every .* got 0"),
        (lambda: Seq2Seq(5, 4), {"curve_every": 2.0}, ValueError, "curve_every .* got 2.0"),
        (lambda: "model", {}, TypeError, r"nn.Module\), got 'model' \(str\)"),
    ],
)
def test_bad_arguments_name_the_value_and_the_fix(
    make: Callable[[], object], kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        BPTTMonitor(make(), **kwargs)  # type: ignore[arg-type]


def test_curve_tables_come_every_curve_every_monitored_steps_and_summaries_every_one() -> None:
    rnn = _make(nn.GRU, batch_first=True)
    opt = torch.optim.SGD(rnn.parameters(), lr=0.01)
    sink = MemorySink()
    with gradwandb.watch(rnn, opt, sink=sink, bptt_every=2):
        for step in range(2 * recurrent.CURVE_EVERY + 3):
            opt.zero_grad()
            _encoder_step(rnn, seed=step)
            opt.step()
    monitored = [s for s, r in sink.rows if "bptt/gru/horizon" in r]
    assert monitored == list(range(0, 2 * recurrent.CURVE_EVERY + 3, 2))
    tables = [s for s, r in sink.rows if "bptt/gru/curve" in r]
    memory = [s for s, r in sink.rows if "bptt/gru/memory_curve" in r]
    assert tables == memory == [0, 2 * recurrent.CURVE_EVERY]
    assert all("bptt/gru/memory_horizon" in r for s, r in sink.rows if s in monitored)


def test_modules_selects_by_path() -> None:
    model = Seq2Seq(vocab=5, hidden=4, cell="lstm")
    assert BPTTMonitor(model).modules == ["encoder", "decoder"]
    assert BPTTMonitor(model, modules=["decoder"]).modules == ["decoder"]


# -- end to end -----------------------------------------------------------------------------


def test_end_to_end_on_seq2seq_with_the_tracker() -> None:
    torch.manual_seed(0)
    model = Seq2Seq(vocab=16, hidden=12, cell="gru")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sink = MemorySink()
    tracker = gradwandb.watch(model, opt, sink=sink)
    monitor = BPTTMonitor(model, every=2, spectral_every=2, curve_every=1)
    monitor.attach()
    tracker.add_observer(monitor)
    seen: list[Tensor] = []

    def keep(module: nn.Module, args: object, out: Tensor) -> None:
        out.retain_grad()  # the encoder's input sequence: the reference for dL/dx_t
        seen[:] = [out]

    model.encoder_embedding.register_forward_hook(keep)
    gen = torch.Generator().manual_seed(1)
    expected: dict[int, list[float]] = {}
    weights: dict[int, Tensor] = {}
    for step in range(5):
        opt.zero_grad()
        seq2seq_loss(model, reverse_batch(8, 6, 16, gen)).backward()
        grad = seen[0].grad
        assert grad is not None
        expected[step] = grad.double().norm(dim=-1).mean(0).tolist()
        opt.step()
        weights[step] = model.encoder.weight_hh_l0.detach().clone().double()
    tracker.remove()
    monitor.remove()
    for step, row in sink.rows:
        assert ("bptt/encoder/horizon" in row) == (step % 2 == 0)
        assert ("bptt/decoder/horizon" in row) == (step % 2 == 0)
        if step % 2:
            continue
        assert row["bptt/encoder/seq_len"] == 6
        curve = _curve(row, "encoder")
        assert curve["input_grad_norm"] == _close(expected[step])
        assert curve["output_grad_norm"] == [0.0] * 6  # the encoder's outputs are unused
        for stat in ("first_last_ratio", "decay_rate", "horizon"):
            assert f"bptt/encoder/{stat}" in row and f"bptt/decoder/{stat}" in row
        assert max(_curve(row, "decoder")["output_grad_norm"]) > 0
        for gate, w in zip("rzn", weights[step].view(3, 12, 12), strict=True):
            sigma = row[f"rnn/encoder/weight_hh_l0/{gate}/sigma_max"]
            assert sigma == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-4)
            radius = row[f"rnn/encoder/weight_hh_l0/{gate}/spectral_radius"]
            assert radius == pytest.approx(float(torch.linalg.eigvals(w).abs().max()), rel=3e-2)


def test_any_named_sequence_module_is_watched_on_request() -> None:
    torch.manual_seed(0)

    class Mixer(nn.Module):  # a position-wise layer over [batch, time, features]
        def __init__(self) -> None:
            super().__init__()
            self.mix = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            return torch.tanh(self.mix(x)).cumsum(dim=1)  # later steps see earlier ones

    model = Mixer()
    monitor = BPTTMonitor(model, every=1, spectral_every=1, modules=["mix"]).attach()
    xs = torch.randn(4, 6, 3, requires_grad=True)
    out = model(xs)
    out[:, 2].sum().backward()  # only timesteps 0..2 reach the loss
    row = monitor(StepRecord(step=0, names=[], norm=[], global_norm=0.0)) or {}
    monitor.remove()
    table = row["bptt/mix/curve"]
    assert isinstance(table, Table)
    assert xs.grad is not None
    expected = xs.grad.norm(dim=2).mean(dim=0)  # batch-averaged, per timestep
    got = [float(r[1]) for r in table.rows]
    assert got == pytest.approx(expected.tolist(), rel=1e-6)
    assert got[3:] == [0.0, 0.0, 0.0]
    assert not any(k.startswith("rnn/") for k in row)  # no recurrent weights to look at


def test_watch_takes_bptt_modules() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, bptt_every=1, bptt_modules=["0"]):
        model(torch.randn(2, 5, 3)).sum().backward()
        opt.step()
    assert sink.last()["bptt/0/seq_len"] == 5


# -- the record: what the diagnosis reads ---------------------------------------------------


def _train_lstm(monitor: BPTTMonitor, lstm: nn.LSTM, steps: int) -> list[tuple[StepRecord, Row]]:
    gen = torch.Generator().manual_seed(0)
    out: list[tuple[StepRecord, Row]] = []
    for step in range(steps):
        y, _ = lstm(torch.randn(2, 6, 3, generator=gen, dtype=torch.float64))
        y[:, -1].sum().backward()
        record = _record(step)
        out.append((record, monitor(record) or {}))
    return out


def test_each_reported_module_fills_the_record_with_its_summary() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5, batch_first=True, dtype=torch.float64)
    monitor = BPTTMonitor(lstm, every=1, spectral_every=2, heatmap_every=None).attach()
    assert monitor.stage == FILL  # before the diagnosis, which reads the record
    steps = _train_lstm(monitor, lstm, 3)
    monitor.remove()
    for step, (record, row) in enumerate(steps):
        summary = record.through_time["lstm"]
        assert isinstance(summary, RecurrentSummary)
        assert (summary.step, summary.module_type) == (step, "LSTM")
        assert summary.seq_len == row["bptt/lstm/seq_len"]
        assert summary.horizon == row["bptt/lstm/horizon"]
        assert summary.decay_rate == row["bptt/lstm/decay_rate"]
        assert summary.first_last_ratio == row["bptt/lstm/first_last_ratio"]
        assert record.module_types == {"lstm": "LSTM"}
    radii = [v for k, v in steps[0][1].items() if k.endswith("/spectral_radius")]
    first, second, third = (record.through_time["lstm"] for record, _ in steps)
    assert first.spectral_radius == max(radii)  # type: ignore[type-var]
    assert second.spectral_radius == first.spectral_radius  # kept until the next spectral step
    assert third.spectral_radius is not None and third.spectral_radius != first.spectral_radius
    assert monitor.summaries == {"lstm": third}
    assert recurrent.RecurrentSummary is RecurrentSummary  # still importable from here


def test_a_step_without_a_curve_leaves_the_record_alone() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5, batch_first=True, dtype=torch.float64)
    monitor = BPTTMonitor(lstm, every=2, spectral_every=1, heatmap_every=None).attach()
    steps = _train_lstm(monitor, lstm, 2)
    monitor.remove()
    record, row = steps[1]  # step 1: spectra, no curve
    assert any(k.startswith("rnn/") for k in row) and "bptt/lstm/seq_len" not in row
    assert record.through_time == {} and record.module_types == {}
    assert "lstm" in steps[0][0].through_time


def test_a_named_sequence_module_records_its_class() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    monitor = BPTTMonitor(model, every=1, modules=["0"], spectral_every=None).attach()
    model(torch.randn(2, 4, 3)).sum().backward()
    record = _record(0)
    monitor(record)
    monitor.remove()
    assert record.module_types == {"0": "Linear"}
    summary = record.through_time["0"]
    assert (summary.seq_len, summary.module_type, summary.spectral_radius) == (4, "Linear", None)


def test_a_heatmap_that_fails_to_draw_warns_once_and_the_curves_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object) -> bytes:
        raise RuntimeError("no canvas")

    monkeypatch.setattr(plots, "timestep_heatmap", broken)
    rnn = _make(nn.RNN, batch_first=True)
    monitor = BPTTMonitor(rnn, every=1, spectral_every=None, heatmap_every=1).attach()
    rows: list[Row] = []
    with pytest.warns(RuntimeWarning, match="no canvas.*heatmaps are switched off") as caught:
        for step in range(4):
            _encoder_step(rnn, seed=step)
            rows.append(monitor(_record(step)) or {})
    monitor.remove()
    assert len(caught) == 1
    assert all("bptt/rnn/horizon" in row for row in rows)
    assert not any(k.endswith("/heatmap") for row in rows for k in row)
    monkeypatch.undo()
    _encoder_step(rnn, seed=9)
    assert "bptt/rnn/heatmap" not in (monitor.attach()(_record(4)) or {})  # they stay off
    monitor.remove()


def test_on_summary_is_gone() -> None:
    with pytest.raises(TypeError, match="on_summary"):
        BPTTMonitor(nn.RNN(3, 4), on_summary=print)  # type: ignore[call-arg]


# -- calls of one sequence: a decoder called once per token -------------------------------


class TokenDecoder(nn.Module):
    """The attention-decoder tutorial's shape: the recurrent module called once per target
    token within one forward, its state passed by hand (``carry`` changes it between calls,
    as a decoder that mixes in an attention context does)."""

    def __init__(self, kind: type[nn.RNNBase], carry: Callable[[Any], Any] | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = kind(5, 7, batch_first=True, dtype=torch.float64)
        self.carry = carry

    def forward(self, x: Tensor, per_token: bool = True) -> tuple[Tensor, Any]:
        if not per_token:
            return self.rnn(x)  # type: ignore[no-any-return]
        state: Any = None
        outs = []
        for t in range(x.shape[1]):
            out, state = self.rnn(x[:, t : t + 1], state)
            if self.carry is not None:
                state = self.carry(state)
            outs.append(out)
        return torch.cat(outs, dim=1), state


def _decoder_row(model: TokenDecoder, xs: Sequence[Tensor], per_token: bool) -> Row:
    """One step of ``model`` over the micro-batches ``xs`` (a loss at every timestep)."""
    monitor = BPTTMonitor(model, every=1, spectral_every=None, heatmap_every=None).attach()
    for x in xs:
        out, _ = model(x, per_token)
        _loss(out, out[:, -1:].transpose(0, 1), torch.Generator().manual_seed(3)).backward()
    row = monitor(_record(0))
    monitor.remove()
    model.zero_grad()
    assert row is not None
    return row


@pytest.mark.parametrize("kind", [nn.RNN, nn.LSTM, nn.GRU])
def test_a_module_called_once_per_token_is_one_sequence(kind: type[nn.RNNBase]) -> None:
    model = TokenDecoder(kind)
    x = _inputs((6, 9, 5), seed=20)
    stitched = _decoder_row(model, [x], per_token=True)
    whole = _decoder_row(model, [x], per_token=False)  # the same sequence in one call
    name = "rnn"
    assert stitched[f"bptt/{name}/seq_len"] == 9
    for column, values in _curve(whole, name).items():
        assert _curve(stitched, name)[column] == _close(values)
    memory = [r[1] for r in whole[f"bptt/{name}/memory_curve"].rows]  # type: ignore[union-attr]
    assert [r[1] for r in stitched[f"bptt/{name}/memory_curve"].rows] == _close(memory)  # type: ignore[union-attr]


def test_calls_within_one_forward_are_stitched_even_when_the_state_is_changed() -> None:
    model = TokenDecoder(nn.GRU, carry=lambda h: 0.9 * h)  # not the state the call returned
    x = _inputs((3, 6, 5), seed=21)
    xs = [x[:, t : t + 1].detach().clone().requires_grad_() for t in range(6)]
    monitor = BPTTMonitor(model, every=1, spectral_every=None, heatmap_every=None).attach()
    state, outs = None, []
    for xt in xs:  # the loop of TokenDecoder.forward, with a leaf per timestep
        out, state = model.rnn(xt, state)
        state = 0.9 * state
        outs.append(out)
    # outside a forward of the model: calls go on one sequence until a backward
    torch.cat(outs, dim=1).pow(2).sum().backward()
    row = monitor(_record(0)) or {}
    expected = [float(xt.grad.norm(dim=-1).mean()) for xt in xs if xt.grad is not None]
    assert row["bptt/rnn/seq_len"] == 6
    assert _curve(row, "rnn")["input_grad_norm"] == _close(expected)
    # ... and within one forward of the model
    model.zero_grad()
    gen = torch.Generator().manual_seed(3)
    out, _ = model(x)
    _loss(out, out[:, -1:].transpose(0, 1), gen).backward()
    row = monitor(_record(1)) or {}
    monitor.remove()
    assert row["bptt/rnn/seq_len"] == 6


def test_forwards_of_one_step_are_pooled_when_each_decodes_per_token() -> None:
    model = TokenDecoder(nn.LSTM, carry=lambda s: (s[0] * 1.0, s[1]))
    first, second = _inputs((4, 7, 5), seed=22), _inputs((4, 7, 5), seed=23)
    both = _curve(_decoder_row(model, [first, second], per_token=True), "rnn")
    one = _curve(_decoder_row(model, [first], per_token=False), "rnn")
    two = _curve(_decoder_row(model, [second], per_token=False), "rnn")
    for column, values in both.items():
        assert len(values) == 7
        assert values == _close(
            [(a + b) / 2 for a, b in zip(one[column], two[column], strict=True)]
        )


def test_forwards_that_carry_the_returned_state_continue_the_sequence() -> None:
    # the older tutorial loop: the training code calls the model once per token
    torch.manual_seed(0)
    rnn = nn.GRU(5, 7, batch_first=True, dtype=torch.float64)
    x = _inputs((3, 5, 5), seed=24)
    monitor = BPTTMonitor(
        rnn, every=1, spectral_every=None, heatmap_every=None, curve_every=1
    ).attach()
    state, outs = None, []
    for t in range(5):
        out, state = rnn(x[:, t : t + 1], state)  # each call is a forward of the model
        outs.append(out)
    torch.cat(outs, dim=1).pow(2).sum().backward()
    stitched = monitor(_record(0)) or {}
    rnn.zero_grad()
    out, _ = rnn(x)
    out.pow(2).sum().backward()
    whole = monitor(_record(1)) or {}
    monitor.remove()
    assert stitched["bptt/gru/seq_len"] == 5
    assert _curve(stitched, "gru") == {k: _close(v) for k, v in _curve(whole, "gru").items()}


def test_calls_without_a_state_are_other_sequences() -> None:
    class Siamese(nn.Module):  # one encoder over two sentences in one forward
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.encoder = nn.LSTM(5, 7, batch_first=True, dtype=torch.float64)

        def forward(self, a: Tensor, b: Tensor) -> Tensor:
            return self.encoder(a)[1][0][-1] - self.encoder(b)[1][0][-1]

    model = Siamese()
    a, b = _inputs((2, 6, 5), seed=25), _inputs((2, 6, 5), seed=26)
    leaves = [a.clone().requires_grad_(), b.clone().requires_grad_()]
    monitor = BPTTMonitor(model, every=1, spectral_every=None, heatmap_every=None).attach()
    model(*leaves).pow(2).sum().backward()
    row = monitor(_record(0)) or {}
    monitor.remove()
    assert row["bptt/encoder/seq_len"] == 6
    per = [leaf.grad.norm(dim=-1).mean(0) for leaf in leaves if leaf.grad is not None]
    assert _curve(row, "encoder")["input_grad_norm"] == _close(((per[0] + per[1]) / 2).tolist())


def test_seq2seq_decoding_per_token_logs_the_target_length() -> None:
    class TokenSeq2Seq(Seq2Seq):
        def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
            _, state = self.encoder(self.encoder_embedding(src))
            logits = []
            for t in range(tgt_in.shape[1]):
                out, state = self.decoder(self.decoder_embedding(tgt_in[:, t : t + 1]), state)
                logits.append(self.head(out))
            return torch.cat(logits, dim=1)

    torch.manual_seed(0)
    model = TokenSeq2Seq(vocab=10, hidden=8, cell="gru")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sink = MemorySink()
    gen = torch.Generator().manual_seed(0)
    with gradwandb.watch(model, opt, sink=sink, bptt_every=2):
        for _ in range(3):
            src, tgt_in, tgt_out = reverse_batch(4, 7, 10, gen)
            src = src[:, :5]  # a source of 5, a target of 7
            opt.zero_grad()
            seq2seq_loss(model, (src, tgt_in, tgt_out)).backward()
            opt.step()
    logged = [r for _, r in sink.rows if "bptt/decoder/seq_len" in r]
    assert len(logged) == 2
    for row in logged:
        assert (row["bptt/encoder/seq_len"], row["bptt/decoder/seq_len"]) == (5, 7)
        assert "bptt/decoder/memory_horizon" in row
    # the curve tables on the first monitored step, then every CURVE_EVERY-th
    assert len(_curve(logged[0], "decoder")["input_grad_norm"]) == 7
    assert "bptt/decoder/curve" not in logged[1]


# -- saving and copying a watched model -----------------------------------------------------


def test_a_watched_model_saves_copies_and_pickles_without_live_hooks() -> None:
    import copy
    import io
    import pickle

    from gradwandb.live.capture import InertHook, ModuleHook

    torch.manual_seed(0)
    model = Seq2Seq(vocab=10, hidden=8, cell="lstm")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sink = MemorySink()
    gen = torch.Generator().manual_seed(0)
    with gradwandb.watch(model, opt, sink=sink, bptt_every=1, activations_every=1):
        for _ in range(2):
            opt.zero_grad()
            seq2seq_loss(model, reverse_batch(4, 5, 10, gen)).backward()
            opt.step()
        ours = [
            h
            for m in model.modules()
            for table in (m._forward_pre_hooks, m._forward_hooks)
            for h in table.values()
        ]
        assert len(ours) >= 5 and all(isinstance(h, ModuleHook) for h in ours)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        copies = [
            torch.load(buffer, weights_only=False),
            copy.deepcopy(model),
            pickle.loads(pickle.dumps(model)),
        ]
        for clone in copies:
            hooks = [
                h
                for m in clone.modules()
                for table in (m._forward_pre_hooks, m._forward_hooks)
                for h in table.values()
            ]
            assert len(hooks) == len(ours) and all(isinstance(h, InertHook) for h in hooks)
            clone_opt = torch.optim.SGD(clone.parameters(), lr=0.1)
            before = clone.head.weight.detach().clone()
            loss = seq2seq_loss(clone, reverse_batch(4, 5, 10, gen))
            clone_opt.zero_grad()
            loss.backward()
            clone_opt.step()
            assert not torch.equal(before, clone.head.weight)
        rows_before = len(sink.rows)
        opt.zero_grad()
        seq2seq_loss(model, reverse_batch(4, 5, 10, gen)).backward()
        opt.step()
    assert len(sink.rows) == rows_before + 1  # the copies' training logged nothing
    assert "bptt/decoder/memory_horizon" in sink.rows[-1][1]
