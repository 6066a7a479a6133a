"""Several processes: the numbers of the full model, whatever holds which piece of it.

One mechanism serves every layout. For each watched tensor, a :class:`Layout` knows its
*local piece* (the gradient itself; a DTensor's local shard; an FSDP1 flat-parameter view)
and the *weight* with which this rank's piece counts in a sum over the world: 1 for a shard
this rank holds alone, 0 or 1 for a replica (the first replica counts, the others do not), so
that a replicated tensor is counted once. The weights come from the DTensor placements
(``Shard`` counts on every mesh coordinate, ``Replicate`` only on coordinate 0), from FSDP1's
flat-parameter sharding, or, for a plain tensor, from replication over the world. A squared
norm, a sum of ``|g|``, a sum of ``g`` or a bin count of the full tensor is then
``all_reduce(SUM)`` of ``weight * local`` over all tensors at once (float64); a max is
``all_reduce(MAX)``; the mean ``|g|`` divides by the full tensor's element count.

Cost model (collectives and host syncs). When every watched gradient is a full replica (DDP,
after its all-reduce), the local numbers already are the full ones: no collective at all. With
a sharded tensor (FSDP1, FSDP2, tensor parallel), per step:

- nothing logged and no clip: none; a clip-only step: one ``all_reduce(SUM)`` of the ``[n]``
  squared norms (the clip needs the global norm on every rank);
- a ``log_every`` step: that same one SUM (every squared norm of the step in one vector);
- a ``layers_every`` step: the SUM carries ``[4, n]`` (squared norms, sums of ``|g|``, sums
  of ``g``, squared weight norms), plus one ``all_reduce(MAX)`` of the ``[n]`` max ``|g|``,
  plus one SUM of the ``[n]`` squared update norms after the optimizer step;
- a ``hist_every`` step: one more SUM of the ``[n, 194]`` fixed-edge bin counts (the edges
  come from the reduced max, so every rank bins alike and the counts add up);
- ``guard=``: one SUM of a ``[world + n]`` flag vector per step, in every layout, so a NaN on
  one rank skips the step on all of them; a step with NaN/Inf adds one SUM of element counts.

On the CPU (gloo) each collective is a host sync; with NCCL they are queued on the device and
the host syncs stay those of the single-process cost model. Every rank must watch the same
parameters in the same order (checked once, at watch time, with one ``all_gather_object``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gradwandb.live.selection import Present
from gradwandb.live.sinks import NullSink
from gradwandb.live.stats import kernels as S

_LOW_PRECISION = (torch.float16, torch.bfloat16)
ROWS = 4  # squared norm, sum |g|, sum g, squared weight norm: the layers step's SUM


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, or ``(0, 1)`` without one."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _all_reduce(tensor: Tensor, op: Any) -> Tensor:
    """The one place gradwandb runs a collective (in place; returns the tensor)."""
    dist.all_reduce(tensor, op=op)
    return tensor


def _is_dtensor(t: object) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "placements")


def fsdp1_numels(model: nn.Module) -> dict[int, int]:
    """``id(parameter) -> element count of the full tensor`` for FSDP1's sharded parameters
    (flat parameters, and the original parameters with ``use_orig_params=True``)."""
    out: dict[int, int] = {}
    for module in model.modules():
        handle = getattr(module, "_handle", None)
        flat = getattr(handle, "flat_param", None)
        numels = getattr(flat, "_numels", None)
        if flat is None or numels is None:
            continue
        out[id(flat)] = int(sum(numels))
        for p, n in zip(getattr(flat, "_params", None) or (), numels, strict=False):
            out[id(p)] = int(n)
    return out


def full_numel(p: Tensor, numels: dict[int, int]) -> int:
    """Elements of the full tensor ``p`` is a piece of (a DTensor's ``numel`` is global)."""
    return numels.get(id(p), p.numel())


class Reducer:
    """One step's reductions over the pieces of ``n`` tensors, with their ``[n]`` weights."""

    def __init__(self, weights: Tensor) -> None:
        self.weights = weights
        self.calls = 0  # collectives this step

    def _reduce(self, x: Tensor, op: Any) -> Tensor:
        self.calls += 1
        return _all_reduce(x, op)

    def sum(self, x: Tensor) -> Tensor:
        """Sum over ranks of ``weight * x``; ``x`` has the tensor axis first. One collective."""
        w = self.weights.view(-1, *([1] * (x.dim() - 1)))
        return self._reduce((x.double() * w).contiguous(), dist.ReduceOp.SUM)

    def norms(self, local: Tensor) -> Tensor:
        """Full tensors' L2 norms from the pieces' ``[n]`` L2 norms. One collective."""
        return self.sum(local.double().square()).sqrt()

    def max(self, x: Tensor) -> Tensor:
        """Max over ranks of ``[n]`` ``x`` (replicas change nothing). One collective."""
        return self._reduce(x.double().contiguous(), dist.ReduceOp.MAX)

    def measure(
        self,
        norms: Tensor,
        values: Sequence[Tensor],
        stats: Tensor | None,
        params: Sequence[Tensor] | None,
        numels: Sequence[int],
    ) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """A step's reduced norms (and on a per-layer step its ``[3, n]`` L2/L1/max matrix and
        the weight norms, std and mean): one SUM, plus one MAX on a per-layer step."""
        if stats is None or params is None:
            return self.norms(norms), None, {}
        sums = torch.stack([_flat(v).sum(dtype=torch.float64) for v in values])
        weights = S.grad_norms([p.detach() for p in params])
        rows = torch.stack([norms.square(), stats[S.L1_SUM], sums, weights.square()], dim=1)
        total = self.sum(rows)
        top = self.max(stats[S.MAX_ABS])
        full = total[:, 0].sqrt()
        n = torch.tensor(list(numels), dtype=torch.float64, device=full.device).clamp_min(1)
        mean = total[:, 2] / n
        std = (total[:, 0] / n - mean.square()).clamp_min(0.0).sqrt()
        extras = {"param_norms": total[:, 3].sqrt(), "spread": torch.stack([std, mean])}
        return full, torch.stack([full, total[:, 1], top]), extras


def _flat(t: Tensor) -> Tensor:
    flat = t.detach().reshape(-1)
    return flat.float() if flat.dtype in _LOW_PRECISION else flat


def _local(tensor: Tensor) -> Tensor:
    """The piece of ``tensor`` this rank holds (a DTensor's local tensor; else itself)."""
    if not _is_dtensor(tensor):
        return tensor
    t: Any = tensor
    if any(p.is_partial() for p in t.placements):  # a pending sum: make it a replica first
        from torch.distributed.tensor import Replicate

        kept = [Replicate() if p.is_partial() else p for p in t.placements]
        t = t.redistribute(t.device_mesh, kept)
    local: Tensor = t.to_local()
    return local


class Layout:
    """Per watched tensor: its local piece, its full element count, and its weight."""

    def __init__(self, model: nn.Module, named: Sequence[tuple[str, nn.Parameter]]) -> None:
        self.rank, self.size = world()
        self._fsdp1 = fsdp1_numels(model)
        self.sharded = any(_is_dtensor(p) or id(p) in self._fsdp1 for _, p in named)
        self._weights: dict[tuple[torch.device, tuple[float, ...]], Tensor] = {}

    def check_same(self, names: Sequence[str], numels: Sequence[int]) -> None:
        """Raise unless every rank watches the same tensors (one ``all_gather_object``)."""
        mine = (list(names), list(numels))
        everyone: list[Any] = [None] * self.size
        dist.all_gather_object(everyone, mine)
        for rank, theirs in enumerate(everyone):
            if theirs != mine:
                raise ValueError(
                    f"gradwandb.watch on rank {self.rank} watches {len(names)} tensors, but "
                    f"rank {rank} watches a different set ({len(theirs[0])} tensors); call "
                    "watch with the same model and params= on every rank, after wrapping it "
                    "(DDP, fully_shard, FSDP) the same way everywhere"
                )

    def present(self, params: Sequence[nn.Parameter]) -> Present:
        """The watched tensors with a gradient, as local pieces; the same set on every rank.

        An FSDP1 parameter that needs a gradient counts even where this rank holds none of it
        (an empty piece), so every rank reduces vectors of the same length.
        """
        index, chosen, grads = [], [], []
        for i, p in enumerate(params):
            g = p.grad
            if g is None:
                if id(p) not in self._fsdp1 or not p.requires_grad:
                    continue
                g = p.detach().new_zeros(0)
            index.append(i)
            chosen.append(_local(p.detach()))
            grads.append(_local(g))
        return Present(index, chosen, grads)

    def numels(self, params: Sequence[nn.Parameter], index: Sequence[int]) -> list[int]:
        """Full element counts of the tensors at ``index``."""
        return [full_numel(params[i], self._fsdp1) for i in index]

    def reducer(self, params: Sequence[nn.Parameter], now: Present) -> Reducer | None:
        """This step's :class:`Reducer`, or None when every piece is a full replica."""
        if not self.sharded or not now.grads:
            return None
        weights = tuple(self._weight(params[i]) for i in now.index)
        device = now.grads[0].device
        key = (device, weights)
        if key not in self._weights:  # built once per layout: no host-to-device copy per step
            self._weights[key] = torch.tensor(weights, dtype=torch.float64, device=device)
        return Reducer(self._weights[key])

    def _weight(self, p: nn.Parameter) -> float:
        grad = p.grad
        t = grad if grad is not None else p
        if _is_dtensor(t):
            mesh = t.device_mesh  # type: ignore[attr-defined]
            coordinate = mesh.get_coordinate()
            if coordinate is None:
                return 0.0
            for dim, placement in enumerate(t.placements):  # type: ignore[attr-defined]
                if placement.is_replicate() and coordinate[dim] != 0:
                    return 0.0
            return float(mesh.size()) / self.size  # copies of a smaller mesh share the count
        if id(p) in self._fsdp1:
            return 1.0
        return 1.0 if self.rank == 0 else 0.0  # a replica on every rank: rank 0's counts

    def agree(self, culprits: Sequence[str], names: Sequence[str]) -> list[str]:
        """Every rank's NaN/Inf verdict, in one SUM of a ``[world + n]`` flag vector.

        Returns the culprits of all ranks, each named with the ranks it was found on (empty
        when every rank is finite), the same list on every rank.
        """
        position = {name: i for i, name in enumerate(names)}
        flags = [0.0] * (self.size + len(names))
        if culprits:
            flags[self.rank] = 1.0
        for name in culprits:
            if name in position:
                flags[self.size + position[name]] = 1.0
        device = _device_of_group()
        found = _all_reduce(torch.tensor(flags, dtype=torch.float64, device=device), _SUM())
        host = found.tolist()  # the guard's sync
        ranks = [str(r) for r in range(self.size) if host[r] > 0]
        if not ranks:
            return []
        where = f"rank {', '.join(ranks)}"
        layers = [name for i, name in enumerate(names) if host[self.size + i] > 0]
        layers += [c for c in culprits if c not in position]  # unwatched, seen here
        return [f"{name} ({where})" for name in layers] or [f"<unwatched> ({where})"]


def fsdp1_root(model: nn.Module) -> bool:
    """Whether ``model`` is an FSDP1 ``FullyShardedDataParallel`` (with its own clip)."""
    return type(model).__name__ == "FullyShardedDataParallel" and hasattr(model, "clip_grad_norm_")


def _SUM() -> Any:
    return dist.ReduceOp.SUM


def _device_of_group() -> torch.device:
    """Where the default group's collectives run: the current accelerator for NCCL."""
    backend = dist.get_backend()
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def layout(model: nn.Module, named: Sequence[tuple[str, nn.Parameter]]) -> Layout | None:
    """The :class:`Layout` of a watch in a job of several processes, or None in one process."""
    if world()[1] <= 1:
        return None
    found = Layout(model, named)
    found.check_same([n for n, _ in named], [full_numel(p, found._fsdp1) for _, p in named])
    return found


def note_rank_local(what: Sequence[str]) -> None:
    """Say once that these monitors describe this rank's own batch and modules only."""
    if what:
        warnings.warn(
            f"gradwandb: {', '.join(what)} run on each rank's own batch and modules and are "
            "not reduced across ranks; rank 0 logs its own",
            stacklevel=3,
        )


Around = Callable[..., Any]


def listen_fsdp1_clip(model: nn.Module, before: Callable[[], None], after: Around) -> Around:
    """``FSDP.clip_grad_norm_`` (FSDP1's own distributed clip) with the statistics taken
    before it scales; ``after(coef, max_norm)`` gets the coefficient it applied."""

    def around(original: Callable[..., Tensor], max_norm: float, *args: Any, **kw: Any) -> Any:
        before()
        total = original(max_norm, *args, **kw)
        after(torch.clamp(float(max_norm) / (total.double() + 1e-6), max=1.0), float(max_norm))
        return total

    return around


def silent_sink(run: Any) -> NullSink:
    """The sink of a rank other than 0: it logs nothing. A W&B run there is left alone (it
    gets no gradwandb keys), which a one-time warning says."""
    import sys

    wandb = sys.modules.get("wandb")
    active = run if run is not None else getattr(wandb, "run", None)
    if active is not None:
        warnings.warn(
            f"gradwandb: rank {world()[0]} has a W&B run ({getattr(active, 'id', active)!r}); "
            "gradwandb logs from rank 0 only, with numbers of the full model, so nothing goes "
            "to this run. Start the run on rank 0 only, or pass sink= to log on every rank",
            stacklevel=3,
        )
    return NullSink()
