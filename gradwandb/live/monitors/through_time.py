"""Through time: per-timestep (BPTT) gradients and recurrent weight health of RNN, LSTM and GRU.

Is a recurrent model learning from the early part of the sequence? :class:`BPTTMonitor` hooks
every ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` of a model and, on monitored steps, measures at
each timestep ``t`` the gradient norm of the loss with respect to the module's input sequence,
dL/dx_t (the signal that reached timestep ``t`` through time; with cuDNN this is the only place
it can be seen), and with respect to its output sequence, dL/dh_t (what the heads send in),
each averaged over the sequences of the batch. Called as a tracker observer it adds them to the
logged row, with summaries, and every ``spectral_every`` steps the spectral radius and largest
singular value of each recurrent weight matrix, per gate block.

Where the gradient lands, and how far the recurrence carries it. dL/dx_t is where the loss's
gradient lands in time: with a loss at every timestep (language models, decoders) it stays flat
however fast the recurrence forgets, since each x_t gets the gradient of its own and the next
few loss terms. On the same monitored steps a memory probe measures the recurrence itself,
||d h_T / d x_t||: how strongly the module's final state depends on its input ``t`` steps back,
by re-running the module alone on a few of the step's input sequences
(:mod:`gradwandb.live.monitors.memory`, which says how). Its summaries are the ones the rules
through time judge.

Which step is monitored. A forward pass belongs to the optimizer step that follows it. The
monitor reads that step's index from ``clock`` when given (``clock=lambda: tracker.step``: exact
whatever the tracker's logging schedule), else from the records it is called with: after the
record of step ``k`` the next forwards belong to step ``k + 1``. The hooks capture on the
forwards of a step ``s`` with ``every(s)`` true (``s % every == 0``), and the record of step
``s`` reports what they captured. Captured data is tagged with its step and reported only by
that step's record, so a curve is never attributed to another step (without a clock and with a
tracker that does not log every step, a monitored step whose previous step was not logged is
skipped). Calls of a module that continue one sequence (a decoder called once per token
within a forward, its state passed by hand) are stitched in call order into one sequence;
other sequences of the step (micro-batches, several forwards) are pooled by timestep index
(:mod:`gradwandb.live.monitors.sequence_capture` says how the two are told apart).

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
The memory probe, on monitored steps, keeps views of the first ``probe_sequences`` sequences in
the forward hook and, at the report, runs one forward and one backward of the module alone over
them (4 sequences by default: on the seq2seq benchmark, batch 32 x 50 on a CPU, both modules'
probes together cost about a sixth of a training step, under 2% of a step with ``every=10``);
its per-timestep norms join the same one transfer.

The hooks are in :mod:`gradwandb.live.monitors.sequence_capture`; this module reports: the
curves, their summaries (:func:`curve_summary`), the spectra and the heatmaps, and each
module's :class:`~gradwandb.live.record.RecurrentSummary` in the record of the step.

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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from gradwandb.keys import (
    CURVE,
    CURVE_COLUMNS,
    DECAY_RATE,
    FIRST_LAST_RATIO,
    HEATMAP,
    HORIZON,
    MEMORY_COLUMNS,
    MEMORY_CURVE,
    MEMORY_DECAY_RATE,
    MEMORY_FIRST_LAST_RATIO,
    MEMORY_HORIZON,
    OUTPUT_COLUMNS,
    SEQ_LEN,
    SIGMA_MAX,
    SPECTRAL_RADIUS,
    Keys,
    bptt_key,
    rnn_key,
)
from gradwandb.live.monitors.base import key_name, log10_abs
from gradwandb.live.monitors.memory import PROBE_SEQUENCES, memory_norms
from gradwandb.live.monitors.sequence_capture import (
    RECURRENT,
    SequenceCapture,
    SequenceTap,
    timestep_norm_sums,
)
from gradwandb.live.monitors.spectra import PowerIteration, recurrent_maps
from gradwandb.live.record import RecurrentSummary, StepRecord
from gradwandb.live.schedules import ScheduleLike, as_schedule
from gradwandb.live.shield import Shield
from gradwandb.live.sinks import Image, Table, Value
from gradwandb.live.stats import kernels as S

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

HEATMAP_COLUMNS = 100  # monitored steps kept per module for the heatmap
CURVE_EVERY = 10  # monitored steps between two logged curve tables (the first is logged)


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


@dataclass
class _History:
    """What one module's reports keep from step to step."""

    spectrum: PowerIteration | None = None
    radius: float | None = None  # largest spectral radius at the latest spectral step
    columns: deque[tuple[int, list[float]]] = field(
        default_factory=lambda: deque(maxlen=HEATMAP_COLUMNS)
    )  # (step, input-gradient curve) of the latest monitored steps


