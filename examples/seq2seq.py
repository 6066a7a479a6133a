"""A seq2seq RNN learning to reverse sequences, with every knob that makes gradients explode,
vanish or behave: the laboratory the sweeps in ``sweeps/`` run.

    python examples/seq2seq.py                                  # offline, defaults
    python examples/seq2seq.py cell=rnn init=normal init_std=5 seq_len=50 clip=None
    python examples/seq2seq.py --lr=0.01 --cell=gru --init=orthogonal --clip=1.0
    python examples/seq2seq.py --print-config-keys              # the schema, as JSON
    python examples/seq2seq.py --online                         # log in and upload live

The model is the classic encoder-decoder: token embeddings, an RNN encoder whose final hidden
state starts the RNN decoder, and a linear head over each decoder output. The decoder runs over
the whole shifted target at once (``decoder=whole``) or one token at a time with the hidden
state passed by hand (``decoder=loop``). The target is the source reversed, so the first target
token depends on the last source token but the last target token depends on the first source
token: the signal has to travel the whole encoder and decoder through time.

``init`` sets the Linear and recurrent weight matrices (each gate's block on its own;
embeddings keep theirs): ``default`` (PyTorch's), ``normal`` (N(0, (init_std / sqrt(fan_in))^2):
a vanilla RNN's recurrent weights then have a spectral radius of about ``init_std``), ``xavier``,
``kaiming`` or ``orthogonal``. ``layer_norm`` normalises the state handed from encoder to
decoder, the decoder's outputs, and with ``decoder=loop`` the hidden state at every step.
``gate_bias`` starts the bias of a gated cell's keep-the-state gate there (LSTM: the forget
gate; GRU: the update gate): at 2 the cell keeps about 88% of its state per step at the start
(sigmoid(2)), so its memory reaches back ~18 steps instead of ~3 (a vanilla RNN has no gate and
ignores it).

Defaults come from ``examples/configs/seq2seq.yaml``; overrides are ``name=value`` or
``--name=value``; under a W&B sweep agent the swept values arrive in ``wandb.config`` too
(see :mod:`gradwandb.config`). It logs ``loss`` every step, ``accuracy`` (the model's own
greedy decoding on held-out sequences, per token) every ``eval_every`` steps and at the end,
and gradwandb's metrics. A run whose loss goes non-finite stops there, records its verdict and
exits 0 (a sweep goes on). GRADWANDB_EXAMPLE_STEPS sets the default number of steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

import gradwandb
from gradwandb.config import knob, start

DEFAULTS = Path(__file__).resolve().parent / "configs" / "seq2seq.yaml"
METRICS = ("loss", "accuracy")
BOS = 0  # starts every decoder input; never in a source
CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
}
INITS = ("default", "normal", "xavier", "kaiming", "orthogonal")


@dataclass
class Config:
    lr: float = knob(0.01, "learning rate", low=0.0, low_open=True)
    optimizer: str = knob("adam", "optimizer", choices=tuple(OPTIMIZERS))
    init: str = knob("default", "weight initialisation", choices=INITS)
    init_std: float = knob(1.0, "init=normal: std times sqrt(fan_in)", low=0.0, low_open=True)
    cell: str = knob("rnn", "recurrent cell", choices=tuple(CELLS))
    hidden_size: int = knob(64, "hidden units of encoder and decoder", low=1)
    emb_dim: int = knob(32, "token embedding size", low=1)
    seq_len: int = knob(10, "source (and target) length", low=1)
    vocab: int = knob(10, "tokens, BOS included", low=3)
    layer_norm: bool = knob(False, "layer norm on the bridge, outputs (and loop state)")
    gate_bias: float = knob(0.0, "LSTM forget / GRU update gate bias at the start; rnn: unused")
    decoder: str = knob(
        "whole", "decoder over the whole target or token by token", choices=("whole", "loop")
    )
    clip: float | None = knob(
        None, "max global gradient norm; None: no clipping", low=0.0, low_open=True
    )
    steps: int = knob(300, "optimizer steps", low=1)
    batch_size: int = knob(32, "sequences per batch", low=1)
    eval_every: int = knob(50, "steps between accuracy measurements", low=1)
    eval_size: int = knob(256, "held-out sequences for the accuracy", low=1)
    bptt_every: int | None = knob(10, "per-timestep gradient norms every N steps; None: off", low=1)
    seed: int = knob(0, "seed for weights and data")
    device: str = knob("auto", "where to train", choices=("auto", "cpu", "cuda"))
    threads: int | None = knob(
        1, "torch CPU threads (small models: 1 is fastest); None: torch's choice", low=1
    )


class Seq2Seq(nn.Module):
    """Embeddings, an RNN encoder, an RNN decoder started from the encoder's state, a head."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        rnn = CELLS[c.cell]
        self.loop = c.decoder == "loop"
        self.encoder_embedding = nn.Embedding(c.vocab, c.emb_dim)
        self.encoder = rnn(c.emb_dim, c.hidden_size, batch_first=True)
        self.decoder_embedding = nn.Embedding(c.vocab, c.emb_dim)
        self.decoder = rnn(c.emb_dim, c.hidden_size, batch_first=True)
        self.state_norm = nn.LayerNorm(c.hidden_size) if c.layer_norm else None
        self.output_norm = nn.LayerNorm(c.hidden_size) if c.layer_norm else nn.Identity()
        self.head = nn.Linear(c.hidden_size, c.vocab)

    def _norm(self, state: Tensor | tuple[Tensor, Tensor]) -> Tensor | tuple[Tensor, Tensor]:
        if self.state_norm is None:
            return state
        if isinstance(state, tuple):  # LSTM: normalise h, keep the cell
            return self.state_norm(state[0]), state[1]
        out: Tensor = self.state_norm(state)
        return out

    def encode(self, src: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        _, state = self.encoder(self.encoder_embedding(src))
        return self._norm(state)

    def step(
        self, tokens: Tensor, state: Tensor | tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        """One decoder call over ``tokens`` [batch, t]: logits and the next state."""
        out, state = self.decoder(self.decoder_embedding(tokens), state)
        logits: Tensor = self.head(self.output_norm(out))
        return logits, state

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        state = self.encode(src)
        if not self.loop:
            logits, _ = self.step(tgt_in, state)
            return logits
        outputs = []
        for t in range(tgt_in.shape[1]):  # one call per target token, state passed by hand
            logits, state = self.step(tgt_in[:, t : t + 1], state)
            state = self._norm(state)
            outputs.append(logits)
        return torch.cat(outputs, dim=1)

    @torch.no_grad()
    def greedy(self, src: Tensor) -> Tensor:
        """The model's own output for ``src``: each token the most likely given those before."""
        state = self.encode(src)
        token = torch.full((src.shape[0], 1), BOS, dtype=torch.long, device=src.device)
        tokens = []
        for _ in range(src.shape[1]):
            logits, state = self.step(token, state)
            if self.loop:
                state = self._norm(state)
            token = logits.argmax(-1)
            tokens.append(token)
        return torch.cat(tokens, dim=1)


def batch(c: Config, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``(src, tgt_in, tgt_out)`` of the reversal task, each [size, seq_len]."""
    src = torch.randint(1, c.vocab, (size, c.seq_len), generator=generator)
    tgt_out = src.flip(1)
    tgt_in = torch.cat([torch.full((size, 1), BOS), tgt_out[:, :-1]], dim=1)
    return src, tgt_in, tgt_out


@torch.no_grad()
def initialise(model: nn.Module, scheme: str, std: float) -> None:
    """Apply ``scheme`` to every Linear and recurrent weight matrix, gate block by gate block;
    their biases start at zero. ``default`` keeps PyTorch's initialisation."""
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, nn.Linear):
            blocks, biases = [module.weight], [module.bias]
        elif isinstance(module, nn.RNNBase):
            blocks, biases = [], []
            for name, p in module.named_parameters():
                if name.startswith("weight"):
                    blocks += list(torch.split(p.data, module.hidden_size))
                else:
                    biases.append(p)
        else:
            continue
        for w in blocks:
            if scheme == "normal":
                nn.init.normal_(w, std=std / math.sqrt(w.shape[1]))
            elif scheme == "xavier":
                nn.init.xavier_normal_(w)
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(w, nonlinearity="relu")
            else:
                nn.init.orthogonal_(w)
        for b in biases:
            if b is not None:
                nn.init.zeros_(b)


KEEP_GATE = {nn.LSTM: 1, nn.GRU: 1}  # the block of the gate that keeps the state (i f g o, r z n)


def keep_state(model: nn.Module, bias: float) -> None:
    """Set the keep-the-state gate's bias of every LSTM/GRU in ``model`` to ``bias`` (the
    input-side bias holds it, the hidden-side one is zeroed, so the gate sees ``bias``)."""
    if bias == 0.0:
        return
    for module in model.modules():
        block = KEEP_GATE.get(type(module))
        if block is None:
            continue
        h = module.hidden_size
        with torch.no_grad():
            for name, b in module.named_parameters():
                if name.startswith("bias"):
                    b[block * h : (block + 1) * h] = bias if name.startswith("bias_ih") else 0.0


def accuracy(model: Seq2Seq, held_out: tuple[Tensor, Tensor, Tensor]) -> float:
    """Fraction of held-out target tokens the greedy decoding gets right."""
    src, _, tgt_out = held_out
    model.eval()
    try:
        return float((model.greedy(src) == tgt_out).float().mean())
    finally:
        model.train()


def main(argv: list[str] | None = None) -> None:
    started = start(Config, argv, project="gradwandb-seq2seq", defaults=DEFAULTS, metrics=METRICS)
    c: Config = started.config
    run = started.run
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if c.device == "auto" else c.device
    )
    if c.threads is not None:
        torch.set_num_threads(c.threads)
    torch.manual_seed(c.seed)
    model = Seq2Seq(c)
    initialise(model, c.init, c.init_std)
    keep_state(model, c.gate_bias)
    model.to(device)
    optimizer = OPTIMIZERS[c.optimizer](model.parameters(), lr=c.lr)
    data = torch.Generator().manual_seed(c.seed + 1)
    src, tgt_in, tgt_out = batch(c, c.eval_size, torch.Generator().manual_seed(10_000 + c.seed))
    held_out = (src.to(device), tgt_in.to(device), tgt_out.to(device))

    tracker = gradwandb.watch(model, optimizer, run=run, clip=c.clip, bptt_every=c.bptt_every)

    def train_step() -> Tensor:
        src, tgt_in, tgt_out = (t.to(device) for t in batch(c, c.batch_size, data))
        logits = model(src, tgt_in)
        loss = nn.functional.cross_entropy(logits.reshape(-1, c.vocab), tgt_out.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # gradwandb takes its statistics, clips and logs here
        return loss

    done = started.train(
        tracker,
        train_step,
        lambda: accuracy(model, held_out),
        steps=c.steps,
        eval_every=c.eval_every,
    )
    print(
        f"{done.ended} after {done.steps} steps: loss {done.loss:.4f}, accuracy "
        f"{done.accuracy:.3f} (chance {1 / (c.vocab - 1):.3f}), gradients {done.verdict}"
    )
    print(f"run written to {run.settings.sync_dir}")


if __name__ == "__main__":
    main()
