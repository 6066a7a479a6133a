"""Small models and a synthetic task for the demo, the examples and the benchmark.

The seq2seq model is the classic encoder-decoder: an embedding and an RNN encode the source;
the encoder's final hidden state starts the decoder (an embedding and an RNN over the target
shifted right); a linear head predicts each target token. The task is to reverse the source,
which needs the signal of the first source token to travel the whole sequence through time.

>>> import torch
>>> model = Seq2Seq(vocab=20, hidden=16)
>>> src, tgt_in, tgt_out = reverse_batch(4, 7, 20, torch.Generator().manual_seed(0))
>>> model(src, tgt_in).shape
torch.Size([4, 7, 20])
>>> greedy_decode(model, src).shape
torch.Size([4, 7])
>>> orthogonal_recurrent(model)
>>> round(recurrent_radius(model), 3)
1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

CELLS: dict[str, Callable[..., nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
BOS = 0  # token 0 starts every decoder input and never appears in a source


class Seq2Seq(nn.Module):
    """Embedding + RNN encoder; embedding + RNN decoder started from its state; linear head."""

    def __init__(
        self, vocab: int, hidden: int, embed: int | None = None, cell: str = "rnn", layers: int = 1
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        embed = embed or hidden
        rnn = CELLS[cell]
        self.encoder_embedding = nn.Embedding(vocab, embed)
        self.encoder = rnn(embed, hidden, num_layers=layers, batch_first=True)
        self.decoder_embedding = nn.Embedding(vocab, embed)
        self.decoder = rnn(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Logits [batch, target length, vocab] for ``src`` and the shifted target ``tgt_in``."""
        _, state = self.encoder(self.encoder_embedding(src))
        out, _ = self.decoder(self.decoder_embedding(tgt_in), state)
        logits: Tensor = self.head(out)
        return logits


@torch.no_grad()
def greedy_decode(model: Seq2Seq, src: Tensor, length: int | None = None) -> Tensor:
    """The model's own output for ``src`` [batch, source length]: ``length`` tokens (default the
    source length), each the most likely one given the tokens decoded before it (no teacher
    forcing), as [batch, length] int64."""
    steps = src.shape[1] if length is None else length
    _, state = model.encoder(model.encoder_embedding(src))
    token = torch.full((src.shape[0], 1), BOS, dtype=torch.long, device=src.device)
    tokens = []
    for _ in range(steps):
        out, state = model.decoder(model.decoder_embedding(token), state)
        token = model.head(out).argmax(-1)
        tokens.append(token)
    return torch.cat(tokens, dim=1)


def reversal_accuracy(model: Seq2Seq, batch: tuple[Tensor, Tensor, Tensor]) -> float:
    """Fraction of target tokens that :func:`greedy_decode` gets right on a batch from
    :func:`reverse_batch` (chance: 1 / (vocab - 1))."""
    src, _, tgt_out = batch
    was_training = model.training
    model.eval()
    try:
        return float((greedy_decode(model, src) == tgt_out).float().mean())
    finally:
        model.train(was_training)


def recurrent_weights(model: nn.Module) -> list[Tensor]:
    """Every gate's square block of every ``weight_hh`` in ``model``'s nn.RNN/GRU/LSTM modules
    (an LSTM's ``weight_hh_l0`` holds 4 blocks, a GRU's 3, a vanilla RNN's 1)."""
    blocks: list[Tensor] = []
    for module in model.modules():
        if not isinstance(module, nn.RNNBase):
            continue
        for name, weight in module.named_parameters():
            if name.startswith("weight_hh"):
                blocks += torch.split(weight.data, weight.shape[1])
    return blocks


@torch.no_grad()
def recurrent_radius(model: nn.Module) -> float:
    """The largest spectral radius (largest |eigenvalue|) over :func:`recurrent_weights`."""
    radii = [torch.linalg.eigvals(w.double()).abs().max().item() for w in recurrent_weights(model)]
    return max(radii, default=0.0)


@torch.no_grad()
def orthogonal_recurrent(model: nn.Module, gain: float = 1.0) -> None:
    """Initialise each block of :func:`recurrent_weights` as an orthogonal matrix times
    ``gain`` (spectral radius exactly ``gain``): the hidden state neither grows nor fades
    through time at the start of training."""
    for block in recurrent_weights(model):
        nn.init.orthogonal_(block, gain=gain)


@torch.no_grad()
def scaled_recurrent(model: nn.Module, radius: float) -> None:
    """Draw each block of :func:`recurrent_weights` from N(0, radius**2 / hidden), whose
    spectral radius is about ``radius`` (the circular law); draws from torch's global RNG."""
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    for block in recurrent_weights(model):
        nn.init.normal_(block, std=radius / math.sqrt(block.shape[1]))


def reverse_batch(
    batch: int, seq_len: int, vocab: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """A batch of the reversal task: ``(src, tgt_in, tgt_out)``, each [batch, seq_len] int64."""
    src = torch.randint(1, vocab, (batch, seq_len), generator=generator)
    tgt_out = src.flip(1)
    tgt_in = torch.cat([torch.full((batch, 1), BOS), tgt_out[:, :-1]], dim=1)
    return src, tgt_in, tgt_out


def seq2seq_loss(model: Seq2Seq, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Mean token cross-entropy of ``model`` on a batch from :func:`reverse_batch`."""
    src, tgt_in, tgt_out = batch
    logits = model(src, tgt_in)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1))


def deep_mlp(depth: int, width: int, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``depth`` Linear(width, width) layers, each followed by ``activation``."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), activation()]
    return nn.Sequential(*layers)
