"""The demo: a seq2seq RNN whose gradients explode, gradwandb's diagnosis, and the fix.

This is what ``gradwandb demo`` runs: two W&B runs of the same encoder-decoder (a vanilla
``nn.RNN`` each way) learning to reverse random sequences, on the same batches with the same
optimizer and learning rate.

- ``demo-broken``: the recurrent weights start with a spectral radius of about 5 and nothing
  clips. The gradient grows at every timestep it travels back, the global gradient norm starts
  in the hundreds, and the model barely gets below chance. gradwandb diagnoses ``exploding``
  and says what to try.
- ``demo-fixed``: two of the fixes it suggests, with no change to the model: orthogonal
  recurrent weights (spectral radius 1) and ``clip=1.0``. gradwandb finds it healthy, and it
  learns the task. ``cell="gru"`` or ``"lstm"`` tries another suggested fix as well.

Both runs log to W&B offline unless told otherwise, so the demo needs no account; at the end it
prints where each run was written and how to look at it.

    from gradwandb.demo import run_demo
    result = run_demo(steps=200)
    result.broken.verdict, result.fixed.verdict   # ('exploding', 'healthy')
    result.fixed.run_dir                          # wandb/offline-run-...
"""

from __future__ import annotations

import math
import os
import secrets
import statistics
import textwrap
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import gradwandb
from gradwandb.models import (
    CELLS,
    Seq2Seq,
    orthogonal_recurrent,
    reversal_accuracy,
    reverse_batch,
    scaled_recurrent,
    seq2seq_loss,
)

RUNS = ("broken", "fixed")  # the demo's two runs, in the order it trains them
BROKEN_RADIUS = 5.0  # spectral radius the broken run's recurrent weights start at
EVAL_SEQUENCES = 1000  # held-out sequences the accuracy is measured on
SHOWN_FINDINGS = 3  # findings printed per run; the run summary has them all
_ACCURACY_EVERY = 50  # steps between the accuracy points logged during training


@dataclass(frozen=True)
class Setup:
    """How one of the demo's runs trains the model."""

    name: str  # the W&B run name
    cell: str  # the recurrent cell: "rnn", "gru" or "lstm"
    clip: float | None  # max global gradient norm, None for no clipping
    radius: float | None  # recurrent weights at about this spectral radius; None: orthogonal

    def describe(self) -> str:
        """The setup in a few words, for the console."""
        cell = {"rnn": "vanilla nn.RNN", "gru": "nn.GRU", "lstm": "nn.LSTM"}[self.cell]
        init = (
            f"recurrent weights at spectral radius ~{self.radius:g}"
            if self.radius is not None
            else "orthogonal recurrent weights"
        )
        clip = "no clipping" if self.clip is None else f"clip={self.clip:g}"
        return f"{cell}, {init}, {clip}"


@dataclass(frozen=True)
class DemoRun:
    """What one demo run produced."""

    name: str  # its W&B run name, "demo-broken" or "demo-fixed"
    setup: str  # what it trained, in words
    run_dir: Path  # the run's local directory (``run.settings.sync_dir``)
    steps: int  # optimizer steps taken
    final_loss: float  # mean training loss over the last steps (up to 20)
    chance_loss: float  # ln(vocab - 1): the loss of guessing uniformly among the source tokens
    accuracy: float  # tokens the model's own greedy decoding gets right, on held-out sequences
    chance_accuracy: float  # 1 / (vocab - 1)
    median_norm: float  # median global gradient norm (pre-clip) over the finite steps
    peak_norm: float  # largest finite global gradient norm
    params: int  # parameters in the model
    seconds: float  # wall time of the run, W&B set-up included
    offline: bool  # True when the run was only written locally
    url: str | None = None  # the run's page, for an online run
    verdict: str = "healthy"  # gradwandb's diagnosis of the run
    findings: tuple[gradwandb.Finding, ...] = ()  # what it found, each with the fix to try


@dataclass(frozen=True)
class DemoResult:
    """The demo's runs: ``broken`` and ``fixed`` (None for a run it was told to skip)."""

    broken: DemoRun | None
    fixed: DemoRun | None
    project: str

    @property
    def runs(self) -> tuple[DemoRun, ...]:
        """The runs that were trained, in order."""
        return tuple(r for r in (self.broken, self.fixed) if r is not None)

    @property
    def run_dir(self) -> Path:
        """The directory of the last run trained (the fixed one, unless only the broken ran)."""
        return self.runs[-1].run_dir


def use_offline_by_default(online: bool = False) -> None:
    """Make W&B log offline unless ``WANDB_MODE`` is set or ``online`` is asked for."""
    if not online:
        os.environ.setdefault("WANDB_MODE", "offline")
    if os.environ.get("WANDB_MODE") == "offline":
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


