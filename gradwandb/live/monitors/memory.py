"""The memory probe of a recurrent module: how strongly its final state depends on its input
``t`` steps back, ||d h_T / d x_t||, whatever the number of loss terms.

Why a probe. The input-gradient curve dL/dx_t shows where the loss's gradient lands in time.
With a loss at every timestep (language models, decoders) each x_t gets the gradient of every
later loss term, so that curve stays flat (or grows toward the start) even when the recurrence
forgets within a few steps. The probe asks the recurrence itself: re-run the module alone on a
few recorded input sequences and take, at each timestep, the norm of

    g_t = d (v . h_T) / d x_t,

with ``h_T`` the module's final state (the top layer's; for a bidirectional module its forward
direction) and ``v`` a fixed random unit vector, one per probed sequence (so the mean over the
sequences also averages over projections). In the linear regime of a tanh RNN with
``weight_hh = a * orthogonal`` and ``weight_ih`` orthogonal, ||g_t|| = a**(T-1-t) exactly.

How it runs (:func:`memory_norms`). On a monitored step the forward hook keeps detached views
of the first :data:`PROBE_SEQUENCES` sequences of the step's first sequence of calls
(:class:`ProbeInputs`: for a module called once per token, every call of it, with the initial
state of the first call). At the step's report the probe concatenates them in time and calls
the module's ``forward`` once on a fresh leaf copy, from the first call's initial state: the
state is carried from call to call by the module's own recurrence, as if the calls were one
(what the code does to the state between its calls is not part of the measure). The call
bypasses every hook (``module.forward``, not ``module(...)``), runs under
``torch.enable_grad()`` with inter-layer dropout off and autocast off, in the module's weight
dtype, with the module's weights as they are at the report (after the optimizer step), and
``torch.autograd.grad`` takes the gradient with respect to the copy only: no parameter's
``.grad`` is touched, the user's graph is not involved, and no random number is drawn from the
user's generators. The result, a float64 [T] tensor on the device, joins the monitor's one host
transfer.

Packed input: the probe takes the sequences of the full length (up to
:data:`PROBE_SEQUENCES`), so that every timestep is counted back from the same end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

PROBE_SEQUENCES = 4  # sequences of the batch the probe re-runs

State = Tensor | tuple[Tensor, Tensor] | None


@dataclass
class ProbeInputs:
    """The calls of a module the probe re-runs: inputs [k, T, F] (batch first) and the first
    call's initial state [L*D, k, H] (an LSTM's (h, c)), detached; ``open`` while calls of the
    first sequence of the step may still come; ``broken`` when they cannot be stitched."""

    inputs: list[Tensor] = field(default_factory=list)
    state: State = None
    open: bool = True
    broken: bool = False

    @property
    def ready(self) -> bool:
        return bool(self.inputs) and not self.broken

    def close(self) -> None:
        """No more calls join (a new sequence started)."""
        if self.inputs:
            self.open = False

    def add(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], n: int) -> None:
        """Keep the first ``n`` sequences of one call of ``module`` (an nn.RNN/LSTM/GRU)."""
        if not self.open or self.broken:
            return
        x = args[0] if args else kwargs.get("input")
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        found = _first_sequences(x, hx, bool(getattr(module, "batch_first", False)), n)
        if found is None:
            self.broken = True
            return
        seq, state = found
        if self.inputs:
            last = self.inputs[-1]
            if (seq.shape[0], seq.shape[2], seq.dtype) != (
                last.shape[0],
                last.shape[2],
                last.dtype,
            ):
                self.broken = True  # calls of different batch or width: not one sequence
            else:
                self.inputs.append(seq)
            return
        self.inputs.append(seq)
        self.state = state


def _first_sequences(x: Any, hx: Any, batch_first: bool, n: int) -> tuple[Tensor, State] | None:
    """(first ``n`` sequences of ``x`` as [k, T, F], their initial state), detached, or None."""
    if isinstance(x, PackedSequence):
        sizes = [int(c) for c in x.batch_sizes.tolist()]  # batch_sizes lives on the CPU
        k = min(n, sizes[-1])  # the sequences of the full length come first
        rows = torch.split(x.data.detach(), sizes)
        seq = torch.stack([r[:k] for r in rows], dim=1)
        order = x.sorted_indices
        return seq, _state_slice(hx, k, order)
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() not in (2, 3):
        return None
    if x.dim() == 2:  # unbatched [T, F]; its state is [L*D, H]
        state = _map_state(hx, lambda h: h.detach().unsqueeze(1))
        return x.detach().unsqueeze(0), state
    seq = x.detach()[:n] if batch_first else x.detach()[:, :n].transpose(0, 1)
    return seq, _state_slice(hx, seq.shape[0], None)


def _state_slice(hx: Any, k: int, order: Tensor | None) -> State:
    """The initial state of the first ``k`` sequences (in the packed order ``order``)."""

    def pick(h: Tensor) -> Tensor:
        h = h.detach()
        if order is not None:
            h = h.index_select(1, order.to(h.device))
        return h[:, :k]

    return _map_state(hx, pick)


def _map_state(hx: Any, fn: Callable[[Tensor], Tensor]) -> State:
    if isinstance(hx, Tensor):
        return fn(hx)
    if isinstance(hx, tuple) and len(hx) == 2 and all(isinstance(h, Tensor) for h in hx):
        return fn(hx[0]), fn(hx[1])
    return None


def unit_rows(k: int, width: int, like: Tensor, seed: int = 0) -> Tensor:
    """[k, width] random unit rows (fixed by ``seed``) on ``like``'s device and dtype."""
    gen = torch.Generator(device=like.device).manual_seed(seed)
    v = torch.randn(k, width, generator=gen, device=like.device, dtype=like.dtype)
    unit: Tensor = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return unit


def memory_norms(module: nn.RNNBase, probe: ProbeInputs, seed: int = 0) -> Tensor:
    """Float64 [T] on the module's device: the mean over the probed sequences of
    ||d (v . h_T) / d x_t|| at each timestep ``t`` (see the module's docstring); the unit
    vectors ``v`` are :func:`unit_rows` of ``seed``, the same at every step."""
    weight = next(iter(module.parameters()))
    x = torch.cat(probe.inputs, dim=1).to(weight.dtype).detach().requires_grad_()
    state = _map_state(probe.state, lambda h: h.to(weight.dtype).contiguous())
    with _probing(module, x):
        inp = x if module.batch_first else x.transpose(0, 1)
        _, final = module.forward(inp, state)
        h = final[0] if isinstance(final, tuple) else final  # [L*D, k, H]
        top = h[-2] if module.bidirectional else h[-1]  # the top layer (forward direction)
        v = unit_rows(top.shape[0], top.shape[1], like=top, seed=seed)
        (grad,) = torch.autograd.grad((top * v).sum(), x)
    norms = torch.linalg.vector_norm(grad.detach(), dim=-1, dtype=torch.float64)  # [k, T]
    mean: Tensor = norms.mean(0)
    return mean


@contextlib.contextmanager
def _probing(module: nn.RNNBase, x: Tensor) -> Iterator[None]:
    """Grad on, autocast off and the module's inter-layer dropout off, for the probe's call."""
    dropout = module.dropout
    autocast: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if torch.is_autocast_enabled(x.device.type):
        autocast = torch.autocast(x.device.type, enabled=False)
    module.dropout = 0.0
    try:
        with torch.enable_grad(), autocast:
            yield
    finally:
        module.dropout = dropout
