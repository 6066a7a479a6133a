"""A statistic of your own: the cosine between this step's gradient and the previous step's.

    python examples/custom_statistic.py     # offline unless WANDB_MODE says otherwise

Near +1 the steps agree (a steady descent), near 0 they are unrelated (noise), below 0 they
undo each other (the learning rate is too high). Logged as ``grad_cosine/<parameter>``.
"""

import os

import torch

import gradwandb


def cosine(view: gradwandb.GradientView) -> torch.Tensor | None:
    """Per tensor: cos(g_t, g_{t-1}); nothing on the first step. Runs on the device."""
    previous, view.state["previous"] = view.state.get("previous"), [g.clone() for g in view.grads]
    if previous is None or len(previous) != len(view.grads):
        return None
    dots = torch.stack([(g * p).sum() for g, p in zip(view.grads, previous, strict=True)])
    return dots.double() / (view.norms * torch.stack([p.norm() for p in previous]).double())


def main() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    import wandb

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    run = wandb.init(project="gradwandb-examples", name="custom-statistic")
    grad_cosine = gradwandb.Statistic("grad_cosine", cosine, tier="log")
    with gradwandb.watch(model, optimizer, run=run, statistics=[grad_cosine]):
        for _ in range(int(os.environ.get("GRADWANDB_EXAMPLE_STEPS", "200"))):
            x = torch.randn(64, 8)
            loss = (model(x) - x[:, :1].sin()).pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            run.log({"loss": loss.item()})
    run.finish()
    print(f"run written to {run.dir.removesuffix('/files')}")


if __name__ == "__main__":
    main()
