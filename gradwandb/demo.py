"""The demo: train a small seq2seq model on sequence reversal with gradwandb watching it.

This is what ``gradwandb demo`` runs. It logs to W&B offline unless told otherwise, so it
needs no account; at the end it prints where the run was written and how to look at it.

    from gradwandb.demo import run_demo
    result = run_demo(steps=100, cell="lstm")
    result.run_dir   # wandb/offline-run-...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import gradwandb
from gradwandb.models import CELLS, Seq2Seq, reverse_batch, seq2seq_loss


@dataclass(frozen=True)
class DemoResult:
    """What a demo run produced."""

    run_dir: Path  # the run's local directory (``run.settings.sync_dir``)
    steps: int  # optimizer steps taken
    final_loss: float  # loss of the last step
    params: int  # parameters in the model
    offline: bool  # True when the run was only written locally
    url: str | None = None  # the run's page, for an online run
    verdict: str = "healthy"  # gradwandb's diagnosis of the run
    findings: tuple[str, ...] = ()  # what it found, each with the fix to try


def use_offline_by_default(online: bool = False) -> None:
    """Make W&B log offline unless ``WANDB_MODE`` is set or ``online`` is asked for."""
    if not online:
        os.environ.setdefault("WANDB_MODE", "offline")
    if os.environ.get("WANDB_MODE") == "offline":
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


def run_demo(
    *,
    steps: int = 300,
    batch: int = 32,
    seq_len: int = 20,
    vocab: int = 50,
    hidden: int = 64,
    cell: str = "rnn",
    lr: float = 3e-3,
    clip: float | None = 0.5,
    seed: int = 0,
    project: str = "gradwandb-demo",
    dir: str | Path | None = None,
    online: bool = False,
    progress: bool = True,
) -> DemoResult:
    """Train ``Seq2Seq`` to reverse random sequences, with gradients logged to a W&B run.

    Args:
        steps: optimizer steps to train for.
        batch: sequences per batch.
        seq_len: length of each sequence.
        vocab: vocabulary size (token 0 is reserved for the decoder's start token).
        hidden: hidden (and embedding) size of the encoder and decoder.
        cell: the recurrent cell, one of ``"rnn"``, ``"lstm"``, ``"gru"``.
        lr: Adam's learning rate.
        clip: max global gradient norm, or None to log without clipping.
        seed: seeds the weights and the data.
        project: the W&B project to log to.
        dir: the folder to write the run under (in its ``wandb/``); default W&B's choice.
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

    use_offline_by_default(online)
    import wandb

    config = {
        "steps": steps, "batch": batch, "seq_len": seq_len, "vocab": vocab, "hidden": hidden,
        "cell": cell, "lr": lr, "clip": clip, "seed": seed,
    }  # fmt: skip
    torch.manual_seed(seed)
    data = torch.Generator().manual_seed(seed)
    model = Seq2Seq(vocab, hidden, cell=cell)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    if dir is not None:
        Path(dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, config=config, dir=dir, job_type="demo", reinit="create_new")
    run_dir, offline = Path(run.settings.sync_dir).absolute(), bool(run.offline)
    url = None if offline else run.url
    loss_value = float("nan")
    try:
        with gradwandb.watch(model, optimizer, run=run, clip=clip, bptt_every=10) as tracker:
            bar = tqdm(
                range(steps), desc=f"gradwandb demo ({cell})", unit="step", disable=not progress
            )
            for _ in bar:
                loss = seq2seq_loss(model, reverse_batch(batch, seq_len, vocab, data))
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()  # gradwandb measures, clips and logs here
                optimizer.zero_grad()
                loss_value = loss.item()
                run.log({"loss": loss_value})
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
            report = tracker.diagnosis()
    finally:
        run.finish()

    result = DemoResult(
        run_dir=run_dir,
        steps=steps,
        final_loss=loss_value,
        params=sum(p.numel() for p in model.parameters()),
        offline=offline,
        url=url,
        verdict=report.verdict,
        findings=tuple(f"step {f.step}, {f.message}; try: {f.fix}" for f in report.findings),
    )
    print(describe(result))
    return result


def describe(result: DemoResult) -> str:
    """Where the run is and how to look at it, as printed at the end of the demo."""
    d = result.run_dir
    lines = [
        f"gradwandb demo: {result.steps} steps, final loss {result.final_loss:.4f}",
        f"diagnosis: {result.verdict}",
        *(f"  - {finding}" for finding in result.findings),
        f"run directory: {d}",
    ]
    if result.url:
        lines.append(f"run page:      {result.url}")
    lines += [
        f"  look at it in the terminal:  wandb leet {d}",
        f"  print its summary:           wandb leet inspect --summary {d}",
    ]
    if result.offline:
        lines.append(f"  upload it to W&B:            wandb sync {d}")
    return "\n".join(lines)


def _check(**positive: float) -> None:
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
