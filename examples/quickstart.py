"""Quickstart: watch a model's gradients on W&B with one line.

    python examples/quickstart.py            # offline: no W&B account needed
    python examples/quickstart.py --online   # log in and upload live (or set WANDB_MODE)

A small MLP learns which quadrant pair a 2-D point lies in. ``gradwandb.watch`` logs the
global gradient norm, per-layer norms, histograms and clipping at every optimizer step into
the same rows as the loss. Like ``gradwandb demo``, it logs offline unless ``--online`` is
given or ``WANDB_MODE`` is set: a plain ``wandb.init()`` with no API key configured fails with
"No API key configured". GRADWANDB_EXAMPLE_STEPS sets the number of steps (default 300).
"""

import argparse
import os

import torch
import wandb
from torch import nn

import gradwandb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--online", action="store_true", help="let W&B decide the mode instead of offline"
    )
    args = parser.parse_args()
    if not args.online:
        os.environ.setdefault("WANDB_MODE", "offline")  # log locally unless told otherwise
    if os.environ.get("WANDB_MODE") == "offline":
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # no error reports to send
    steps = int(os.environ.get("GRADWANDB_EXAMPLE_STEPS", "300"))
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    run = wandb.init(project="gradwandb-quickstart", config={"steps": steps, "lr": 1e-2})
    tracker = gradwandb.watch(model, optimizer, clip=1.0)
    for _ in range(steps):
        x = torch.randn(128, 2)
        y = (x[:, 0] * x[:, 1] > 0).long()  # 1 in the first and third quadrants
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()  # gradwandb takes its statistics, clips and logs here
        optimizer.zero_grad()
        run.log({"loss": loss.item()})
    tracker.remove()
    run.finish()

    print(f"final loss {loss.item():.4f}; run written to {run.settings.sync_dir}")
    print(f"  view it:   wandb leet {run.settings.sync_dir}")
    if run.offline:
        print(f"  upload it: wandb sync {run.settings.sync_dir}")


if __name__ == "__main__":
    main()
