"""A deep MLP: the vanishing-gradient laboratory (depth, activation, residual, normalisation,
initialisation), the model the MLP sweeps in ``sweeps/`` run.

    python examples/deep_mlp.py                                   # offline, defaults
    python examples/deep_mlp.py depth=32 activation=sigmoid init=normal init_std=1
    python examples/deep_mlp.py --depth=32 --residual=true --normalization=layer
    python examples/deep_mlp.py --print-config-keys               # the schema, as JSON

``depth`` hidden blocks of ``width`` units, each ``Linear -> [norm] -> activation`` (with
``residual``, ``x + activation(Linear(norm(x)))``, and a last norm before the head), between an
input and an output layer. The task: a
fixed random teacher (a linear map) labels Gaussian points with one of ``classes`` classes, so
every depth can learn it, if its gradients reach the first layers.

``init`` sets every Linear weight: ``default`` (PyTorch's), ``normal``
(N(0, (init_std / sqrt(fan_in))^2)), ``xavier``, ``kaiming`` or ``orthogonal``; biases start at
zero. It logs ``loss`` every step and ``accuracy`` on held-out points every ``eval_every`` steps
and at the end, with gradwandb's metrics; a run whose loss goes non-finite stops there and
exits 0. Defaults: ``examples/configs/deep_mlp.yaml``; GRADWANDB_EXAMPLE_STEPS sets the steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

import gradwandb
from gradwandb.config import knob, start

DEFAULTS = Path(__file__).resolve().parent / "configs" / "deep_mlp.yaml"
METRICS = ("loss", "accuracy")
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
NORMS = ("none", "layer", "batch")
OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
}
INITS = ("default", "normal", "xavier", "kaiming", "orthogonal")


@dataclass
class Config:
    depth: int = knob(8, "hidden blocks", low=1)
    width: int = knob(64, "units per hidden block", low=1)
    activation: str = knob("relu", "activation", choices=tuple(ACTIVATIONS))
    residual: bool = knob(False, "add each block's input to its output")
    normalization: str = knob("none", "normalisation before the activation", choices=NORMS)
    init: str = knob("default", "weight initialisation", choices=INITS)
    init_std: float = knob(1.0, "init=normal: std times sqrt(fan_in)", low=0.0, low_open=True)
    lr: float = knob(0.01, "learning rate", low=0.0, low_open=True)
    optimizer: str = knob("sgd", "optimizer", choices=tuple(OPTIMIZERS))
    clip: float | None = knob(
        None, "max global gradient norm; None: no clipping", low=0.0, low_open=True
    )
    in_dim: int = knob(16, "input features", low=1)
    classes: int = knob(4, "classes", low=2)
    steps: int = knob(300, "optimizer steps", low=1)
    batch_size: int = knob(64, "points per batch", low=1)
    eval_every: int = knob(50, "steps between accuracy measurements", low=1)
    eval_size: int = knob(1024, "held-out points for the accuracy", low=1)
    seed: int = knob(0, "seed for weights and data")
    device: str = knob("auto", "where to train", choices=("auto", "cpu", "cuda"))
    threads: int | None = knob(
        1, "torch CPU threads (small models: 1 is fastest); None: torch's choice", low=1
    )


class Block(nn.Module):
    """``Linear -> [norm] -> activation``; with ``residual``, ``x + activation(Linear(norm(x)))``
    (normalised before the layer, so the sum stays on the scale of its input)."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        self.linear = nn.Linear(c.width, c.width)
        self.norm: nn.Module = (
            nn.LayerNorm(c.width)
            if c.normalization == "layer"
            else nn.BatchNorm1d(c.width)
            if c.normalization == "batch"
            else nn.Identity()
        )
        self.activation = ACTIVATIONS[c.activation]()
        self.residual = c.residual

    def forward(self, x: Tensor) -> Tensor:
        if self.residual:
            out: Tensor = x + self.activation(self.linear(self.norm(x)))
            return out
        out = self.activation(self.norm(self.linear(x)))
        return out


class DeepMLP(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.input = nn.Linear(c.in_dim, c.width)
        self.blocks = nn.Sequential(*(Block(c) for _ in range(c.depth)))
        # a residual stream grows with depth: normalise it once more before the head
        self.final_norm = (
            nn.LayerNorm(c.width) if c.residual and c.normalization != "none" else nn.Identity()
        )
        self.output = nn.Linear(c.width, c.classes)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.output(self.final_norm(self.blocks(self.input(x))))
        return out


@torch.no_grad()
def initialise(model: nn.Module, scheme: str, std: float) -> None:
    """Apply ``scheme`` to every Linear weight and zero its bias (``default``: PyTorch's)."""
    if scheme == "default":
        return
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        w = module.weight
        if scheme == "normal":
            nn.init.normal_(w, std=std / math.sqrt(w.shape[1]))
        elif scheme == "xavier":
            nn.init.xavier_normal_(w)
        elif scheme == "kaiming":
            nn.init.kaiming_normal_(w, nonlinearity="relu")
        else:
            nn.init.orthogonal_(w)
        nn.init.zeros_(module.bias)


def points(teacher: Tensor, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Gaussian points and the teacher's labels for them."""
    x = torch.randn(size, teacher.shape[0], generator=generator)
    return x, (x @ teacher).argmax(-1)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    try:
        return float((model(x).argmax(-1) == y).float().mean())
    finally:
        model.train()


def main(argv: list[str] | None = None) -> None:
    started = start(Config, argv, project="gradwandb-deep-mlp", defaults=DEFAULTS, metrics=METRICS)
    c: Config = started.config
    run = started.run
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if c.device == "auto" else c.device
    )
    if c.threads is not None:
        torch.set_num_threads(c.threads)
    torch.manual_seed(c.seed)
    model = DeepMLP(c)
    initialise(model, c.init, c.init_std)
    model.to(device)
    optimizer = OPTIMIZERS[c.optimizer](model.parameters(), lr=c.lr)
    data = torch.Generator().manual_seed(c.seed + 1)
    teacher = torch.randn(c.in_dim, c.classes, generator=data)
    x_held, y_held = points(teacher, c.eval_size, torch.Generator().manual_seed(10_000 + c.seed))
    x_held, y_held = x_held.to(device), y_held.to(device)

    tracker = gradwandb.watch(model, optimizer, run=run, clip=c.clip)

    def train_step() -> Tensor:
        x, y = points(teacher, c.batch_size, data)
        loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # gradwandb takes its statistics, clips and logs here
        return loss

    done = started.train(
        tracker,
        train_step,
        lambda: accuracy(model, x_held, y_held),
        steps=c.steps,
        eval_every=c.eval_every,
    )
    print(
        f"{done.ended} after {done.steps} steps: loss {done.loss:.4f}, accuracy "
        f"{done.accuracy:.3f} (chance {1 / c.classes:.3f}), gradients {done.verdict}"
    )
    print(f"run written to {run.settings.sync_dir}")


if __name__ == "__main__":
    main()
