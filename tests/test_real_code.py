"""Tiny trainings in the shapes real training code takes, checked against the truth.

Each loop clips, accumulates, steps and saves the way common scripts do (a GPT-style loop with
AMP and accumulation, a word language model with a hand-written update, a seq2seq with two
optimizers and a decoder that runs its GRU one token at a time, optimizer subclasses, closures,
param groups added later, compiled and pickled models). The test captures every gradient itself
right after backward, before any clip, and compares what gradwandb logged with norms recomputed
from those copies.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import gradwandb
from gradwandb.live import user_clip
from gradwandb.live.sinks import MemorySink

from .conftest import read_back

# torch's own clip, taken before any tracker routes it through gradwandb.
TORCH_CLIP_GRAD_NORM = torch.nn.utils.clip_grad.clip_grad_norm_
assert not user_clip.installed()


def _grads(params: Any) -> list[Tensor]:
    return [p.grad.detach().clone() for p in params if p.grad is not None]


def _named_grads(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _norm(grads: Any) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))


def _coef(norm: float, max_norm: float) -> float:
    return min(1.0, max_norm / (norm + 1e-6))


def _torch_total(grads: list[Tensor], max_norm: float) -> Tensor:
    """What torch's own clip_grad_norm_ returns for these gradients."""
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    total: Tensor = TORCH_CLIP_GRAD_NORM(params, max_norm)
    return total


def _rates(coefs: list[float]) -> list[float]:
    bit = [c < 1.0 for c in coefs]
    return [sum(bit[: i + 1]) / (i + 1) for i in range(len(bit))]


# -- 1. a GPT-style loop: AdamW, accumulation, autocast, GradScaler, clip after unscale_ -----


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 11, width: int = 16, context: int = 8) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.ln = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, ids: Tensor, targets: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1])
        x = self.tok(ids) + self.pos(positions)
        x = x + self.mlp(self.ln(x))
        logits = self.head(x)
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def _gpt_batches(steps: int, micro: int, seed: int) -> Iterator[list[tuple[Tensor, Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        chunks = []
        for _ in range(micro):
            data = torch.randint(0, 11, (4, 9), generator=gen)
            chunks.append((data[:, :-1], data[:, 1:]))
        yield chunks


@pytest.mark.parametrize(
    ("loss_scale", "max_norm", "scaled"),
    [(1.0, 1.0, False), (1.0, 1.0, True), (3000.0, 0.25, True)],
    ids=["scaler-off", "scaler-cpu", "large-norms"],
)
def test_gpt_style_loop(loss_scale: float, max_norm: float, scaled: bool) -> None:
    torch.manual_seed(0)
    model = TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=scaled)
    accumulation, steps = 4, 6
    sink = MemorySink()
    truth: list[dict[str, Tensor]] = []
    returned: list[Tensor] = []
    with gradwandb.watch(model, opt, sink=sink, scaler=scaler, layers_every=1) as tracker:
        for chunks in _gpt_batches(steps, accumulation, seed=1):
            for ids, targets in chunks:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = model(ids, targets) * loss_scale / accumulation
                scaler.scale(loss).backward()
            scaler.unscale_(opt)
            truth.append(_named_grads(model))
            returned.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
        verdict = tracker.diagnosis().verdict

    assert [s for s, _ in sink.rows] == list(range(steps))  # one row per optimizer step
    norms = [_norm(g.values()) for g in truth]
    coefs = [_coef(n, max_norm) for n in norms]
    for (_, row), grads, norm, total in zip(sink.rows, truth, norms, returned, strict=True):
        assert torch.equal(total, _torch_total(list(grads.values()), max_norm))
        assert row["grad/global_norm"] == pytest.approx(norm, rel=1e-5)
        for name, g in grads.items():
            assert row[f"grad_norm/{name}"] == pytest.approx(_norm([g]), rel=1e-5)
    assert [v for _, v in sink.series("grad/clip_coef")] == pytest.approx(coefs, rel=1e-5)
    assert [v for _, v in sink.series("grad/clip_rate")] == pytest.approx(_rates(coefs))
    assert all(v == max_norm for _, v in sink.series("grad/clip_threshold"))
    if loss_scale > 1:
        assert sum(n > 100 for n in norms) > steps // 2  # the true norms are large ...
        assert all(c < 0.01 for c in coefs)  # ... and clipped hard
        assert verdict != "vanishing"  # the verdict reads the pre-clip norms
    else:
        assert verdict == "healthy"
    assert "gradwandb/unseen_grad_change" not in sink.summaries


@pytest.mark.parametrize("clip", [None, 0.05])
def test_a_fused_optimizer_under_a_scaler_is_measured_unscaled(clip: float | None) -> None:
    """A fused optimizer unscales inside its own step (GradScaler hands it the scale), after
    gradwandb has measured: the statistics divide by that scale; gradwandb's own clip scales
    the real (still scaled) gradients by the coefficient of the unscaled ones."""
    torch.manual_seed(0)
    model = TinyGPT()
    reference = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    sink = MemorySink()
    truth: list[dict[str, Tensor]] = []
    with gradwandb.watch(model, opt, sink=sink, scaler=scaler, layers_every=1, clip=clip):
        for ((ids, targets),) in _gpt_batches(3, 1, seed=2):
            scaler.scale(model(ids, targets)).backward()
            reference(ids, targets).backward()
            truth.append(_named_grads(reference))
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(reference.parameters(), clip)
            scaler.step(opt)  # no unscale_: the fused step divides by the scale itself
            scaler.update()
            ref_opt.step()
            opt.zero_grad(set_to_none=True)
            ref_opt.zero_grad(set_to_none=True)
    for (_, row), grads in zip(sink.rows, truth, strict=True):
        assert row["grad/global_norm"] == pytest.approx(_norm(grads.values()), rel=1e-4)
        for name, g in grads.items():
            assert row[f"grad_norm/{name}"] == pytest.approx(_norm([g]), rel=1e-4)
            assert row[f"grad_max_abs/{name}"] == pytest.approx(float(g.abs().max()), rel=1e-4)
    coefs = [v for _, v in sink.series("grad/clip_coef")]
    assert (min(coefs) < 0.5) == (clip is not None)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)  # the same updates


# -- 2. a word language model: no optimizer, clip and update by hand, torch.save each epoch ----


class WordLM(nn.Module):
    def __init__(self, vocab: int = 13, width: int = 12) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, width)
        self.rnn = nn.RNN(width, width, nonlinearity="tanh")
        self.drop = nn.Dropout(0.1)
        self.decoder = nn.Linear(width, vocab)

    def forward(self, ids: Tensor, hidden: Tensor, poison: bool = False) -> tuple[Tensor, Tensor]:
        emb = self.drop(self.encoder(ids))
        if poison:
            emb = emb * math.nan
        out, hidden = self.rnn(emb, hidden)
        return self.decoder(self.drop(out)), hidden


