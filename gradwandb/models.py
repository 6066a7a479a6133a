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
"""

from __future__ import annotations

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
