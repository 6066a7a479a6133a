"""The 2-process gloo job of tests/test_distributed.py: every layout, run once, checked there.

Each rank trains a small seeded MLP wrapped in DDP, FSDP2 (``fully_shard``) or FSDP1, next to
an unsharded replica that sees the whole global batch, and writes what it found to
``<out>/rank<r>.json``: the logged numbers and the reference numbers side by side, the
collectives gradwandb ran in each optimizer step, and the weights afterwards.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import gradwandb
from gradwandb.live.sinks import Histogram, MemorySink

WORLD = 2
STEPS = 5
BATCH = 8  # global batch; each rank takes its half
MAX_NORM = 0.05  # small enough to bite on every step
LOGGED = {0, 1, 2, 4}  # step 3 logs nothing (it still clips)
LAYERS = {0, 2}
HIST = {2}


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 3, generator=g)


def half(t: torch.Tensor, rank: int) -> torch.Tensor:
    n = t.shape[0] // WORLD
    return t[rank * n : (rank + 1) * n]


@contextmanager
def counting(into: list[str]) -> Iterator[None]:
    """Count the torch.distributed collectives run while inside (by name)."""
    names = ("all_reduce", "all_gather", "broadcast", "reduce_scatter_tensor")
    originals = {n: getattr(dist, n) for n in names}

    def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            into.append(name)
            return fn(*args, **kwargs)

        return run

    for n in names:
        setattr(dist, n, counted(n, originals[n]))
    try:
        yield
    finally:
        for n, fn in originals.items():
            setattr(dist, n, fn)


def plain(value: Any) -> Any:
    if isinstance(value, Histogram):
        return {"counts": list(value.counts), "edges": list(value.edges)}
    return value if isinstance(value, (int, float, str)) else None


def reference(steps: int, clip: float | None) -> list[dict[str, Any]]:
    """The unsharded replica on the whole batch: full gradients, torch's clip, SGD."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = []
    for k in range(steps):
        x, y = batch(k)
        nn.functional.mse_loss(model(x), y).backward()
        named = list(model.named_parameters())
        row: dict[str, Any] = {
            "norm": {n: p.grad.norm().item() for n, p in named},
            "mean_abs": {n: p.grad.abs().mean().item() for n, p in named},
            "max_abs": {n: p.grad.abs().max().item() for n, p in named},
            "std": {n: p.grad.std(correction=0).item() for n, p in named},
            "param_norm": {n: p.detach().norm().item() for n, p in named},
            "hist": {
                n: torch.histc(
                    p.grad, 64, -p.grad.abs().max().item(), p.grad.abs().max().item()
                ).tolist()
                for n, p in named
            },
        }
        before = {n: p.detach().clone() for n, p in named}
        total = torch.nn.utils.clip_grad_norm_(model.parameters(), clip or math.inf)
        row["global_norm"] = float(total)
        row["coef"] = min(1.0, (clip or math.inf) / (float(total) + 1e-6))
        opt.step()
        opt.zero_grad()
        row["update_ratio"] = {
            n: ((p.detach() - before[n]).norm() / before[n].norm()).item() for n, p in named
        }
        out.append(row)
    out.append({"weights": {n: p.detach().flatten().tolist() for n, p in model.named_parameters()}})
    return out


def wrap(kind: str, model: nn.Module) -> nn.Module:
    if kind == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    if kind == "tp":  # tensor parallel: layer 0 by columns, layer 2 by rows, layer 4 plain
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import (
            ColwiseParallel,
            RowwiseParallel,
            parallelize_module,
        )

        mesh = init_device_mesh("cpu", (WORLD,))
        return parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    if kind == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in (model[0], model[2], model[4]):
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP(model, use_orig_params=True, device_id=torch.device("cpu"))


def full_weights(kind: str, model: nn.Module) -> dict[str, list[float]]:
    if kind == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(model):
            return {
                gradwandb.live.selection.user_name(n): p.detach().flatten().tolist()
                for n, p in model.named_parameters()
            }
    out = {}
    for n, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p  # type: ignore[operator]
        out[n.removeprefix("module.")] = full.detach().flatten().tolist()
    return out


def train(
    kind: str,
    rank: int,
    *,
    guard: bool = False,
    nan_at: int | None = None,
    run: Any = None,
    torch_clip: bool = False,
) -> dict[str, Any]:
    """One watched training of ``kind``; ``nan_at``: a NaN in rank 1's gradient then;
    ``torch_clip``: the user clips with torch.nn.utils.clip_grad_norm_ instead of clip=."""
    model = wrap(kind, mlp())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = None if run is not None else MemorySink()
    own_clip = kind == "fsdp1" or torch_clip  # FSDP1: the user's own, model.clip_grad_norm_
    tracker = gradwandb.watch(
        model,
        opt,
        sink=sink,
        run=run,
        log_every=lambda k: k in LOGGED,
        layers_every=lambda k: k in LAYERS,
        hist_every=lambda k: k in HIST,
        clip=None if own_clip or guard else MAX_NORM,
        guard=guard,
        diagnose=False,
    )
    calls: list[list[str]] = []
    for k in range(STEPS):
        x, y = batch(k)
        if kind != "tp":  # data parallel: this rank's half; tensor parallel: the whole batch
            x, y = half(x, rank), half(y, rank)
        nn.functional.mse_loss(model(x), y).backward()
        if nan_at == k and rank == 1:
            first = next(p for p in model.parameters() if p.grad is not None)
            grad = first.grad.to_local() if hasattr(first.grad, "to_local") else first.grad
            grad.view(-1)[0] = math.nan
        step_calls: list[str] = []
        with counting(step_calls):  # the clip of the user's own (FSDP1's) and the step
            if torch_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
            elif own_clip and not guard:
                model.clip_grad_norm_(MAX_NORM)  # type: ignore[operator]
            opt.step()
        calls.append(step_calls)
        opt.zero_grad()
    tracker.remove()
    rows = [] if not isinstance(sink, MemorySink) else sink.rows
    return {
        "rows": [[k, {key: plain(v) for key, v in row.items()}] for k, row in rows],
        "calls": calls,
        "weights": full_weights(kind, model),
        "names": tracker.names,
    }


def worker(rank: int, out: str, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(  # a collective one rank never joins fails in 2 minutes, not 30
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=120),
    )
    result: dict[str, Any] = {"reference": reference(STEPS, MAX_NORM)}
    result["reference_noclip"] = reference(STEPS, None)
    for kind in ("ddp", "fsdp2", "fsdp1", "tp"):
        result[kind] = train(kind, rank)
        result[f"{kind}_guard"] = train(kind, rank, guard=True, nan_at=1)
    result["fsdp2_torch_clip"] = train("fsdp2", rank, torch_clip=True)
    import wandb

    run = None
    if rank == 0:
        run = wandb.init(project="gradwandb-tests", dir=out, mode="offline")
    result["wandb"] = train("ddp", rank, run=run)
    if run is not None:
        result["run_dir"] = run.settings.sync_dir
        run.finish()
    dist.barrier()
    dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def spawn(out: Path) -> list[dict[str, Any]]:
    """Run the job on 2 local processes; the results of each rank."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(worker, args=(str(out), port), nprocs=WORLD, join=True)
    return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(WORLD)]


if __name__ == "__main__":
    results = spawn(Path(sys.argv[1]))
    print(json.dumps({k: v for k, v in results[0].items() if k != "reference"})[:2000])