def _word_batches(epochs: int, per_epoch: int, bptt: int = 7) -> list[list[Tensor]]:
    gen = torch.Generator().manual_seed(3)
    corpus = torch.randint(0, 13, (epochs * per_epoch * bptt + 1, 3), generator=gen)
    return [
        [
            corpus[(e * per_epoch + i) * bptt : (e * per_epoch + i) * bptt + bptt + 1]
            for i in range(per_epoch)
        ]
        for e in range(epochs)
    ]


def test_word_language_model_loop(tmp_path: Any) -> None:
    _word_language_model(tmp_path, save=False)


def test_word_language_model_saved_each_epoch(tmp_path: Any) -> None:
    _word_language_model(tmp_path, save=True)


def test_word_language_model_saved_each_epoch_through_time(tmp_path: Any) -> None:
    _word_language_model(tmp_path, save=True, activations=False)


def _word_language_model(tmp_path: Any, *, save: bool, activations: bool = True) -> None:
    torch.manual_seed(0)
    model = WordLM()
    lr, max_norm, poisoned = 0.5, 0.25, 5
    sink = MemorySink()
    truth: list[list[Tensor]] = []
    saved = tmp_path / "model.pt"
    weights_around_poison: list[list[Tensor]] = []
    with gradwandb.watch(
        model,
        sink=sink,
        layers_every=1,
        guard=True,
        bptt_every=1,
        activations_every=1 if activations else None,
    ) as tracker:
        step = 0
        for epoch in _word_batches(epochs=2, per_epoch=5):
            model.train()
            hidden = torch.zeros(1, 3, 12)
            for chunk in epoch:
                data, targets = chunk[:-1], chunk[1:]
                hidden = hidden.detach()  # truncated BPTT, as the classic script does
                model.zero_grad()
                if step == poisoned:
                    weights_around_poison.append([p.detach().clone() for p in model.parameters()])
                output, hidden = model(data, hidden, poison=step == poisoned)
                loss = nn.functional.cross_entropy(output.flatten(0, 1), targets.flatten())
                loss.backward()  # the step's statistics are taken here, at the end of backward
                truth.append(_grads(model.parameters()))
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                for p in model.parameters():
                    p.data.add_(p.grad, alpha=-lr)  # must not raise on the skipped step
                if step == poisoned:
                    weights_around_poison.append([p.detach().clone() for p in model.parameters()])
                    hidden = torch.zeros(1, 3, 12)  # the poisoned state is not carried on
                step += 1
            if save:
                with open(saved, "wb") as f:
                    torch.save(model, f)
        assert tracker.step == step

    assert [s for s, _ in sink.rows] == list(range(step))
    before, after = weights_around_poison
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    rows = dict(sink.rows)
    assert rows[poisoned]["guard/skipped"] == 1
    for k, grads in enumerate(truth):
        row = rows[k]
        if k == poisoned:
            assert all(float(g.abs().max()) == 0.0 for g in grads)  # zeroed in place
            continue
        norm = _norm(grads)
        assert row["guard/skipped"] == 0
        assert row["grad/global_norm"] == pytest.approx(norm, rel=1e-5)
        assert row["grad/clip_coef"] == pytest.approx(_coef(norm, max_norm), rel=1e-5)
        assert row["grad/clip_threshold"] == max_norm
        assert "bptt/rnn/seq_len" in row
        assert ("act/rnn/mean" in row) == activations
    if not save:
        return

    # The saved copy carries no live hook: training it logs nothing anywhere.
    loaded = torch.load(saved, weights_only=False)
    logged = len(sink.rows), dict(sink.summaries)
    hidden = torch.zeros(1, 3, 12)
    for chunk in _word_batches(epochs=1, per_epoch=2)[0]:
        loaded.zero_grad()
        output, hidden = loaded(chunk[:-1], hidden.detach())
        nn.functional.cross_entropy(output.flatten(0, 1), chunk[1:].flatten()).backward()
        torch.nn.utils.clip_grad_norm_(loaded.parameters(), max_norm)
        for p in loaded.parameters():
            p.data.add_(p.grad, alpha=-lr)
    assert (len(sink.rows), sink.summaries) == logged
    assert not any(t.wants(list(loaded.parameters())) for t in user_clip.listeners())


