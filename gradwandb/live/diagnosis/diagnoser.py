"""The rules engine: a :class:`Diagnoser` reads one
:class:`~gradwandb.live.record.StepRecord` per logged step and says what is wrong, where,
since when and what to try, as :class:`~gradwandb.live.diagnosis.findings.Finding` s;
:meth:`Diagnoser.diagnosis` gives the run's verdict. It is pure: no hooks, no tensors, no
sink, only the host-side numbers of each record (including what the monitors put in it).

The rules, by family (every threshold is a field of :class:`Thresholds`), run in this order
on each record: :mod:`~.rules.forward` (the module a forward NaN/Inf was born in, when the
forward check named one; it then stands for the record's NaN/Inf gradients), else
:mod:`~.rules.nonfinite`; :mod:`~.rules.global_norm`; on records with per-layer norms
:mod:`~.rules.per_layer`, :mod:`~.rules.flow` (the ends, and a weak layer in the middle) and
:mod:`~.rules.unused`; :mod:`~.rules.weights` on records with weight norms;
:mod:`~.rules.clipping`; :mod:`~.rules.activations` on records with activation health; then
:mod:`~.rules.through_time` on the modules the record reports through time.
:meth:`Diagnoser.observe_loss` judges the user's loss, which no record carries.

Each finding is reported once per kind and layer; its ``step`` is the step the condition began
(for sustained rules, the first step of the stretch). The verdict is the worst *error* kind seen
in the run: nonfinite > exploding > vanishing (vanishing and flow) > healthy; warnings (spikes,
dead parameters, vanishing biases, saturation under ``saturation``, dead units, activation
scale, unused parameters, clipping, growing weights) leave it healthy. Severe saturation is
reported as vanishing, NaN/Inf weights, loss and forward outputs as nonfinite.

Cost: O(1) per record that carries only the global scalars, O(layers) per per-layer record;
memory is bounded by the number of layers and modules and the windows.

>>> d = Diagnoser()
>>> for step in range(3):
...     found = d.update(StepRecord(step=step, names=["0.weight"], norm=[2e-6], global_norm=2e-6))
>>> [(f.kind, f.layer, f.step) for f in d.diagnosis().findings]
[('vanishing', None, 0), ('vanishing', '0.weight', 0)]
>>> d.diagnosis().verdict
'vanishing'
>>> d.health()["health/vanishing_layers"]
1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from gradwandb import keys as K
from gradwandb.keys import Keys
from gradwandb.live.diagnosis.emit import Emitter
from gradwandb.live.diagnosis.findings import Diagnosis, Finding, verdict_of
from gradwandb.live.diagnosis.rules.activations import ActivationRules
from gradwandb.live.diagnosis.rules.clipping import ClippingRule
from gradwandb.live.diagnosis.rules.flow import FlowRule, GapRule
from gradwandb.live.diagnosis.rules.forward import ForwardRule
from gradwandb.live.diagnosis.rules.global_norm import GlobalNormRules
from gradwandb.live.diagnosis.rules.nonfinite import culprits, nonfinite
from gradwandb.live.diagnosis.rules.per_layer import PerLayerRules
from gradwandb.live.diagnosis.rules.through_time import ThroughTimeRules
from gradwandb.live.diagnosis.rules.unused import UnusedRule
from gradwandb.live.diagnosis.rules.weights import WeightRules
from gradwandb.live.diagnosis.thresholds import Thresholds
from gradwandb.live.record import StepRecord


class Diagnoser:
    """Runs every rule over the records of one model; feed it each logged record in order.

    ``layer_types`` maps a parameter name to the class name of the module that owns it
    (``"Linear"``, ``"LSTM"``, ``"RNN"``, ``"Conv2d"``, ...); it picks the fix to suggest.
    ``watched`` is every watched parameter's name (a record names only those that had a
    gradient), for the unused rule; ``trainable(name)`` tells a frozen one (not a finding)
    from one that gets no gradient although it requires grad. Without ``watched`` the unused
    rule is off.
    """

    def __init__(
        self,
        thresholds: Thresholds | None = None,
        layer_types: Mapping[str, str] | None = None,
        *,
        watched: Sequence[str] | None = None,
        trainable: Callable[[str], bool] | None = None,
    ) -> None:
        if thresholds is None:
            thresholds = Thresholds()
        if not isinstance(thresholds, Thresholds):
            raise TypeError(
                f"Diagnoser(thresholds={thresholds!r}): pass a gradwandb.Thresholds, "
                "e.g. Thresholds(explode_global=50.0), or None for the defaults"
            )
        types = {} if layer_types is None else layer_types
        if not isinstance(types, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in types.items()
        ):
            raise TypeError(
                f"Diagnoser(layer_types={layer_types!r}): pass a mapping of parameter name to "
                "module class name, e.g. {'rnn.weight_hh_l0': 'RNN'}, or None"
            )
        self.thresholds = thresholds
        self._out = Emitter(types)
        self._global = GlobalNormRules(thresholds)
        self._layers = PerLayerRules(thresholds)
        self._flow = FlowRule(thresholds)
        self._time = ThroughTimeRules(thresholds)
        self._gap = GapRule(thresholds)
        self._acts = ActivationRules(thresholds)
        self._forward = ForwardRule()
        self._unused = UnusedRule(thresholds, list(watched or ()), trainable)
        self._clipping = ClippingRule(thresholds)
        self._weights = WeightRules(thresholds)
        self._loss_bad = False  # the last loss observed was NaN/Inf
        self._health: dict[str, float] = {}

    def update(self, record: StepRecord) -> list[Finding]:
        """Read one logged record; return the findings that are new at it (those of the
        gradients first, then those through time)."""
        return self.step_rules(record) + self.time_rules(record)

    def step_rules(self, record: StepRecord) -> list[Finding]:
        """The rules on the record's gradients (all but those through time); the new findings."""
        if record.norm and len(record.norm) != len(record.names):
            raise ValueError(
                f"StepRecord(step={record.step}) has {len(record.norm)} per-layer norms for "
                f"{len(record.names)} names: pass one norm per name, or norm=[] for a record "
                "with only the global scalars"
            )
        out = self._out
        out.begin(record)
        health: dict[str, float] = {}
        if self._forward(record, out):  # the module named: not "the loss itself"
            bad = bool(
                culprits(record)
                or record.nonfinite_tensors
                or not math.isfinite(record.global_norm)
            )
        else:
            bad = nonfinite(record, out)
        self._forward.saw_gradients(record)
        exploding = self._global(record, out, health)
        if record.norm:
            exploding = self._layers(record, out, health) or exploding
            self._flow(record, out, health)
            self._gap(record, out)
            self._unused(record, out)
        else:
            self._gap.blocked = False
        if record.param_norm:
            bad = self._weights(record, out) or bad
        self._clipping(record, out)
        self._acts(record, out)
        vanishing = (
            self._global.vanishing
            or self._layers.sustained > 0
            or self._flow.blocked
            or self._gap.blocked
            or self._acts.saturated > 0
        )
        health[K.H_EXPLODING] = 1.0 if exploding else 0.0
        health[K.H_VANISHING] = 1.0 if vanishing else 0.0
        health[K.H_NONFINITE] = 1.0 if bad or self._loss_bad else 0.0
        self._health = health
        return out.new

    def observe_loss(self, step: int, value: float) -> list[Finding]:
        """Read the loss the user computed at ``step``; the findings that are new (a
        **nonfinite** error, for the whole model, the first time it is NaN/Inf). The rules
        never see the loss otherwise: the tracker sees only gradients."""
        out = self._out
        out.new = []
        self._loss_bad = not math.isfinite(value)
        if self._loss_bad:
            out.emit(
                "nonfinite",
                "error",
                None,
                step,
                value,
                lambda: (
                    f"the loss is {value} at step {step}: every gradient of the step will be "
                    "NaN/Inf; the loss (or the model output) itself is non-finite"
                ),
                remedy="loss",
            )
        return out.new

    def time_rules(self, record: StepRecord) -> list[Finding]:
        """The rules through time on the modules ``record`` reports; the new findings. Run
        after :meth:`step_rules` of the same record."""
        out = self._out
        out.begin(record)
        self._time(record, out)
        return out.new

    def health(self) -> dict[str, float]:
        """Signals of the last record, as ``{"health/<name>": float}``.

        Every record: ``exploding``, ``vanishing``, ``nonfinite`` (0 or 1), ``spike_z`` (z-score
        of log10 global norm), ``growth`` (decades the global norm rose over the window).
        Records with per-layer norms add ``vanishing_layers``, ``dead_layers`` (counts) and,
        with two or more layers to compare, ``flow_ratio`` (log10 latest over earliest).
        """
        return self.health_row(Keys())

    def health_row(self, keys: Keys) -> dict[str, float]:
        """:meth:`health` under ``keys`` (``health/<tag>/<name>`` for a tagged tracker)."""
        return {K.health_key(keys, signal): v for signal, v in self._health.items()}

    def diagnosis(self) -> Diagnosis:
        """The verdict of the run so far and all its findings."""
        findings = tuple(self._out.findings)
        return Diagnosis(verdict_of(findings), findings)