def run_demo(
    *,
    steps: int = 600,
    batch: int = 128,
    seq_len: int = 8,
    vocab: int = 12,
    hidden: int = 64,
    cell: str = "rnn",
    lr: float = 1e-2,
    clip: float | None = 1.0,
    only: str | None = None,
    seed: int = 0,
    project: str = "gradwandb-demo",
    dir: str | Path | None = None,
    online: bool = False,
    progress: bool = True,
) -> DemoResult:
    """Train ``Seq2Seq`` to reverse random sequences twice, broken then fixed, each run logged
    to W&B with gradwandb watching; print what happened and gradwandb's diagnosis of each.

    Args:
        steps: optimizer steps per run.
        batch: sequences per batch.
        seq_len: length of each sequence.
        vocab: vocabulary size (token 0 is reserved for the decoder's start token).
        hidden: hidden (and embedding) size of the encoder and decoder.
        cell: the fixed run's recurrent cell, one of ``"rnn"`` (the broken run's, always),
            ``"lstm"``, ``"gru"``.
        lr: Adam's learning rate, decayed to 0 over the steps (cosine); the same for both runs.
        clip: the fixed run's max global gradient norm, or None (the broken run never clips).
        only: train only ``"broken"`` or ``"fixed"``; None (default) trains both.
        seed: seeds the weights and the data (both runs see the same batches).
        project: the W&B project to log to.
        dir: the folder to write the runs under (in its ``wandb/``); default W&B's choice.
        online: leave the W&B mode to W&B (log in, upload live) instead of offline.
        progress: show a progress bar with the loss.
    """
    _check(steps=steps, batch=batch, seq_len=seq_len, hidden=hidden, lr=lr)
    if vocab < 2:
        raise ValueError(f"vocab must be at least 2, got {vocab}")
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be positive or None, got {clip}")
    if only is not None and only not in RUNS:
        raise ValueError(f"only must be one of {RUNS} or None, got {only!r}")

    setups = {
        "broken": Setup("demo-broken", cell="rnn", clip=None, radius=BROKEN_RADIUS),
        "fixed": Setup("demo-fixed", cell=cell, clip=clip, radius=None),
    }
    use_offline_by_default(online)
    if dir is not None:
        Path(dir).mkdir(parents=True, exist_ok=True)
    config = {"steps": steps, "batch": batch, "seq_len": seq_len, "vocab": vocab,
              "hidden": hidden, "lr": lr, "seed": seed}  # fmt: skip
    group = f"demo-{secrets.token_hex(3)}"  # the two runs of one demo, side by side in W&B
    print(
        f"gradwandb demo: a seq2seq model learns to reverse {seq_len}-token sequences "
        f"(vocab {vocab}), {steps} steps per run"
    )
    done: dict[str, DemoRun] = {}
    for label in RUNS:
        if only not in (None, label):
            continue
        setup = setups[label]
        trying = "trying the fixes: " if label == "fixed" else ""
        print(f"\n{setup.name}, {trying}{setup.describe()}")
        done[label] = _train(setup, config, project, group, dir, progress)
        print(describe_run(done[label]))
    result = DemoResult(done.get("broken"), done.get("fixed"), project)
    print("\n" + where(result))
    return result


def describe_run(run: DemoRun) -> str:
    """How one run went and what gradwandb made of it, as printed after the run."""
    lines = [
        f"  loss {run.final_loss:.3f} (chance {run.chance_loss:.3f}), "
        f"accuracy {run.accuracy:.0%} (chance {run.chance_accuracy:.0%}), "
        f"global gradient norm: median {_g(run.median_norm)}, peak {_g(run.peak_norm)} "
        f"[{run.seconds:.0f} s]",
        f"  diagnosis: {run.verdict}",
    ]
    shown: set[str] = set()
    for finding in run.findings[:SHOWN_FINDINGS]:
        lines.append(_wrap(f"- {finding.message}", "    ", "      "))
        if finding.fix not in shown:  # several findings often share one fix
            lines.append(_wrap(finding.fix, "      ", "        "))
            shown.add(finding.fix)
    hidden = len(run.findings) - SHOWN_FINDINGS
    if hidden > 0:
        lines.append(f"    ({hidden} more in the run summary: gradwandb/findings)")
    return "\n".join(lines)