# -- the monitor ----------------------------------------------------------------------------


class BPTTMonitor(SequenceCapture):
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
        probe_sequences: how many sequences of a monitored step the memory probe re-runs
            (the first of the batch); 0: no probe.
        curve_every: log the per-timestep curve tables on every this-many-th monitored step
            (the first included; 1: every one). The summaries, the diagnosis and the heatmap
            take every monitored step either way: a W&B Table costs a file and about 10 ms
            per module, most of a monitored step's cost.

    Call :meth:`attach` to hook the modules, add the monitor as an observer
    (``tracker.add_observer(monitor)``), and :meth:`remove` when done.

    Keys (``<module>`` is the module's path, e.g. ``encoder``, or its class name in lower case
    when the model is the recurrent module itself; a tagged ``keys`` inserts its tag after the
    first ``/``), on monitored steps:

    - ``bptt/<module>/curve`` (on every ``curve_every``-th monitored step): a
      :class:`~gradwandb.live.sinks.Table` with a row per timestep:
      ``timestep``, ``input_grad_norm`` (dL/dx_t), ``output_grad_norm`` (dL/dh_t), or for a
      bidirectional module ``output_grad_norm_forward`` and ``output_grad_norm_reverse``;
    - ``bptt/<module>/first_last_ratio``, ``decay_rate``, ``horizon``, ``seq_len``: summaries
      of the input curve (see :func:`curve_summary`);
    - for an ``nn.RNN``, ``nn.LSTM`` or ``nn.GRU`` with ``probe_sequences`` > 0, the memory
      probe: ``bptt/<module>/memory_curve``, a Table with a row per timestep, ``timestep`` and
      ``memory_norm`` (||d h_T / d x_t||), and its summaries ``memory_first_last_ratio``,
      ``memory_decay_rate``, ``memory_horizon`` (as :func:`curve_summary`'s);

    and on spectral steps, for each ``weight_hh_l<k>`` (and ``weight_hh_l<k>_reverse``), per
    gate block (LSTM ``i f g o``, GRU ``r z n``; a vanilla RNN has one block, gate ``all``):

    - ``rnn/<module>/<weight>/<gate>/spectral_radius`` and ``.../sigma_max``;

    and on ``heatmap_every`` steps, once a curve was captured:

    - ``bptt/<module>/heatmap``: an :class:`~gradwandb.live.sinks.Image` of log10 of the input
      curve (dL/dx_t), one row per timestep (first on top), one column per monitored step,
      the last :data:`HEATMAP_COLUMNS` (:meth:`heatmap_data` has its numbers).

    The record of a step that reports a module's curve gets its measures too:
    ``record.through_time[<module>]``, a :class:`~gradwandb.live.record.RecurrentSummary`
    (with the latest spectral radius), and ``record.module_types[<module>]``, its class name;
    :attr:`summaries` holds each module's latest.
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
        probe_sequences: int = PROBE_SEQUENCES,
        curve_every: int = CURVE_EVERY,
    ) -> None:
        self._check_model(model)
        if isinstance(horizon_factor, bool) or not isinstance(horizon_factor, (int, float)):
            raise TypeError(f"horizon_factor must be a number in (0, 1), got {horizon_factor!r}")
        if not 0.0 < horizon_factor < 1.0:
            raise ValueError(
                f"horizon_factor must be in (0, 1), the fraction of the peak gradient norm the "
                f"horizon counts down to (e.g. 0.1), got {horizon_factor}"
            )
        if (
            isinstance(probe_sequences, bool)
            or not isinstance(probe_sequences, int)
            or probe_sequences < 0
        ):
            raise ValueError(
                "probe_sequences must be an int >= 0, the sequences of a batch the memory probe "
                f"re-runs (e.g. 4; 0: no probe), got {probe_sequences!r}"
            )
        if isinstance(curve_every, bool) or not isinstance(curve_every, int) or curve_every < 1:
            raise ValueError(
                "curve_every must be an int >= 1, how many monitored steps apart the curve "
                f"tables are logged (e.g. 10; 1: every monitored step), got {curve_every!r}"
            )
        self._start(model, keys, every, clock)
        self.probe_sequences = probe_sequences
        self.curve_every = curve_every
        self._reports = 0  # monitored steps reported so far
        self._probe_shield = Shield(
            "gradwandb.BPTTMonitor", "the memory probe is switched off (the curves go on)"
        )
        self.horizon_factor = float(horizon_factor)
        self._spectral_at = as_schedule("spectral_every", spectral_every)
        self._heatmap_at = as_schedule("heatmap_every", heatmap_every)
        self._heatmap_shield = Shield(
            "gradwandb.BPTTMonitor", "the timestep heatmaps are switched off (the curves go on)"
        )
        self._summaries: dict[str, RecurrentSummary] = {}
        self._taps = [SequenceTap(p, key_name(p, m), m) for p, m in self._find(model, modules)]
        self._history = {tap.name: _History() for tap in self._taps}

    @property
    def summaries(self) -> dict[str, RecurrentSummary]:
        """Each module's latest :class:`~gradwandb.live.record.RecurrentSummary`, by its name
        in keys."""
        return dict(self._summaries)

    def heatmap_data(self, module: str) -> tuple[list[int], list[list[float | None]]]:
        """The heatmap of ``module`` (its name in keys): the monitored steps, and per timestep
        the log10 input-gradient norm at each of them (None past that step's sequence)."""
        history = self._history.get(module)
        if history is None:
            raise KeyError(
                f"no recurrent module named {module!r}; the monitor has "
                f"{[t.name for t in self._taps]}"
            )
        steps = [step for step, _ in history.columns]
        length = max((len(curve) for _, curve in history.columns), default=0)
        grid: list[list[float | None]] = [
            [log10_abs(curve[t]) if t < len(curve) else None for _, curve in history.columns]
            for t in range(length)
        ]
        return steps, grid

    # -- the observer -----------------------------------------------------------------------

    def _report(self, record: StepRecord) -> dict[str, Value]:
        """The ``bptt/...`` and ``rnn/...`` keys of step ``record.step``, with the record's
        ``through_time`` and ``module_types`` filled for each module whose curve it reports.

        Moves everything captured for this step, and the spectral results of a spectral step,
        to the host in one transfer.
        """
        step = record.step
        device: dict[str, Tensor] = {}
        ready = [t for t in self._taps if t.step == step and t.inputs.sums is not None]
        for i, tap in enumerate(ready):
            assert tap.inputs.sums is not None
            device[f"in{i}"] = tap.inputs.sums
            if tap.outputs.sums is not None:
                device[f"out{i}"] = tap.outputs.sums
            memory = self._probe(tap)
            if memory is not None:
                device[f"mem{i}"] = memory
        spectral: list[tuple[SequenceTap, list[tuple[str, str | None]]]] = []
        if self._spectral_at(step):
            for j, tap in enumerate(self._taps):
                if not isinstance(tap.module, RECURRENT):
                    continue  # another sequence module: no recurrent weights to look at
                names, mats = recurrent_maps(tap.module)
                history = self._history[tap.name]
                history.spectrum = history.spectrum or PowerIteration()
                device[f"spec{j}"] = history.spectrum.advance(mats)
                spectral.append((tap, names))
        row: dict[str, Value] = {}
        if device:
            host = S.to_host(device)  # the monitor's one sync on this step, after the tracker's
            for j, (tap, names) in enumerate(spectral):
                history = self._history[tap.name]
                assert history.spectrum is not None
                results = history.spectrum.read(host[f"spec{j}"])
                radii = [r for r, _ in results if math.isfinite(r)]
                history.radius = max(radii) if radii else None
                for (weight, gate), (radius, sigma) in zip(names, results, strict=True):
                    row[rnn_key(self.keys, tap.name, weight, gate, SPECTRAL_RADIUS)] = radius
                    row[rnn_key(self.keys, tap.name, weight, gate, SIGMA_MAX)] = sigma
            reports = []
            tables = self._reports % self.curve_every == 0
            self._reports += bool(ready)
            for i, tap in enumerate(ready):
                curve_row, summary = self._curve_row(
                    tap, step, host[f"in{i}"], host.get(f"out{i}"), host.get(f"mem{i}"), tables
                )
                row.update(curve_row)
                reports.append((tap, summary))
            for tap in self._taps:
                if tap.step == step:
                    tap.reset(None)  # reported (or only half captured): done with this step
            for tap, summary in reports:
                self._summaries[tap.name] = summary
                record.through_time[tap.name] = summary
                record.module_types[tap.name] = summary.module_type
        if step > 0 and not self._heatmap_shield.failed and self._heatmap_at(step):
            row.update(self._heatmap_shield.run(self._heatmaps) or {})  # not at step 0: one column
        return row

    def _heatmaps(self) -> dict[str, Value]:
        """The heatmap image of every module with columns."""
        from gradwandb.plots.charts import timestep_heatmap  # matplotlib only when drawing

        row: dict[str, Value] = {}
        for tap in self._taps:
            if not self._history[tap.name].columns:
                continue
            steps, grid = self.heatmap_data(tap.name)
            caption = f"{tap.name}: log10 dL/dx_t, timestep x step"
            png = timestep_heatmap(tap.name, steps, grid)
            row[bptt_key(self.keys, tap.name, HEATMAP)] = Image(png, caption)
        return row

    def _probe(self, tap: SequenceTap) -> Tensor | None:
        """The memory probe of ``tap`` on the device (no sync), or None."""
        shield = self._probe_shield
        module = tap.module
        if shield is None or shield.failed or not isinstance(module, nn.RNNBase):
            return None
        if not tap.probe.ready:
            return None
        return shield.run(lambda: memory_norms(module, tap.probe))

    def _curve_row(
        self,
        tap: SequenceTap,
        step: int,
        inputs: list[float],
        outputs: list[float] | None,
        memory: list[float] | None = None,
        tables: bool = True,
    ) -> tuple[dict[str, Value], RecurrentSummary]:
        length = max(len(tap.inputs.counts), len(tap.outputs.counts))
        x = tap.inputs.means(inputs, length)[0]
        dirs = tap.directions
        ys = tap.outputs.means(outputs, length) if outputs is not None else [[0.0] * length] * dirs
        row: dict[str, Value] = {}
        if tables:
            columns = (*CURVE_COLUMNS, *OUTPUT_COLUMNS[dirs])
            rows = [[t, x[t], *(y[t] for y in ys)] for t in range(length)]
            row[bptt_key(self.keys, tap.name, CURVE)] = Table(columns, rows)
        stats = curve_summary(x, self.horizon_factor)
        for stat, value in stats.items():
            row[bptt_key(self.keys, tap.name, stat)] = value
        history = self._history[tap.name]
        history.columns.append((step, list(x)))
        decay, ratio = stats.get(DECAY_RATE), stats.get(FIRST_LAST_RATIO)
        mem: dict[str, float | int] = {}
        if memory is not None:
            if tables:
                rows = [[t, m] for t, m in enumerate(memory)]
                row[bptt_key(self.keys, tap.name, MEMORY_CURVE)] = Table(MEMORY_COLUMNS, rows)
            mem = curve_summary(memory, self.horizon_factor)
            for stat, name in _MEMORY_STATS.items():
                if stat in mem:
                    row[bptt_key(self.keys, tap.name, name)] = mem[stat]
        mem_rate = mem.get(DECAY_RATE)
        summary = RecurrentSummary(
            step=step,
            seq_len=int(stats[SEQ_LEN]),
            horizon=int(stats[HORIZON]),
            decay_rate=None if decay is None else float(decay),
            first_last_ratio=None if ratio is None else float(ratio),
            spectral_radius=history.radius,
            module_type=type(tap.module).__name__,
            memory_horizon=int(mem[HORIZON]) if mem else None,
            memory_decay_rate=None if mem_rate is None else float(mem_rate),
            memory_len=int(mem[SEQ_LEN]) if mem else None,
        )
        return row, summary


# the memory curve's summaries and their keys
_MEMORY_STATS = {
    HORIZON: MEMORY_HORIZON,
    DECAY_RATE: MEMORY_DECAY_RATE,
    FIRST_LAST_RATIO: MEMORY_FIRST_LAST_RATIO,
}
