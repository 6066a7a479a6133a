"""The capture half of :class:`~gradwandb.BPTTMonitor`: hooks that reduce the gradient of a
sequence module's input and output sequences to per-timestep sums, on the device.

:class:`SequenceCapture` hooks each watched module (every ``nn.RNN``, ``nn.LSTM`` and
``nn.GRU``, or the modules named): on a monitored step its forward hook puts a tensor hook on
the input and the output sequence, and that tensor hook, in the backward, adds
:func:`timestep_norm_sums` of the gradient to the module's :class:`Curve` of the step. A
forward pre-hook makes an input that does not require grad (raw data) require it, so that
autograd computes dL/dx. Nothing is read back here; the reporting half reads the curves.

Calls and sequences. A module called several times in a step is either continuing one
sequence (a decoder called once per token, its state passed by hand) or running another one
(micro-batches, a second sentence): continued calls are stitched in call order (a call of one
timestep is the next timestep, a longer call adds its timesteps in order), other sequences are
pooled by timestep index. A call starts a new sequence when it is the module's first in a
forward of the model (a forward pre-hook on the model marks each forward) or the first after a
backward through the module; an nn.RNN/LSTM/GRU call also starts one when it gets no initial
state, and continues the sequence whenever its initial state is the very state (the same
tensor) the module's previous call returned, even across forwards of the model. On monitored
steps the hook also keeps the first sequences of the step's first sequence of calls for the
memory probe (:mod:`gradwandb.live.monitors.memory`). All hooks on the user's modules are
:class:`~gradwandb.live.capture.ModuleHook` s: a saved or copied model carries none alive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.hooks import RemovableHandle

from gradwandb.live.capture import ModuleHook
from gradwandb.live.monitors.base import ModuleMonitor, Tap
from gradwandb.live.monitors.memory import ProbeInputs
from gradwandb.live.shield import Shield

RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)
_S = TypeVar("_S", bound="SequenceCapture")


def timestep_norm_sums(
    grad: Tensor,
    *,
    batch_first: bool = False,
    batch_sizes: Sequence[int] | None = None,
    directions: int = 1,
) -> Tensor:
    """Float64 [directions, T] on ``grad``'s device: at each timestep, the sum over sequences of
    each sequence's L2 norm (of its slice of the feature dim, one slice per direction).

    ``grad`` is [B, T, F] (``batch_first``), [T, B, F], unbatched [T, F], or the [N, F] data of
    a packed sequence with its ``batch_sizes``. Norms accumulate in float64 (no underflow of
    vanishing gradients). No host sync.

    >>> g = torch.tensor([[[3.0, 4.0], [0.0, 1.0]], [[0.0, 2.0], [6.0, 8.0]]])  # [B=2, T=2, 2]
    >>> timestep_norm_sums(g, batch_first=True).tolist()
    [[7.0, 11.0]]
    >>> timestep_norm_sums(torch.tensor([[3.0], [4.0], [1.0]]), batch_sizes=[2, 1]).tolist()
    [[7.0, 1.0]]
    """
    split = grad.detach().reshape(*grad.shape[:-1], directions, grad.shape[-1] // directions)
    norms = torch.linalg.vector_norm(split, dim=-1, dtype=torch.float64)  # [..., directions]
    if batch_sizes is not None:  # packed: rows of one timestep are contiguous
        chunks = torch.split(norms, list(batch_sizes))
        per_t = torch.stack([c.sum(0) for c in chunks])
    elif norms.dim() == 2:  # unbatched [T, directions]
        per_t = norms
    else:
        per_t = norms.sum(0 if batch_first else 1)
    return per_t.T


@dataclass
class Curve:
    """Device sums [C, T] and host counts [T] of one side of a module, pooled over calls."""

    sums: Tensor | None = None
    counts: list[int] = field(default_factory=list)

    def add(self, sums: Tensor, counts: Sequence[int], offset: int = 0) -> None:
        """Pool ``sums`` [C, T] and ``counts`` [T] in at timesteps ``offset`` to ``offset + T``."""
        if offset:
            sums = nn.functional.pad(sums, (offset, 0))
            counts = [0] * offset + list(counts)
        if self.sums is None:
            self.sums, self.counts = sums, list(counts)
            return
        have, new = self.sums.shape[-1], sums.shape[-1]
        if new > have:
            self.sums = nn.functional.pad(self.sums, (0, new - have))
            self.counts += [0] * (new - have)
        elif new < have:
            sums = nn.functional.pad(sums, (0, have - new))
        self.sums = self.sums + sums
        for t, c in enumerate(counts):
            self.counts[t] += c

    def means(self, host: list[float], length: int) -> list[list[float]]:
        """Per direction, the mean over sequences at each of ``length`` timesteps (0 if none)."""
        rows = len(host) // len(self.counts) if self.counts else 0
        t_len = len(self.counts)
        out = []
        for d in range(rows):
            sums = host[d * t_len : (d + 1) * t_len]
            out.append([s / c if c else 0.0 for s, c in zip(sums, self.counts, strict=True)])
            out[-1] += [0.0] * (length - t_len)
        return out


@dataclass
class SequenceTap:
    """One hooked sequence module and what it captured for the step being monitored."""

    path: str
    name: str  # in keys
    module: nn.Module  # an nn.RNN/LSTM/GRU, or a sequence module named in ``modules``
    step: int | None = None
    inputs: Curve = field(default_factory=Curve)
    outputs: Curve = field(default_factory=Curve)
    tensor_hooks: list[RemovableHandle] = field(default_factory=list)
    offset: int = 0  # where the next call's timesteps go, if it continues the sequence
    fresh: bool = True  # a new forward of the model (or a backward) since the last call
    returned: Any = None  # the state the module's last call returned (this step)
    probe: ProbeInputs = field(default_factory=ProbeInputs)

    @property
    def directions(self) -> int:
        return 2 if getattr(self.module, "bidirectional", False) else 1

    def reset(self, step: int | None) -> None:
        for handle in self.tensor_hooks:
            handle.remove()
        self.tensor_hooks = []
        self.step = step
        self.inputs = Curve()
        self.outputs = Curve()
        self.offset, self.fresh, self.returned = 0, True, None
        self.probe = ProbeInputs()

    def starts_sequence(self, hx: Any) -> bool:
        """Whether a call with initial state ``hx`` starts a new sequence (see the module)."""
        if isinstance(self.module, RECURRENT):
            if hx is None:
                return True
            last = self.returned
            if isinstance(hx, tuple) and isinstance(last, tuple) and hx and last:
                if hx[0] is last[0]:
                    return False
            elif hx is last:
                return False
        return self.fresh


class SequenceCapture(ModuleMonitor):
    """A :class:`ModuleMonitor` whose hooks fill each tap's input and output :class:`Curve`
    with the gradient's per-timestep sums on monitored steps (see the module's docstring)."""

    _consequence = "per-timestep monitoring is switched off"
    _what = "recurrent"
    _listed = "recurrent"
    _example = "encoder"
    _taps: list[SequenceTap]
    probe_sequences: int = 0  # sequences kept per step for the memory probe (0: none)
    _probe_shield: Shield | None = None

    def _watches(self, module: nn.Module) -> bool:
        return isinstance(module, RECURRENT)

    def _none_found(self, model: nn.Module) -> str:
        return (
            f"{type(model).__name__} has no nn.RNN, nn.LSTM or nn.GRU module, which is what "
            f"{type(self).__name__} watches (cells such as nn.LSTMCell run one timestep a call "
            "and are not supported); pass a model that contains one"
        )

    # _unwatchable: none. A named module that is not recurrent is watched as a sequence module.

    def attach(self: _S) -> _S:
        """Hook the modules, and the model's forward (each forward starts new sequences)."""
        if not self._handles:
            super().attach()
            self._handles.append(self.model.register_forward_pre_hook(ModuleHook(self._forward)))
        return self

    def _forward(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        for tap in self._taps:
            tap.fresh = True

    def _hooks(self, tap: Tap) -> list[RemovableHandle]:
        assert isinstance(tap, SequenceTap)
        m = tap.module
        pre = m.register_forward_pre_hook(ModuleHook(self._pre_hook(tap)), with_kwargs=True)
        post = m.register_forward_hook(ModuleHook(self._post_hook(tap)), with_kwargs=True)
        return [pre, post]

    def _pre_hook(self, tap: SequenceTap) -> Callable[..., Any]:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
            if self._guard(self._monitored_step) is None:
                return None
            return self._guard(lambda: input_requiring_grad(args, kwargs))

        return hook

    def _post_hook(self, tap: SequenceTap) -> Callable[..., Any]:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
        ) -> None:
            step = self._guard(self._monitored_step)
            if step is not None:
                self._guard(lambda: self._capture(tap, step, args, kwargs, out))

        return hook

    def _capture(
        self, tap: SequenceTap, step: int, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        if tap.step != step:
            tap.reset(step)  # data of an earlier step that was never reported: dropped
        x = args[0] if args else kwargs.get("input")
        y = out[0] if isinstance(out, tuple) else out
        recurrent = isinstance(tap.module, RECURRENT)
        hx = (args[1] if len(args) > 1 else kwargs.get("hx")) if recurrent else None
        # nn.RNN/LSTM/GRU say; any other sequence module is taken as [batch, time, features]
        first = bool(getattr(tap.module, "batch_first", True))
        if tap.starts_sequence(hx):
            tap.offset = 0
            tap.probe.close()
        offset, tap.fresh = tap.offset, False
        tap.offset += time_length(x, first) or time_length(y, first)
        tap.returned = out[1] if recurrent and isinstance(out, tuple) else None
        shield = self._probe_shield
        if recurrent and self.probe_sequences and shield is not None and not shield.failed:
            shield.run(lambda: tap.probe.add(tap.module, args, kwargs, self.probe_sequences))
        for seq, curve, dirs in ((x, tap.inputs, 1), (y, tap.outputs, tap.directions)):
            found = layout(seq, first)
            if found is None:
                continue
            data, counts, packed = found
            hook = self._grad_hook(tap, step, curve, counts, packed, first, dirs, offset)
            tap.tensor_hooks.append(data.register_hook(hook))  # type: ignore[no-untyped-call]

    def _grad_hook(
        self,
        tap: SequenceTap,
        step: int,
        curve: Curve,
        counts: list[int],
        packed: bool,
        batch_first: bool,
        directions: int,
        offset: int,
    ) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            if self._shield.failed or tap.step != step:
                return  # a graph of a step already reported, or dropped
            tap.fresh = True  # a backward went through: the next call is another sequence

            def add() -> None:
                with torch.no_grad():
                    sums = timestep_norm_sums(
                        grad,
                        batch_first=batch_first,
                        batch_sizes=counts if packed else None,
                        directions=directions,
                    )
                curve.add(sums, counts, offset)

            self._guard(add)

        return hook


def input_requiring_grad(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The call's arguments with the input sequence made to require grad, or None if it does."""
    in_args = bool(args)
    x = args[0] if in_args else kwargs.get("input")
    data = x.data if isinstance(x, PackedSequence) else x
    if not isinstance(data, Tensor) or data.requires_grad or not data.is_floating_point():
        return None
    fresh = data.detach().requires_grad_()
    if isinstance(x, PackedSequence):
        new: Any = PackedSequence(fresh, x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    else:
        new = fresh
    if in_args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "input": new}


def time_length(seq: Any, batch_first: bool) -> int:
    """How many timesteps a sequence argument holds (0: not a sequence).

    >>> time_length(torch.zeros(2, 5, 3), True), time_length(torch.zeros(2, 5, 3), False)
    (5, 2)
    """
    if isinstance(seq, PackedSequence):
        return len(seq.batch_sizes)
    if isinstance(seq, Tensor) and seq.dim() == 3:
        return int(seq.shape[1] if batch_first else seq.shape[0])
    if isinstance(seq, Tensor) and seq.dim() == 2:
        return int(seq.shape[0])
    return 0


def layout(seq: Any, batch_first: bool) -> tuple[Tensor, list[int], bool] | None:
    """(tensor to hook, sequences present at each timestep, packed?) of a sequence argument,
    or None when it carries no gradient."""
    if isinstance(seq, PackedSequence):
        data: Any = seq.data
        counts = [int(c) for c in seq.batch_sizes.tolist()]  # batch_sizes lives on the CPU
        packed = True
    else:
        data, packed = seq, False
        if isinstance(data, Tensor) and data.dim() == 3:
            batch, t_len = (data.shape[0], data.shape[1]) if batch_first else data.shape[1::-1]
            counts = [batch] * t_len
        elif isinstance(data, Tensor) and data.dim() == 2:  # unbatched [T, F]
            counts = [1] * data.shape[0]
        else:
            return None
    if not isinstance(data, Tensor) or not data.requires_grad:
        return None
    return data, counts, packed
