"""Which parameters a tracker watches, resolved once at watch time.

Frozen parameters stay in the selection: a step reads only the parameters whose ``.grad`` is
set, so frozen, unused and grad-None parameters are skipped without error, and a parameter
unfrozen later is picked up by the first step that gives it a gradient.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
>>> [name for name, _ in select_parameters(model, "1.")]
['1.weight', '1.bias']
>>> [name for name, _ in select_parameters(model, lambda name, p: p.dim() > 1)]
['0.weight', '1.weight']
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradwandb.live.sinks import Table

ParamFilter = str | Sequence[str] | Callable[[str, nn.Parameter], bool] | None


def _matcher(params: ParamFilter) -> Callable[[str, nn.Parameter], bool]:
    if params is None:
        return lambda name, p: True
    if isinstance(params, str):
        params = (params,)
    if callable(params):
        return params
    prefixes = tuple(params)
    if not prefixes or not all(isinstance(p, str) for p in prefixes):
        raise TypeError(
            "params must be a name prefix, a list of prefixes, or a predicate "
            f"(name, parameter) -> bool, got {params!r}"
        )
    return lambda name, p: name.startswith(prefixes)


# Wrappers whose own name a user never wrote: their inner module's names are the user's.
_WRAPPED_SEGMENTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def user_name(name: str) -> str:
    """A parameter's name as the user wrote it, without the segments wrappers insert.

    >>> user_name("_orig_mod.encoder._fsdp_wrapped_module.weight")
    'encoder.weight'
    """
    return ".".join(part for part in name.split(".") if part not in _WRAPPED_SEGMENTS)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` / ``DataParallel`` / ``DistributedDataParallel``.

    >>> inner = torch.nn.Linear(2, 1)
    >>> unwrap(torch.nn.DataParallel(inner)) is inner
    True
    """
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, wrappers) and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def select_parameters(
    model: nn.Module, params: ParamFilter = None
) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs of ``model`` that ``params`` selects, in forward order.

    Raises ValueError when nothing is left to watch, naming what was asked.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; "
            "pass the model itself, e.g. gradwandb.watch(model, optimizer)"
        )
    from gradwandb.live.distributed import fsdp1_numels, full_numel

    sizes = fsdp1_numels(model)  # FSDP1: a rank's piece may be empty, the tensor is not
    named = [(user_name(n), p) for n, p in unwrap(model).named_parameters()]
    if not named:
        raise ValueError(
            f"nothing to watch: {type(model).__name__} has no parameters; "
            "watch the module that holds the trainable weights"
        )
    match = _matcher(params)
    chosen = [(n, p) for n, p in named if full_numel(p, sizes) > 0 and match(n, p)]
    if not chosen:
        sample = ", ".join(n for n, _ in named[:5])
        raise ValueError(
            f"nothing to watch: params={params!r} matches none of the model's parameters "
            f"(they are named like: {sample}); pass a prefix of those names or None for all"
        )
    if not any(p.requires_grad for _, p in chosen):
        warnings.warn(
            "gradwandb: every watched parameter is frozen (requires_grad=False); nothing will "
            "be logged until some are unfrozen",
            stacklevel=3,
        )
    return chosen


def check_optimizer(optimizer: object, chosen: Sequence[tuple[str, nn.Parameter]]) -> None:
    """Raise if ``optimizer`` is not an optimizer or owns none of the watched parameters."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}; "
            "pass the optimizer that steps this model, or leave it out"
        )
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in owned for _, p in chosen):
        raise ValueError(
            "optimizer owns none of the watched parameters; build it from this model, "
            "e.g. torch.optim.Adam(model.parameters()), or pass the matching model"
        )


@dataclass(frozen=True)
class Present:
    """The watched parameters that have a gradient this step (positions into the selection)."""

    index: list[int]
    params: list[Tensor]  # the parameters (in several processes: this rank's pieces)
    grads: list[Tensor]


def present(params: Sequence[nn.Parameter]) -> Present:
    """Those of ``params`` whose ``.grad`` is set."""
    index = [i for i, p in enumerate(params) if p.grad is not None]
    chosen: list[Tensor] = [params[i] for i in index]
    return Present(index, chosen, [p.grad for p in chosen if p.grad is not None])


@dataclass(frozen=True)
class ParameterInfo:
    """Counts and shapes of a model's parameters, logged once per tracker."""

    total: int
    trainable: int
    frozen: int
    table: Table


def parameter_info(model: nn.Module, watched: Sequence[str]) -> ParameterInfo:
    """Count ``model``'s parameters; the table has a row per parameter."""
    watched_set = set(watched)
    rows = []
    total = trainable = 0
    for raw, p in unwrap(model).named_parameters():
        name = user_name(raw)
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
        rows.append(
            [
                name,
                str(tuple(p.shape)),
                p.numel(),
                str(p.dtype).removeprefix("torch."),
                p.requires_grad,
                name in watched_set,
            ]
        )
    table = Table(["name", "shape", "count", "dtype", "trainable", "watched"], rows)
    return ParameterInfo(total=total, trainable=trainable, frozen=total - trainable, table=table)


def optimizer_params(optimizers: Sequence[torch.optim.Optimizer]) -> list[nn.Parameter]:
    """Every parameter the optimizers update, each once, in group order."""
    seen: dict[int, nn.Parameter] = {}
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for p in group["params"]:
                seen.setdefault(id(p), p)
    return list(seen.values())


def unnamed_in_optimizers(
    model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]
) -> list[tuple[str, nn.Parameter]]:
    """Parameters the optimizers update that ``model`` does not hold, named by position
    (``param_groups.<group>.<index>``, with the optimizer's index first when there are several).

    >>> model, extra = torch.nn.Linear(2, 1), torch.nn.Parameter(torch.ones(1))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> opt.add_param_group({"params": [extra]})
    >>> [name for name, _ in unnamed_in_optimizers(model, [opt])]
    ['param_groups.1.0']
    """
    held = {id(p) for p in unwrap(model).parameters()}
    out: list[tuple[str, nn.Parameter]] = []
    for o, optimizer in enumerate(optimizers):
        prefix = f"optimizer{o}." if len(optimizers) > 1 else ""
        for g, group in enumerate(optimizer.param_groups):
            for i, p in enumerate(group["params"]):
                if id(p) not in held:
                    held.add(id(p))
                    out.append((f"{prefix}param_groups.{g}.{i}", p))
    return out
