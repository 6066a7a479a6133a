"""gradwandb in the Hugging Face Trainer: one callback, no download.

    python examples/huggingface_trainer.py            # offline: no W&B account needed
    python examples/huggingface_trainer.py --online   # log in and upload live (or set WANDB_MODE)

A tiny GPT-2, built from a config (nothing is downloaded), learns to continue a repeating
pattern of tokens with ``gradient_accumulation_steps=2`` and the Trainer's own clip
(``max_grad_norm=1.0``). ``report_to="wandb"`` opens the run; ``GradwandbCallback`` logs into
it, at every optimizer step, the accumulated gradients' global norm before that clip, the clip
coefficient and the per-layer norms, on the Trainer's ``train/global_step`` axis. Offline
unless ``--online`` is given or ``WANDB_MODE`` is set. GRADWANDB_EXAMPLE_STEPS sets the number
of optimizer steps (default 100).
"""

import argparse
import os
import tempfile

import torch
import wandb
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from gradwandb.integrations.huggingface import GradwandbCallback


class Patterns(torch.utils.data.Dataset):
    """Sequences that repeat a short random pattern: easy to learn, no tokenizer needed."""

    def __init__(self, n: int, length: int = 16, vocab: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        period = torch.randint(2, 5, (n,), generator=g)
        base = torch.randint(0, vocab, (n, 4), generator=g)
        index = torch.arange(length)[None, :] % period[:, None]
        self.ids = torch.gather(base, 1, index)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


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
    os.environ.setdefault("WANDB_PROJECT", "gradwandb-huggingface")
    steps = int(os.environ.get("GRADWANDB_EXAMPLE_STEPS", "100"))
    torch.manual_seed(0)

    config = GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            out,
            max_steps=steps,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=2,
            max_grad_norm=1.0,
            learning_rate=1e-3,
            logging_steps=1,
            report_to="wandb",
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=training,
            train_dataset=Patterns(16 * steps),
            callbacks=[GradwandbCallback(layers_every=10)],  # the one line
        )
        result = trainer.train()
    run = wandb.run
    assert run is not None
    sync_dir = run.settings.sync_dir
    run.finish()

    print(f"final loss {result.training_loss:.4f}; run written to {sync_dir}")
    print(f"  view it:   wandb leet {sync_dir}")
    if run.offline:
        print(f"  upload it: wandb sync {sync_dir}")


if __name__ == "__main__":
    main()
