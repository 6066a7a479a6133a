"""Per-step overhead of gradient tracking: gradwandb against plain training and ``wandb.watch``.

Run it from the repository root::

    python benchmarks/overhead.py                      # both models, default sizes
    python benchmarks/overhead.py --quick              # tiny sizes, a smoke test
    python benchmarks/overhead.py --models mlp --rounds 11 --steps 40 --json out/overhead.json
    python benchmarks/overhead.py --sync-check         # CUDA only: count host syncs per step

What is timed. Every variant runs the same full training step: ``zero_grad``, forward, backward,
``optimizer.step()`` and ``run.log({"loss": loss.item()})`` (the loss read-back and the W&B call
are in every variant, bare included, so they cancel out). The variants:

- ``bare``: nothing else.
- ``wandb.watch``: ``run.watch(model, log="gradients", log_freq=1)``, W&B's own gradient
  histograms at every step (removed with ``run.unwatch(model)`` after each block).
- ``gradwandb``: ``gradwandb.watch(model, opt, run=run)`` with its defaults.
- ``gradwandb+bptt``: the default plus the per-timestep (BPTT) monitor of recurrent modules
  every 10 steps (``bptt_every=10``); the same as the default on a model without one.
- ``gradwandb+hist``: the default with ``hist_every=1`` (histograms, weight norms and update
  ratios at every step).
- ``floor``: after backward, one fused norm pass over all gradients and one host transfer,
  ``torch.stack(torch._foreach_norm(grads)).tolist()``: what any per-layer statistic logged
  at every step must at least cost.

Method. Each model is built once from a fixed seed and every variant trains its own deep copy
with its own Adam, on the same small pool of pre-generated batches, so all variants follow the
same trajectory (they are at the same training step in the same round). All runs are offline
in one W&B run per model, in a temporary directory. Each variant is attached once, as a
training run is watched once (its step index, clip state and through-time schedule run on
across rounds; every variant has its own model, so no tracker sees another's steps), and
warmed up. Then, for ``--rounds`` rounds, in an order that rotates every round, each variant
takes three untimed settling steps and times a block of ``--steps`` steps with
``time.perf_counter`` (with ``torch.cuda.synchronize()`` at both ends on a GPU); the
variants are detached at the end. A variant's time is the median over rounds of block time / steps.

Reported per model: ms/step, the ratio to bare, the time added over bare, and
"default/floor added" = (gradwandb - bare) / (floor - bare), how many floors the default
costs. With ``--steps`` below gradwandb's ``hist_every`` default (100) the default variant's
timed steps hold no histogram step, so the summary also gives its amortised cost,
``gradwandb + (gradwandb+hist - gradwandb) / 100``.

Timings are only meaningful on a quiet machine: the medians and the interleaving absorb
drift and spikes, not a machine that is busy throughout.
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import gradwandb
from gradwandb.models import Seq2Seq, deep_mlp, reverse_batch, seq2seq_loss

VARIANTS = ("bare", "wandb.watch", "gradwandb", "gradwandb+bptt", "gradwandb+hist", "floor")
# keyword arguments of gradwandb.watch per gradwandb variant ("gradwandb" is the default)
WATCH_KWARGS: dict[str, dict[str, Any]] = {
    "gradwandb": {},
    "gradwandb+bptt": {"bptt_every": 10},
    "gradwandb+hist": {"hist_every": 1},
}
MODELS = ("seq2seq", "mlp")  # the keys of TASKS
SETTLE_STEPS = 3  # untimed steps before each timed block
BATCH_POOL = 4  # distinct batches, cycled
SYNC_CHECK_STEPS = 30
SYNC_CHECK_LOG_EVERY = 10
HIST_EVERY_DEFAULT: int = inspect.signature(gradwandb.watch).parameters["hist_every"].default

Batch = tuple[Tensor, ...]
LossFn = Callable[[nn.Module, Batch], Tensor]
Detach = Callable[[], None]


# -- sizes and models ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Model and batch sizes; :data:`FULL` is the benchmark, :data:`QUICK` a smoke test."""

    seq_vocab: int
    seq_hidden: int
    seq_len: int
    seq_batch: int
    mlp_depth: int
    mlp_width: int
    mlp_batch: int