def where(result: DemoResult) -> str:
    """Where the runs are and how to look at them, as printed at the end of the demo."""
    runs = result.runs
    mode = "offline" if all(r.offline for r in runs) else "online"
    lines = [f"W&B runs ({mode}, project {result.project}):"]
    for run in runs:
        lines.append(f"  {run.name}: {run.run_dir}")
        if run.url:
            lines.append(f"    run page: {run.url}")
        lines.append(f"    look at it in the terminal: wandb leet {run.run_dir}")
    first = runs[0].run_dir
    lines.append(f"  print a run's summary (its findings): wandb leet inspect --summary {first}")
    offline = [str(r.run_dir) for r in runs if r.offline]
    if offline:
        lines.append(f"  upload to W&B: wandb sync {' '.join(offline)}")
    return "\n".join(lines)


def _train(
    setup: Setup,
    config: Mapping[str, Any],
    project: str,
    group: str,
    dir: str | Path | None,
    progress: bool,
) -> DemoRun:
    import wandb

    start = time.monotonic()
    steps, batch, seq_len = int(config["steps"]), int(config["batch"]), int(config["seq_len"])
    vocab, seed = int(config["vocab"]), int(config["seed"])
    torch.manual_seed(seed)
    data = torch.Generator().manual_seed(seed)  # the same batches for both runs
    held_out = reverse_batch(
        EVAL_SEQUENCES, seq_len, vocab, torch.Generator().manual_seed(seed + 2**32)
    )
    model = Seq2Seq(vocab, int(config["hidden"]), cell=setup.cell)
    if setup.radius is None:
        orthogonal_recurrent(model)
    else:
        scaled_recurrent(model, setup.radius)
    lr = float(config["lr"])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    norms = _Norms()

    run = wandb.init(
        project=project,
        name=setup.name,
        group=group,
        job_type="demo",
        config={**config, "run": setup.name, "cell": setup.cell, "clip": setup.clip,
                "recurrent_init": "orthogonal" if setup.radius is None else "scaled",
                "recurrent_radius": 1.0 if setup.radius is None else setup.radius},
        dir=dir,
        reinit="create_new",
        settings=wandb.Settings(quiet=True),  # the demo says where the runs are, at the end
    )  # fmt: skip
    run_dir, offline = Path(run.settings.sync_dir).absolute(), bool(run.offline)
    url = None if offline else run.url
    losses: list[float] = []
    try:
        # Through time, the encoder is watched: the reversal's signal has to cross all of it.
        # The decoder reads the target itself (teacher forcing), so the gradient on its inputs
        # grows going back in time by construction: every input feeds all the outputs after it.
        with (
            _one_thread(),
            gradwandb.watch(
                model,
                optimizer,
                run=run,
                clip=setup.clip,
                bptt_every=10,
                bptt_modules=["encoder"],
            ) as tracker,
        ):
            tracker.add_observer(norms)
            bar = tqdm(range(steps), desc=setup.name, unit="step", disable=not progress)
            for step in bar:
                for params in optimizer.param_groups:  # cosine decay from lr to 0
                    params["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                loss = seq2seq_loss(model, reverse_batch(batch, seq_len, vocab, data))
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()  # gradwandb measures, clips and logs here
                optimizer.zero_grad()
                losses.append(loss.item())
                row = {"loss": losses[-1]}
                if step % _ACCURACY_EVERY == 0 or step == steps - 1:
                    row["accuracy"] = reversal_accuracy(model, held_out)
                run.log(row)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            report = tracker.diagnosis()
            accuracy = reversal_accuracy(model, held_out)
        chance = math.log(vocab - 1)
        final = [x for x in losses[-20:] if math.isfinite(x)]
        final_loss = statistics.fmean(final) if final else float("nan")
        run.summary.update({"final_loss": final_loss, "chance_loss": chance, "accuracy": accuracy})
    finally:
        run.finish()
    return DemoRun(
        name=setup.name,
        setup=setup.describe(),
        run_dir=run_dir,
        steps=steps,
        final_loss=final_loss,
        chance_loss=chance,
        accuracy=accuracy,
        chance_accuracy=1 / (vocab - 1),
        median_norm=norms.median(),
        peak_norm=norms.peak(),
        params=sum(p.numel() for p in model.parameters()),
        seconds=time.monotonic() - start,
        offline=offline,
        url=url,
        verdict=report.verdict,
        findings=tuple(report.findings),
    )


class _Norms:
    """A tracker observer that keeps each logged step's global gradient norm (pre-clip)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def __call__(self, record: gradwandb.StepRecord) -> None:
        if math.isfinite(record.global_norm):
            self.values.append(float(record.global_norm))

    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def peak(self) -> float:
        return max(self.values, default=float("nan"))


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one CPU thread: the demo's matrices are small, and more threads on a busy
    machine make each step many times slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _g(x: float) -> str:
    return f"{x:.3g}"


def _wrap(text: str, first: str, rest: str) -> str:
    return textwrap.fill(text, width=100, initial_indent=first, subsequent_indent=rest)


def _check(**positive: float) -> None:
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