def test_guard_without_optimizer_logs_the_nonfinite_step() -> None:
    model = nn.Linear(3, 1)
    sink = MemorySink()
    with gradwandb.watch(model, sink=sink, guard=True) as tracker:
        (model(torch.ones(2, 3)) * math.nan).sum().backward()  # the step ends here
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-0.1)
        verdict = tracker.diagnosis().verdict
    row = sink.last()
    assert row["guard/skipped"] == 1
    assert row["grad/nonfinite"] == 2
    assert math.isnan(float(row["grad/global_norm"]))
    assert verdict == "nonfinite"


# -- 3. seq2seq: encoder and decoder optimizers, the decoder's GRU once per target token -------


class Encoder(nn.Module):
    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.gru = nn.GRU(width, width, batch_first=True)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        out, hidden = self.gru(self.embed(ids))
        return out, hidden


class AttnDecoder(nn.Module):
    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.attn = nn.Linear(2 * width, width)
        self.gru = nn.GRU(2 * width, width, batch_first=True)
        self.out = nn.Linear(width, vocab)

    def forward(self, token: Tensor, hidden: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        emb = self.embed(token)  # [batch, 1, width]
        query = torch.tanh(self.attn(torch.cat([emb, hidden.transpose(0, 1)], dim=-1)))
        weights = torch.softmax(query @ memory.transpose(1, 2), dim=-1)
        context = weights @ memory
        out, hidden = self.gru(torch.cat([emb, context], dim=-1), hidden)
        return self.out(out.squeeze(1)), hidden


class Seq2Seq(nn.Module):
    def __init__(self, vocab: int = 6, width: int = 24) -> None:
        super().__init__()
        self.encoder = Encoder(vocab, width)
        self.decoder = AttnDecoder(vocab, width)

    def loss(self, source: Tensor, target: Tensor) -> Tensor:
        memory, hidden = self.encoder(source)
        token = torch.zeros(source.shape[0], 1, dtype=torch.long)  # start symbol 0
        losses = []
        for t in range(target.shape[1]):  # one GRU call per target token, hidden by hand
            logits, hidden = self.decoder(token, hidden, memory)
            losses.append(nn.functional.cross_entropy(logits, target[:, t]))
            token = target[:, t : t + 1]  # teacher forcing
        return torch.stack(losses).mean()


def test_seq2seq_two_optimizers_clipped_separately() -> None:
    torch.manual_seed(0)
    model = Seq2Seq()
    enc_opt = torch.optim.Adam(model.encoder.parameters(), lr=0.03)
    dec_opt = torch.optim.Adam(model.decoder.parameters(), lr=0.03)
    gen = torch.Generator().manual_seed(0)
    sink = MemorySink()
    iterations, losses = 100, []
    truth: list[tuple[list[Tensor], list[Tensor]]] = []
    with gradwandb.watch(model, [enc_opt, dec_opt], sink=sink, layers_every=1) as tracker:
        for _ in range(iterations):
            source = torch.randint(1, 6, (16, 4), generator=gen)
            enc_opt.zero_grad()
            dec_opt.zero_grad()
            loss = model.loss(source, source.flip(1))  # reverse the sequence
            loss.backward()
            truth.append((_grads(model.encoder.parameters()), _grads(model.decoder.parameters())))
            torch.nn.utils.clip_grad_norm_(model.encoder.parameters(), 1.0)
            torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), 1.0)
            enc_opt.step()
            dec_opt.step()
            losses.append(loss.item())
        verdict = tracker.diagnosis().verdict

    assert sum(losses[-10:]) / 10 < 0.45 < 1.4 < losses[0]  # it learned the reversal
    assert [s for s, _ in sink.rows] == list(range(iterations))  # one row per iteration
    names = [n for n, _ in model.named_parameters()]
    for (_, row), (enc, dec) in zip(sink.rows, truth, strict=True):
        assert row["grad/global_norm"] == pytest.approx(_norm(enc + dec), rel=1e-5)
        for name, g in zip(names, enc + dec, strict=True):
            assert row[f"grad_norm/{name}"] == pytest.approx(_norm([g]), rel=1e-5)
        both = min(_coef(_norm(enc), 1.0), _coef(_norm(dec), 1.0))
        assert row["grad/clip_coef"] == pytest.approx(both, rel=1e-5)
    assert verdict == "healthy"


