"""Several processes: the same one-liner on every rank; rank 0 logs the full model's numbers.

    torchrun --nproc_per_node 2 examples/ddp.py          # CPU: gloo; GPUs: nccl, one each
    torchrun --nproc_per_node 2 examples/ddp.py --fsdp   # FSDP2 (fully_shard) instead of DDP
    python examples/ddp.py                                # one process (a world of 1)

A small MLP learns a random linear map. Each rank trains on its own part of every batch;
``gradwandb.watch(model, optimizer, clip=1.0)`` runs on every rank, clips all of them by the
same coefficient and guards against NaN on any of them; only rank 0 starts a W&B run (offline
unless ``--online`` is given or ``WANDB_MODE`` is set) and prints where it is.
GRADWANDB_EXAMPLE_STEPS sets the number of steps (default 50).
"""

import argparse
import os
import socket

import torch
import torch.distributed as dist
import wandb
from torch import nn

import gradwandb


def _start() -> tuple[int, int, torch.device]:
    """Join the torchrun job, or make a world of one process when run plainly."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:  # plain python: one process, its own rendezvous
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--online", action="store_true", help="let W&B decide the mode")
    parser.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (fully_shard)")
    args = parser.parse_args()
    if not args.online:
        os.environ.setdefault("WANDB_MODE", "offline")
    steps = int(os.environ.get("GRADWANDB_EXAMPLE_STEPS", "50"))
    rank, world, device = _start()

    torch.manual_seed(0)  # the same initial weights on every rank
    model: nn.Module = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 4)).to(device)
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model[0])
        fully_shard(model[2])
        fully_shard(model)
    else:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    target = torch.randn(16, 4, generator=torch.Generator().manual_seed(1)).to(device)

    run = wandb.init(project="gradwandb-ddp", config={"world": world}) if rank == 0 else None
    with gradwandb.watch(model, optimizer, clip=1.0, guard=True, layers_every=10):
        for step in range(steps):
            g = torch.Generator().manual_seed(1000 * step + rank)  # this rank's part of the batch
            x = torch.randn(32, 16, generator=g).to(device)
            loss = nn.functional.mse_loss(model(x), x @ target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if run is not None:
                run.log({"loss": loss.item()})
    if run is not None:
        print(f"rank 0 of {world} logged to {run.settings.sync_dir}")
        run.finish()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