FULL = Sizes(seq_vocab=1000, seq_hidden=128, seq_len=50, seq_batch=32,
             mlp_depth=48, mlp_width=256, mlp_batch=64)  # fmt: skip
QUICK = Sizes(seq_vocab=50, seq_hidden=16, seq_len=8, seq_batch=8,
              mlp_depth=4, mlp_width=32, mlp_batch=8)  # fmt: skip


@dataclass
class Task:
    """A model in its initial state, the batches it trains on, and its loss."""

    name: str
    description: str
    model: nn.Module
    batches: list[Batch]
    loss_fn: LossFn


def _seq2seq_loss(model: nn.Module, batch: Batch) -> Tensor:
    assert isinstance(model, Seq2Seq)
    src, tgt_in, tgt_out = batch
    return seq2seq_loss(model, (src, tgt_in, tgt_out))


def _mse_loss(model: nn.Module, batch: Batch) -> Tensor:
    x, target = batch
    return nn.functional.mse_loss(model(x), target)


def _seq2seq_task(s: Sizes, gen: torch.Generator) -> Task:
    model = Seq2Seq(vocab=s.seq_vocab, hidden=s.seq_hidden)
    batches: list[Batch] = [
        reverse_batch(s.seq_batch, s.seq_len, s.seq_vocab, gen) for _ in range(BATCH_POOL)
    ]
    description = (
        f"Seq2Seq(vocab={s.seq_vocab}, hidden={s.seq_hidden}, rnn), "
        f"batch {s.seq_batch} x {s.seq_len}, Adam"
    )
    return Task("seq2seq", description, model, batches, _seq2seq_loss)


def _mlp_task(s: Sizes, gen: torch.Generator) -> Task:
    model = deep_mlp(s.mlp_depth, s.mlp_width)
    shape = (s.mlp_batch, s.mlp_width)
    batches: list[Batch] = [
        (torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
        for _ in range(BATCH_POOL)
    ]
    description = f"deep_mlp({s.mlp_depth}, {s.mlp_width}), MSE, batch {s.mlp_batch}, Adam"
    return Task("mlp", description, model, batches, _mse_loss)


TASKS: dict[str, Callable[[Sizes, torch.Generator], Task]] = {
    "seq2seq": _seq2seq_task,
    "mlp": _mlp_task,
}


def build_task(name: str, sizes: Sizes, device: torch.device, seed: int) -> Task:
    """The named model, initialised from ``seed``, with its batches on ``device``."""
    if name not in TASKS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(TASKS)}")
    torch.manual_seed(seed)
    task = TASKS[name](sizes, torch.Generator().manual_seed(seed))
    task.model.to(device)
    task.batches = [tuple(t.to(device) for t in b) for b in task.batches]
    return task


# -- one variant's copy and its training step -----------------------------------------------


@dataclass
class Arm:
    """One variant's own copy of the task's model, its optimizer, and how far it has trained."""

    variant: str
    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    done: int = 0
    after_backward: Callable[[Arm], None] | None = None
    times_ms: list[float] = field(default_factory=list)

    def next_batch(self) -> Batch:
        batch = self.task.batches[self.done % len(self.task.batches)]
        self.done += 1
        return batch