# -- 4. optimizer subclasses, closures, param groups added later -------------------------------


class LoggedSGD(torch.optim.SGD):
    """A subclass whose step calls the parent's, as many codebases write them."""

    def __init__(self, params: Any, lr: float) -> None:
        super().__init__(params, lr=lr)
        self.calls = 0

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        self.calls += 1
        return super().step(closure)


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))


def test_optimizer_subclass_calling_super_step_counts_once() -> None:
    model = _mlp()
    parent = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)  # the parent class, in use
    parent.step()
    opt = LoggedSGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    truth = []
    with gradwandb.watch(model, opt, sink=sink) as tracker:
        for i in range(4):
            opt.zero_grad()
            model(torch.randn(6, 5, generator=torch.Generator().manual_seed(i))).pow(
                2
            ).sum().backward()
            truth.append(_norm(_grads(model.parameters())))
            opt.step()
        assert tracker.step == 4
    assert opt.calls == 4
    assert [s for s, _ in sink.rows] == [0, 1, 2, 3]
    assert [v for _, v in sink.series("grad/global_norm")] == pytest.approx(truth, rel=1e-6)


def test_lbfgs_closure_statistics_are_the_first_gradient() -> None:
    model = _mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    y = torch.randn(12, 2, generator=torch.Generator().manual_seed(1))
    sink = MemorySink()
    first: list[list[Tensor]] = []

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        first.append(_grads(model.parameters()))
        return loss

    with gradwandb.watch(model, opt, sink=sink, layers_every=1):
        starts = []
        for _ in range(3):
            starts.append(len(first))
            opt.step(closure)
    assert len(first) > 3  # LBFGS called the closure several times a step
    assert [s for s, _ in sink.rows] == [0, 1, 2]
    names = [n for n, _ in model.named_parameters()]
    for (_, row), start in zip(sink.rows, starts, strict=True):
        grads = first[start]
        assert row["grad/global_norm"] == pytest.approx(_norm(grads), rel=1e-6)
        for name, g in zip(names, grads, strict=True):
            assert row[f"grad_norm/{name}"] == pytest.approx(_norm([g]), rel=1e-6)


