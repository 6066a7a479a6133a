"""Through time: per-timestep (BPTT) gradients and recurrent weight health of RNN, LSTM and GRU.

Is a recurrent model learning from the early part of the sequence? :class:`BPTTMonitor` hooks
every ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` of a model and, on monitored steps, measures at
each timestep ``t`` the gradient norm of the loss with respect to the module's input sequence,
dL/dx_t (the signal that reached timestep ``t`` through time; with cuDNN this is the only place
it can be seen), and with respect to its output sequence, dL/dh_t (what the heads send in),
each averaged over the sequences of the batch. Called as a tracker observer it adds them to the
logged row, with summaries, and every ``spectral_every`` steps the spectral radius and largest
singular value of each recurrent weight matrix, per gate block.

Which step is monitored. A forward pass belongs to the optimizer step that follows it. The
monitor reads that step's index from ``clock`` when given (``clock=lambda: tracker.step``: exact
whatever the tracker's logging schedule), else from the records it is called with: after the
record of step ``k`` the next forwards belong to step ``k + 1``. The hooks capture on the
forwards of a step ``s`` with ``every(s)`` true (``s % every == 0``), and the record of step
``s`` reports what they captured. Captured data is tagged with its step and reported only by
that step's record, so a curve is never attributed to another step (without a clock and with a
tracker that does not log every step, a monitored step whose previous step was not logged is
skipped). Several forwards in one step (micro-batches) are pooled by timestep index.

Conventions. Timesteps are in input order, also for the reverse direction. A multi-layer
module's input gradient is at the bottom layer's input and its output gradient at the top
layer's output. A bidirectional module's output gradient is split into the forward and the
reverse halves of the hidden dimension; its input gradient is the sum of both directions'.
Packed sequences are supported: at each timestep only the sequences that reach it count. The
output gradient is what reaches the output sequence tensor from downstream (zero for an encoder
whose outputs are unused); the final states' gradients are not in it.

Cost (where the host syncs happen). A step that is not monitored costs each hooked module two
hook calls that compare a step index and return. On a monitored step the forward hook puts two
tensor hooks on the sequences; if the input is a tensor that does not require grad (raw data),
a forward pre-hook swaps in ``x.detach().requires_grad_()`` (no copy), which makes autograd
compute dL/dx: one more matrix product per timestep in the bottom layer's backward (cuDNN does
it anyway). In the backward each tensor hook reduces its gradient to per-timestep sums on the
device (one pass; a packed sequence adds one small reduction per timestep). Nothing is read
back until the record of that step: :meth:`BPTTMonitor.__call__` moves every curve and the
spectral results to the host in one transfer (:func:`gradwandb.live.stats.kernels.to_host`), the
monitor's one sync (the tracker has just made its own, so little is left queued), and computes
the summaries there; a step with nothing to report makes none. A spectral step adds, per
module, 20 iterations (70 the first time) of a few batched products with its recurrent weights
and a Gram-Schmidt pass, some 70 small kernels each, on the device (:class:`PowerIteration`).

>>> import torch, gradwandb
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.LSTM(3, 8, batch_first=True)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
>>> sink = gradwandb.MemorySink()
>>> tracker = gradwandb.watch(model, opt, sink=sink)
>>> monitor = BPTTMonitor(model, every=1, clock=lambda: tracker.step).attach()
>>> tracker.add_observer(monitor)
>>> out, _ = model(torch.randn(2, 5, 3))
>>> out[:, -1].sum().backward()
>>> opt.step()
>>> row = sink.last()
>>> row["bptt/lstm/seq_len"], row["bptt/lstm/curve"].columns
(5, ('timestep', 'input_grad_norm', 'output_grad_norm'))
>>> sorted(k for k in row if k.startswith("rnn/"))[:2]
['rnn/lstm/weight_hh_l0/f/sigma_max', 'rnn/lstm/weight_hh_l0/f/spectral_radius']
>>> monitor.remove(); tracker.remove()
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.hooks import RemovableHandle

from gradwandb.keys import (
    CURVE,
    DECAY_RATE,
    FIRST_LAST_RATIO,
    HEATMAP,
    HORIZON,
    OUTPUT_COLUMNS,
    SEQ_LEN,
    SIGMA_MAX,
    SPECTRAL_RADIUS,
    Keys,
    bptt_key,
    rnn_key,
)
from gradwandb.live.monitors.base import ModuleMonitor
from gradwandb.live.monitors.spectra import PowerIteration
from gradwandb.live.record import StepRecord
from gradwandb.live.schedules import ScheduleLike, as_schedule
from gradwandb.live.sinks import Image, Table, Value
from gradwandb.live.stats import kernels as S
from gradwandb.plots.charts import _heatmap_figure, _log10, _png

__all__ = [
    "HEATMAP",
    "BPTTMonitor",
    "PowerIteration",
    "RecurrentSummary",
    "bptt_key",
    "curve_summary",
    "rnn_key",
    "timestep_norm_sums",
]

RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)
_T = TypeVar("_T")
# Row blocks of weight_hh, in PyTorch's order; a vanilla RNN has one block and no gate level.
GATES: dict[str, tuple[str, ...]] = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n")}
HEATMAP_COLUMNS = 100  # monitored steps kept per module for the heatmap


@dataclass(frozen=True)
class RecurrentSummary:
    """One module's report through time at ``step`` (see :func:`curve_summary`), and the largest
    spectral radius of its recurrent weight blocks at the latest spectral step (None before)."""

    step: int
    seq_len: int
    horizon: int
    decay_rate: float | None = None
    first_last_ratio: float | None = None
    spectral_radius: float | None = None


OnSummary = Callable[[int, str, str, RecurrentSummary], object]


# -- the curve and its summaries (host) ---------------------------------------------------


def curve_summary(norms: Sequence[float], horizon_factor: float = 0.1) -> dict[str, float | int]:
    """Summaries of a per-timestep gradient-norm curve (timestep 0 first).

    - ``first_last_ratio``: norm at t=0 over norm at t=T-1 (absent if the last is 0).
    - ``decay_rate``: least-squares slope of ln(norm) against t, over the positive norms
      (absent with fewer than two). Positive: the signal shrinks going back in time, by a
      factor e**-rate per timestep; negative: it grows going back (explodes).
    - ``horizon``: how many timesteps, counted back from the last, the norm stays at or above
      ``horizon_factor`` times its peak (T: it reaches the first timestep; 0: even the last
      is below).
    - ``seq_len``: T.

    >>> s = curve_summary([0.125, 0.25, 0.5, 1.0], horizon_factor=0.2)
    >>> s["first_last_ratio"], round(s["decay_rate"], 4), s["horizon"], s["seq_len"]
    (0.125, 0.6931, 3, 4)
    """
    n = len(norms)
    out: dict[str, float | int] = {SEQ_LEN: n}
    if n and norms[-1] > 0:
        out[FIRST_LAST_RATIO] = norms[0] / norms[-1]
    points = [(t, math.log(x)) for t, x in enumerate(norms) if x > 0 and math.isfinite(x)]
    if len(points) >= 2:
        mt = sum(t for t, _ in points) / len(points)
        my = sum(y for _, y in points) / len(points)
        var = sum((t - mt) ** 2 for t, _ in points)
        out[DECAY_RATE] = sum((t - mt) * (y - my) for t, y in points) / var
    peak = max(norms, default=0.0)
    reach = 0
    if peak > 0:
        for x in reversed(norms):
            if not x >= horizon_factor * peak:
                break
            reach += 1
    out[HORIZON] = reach
    return out


# -- per-timestep sums (device) -------------------------------------------------------------


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
class _Curve:
    """Device sums [C, T] and host counts [T] of one side of a module, pooled over calls."""

    sums: Tensor | None = None
    counts: list[int] = field(default_factory=list)

    def add(self, sums: Tensor, counts: Sequence[int]) -> None:
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
class _Tap:
    """One hooked recurrent module and what it captured for the step being monitored."""

    path: str
    name: str  # in keys
    module: nn.Module  # an nn.RNN/LSTM/GRU, or a sequence module named in ``modules``
    gates: tuple[str, ...]
    step: int | None = None
    inputs: _Curve = field(default_factory=_Curve)
    outputs: _Curve = field(default_factory=_Curve)
    tensor_hooks: list[RemovableHandle] = field(default_factory=list)
    spectrum: PowerIteration | None = None
    radius: float | None = None  # largest spectral radius at the latest spectral step
    columns: deque[tuple[int, list[float]]] = field(
        default_factory=lambda: deque(maxlen=HEATMAP_COLUMNS)
    )  # (step, input-gradient curve) of the latest monitored steps

    @property
    def directions(self) -> int:
        return 2 if getattr(self.module, "bidirectional", False) else 1

    def reset(self, step: int | None) -> None:
        for handle in self.tensor_hooks:
            handle.remove()
        self.tensor_hooks = []
        self.step = step
        self.inputs = _Curve()
        self.outputs = _Curve()

    def weights(self) -> tuple[list[tuple[str, str | None]], Tensor]:
        """Names (weight, gate) and the stacked square recurrent maps [n, H, H] (detached).

        A block of ``weight_hh`` maps h_{t-1} to one gate's pre-activation; with ``proj_size``
        the square map is ``weight_hr @ block`` (h_{t-1} to the next projected state).
        """
        m = self.module
        assert isinstance(m, nn.RNNBase)
        blocks = max(len(self.gates), 1)
        names: list[tuple[str, str | None]] = []
        mats = []
        for layer in range(m.num_layers):
            for suffix in ("", "_reverse")[: self.directions]:
                name = f"weight_hh_l{layer}{suffix}"
                w = getattr(m, name).detach()
                per_gate = w.reshape(blocks, w.shape[0] // blocks, w.shape[1])
                if getattr(m, "proj_size", 0):
                    per_gate = getattr(m, f"weight_hr_l{layer}{suffix}").detach() @ per_gate
                mats.append(per_gate)
                names += [(name, g) for g in self.gates] if self.gates else [(name, None)]
        return names, torch.cat(mats)


# -- the monitor ----------------------------------------------------------------------------


class BPTTMonitor(ModuleMonitor):
    """Per-timestep gradients and recurrent weight health of a model's RNN/LSTM/GRU modules.

    Args:
        model: the model; every ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` in it is watched
            (cells such as ``nn.LSTMCell`` run one timestep a call and are not).
        every: capture the per-timestep curves on these steps (an int n: steps 0, n, 2n, ...;
            a ``step -> bool``; None: never).
        horizon_factor: the fraction of the peak norm that ``horizon`` counts down to, in (0, 1).
        spectral_every: log the recurrent weights' spectral radius and sigma_max on these steps
            (same forms as ``every``).
        modules: only these module paths (from ``named_modules()``, e.g. ``["encoder"]``); a
            named module that is not recurrent is watched as a [batch, time, features] sequence
            module (opt-in): per-timestep norms, no recurrent weight health.
        keys: the tracker's :class:`~gradwandb.keys.Keys`, so a tagged tracker gets tagged keys.
        clock: returns the index of the optimizer step the next forward belongs to, e.g.
            ``lambda: tracker.step``; without it the monitor follows the records it is given.
        heatmap_every: log each module's timestep x step heatmap on these steps (same forms).
        on_summary: called as ``on_summary(step, module, module_type, summary)`` with each
            module's :class:`RecurrentSummary` on every step that reports its curve (``module``
            is its name in keys, ``module_type`` its class name), e.g. a
            :meth:`~gradwandb.live.diagnosis.Diagnoser.observe_recurrent`; an error in it is
            reported once and switches the callback off.

    Call :meth:`attach` to hook the modules, add the monitor as an observer
    (``tracker.add_observer(monitor)``), and :meth:`remove` when done.

    Keys (``<module>`` is the module's path, e.g. ``encoder``, or its class name in lower case
    when the model is the recurrent module itself; a tagged ``keys`` inserts its tag after the
    first ``/``), on monitored steps:

    - ``bptt/<module>/curve``: a :class:`~gradwandb.live.sinks.Table` with a row per timestep:
      ``timestep``, ``input_grad_norm`` (dL/dx_t), ``output_grad_norm`` (dL/dh_t), or for a
      bidirectional module ``output_grad_norm_forward`` and ``output_grad_norm_reverse``;
    - ``bptt/<module>/first_last_ratio``, ``decay_rate``, ``horizon``, ``seq_len``: summaries
      of the input curve (see :func:`curve_summary`);

    and on spectral steps, for each ``weight_hh_l<k>`` (and ``weight_hh_l<k>_reverse``), per
    gate block (LSTM ``i f g o``, GRU ``r z n``; a vanilla RNN has no gate level):

    - ``rnn/<module>/<weight>/<gate>/spectral_radius`` and ``.../sigma_max``;

    and on ``heatmap_every`` steps, once a curve was captured:

    - ``bptt/<module>/heatmap``: an :class:`~gradwandb.live.sinks.Image` of log10 of the input
      curve (dL/dx_t), one row per timestep (first on top), one column per monitored step,
      the last :data:`HEATMAP_COLUMNS` (:meth:`heatmap_data` has its numbers).

    :attr:`summaries` holds each module's latest :class:`RecurrentSummary`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: ScheduleLike | None = 10,
        horizon_factor: float = 0.1,
        spectral_every: ScheduleLike | None = 100,
        modules: Sequence[str] | None = None,
        keys: Keys = Keys(),  # noqa: B008  (frozen, immutable)
        clock: Callable[[], int] | None = None,
        heatmap_every: ScheduleLike | None = 500,
        on_summary: OnSummary | None = None,
    ) -> None:
        self._check_model(model)
        if isinstance(horizon_factor, bool) or not isinstance(horizon_factor, (int, float)):
            raise TypeError(f"horizon_factor must be a number in (0, 1), got {horizon_factor!r}")
        if not 0.0 < horizon_factor < 1.0:
            raise ValueError(
                f"horizon_factor must be in (0, 1), the fraction of the peak gradient norm the "
                f"horizon counts down to (e.g. 0.1), got {horizon_factor}"
            )
        if not isinstance(keys, Keys):
            raise TypeError(f"keys must be a gradwandb.Keys (the tracker's), got {keys!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning the step index, got {clock!r}")
        if on_summary is not None and not callable(on_summary):
            raise TypeError(
                "on_summary must be a callable (step, module, module_type, summary), e.g. "
                f"diagnoser.observe_recurrent, got {on_summary!r}"
            )
        self.model = model
        self.keys = keys
        self.horizon_factor = float(horizon_factor)
        self._start_clock(every, clock)
        self._spectral_at = as_schedule("spectral_every", spectral_every)
        self._heatmap_at = as_schedule("heatmap_every", heatmap_every)
        self._on_summary = on_summary
        self._summaries: dict[str, RecurrentSummary] = {}
        self._taps = [
            _Tap(path, _key_name(path, m), m, GATES.get(type(m).__name__, ()))
            for path, m in _find(model, modules)
        ]

    @property
    def summaries(self) -> dict[str, RecurrentSummary]:
        """Each module's latest :class:`RecurrentSummary`, by its name in keys."""
        return dict(self._summaries)

    def heatmap_data(self, module: str) -> tuple[list[int], list[list[float | None]]]:
        """The heatmap of ``module`` (its name in keys): the monitored steps, and per timestep
        the log10 input-gradient norm at each of them (None past that step's sequence)."""
        tap = next((t for t in self._taps if t.name == module), None)
        if tap is None:
            raise KeyError(
                f"no recurrent module named {module!r}; the monitor has "
                f"{[t.name for t in self._taps]}"
            )
        steps = [step for step, _ in tap.columns]
        length = max((len(curve) for _, curve in tap.columns), default=0)
        grid: list[list[float | None]] = [
            [_log10(curve[t]) if t < len(curve) else None for _, curve in tap.columns]
            for t in range(length)
        ]
        return steps, grid

    def attach(self) -> BPTTMonitor:
        """Hook the modules (again after :meth:`remove`; a second call does nothing)."""
        if not self._handles:
            for tap in self._taps:
                m = tap.module
                pre = m.register_forward_pre_hook(self._pre_hook(tap), with_kwargs=True)
                post = m.register_forward_hook(self._post_hook(tap), with_kwargs=True)
                self._handles += [pre, post]
        return self

    # -- hooks (forward and backward of the user's model) ---------------------------------

    def _pre_hook(self, tap: _Tap) -> Callable[..., Any]:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
            if self._guard(self._monitored_step) is None:
                return None
            return self._guard(lambda: _input_requiring_grad(args, kwargs))

        return hook

    def _post_hook(self, tap: _Tap) -> Callable[..., Any]:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
        ) -> None:
            step = self._guard(self._monitored_step)
            if step is not None:
                self._guard(lambda: self._capture(tap, step, args, kwargs, out))

        return hook

    def _capture(
        self, tap: _Tap, step: int, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        if tap.step != step:
            tap.reset(step)  # data of an earlier step that was never reported: dropped
        x = args[0] if args else kwargs.get("input")
        y = out[0] if isinstance(out, tuple) else out
        # nn.RNN/LSTM/GRU say; any other sequence module is taken as [batch, time, features]
        first = bool(getattr(tap.module, "batch_first", True))
        for seq, curve, dirs in ((x, tap.inputs, 1), (y, tap.outputs, tap.directions)):
            layout = _layout(seq, first)
            if layout is None:
                continue
            data, counts, packed = layout
            hook = self._grad_hook(tap, step, curve, counts, packed, first, dirs)
            tap.tensor_hooks.append(data.register_hook(hook))  # type: ignore[no-untyped-call]

    def _grad_hook(
        self,
        tap: _Tap,
        step: int,
        curve: _Curve,
        counts: list[int],
        packed: bool,
        batch_first: bool,
        directions: int,
    ) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            if self._failed or tap.step != step:
                return  # a graph of a step already reported, or dropped

            def add() -> None:
                with torch.no_grad():
                    sums = timestep_norm_sums(
                        grad,
                        batch_first=batch_first,
                        batch_sizes=counts if packed else None,
                        directions=directions,
                    )
                curve.add(sums, counts)

            self._guard(add)

        return hook

    def _guard(self, body: Callable[[], _T]) -> _T | None:
        """Run ``body``; an error of ours is reported once and switches the monitor off."""
        try:
            return body()
        except Exception as exc:  # never break the user's forward or backward
            if not self._failed:
                self._failed = True
                warnings.warn(
                    f"gradwandb.BPTTMonitor: internal error ({type(exc).__name__}: {exc}); "
                    "per-timestep monitoring is switched off and training goes on",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return None

    # -- the observer -----------------------------------------------------------------------

    def __call__(self, record: StepRecord) -> dict[str, Value] | None:
        """The ``bptt/...`` and ``rnn/...`` keys of step ``record.step``, or None.

        Moves everything captured for this step, and the spectral results of a spectral step,
        to the host in one transfer.
        """
        step = record.step
        self._next = step + 1
        if self._failed:
            return None
        row: dict[str, Value] | None = self._guard(lambda: self._report(step))
        return row or None

    def _report(self, step: int) -> dict[str, Value]:
        device: dict[str, Tensor] = {}
        ready = [t for t in self._taps if t.step == step and t.inputs.sums is not None]
        for i, tap in enumerate(ready):
            assert tap.inputs.sums is not None
            device[f"in{i}"] = tap.inputs.sums
            if tap.outputs.sums is not None:
                device[f"out{i}"] = tap.outputs.sums
        spectral: list[tuple[_Tap, list[tuple[str, str | None]]]] = []
        if self._spectral_at(step):
            for j, tap in enumerate(self._taps):
                if not isinstance(tap.module, RECURRENT):
                    continue  # another sequence module: no recurrent weights to look at
                names, mats = tap.weights()
                tap.spectrum = tap.spectrum or PowerIteration()
                device[f"spec{j}"] = tap.spectrum.advance(mats)
                spectral.append((tap, names))
        row: dict[str, Value] = {}
        if device:
            host = S.to_host(device)  # the monitor's one sync on this step, after the tracker's
            for j, (tap, names) in enumerate(spectral):
                assert tap.spectrum is not None
                results = tap.spectrum.read(host[f"spec{j}"])
                radii = [r for r, _ in results if math.isfinite(r)]
                tap.radius = max(radii) if radii else None
                for (weight, gate), (radius, sigma) in zip(names, results, strict=True):
                    row[rnn_key(self.keys, tap.name, weight, gate, SPECTRAL_RADIUS)] = radius
                    row[rnn_key(self.keys, tap.name, weight, gate, SIGMA_MAX)] = sigma
            reports = []
            for i, tap in enumerate(ready):
                curve_row, summary = self._curve_row(tap, step, host[f"in{i}"], host.get(f"out{i}"))
                row.update(curve_row)
                reports.append((tap, summary))
            for tap in self._taps:
                if tap.step == step:
                    tap.reset(None)  # reported (or only half captured): done with this step
            for tap, summary in reports:
                self._summaries[tap.name] = summary
                self._notify(tap, summary)
        if step > 0 and self._heatmap_at(step):  # at step 0 a heatmap is one column: wait
            row.update(self._heatmaps())
        return row

    def _notify(self, tap: _Tap, summary: RecurrentSummary) -> None:
        """Hand ``summary`` to ``on_summary``; its error is reported once and switches it off."""
        callback = self._on_summary
        if callback is None:
            return
        try:
            callback(summary.step, tap.name, type(tap.module).__name__, summary)
        except Exception as exc:
            self._on_summary = None
            warnings.warn(
                f"gradwandb.BPTTMonitor: on_summary failed ({type(exc).__name__}: {exc}); it is "
                "switched off and monitoring goes on",
                RuntimeWarning,
                stacklevel=2,
            )

    def _heatmaps(self) -> dict[str, Value]:
        """The heatmap image of every module with columns; a drawing error switches them off."""
        row: dict[str, Value] = {}
        for tap in self._taps:
            if not tap.columns:
                continue
            steps, grid = self.heatmap_data(tap.name)
            try:
                png = _timestep_heatmap(tap.name, steps, grid)
            except Exception as exc:
                self._heatmap_at = _never
                warnings.warn(
                    f"gradwandb.BPTTMonitor: drawing the heatmap failed ({type(exc).__name__}: "
                    f"{exc}); heatmaps are switched off and monitoring goes on",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return {}
            caption = f"{tap.name}: log10 dL/dx_t, timestep x step"
            row[bptt_key(self.keys, tap.name, HEATMAP)] = Image(png, caption)
        return row

    def _curve_row(
        self, tap: _Tap, step: int, inputs: list[float], outputs: list[float] | None
    ) -> tuple[dict[str, Value], RecurrentSummary]:
        length = max(len(tap.inputs.counts), len(tap.outputs.counts))
        x = tap.inputs.means(inputs, length)[0]
        dirs = tap.directions
        ys = tap.outputs.means(outputs, length) if outputs is not None else [[0.0] * length] * dirs
        columns = ("timestep", "input_grad_norm", *OUTPUT_COLUMNS[dirs])
        rows = [[t, x[t], *(y[t] for y in ys)] for t in range(length)]
        row: dict[str, Value] = {bptt_key(self.keys, tap.name, CURVE): Table(columns, rows)}
        stats = curve_summary(x, self.horizon_factor)
        for stat, value in stats.items():
            row[bptt_key(self.keys, tap.name, stat)] = value
        tap.columns.append((step, list(x)))
        decay, ratio = stats.get(DECAY_RATE), stats.get(FIRST_LAST_RATIO)
        summary = RecurrentSummary(
            step=step,
            seq_len=int(stats[SEQ_LEN]),
            horizon=int(stats[HORIZON]),
            decay_rate=None if decay is None else float(decay),
            first_last_ratio=None if ratio is None else float(ratio),
            spectral_radius=tap.radius,
        )
        return row, summary


def _never(step: int) -> bool:
    return False


def _timestep_heatmap(name: str, steps: list[int], grid: list[list[float | None]]) -> bytes:
    """PNG of one module's heatmap, drawn with :mod:`gradwandb.plots.charts`' heatmap code."""
    fig = _heatmap_figure(steps, [str(t) for t in range(len(grid))], grid)
    ax = fig.axes[0]
    ax.set_ylabel("timestep")
    ax.set_xlabel("optimizer step (monitored steps)")
    ax.set_title(
        f"{name}: log10 input-gradient norm dL/dx_t per timestep (first on top)",
        loc="left",
        fontsize=10,
    )
    return _png(fig)


def _find(model: nn.Module, paths: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    found: list[tuple[str, nn.Module]] = [
        (p, m) for p, m in model.named_modules() if isinstance(m, RECURRENT)
    ]
    if paths is None:
        if not found:
            raise ValueError(
                f"{type(model).__name__} has no nn.RNN, nn.LSTM or nn.GRU module, which is what "
                "BPTTMonitor watches (cells such as nn.LSTMCell run one timestep a call and are "
                "not supported); pass a model that contains one"
            )
        return found
    if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
        raise TypeError(f"modules must be a list of module paths, e.g. ['encoder'], got {paths!r}")
    if not paths:
        raise ValueError("modules is empty: pass None to watch every recurrent module")
    every_module = dict(model.named_modules())
    recurrent = [p or "''" for p, _ in found]
    chosen: list[tuple[str, nn.Module]] = []
    for path in paths:
        if path not in every_module:
            raise ValueError(
                f"module path {path!r} is not in {type(model).__name__}; its recurrent modules "
                f"are {recurrent}"
            )
        # opt-in: a named module that is not recurrent is watched as a sequence module
        chosen.append((path, every_module[path]))
    return chosen


def _key_name(path: str, module: nn.Module) -> str:
    """The module's name in keys: its path, or its class name for a bare module."""
    return path or type(module).__name__.lower()


def _input_requiring_grad(
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


def _layout(seq: Any, batch_first: bool) -> tuple[Tensor, list[int], bool] | None:
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