def make_arm(variant: str, task: Task) -> Arm:
    """A fresh copy of ``task.model`` (same initial weights) with a fresh Adam."""
    model = copy.deepcopy(task.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    floor = floor_pass if variant == "floor" else None
    return Arm(variant, task, model, optimizer, after_backward=floor)


def floor_pass(arm: Arm) -> None:
    """One fused norm pass over every gradient and one host transfer."""
    grads = [p.grad for p in arm.model.parameters() if p.grad is not None]
    torch.stack(torch._foreach_norm(grads)).tolist()


def forward_backward_step(arm: Arm) -> Tensor:
    """``zero_grad``, forward, backward, (floor pass), ``optimizer.step()``; the loss."""
    arm.optimizer.zero_grad(set_to_none=True)
    loss = arm.task.loss_fn(arm.model, arm.next_batch())
    torch.autograd.backward(loss)
    if arm.after_backward is not None:
        arm.after_backward(arm)
    arm.optimizer.step()
    return loss


def train_step(arm: Arm, run: Any) -> None:
    """A full training step, with the loss logged to ``run`` as every variant does."""
    loss = forward_backward_step(arm)
    run.log({"loss": loss.item()})


def attach(arm: Arm, run: Any) -> Detach:
    """Hook ``arm``'s variant in; returns the function that takes it out again."""
    if arm.variant == "wandb.watch":
        # idx=0: the same keys at every re-watch, as a run that watches once would have.
        run.watch(arm.model, log="gradients", log_freq=1, idx=0)
        return lambda: run.unwatch(arm.model)
    if arm.variant in WATCH_KWARGS:
        kwargs = dict(WATCH_KWARGS[arm.variant])
        if not any(isinstance(m, torch.nn.RNNBase) for m in arm.model.modules()):
            kwargs.pop("bptt_every", None)  # nothing to watch through time: the default
        tracker = gradwandb.watch(arm.model, arm.optimizer, run=run, **kwargs)
        return tracker.remove
    return lambda: None


# -- timing -------------------------------------------------------------------------------


def make_sync(device: torch.device) -> Callable[[], None]:
    """What to call before reading the clock: wait for the device's queued work."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_block(arm: Arm, run: Any, steps: int, sync: Callable[[], None]) -> float:
    """Milliseconds per step over a block of ``steps`` steps."""
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(arm, run)
    sync()
    return (time.perf_counter() - start) * 1e3 / steps


def rotated(items: Sequence[Arm], k: int) -> list[Arm]:
    k %= len(items)
    return [*items[k:], *items[:k]]


def measure(
    task: Task, run: Any, *, rounds: int, steps: int, warmup: int, sync: Callable[[], None]
) -> list[Arm]:
    """Warm up every variant, then time interleaved blocks; each arm's ``times_ms`` filled."""
    arms = [make_arm(v, task) for v in VARIANTS]
    # Each arm is watched once for the whole measurement, as a training run is: its step
    # index, clip state and through-time schedule run on across the rounds (each arm has its
    # own model, so the trackers never see another arm's steps).
    detach = [attach(arm, run) for arm in arms]
    try:
        for arm in arms:
            for _ in range(warmup):
                train_step(arm, run)
        for r in range(rounds):
            for arm in rotated(arms, r):
                gc.collect()
                for _ in range(SETTLE_STEPS):
                    train_step(arm, run)
                arm.times_ms.append(time_block(arm, run, steps, sync))
            progress(f"  {task.name}: round {r + 1}/{rounds}")
    finally:
        for undo in detach:
            undo()
    return arms


# -- results ------------------------------------------------------------------------------


def ratio(num: float, den: float) -> float | None:
    """``num / den``, or None where ``den`` is not positive (noise ate the difference)."""
    return num / den if den > 0 else None


def amortised_default(default_ms: float, hist_ms: float, steps: int) -> float:
    """gradwandb's default with its histogram steps (1 in HIST_EVERY_DEFAULT) counted in.

    The timed steps of a block are the steps after the settling ones, which hold
    ``steps // HIST_EVERY_DEFAULT`` histogram steps; with ``extra`` the cost a histogram step
    adds, ``default_ms = base + extra * k / steps`` and ``hist_ms = base + extra``.
    """
    share = (steps // HIST_EVERY_DEFAULT) / steps
    extra = (hist_ms - default_ms) / (1.0 - share) if share < 1.0 else 0.0
    return default_ms + extra * (1.0 / HIST_EVERY_DEFAULT - share)


def summarise(task: Task, arms: Sequence[Arm], steps: int) -> dict[str, Any]:
    """The JSON record of one model: per-variant medians, ratios, and the floor comparison.

    Ratios and added times are paired: taken per round against that round's bare block, then
    the median over rounds, so a machine that drifts between rounds does not move them.
    """
    median = {a.variant: statistics.median(a.times_ms) for a in arms}
    bare_rounds = next(a.times_ms for a in arms if a.variant == "bare")
    added = {
        a.variant: statistics.median(t - b for t, b in zip(a.times_ms, bare_rounds, strict=True))
        for a in arms
    }
    variants = {
        a.variant: {
            "median_ms": median[a.variant],
            "ratio_to_bare": statistics.median(
                t / b for t, b in zip(a.times_ms, bare_rounds, strict=True)
            ),
            "added_ms": added[a.variant],
            "rounds_ms": a.times_ms,
        }
        for a in arms
    }
    bare = median["bare"]
    amortised = amortised_default(bare + added["gradwandb"], bare + added["gradwandb+hist"], steps)
    params = list(task.model.parameters())
    return {
        "description": task.description,
        "parameters": sum(p.numel() for p in params),
        "tensors": len(params),
        "variants": variants,
        # below 1% of a step the floor is inside the noise: no meaningful quotient
        "default_over_floor_added": (
            ratio(added["gradwandb"], added["floor"]) if added["floor"] > 0.01 * bare else None
        ),
        "gradwandb_amortised_ms": amortised,
        "gradwandb_amortised_ratio_to_bare": amortised / bare,
    }


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def markdown(results: dict[str, dict[str, Any]]) -> str:
    """Two Markdown tables: every variant of every model, then the floor comparison."""
    lines = [
        "| model | variant | ms/step | vs bare | added ms/step |",
        "|---|---|---:|---:|---:|",
    ]
    for model, res in results.items():
        for variant in VARIANTS:
            v = res["variants"][variant]
            lines.append(
                f"| {model} | {variant} | {v['median_ms']:.2f} | {v['ratio_to_bare']:.2f} "
                f"| {v['added_ms']:+.2f} |"
            )
    lines += [
        "",
        f"| model | parameters (tensors) | default/floor added "
        f"| gradwandb amortised (hist every {HIST_EVERY_DEFAULT}) ms/step (vs bare) |",
        "|---|---:|---:|---:|",
    ]
    for model, res in results.items():
        lines.append(
            f"| {model} | {res['parameters']:,} ({res['tensors']}) "
            f"| {_num(res['default_over_floor_added'], '.2f')} "
            f"| {res['gradwandb_amortised_ms']:.2f} "
            f"({res['gradwandb_amortised_ratio_to_bare']:.2f}) |"
        )
    return "\n".join(lines)


# -- the sync check (CUDA) ----------------------------------------------------------------


def count_syncs(body: Callable[[], Tensor]) -> tuple[Tensor, int]:
    """Run ``body`` under ``set_sync_debug_mode("warn")``; its result and the syncs it made."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = body()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return out, sum("synchroniz" in str(w.message).lower() for w in caught)


def sync_check(task: Task, run: Any, warmup: int) -> dict[str, Any]:
    """Host syncs per step (loss read-back excluded), bare vs gradwandb(log_every=10)."""
    out: dict[str, Any] = {"log_every": SYNC_CHECK_LOG_EVERY, "steps": SYNC_CHECK_STEPS}
    for variant in ("bare", "gradwandb"):
        arm = make_arm(variant, task)
        for _ in range(warmup):
            train_step(arm, run)
        tracker = None
        if variant == "gradwandb":
            tracker = gradwandb.watch(
                arm.model, arm.optimizer, run=run, log_every=SYNC_CHECK_LOG_EVERY, hist_every=None
            )
        logging_steps: list[int] = []
        quiet_steps: list[int] = []
        try:
            for k in range(SYNC_CHECK_STEPS):
                loss, syncs = count_syncs(partial(forward_backward_step, arm))
                is_log = k % SYNC_CHECK_LOG_EVERY == 0
                (logging_steps if is_log else quiet_steps).append(syncs)
                run.log({"loss": loss.item()})
        finally:
            if tracker is not None:
                tracker.remove()
        out[variant] = {
            "syncs_per_logging_step": statistics.mean(logging_steps),
            "syncs_per_non_logging_step": statistics.mean(quiet_steps),
            "logging_steps": logging_steps,
            "non_logging_steps": quiet_steps,
        }
    return out


def print_sync_check(results: dict[str, dict[str, Any]]) -> None:
    print(f"Host syncs per step (log_every={SYNC_CHECK_LOG_EVERY}, loss read-back excluded)\n")
    print("| model | variant | logging steps | non-logging steps |")
    print("|---|---|---:|---:|")
    for model, res in results.items():
        for variant in ("bare", "gradwandb"):
            v = res[variant]
            print(
                f"| {model} | {variant} | {v['syncs_per_logging_step']:.2f} "
                f"| {v['syncs_per_non_logging_step']:.2f} |"
            )


# -- environment --------------------------------------------------------------------------


def configure_wandb(directory: Path) -> None:
    """Offline, silent W&B with every directory under ``directory``; before importing wandb."""
    os.environ.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_ERROR_REPORTING="false",
        WANDB_CONSOLE="off",
        WANDB_DISABLE_GIT="true",
        WANDB_DISABLE_CODE="true",
    )
    for var, sub in (
        ("WANDB_DIR", "wandb"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_CONFIG_DIR", "config"),
    ):
        (directory / sub).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(directory / sub)


def start_run(name: str, directory: Path, config: dict[str, Any]) -> Any:
    import wandb

    run = wandb.init(
        project="gradwandb-overhead",
        name=name,
        dir=str(directory / "wandb"),
        config=config,
        mode="offline",
        reinit="finish_previous",
    )
    if wandb.run is not run:  # wandb.watch logs to the global run
        raise RuntimeError("the benchmark's run must be the active wandb.run")
    return run


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    import wandb

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "wandb": wandb.__version__,
        "gradwandb": gradwandb.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    return torch.device(choice)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- command line -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: seq2seq,mlp")
    p.add_argument("--rounds", type=int, help="timed rounds per variant (default 7; quick 2)")
    p.add_argument("--steps", type=int, help="steps per timed block (default 20; quick 2)")
    p.add_argument("--warmup", type=int, help="warm-up steps per variant (default 5; quick 1)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the raw results here")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument(
        "--sync-check",
        action="store_true",
        help="CUDA only: count host syncs on logging vs non-logging steps instead of timing",
    )
    p.add_argument(
        "--wandb-dir", type=Path, help="keep the offline runs here (default: a temp dir)"
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds if args.rounds is not None else (2 if quick else 7)
    args.steps = args.steps if args.steps is not None else (2 if quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 5)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        p.error(f"--models: choose from {', '.join(MODELS)}, got {args.models}")
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--rounds and --steps must be at least 1, --warmup at least 0")
    return args


def run_timing(args: argparse.Namespace, device: torch.device, root: Path) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    sync = make_sync(device)
    results: dict[str, dict[str, Any]] = {}
    for name in args.models:
        task = build_task(name, sizes, device, args.seed)
        progress(f"{name}: {task.description}")
        run = start_run(f"overhead-{name}", root, {"model": name, **vars(sizes)})
        try:
            arms = measure(
                task, run, rounds=args.rounds, steps=args.steps, warmup=args.warmup, sync=sync
            )
        finally:
            run.finish()
        results[name] = summarise(task, arms, args.steps)
    print(markdown(results))
    return results


def run_sync_check(args: argparse.Namespace, device: torch.device, root: Path) -> dict[str, Any]:
    if device.type != "cuda":
        print("sync check skipped: it needs CUDA (torch.cuda.set_sync_debug_mode)")
        return {"skipped": "no CUDA device"}
    sizes = QUICK if args.quick else FULL
    results: dict[str, dict[str, Any]] = {}
    for name in args.models:
        task = build_task(name, sizes, device, args.seed)
        run = start_run(f"sync-check-{name}", root, {"model": name})
        try:
            results[name] = sync_check(task, run, max(args.warmup, 1))
        finally:
            run.finish()
    print_sync_check(results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    root = args.wandb_dir or Path(tempfile.mkdtemp(prefix="gradwandb-overhead-"))
    configure_wandb(root)
    info = machine(device)
    print(" | ".join(f"{k}: {v}" for k, v in info.items()))
    print(
        f"rounds {args.rounds}, steps/block {args.steps}, warm-up {args.warmup}, "
        f"{'quick sizes' if args.quick else 'full sizes'}; medians over rounds\n"
    )
    try:
        if args.sync_check:
            results = {"sync_check": run_sync_check(args, device, root)}
        else:
            results = {"models": run_timing(args, device, root)}
    finally:
        if args.wandb_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.json is not None:
        config = {k: v for k, v in vars(args).items() if k not in ("json", "wandb_dir")}
        payload = {"machine": info, "config": config, "settle_steps": SETTLE_STEPS, **results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