def test_lbfgs_guard_catches_a_nan_closure() -> None:
    model = _mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    sink = MemorySink()
    bad = {"on": False}

    def closure() -> Tensor:
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        if bad["on"]:
            loss = loss * math.nan
        loss.backward()
        return loss

    with gradwandb.watch(model, opt, sink=sink, guard=True):
        opt.step(closure)
        before = [p.detach().clone() for p in model.parameters()]
        state_before = copy.deepcopy(opt.state_dict())
        bad["on"] = True
        opt.step(closure)
        after = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    state, old = opt.state_dict()["state"][0], state_before["state"][0]
    assert state["n_iter"] == old["n_iter"]  # no iteration was taken
    assert all(torch.equal(a, b) for a, b in zip(state["old_dirs"], old["old_dirs"], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(state["old_stps"], old["old_stps"], strict=True))
    assert torch.equal(state["d"], old["d"]) and state["t"] == old["t"]
    assert [row["guard/skipped"] for _, row in sink.rows] == [0, 1]


class Frozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 6)
        self.adapter = nn.Linear(6, 6)  # frozen at first, unfrozen and added as a group later
        self.head = nn.Linear(6, 2)
        for p in self.adapter.parameters():
            p.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.adapter(torch.tanh(self.body(x)))))


def test_param_groups_added_after_watch() -> None:
    torch.manual_seed(0)
    model = Frozen()
    temperature = nn.Parameter(torch.tensor(1.5))  # not held by the model
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    sink = MemorySink()
    truth: list[float] = []
    temperature_grads: dict[int, float] = {}
    gen = torch.Generator().manual_seed(0)
    with gradwandb.watch(model, opt, sink=sink, layers_every=1):
        for step in range(6):
            if step == 2:
                opt.add_param_group({"params": [temperature], "lr": 0.1})
            if step == 4:
                for p in model.adapter.parameters():
                    p.requires_grad_(True)
                opt.add_param_group({"params": list(model.adapter.parameters())})
            opt.zero_grad()
            loss = (model(torch.randn(8, 5, generator=gen)) / temperature).pow(2).mean()
            loss.backward()
            updated = [p for g in opt.param_groups for p in g["params"]]
            truth.append(_norm(_grads(updated)))
            if temperature.grad is not None:
                temperature_grads[step] = abs(float(temperature.grad))
            opt.step()
        order = sink.summaries["gradwandb/param_order"]
    assert [s for s, _ in sink.rows] == list(range(6))
    assert [v for _, v in sink.series("grad/global_norm")] == pytest.approx(truth, rel=1e-6)
    assert "param_groups.1.0" in order
    rows = dict(sink.rows)
    assert rows[3]["grad_norm/param_groups.1.0"] == pytest.approx(temperature_grads[3], rel=1e-6)
    assert "grad_norm/adapter.weight" in rows[4] and "grad_norm/adapter.weight" not in rows[3]


# -- 5. torch.compile ---------------------------------------------------------------------------


def _compiled_or_skip(model: nn.Module) -> nn.Module:
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available in this torch")
    try:
        compiled = torch.compile(model, backend="eager")
        compiled(torch.randn(2, 5)).sum().backward()  # compile once, here
    except Exception as exc:  # any failure to compile on this machine
        pytest.skip(f"torch.compile(backend='eager') does not run here: {exc}")
    model.zero_grad(set_to_none=True)
    return compiled  # type: ignore[return-value]


