"""gradwandb in PyTorch Lightning: one callback in the Trainer.

    python examples/lightning_callback.py            # offline: no W&B account needed
    python examples/lightning_callback.py --online   # log in and upload live (or set WANDB_MODE)

A small MLP learns which quadrant pair a 2-D point lies in, with gradient accumulation
(``accumulate_grad_batches=2``) and Lightning's own clipping (``gradient_clip_val=1.0``).
``GradwandbCallback`` logs, at every optimizer step, the accumulated gradients' global norm
before that clip, the clip coefficient it applied and the per-layer norms, into the
``WandbLogger``'s run, on its ``trainer/global_step`` axis. Offline unless ``--online`` is
given or ``WANDB_MODE`` is set. GRADWANDB_EXAMPLE_STEPS sets the number of optimizer steps
(default 200).
"""

import argparse
import os

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from gradwandb.integrations.lightning import GradwandbCallback


class Quadrants(L.LightningModule):
    def __init__(self, lr: float = 1e-2) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
        )

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def points(n: int) -> torch.utils.data.DataLoader:
    x = torch.randn(n, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()  # 1 in the first and third quadrants
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)


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
    steps = int(os.environ.get("GRADWANDB_EXAMPLE_STEPS", "200"))
    torch.manual_seed(0)

    logger = WandbLogger(project="gradwandb-lightning", save_dir=os.environ.get("WANDB_DIR"))
    trainer = L.Trainer(
        max_steps=steps,
        accumulate_grad_batches=2,
        gradient_clip_val=1.0,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[GradwandbCallback(layers_every=10)],  # the one line
        accelerator="cpu",
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(Quadrants(), points(128 * 2 * steps))
    run = logger.experiment
    run.finish()

    print(f"trained {trainer.global_step} optimizer steps; run written to {run.settings.sync_dir}")
    print(f"  view it:   wandb leet {run.settings.sync_dir}")
    if run.offline:
        print(f"  upload it: wandb sync {run.settings.sync_dir}")


if __name__ == "__main__":
    main()
