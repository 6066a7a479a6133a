"""The cost of gradwandb's default in a 2-process DDP job, against bare DDP, side by side.

    python benchmarks/ddp.py            # spawns 2 gloo processes on the CPU
    python benchmarks/ddp.py --fsdp     # the same with FSDP2 (fully_shard)

Each process trains two copies of the same seeded MLP, one bare and one watched with the
defaults (``log_every=1``, ``layers_every=10``, ``hist_every=100``, diagnosis on), in
interleaved rounds, so both see the same machine load. Rank 0 logs both to one offline W&B run
(``loss`` for the bare copy too). Prints the median ms/step of each and their paired ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import gradwandb

WIDTH, DEPTH, BATCH = 256, 8, 64
ROUNDS, STEPS = 10, 30


def _model(fsdp: bool) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(DEPTH):
        layers += [nn.Linear(WIDTH, WIDTH), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(WIDTH, 10))
    if not fsdp:
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def _round(model: nn.Module, opt: torch.optim.Optimizer, run: object, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(BATCH, WIDTH, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
    start = time.perf_counter()
    for _ in range(STEPS):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if run is not None:
            run.log({"loss": loss.item()})  # type: ignore[attr-defined]
    dist.barrier()
    return (time.perf_counter() - start) / STEPS * 1000


def _worker(rank: int, port: int, fsdp: bool, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    import wandb

    run = wandb.init(project="gradwandb-bench", dir=out, mode="offline") if rank == 0 else None
    bare, watched = _model(fsdp), _model(fsdp)
    opt_bare = torch.optim.Adam(bare.parameters(), lr=1e-3)
    opt_watched = torch.optim.Adam(watched.parameters(), lr=1e-3)
    tracker = gradwandb.watch(watched, opt_watched, run=run, name="watched")
    _round(bare, opt_bare, None, 0)  # warm-up
    _round(watched, opt_watched, None, 0)
    times: dict[str, list[float]] = {"bare": [], "gradwandb": []}
    for r in range(ROUNDS):
        times["bare"].append(_round(bare, opt_bare, run, r))
        times["gradwandb"].append(_round(watched, opt_watched, run, r))
    tracker.remove()
    if rank == 0:
        ratios = [w / b for b, w in zip(times["bare"], times["gradwandb"], strict=True)]
        bare_ms = statistics.median(times["bare"])
        watched_ms = statistics.median(times["gradwandb"])
        kind = "FSDP2" if fsdp else "DDP"
        print(f"{kind}, 2 gloo processes, MLP {DEPTH}x{WIDTH}, batch {BATCH}/rank, Adam")
        print(f"bare       {bare_ms:7.2f} ms/step")
        print(f"gradwandb  {watched_ms:7.2f} ms/step  ({statistics.median(ratios):.2f}x)")
        if run is not None:
            run.finish()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 instead of DDP")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_SILENT", "true")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(port, args.fsdp, out), nprocs=2, join=True)


if __name__ == "__main__":
    main()