def test_compiled_model_logs_the_users_parameter_names() -> None:
    model = nn.Sequential(nn.Linear(5, 3))
    compiled = _compiled_or_skip(model)
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
    sink = MemorySink()
    with gradwandb.watch(compiled, opt, sink=sink, layers_every=1):
        compiled(torch.randn(4, 5)).pow(2).sum().backward()
        grads = _named_grads(model)
        opt.step()
    row = sink.last()
    logged = sorted(k.removeprefix("grad_norm/") for k in row if k.startswith("grad_norm/"))
    assert logged == sorted(n for n, _ in model.named_parameters())
    for name, g in grads.items():
        assert row[f"grad_norm/{name}"] == pytest.approx(_norm([g]), rel=1e-6)


def test_compiled_model_norms_are_true() -> None:
    model = nn.Sequential(nn.Linear(5, 3))
    compiled = _compiled_or_skip(model)
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
    sink = MemorySink()
    truth = []
    with gradwandb.watch(compiled, opt, sink=sink):
        for i in range(3):
            opt.zero_grad()
            x = torch.randn(4, 5, generator=torch.Generator().manual_seed(i))
            compiled(x).pow(2).sum().backward()
            truth.append(_norm(_grads(model.parameters())))
            torch.nn.utils.clip_grad_norm_(compiled.parameters(), 0.1)
            opt.step()
    assert [v for _, v in sink.series("grad/global_norm")] == pytest.approx(truth, rel=1e-6)


# -- 6. copying and pickling a watched model, every option on ----------------------------------


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(9, 6)
        self.lstm = nn.LSTM(6, 8, batch_first=True)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 9)

    def forward(self, ids: Tensor) -> Tensor:
        out, _ = self.lstm(self.embed(ids))
        return self.head(self.act(out))


def _tagger_step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    ids = torch.randint(0, 9, (3, 5), generator=torch.Generator().manual_seed(seed))
    opt.zero_grad()
    nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    opt.step()


OPTIONS = [
    pytest.param({"bptt_every": 1}, id="bptt"),
    pytest.param({"activations_every": 1}, id="activations"),
    pytest.param({"charts": True}, id="charts"),
    pytest.param({"guard": True, "clip": 1.0}, id="guard-clip"),
    pytest.param(
        {"bptt_every": 1, "activations_every": 1, "charts": True, "guard": True, "clip": 1.0},
        id="all",
    ),
]


def _live_hooks(model: nn.Module) -> list[str]:
    """Forward/backward hooks on ``model``'s modules that are not inert (gradwandb's copies)."""
    from gradwandb.live.capture import InertHook

    found = []
    for path, module in model.named_modules():
        for table in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            for hook in getattr(module, table).values():
                if not isinstance(hook, InertHook):
                    found.append(f"{path or '<model>'}.{table}: {hook!r}")
    return found


@pytest.mark.parametrize("options", OPTIONS)
def test_copy_and_pickle_with_options_on(options: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, layers_every=1, hist_every=2, **options) as tracker:
        for i in range(3):
            _tagger_step(model, opt, i)
        copies = {
            "deepcopy": copy.deepcopy(model),
            "pickle": pickle.loads(pickle.dumps(model)),
            "torch.save": torch.load(io.BytesIO(_saved(model)), weights_only=False),
        }
        logged = [(s, sorted(row)) for s, row in sink.rows]
        for how, twin in copies.items():
            assert _live_hooks(twin) == [], how
            twin_opt = torch.optim.Adam(twin.parameters(), lr=0.01)
            for i in range(2):
                _tagger_step(twin, twin_opt, 10 + i)
        assert tracker.step == 3  # the copies' steps are not the tracker's
        assert [(s, sorted(row)) for s, row in sink.rows] == logged
        _tagger_step(model, opt, 99)
    assert [s for s, _ in sink.rows] == [0, 1, 2, 3]


def test_copies_of_a_model_watched_in_a_wandb_run(wandb_run: Any) -> None:
    run = wandb_run()
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    tracker = gradwandb.watch(
        model, opt, run=run, layers_every=1, bptt_every=1, charts=True, guard=True, clip=1.0
    )
    for i in range(3):
        _tagger_step(model, opt, i)
    twin = pickle.loads(pickle.dumps(copy.deepcopy(model)))
    twin_opt = torch.optim.Adam(twin.parameters(), lr=0.01)
    _tagger_step(twin, twin_opt, 7)
    _tagger_step(model, opt, 99)
    tracker.remove()
    back = read_back(run)
    assert [s for s, _ in back.global_series("global_norm")] == [0, 1, 2, 3]


def _saved(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    return buffer.getvalue()
