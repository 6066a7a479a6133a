"""The key contract: every name gradwandb logs, in one place both wings import.

The statistic comes first so that each W&B panel section (the part before the first ``/``)
holds one statistic across all layers. Every key is a fixed sequence of ``/``-separated
segments per family, so :func:`parse_key` reads any key back into its parts:

==================================================  =========================================
key                                                 what
==================================================  =========================================
``grad/[<tag>/]<stat>``                             run-level gradient scalars (global_norm,
                                                    clip_coef, clip_<extra>, a statistic's own)
``amp/``, ``guard/``, ``health/``, ``charts/``,     run-level, same shape: section, optional
``gradwandb/[<tag>/]<stat>``                        tag, one statistic segment
``<family>/[<tag>/]<param>``                        per parameter: grad_norm, grad_hist, ...,
                                                    and registered statistics
``bptt/[<tag>/]<module>/<stat>``                    through time, per recurrent module
``act/[<tag>/]<module>/<stat>``                     activation health, per module
``rnn/[<tag>/]<module>/<weight>/<gate>/<stat>``     spectra of recurrent weight blocks; gate is
                                                    :data:`NO_GATE` (``all``) for nn.RNN
==================================================  =========================================

Names are escaped. A parameter, module, weight, gate or tag name goes into its segment
through :func:`escape_name`: ``%`` becomes ``%25`` and ``/`` becomes ``%2F``, so a segment
never holds a raw ``/``; :func:`unescape` gives the name back. Names from
``named_parameters()`` and ``named_modules()`` hold neither character, so their keys read as
they always did:

>>> Keys().param("grad_norm", "encoder.weight")
'grad_norm/encoder.weight'
>>> Keys().param("grad_norm", "critic/0.weight")
'grad_norm/critic%2F0.weight'

A tracker watching a second model in the same run carries a *tag*, which becomes the segment
right after the section, so the panel section stays the same and the keys stay distinct. The
number of segments tells a tagged key from an untagged one:

>>> Keys("critic").param("grad_norm", "0.weight")
'grad_norm/critic/0.weight'
>>> Keys("critic").scalar(GLOBAL_NORM)
'grad/critic/global_norm'
>>> parse_key("grad_norm/critic/0.weight")
ParsedKey(family='grad_norm', tag='critic', subject='0.weight', statistic='grad_norm')
>>> parse_key("grad_norm/critic%2F0.weight").subject
'critic/0.weight'
>>> parse_key("loss") is None
True

Guarantee: two distinct ``(family, tag, subject, statistic, weight, gate)`` never make the same
key (tags and gates are None or non-empty; an empty one means none). Statistic and family
names are fixed tokens of letters, digits and ``_`` (see :func:`register_family`).

Extending: a user-defined statistic logs its per-parameter values as
``<statistic name>/<param>``, like ``grad_norm``, and a per-run value as
``grad/<statistic name>``. Declare the per-parameter family once with
:func:`register_family` (the live side does it when a statistic is added), or pass
``families=`` to :func:`parse_key`; a reader can also take the list a run stored under
:data:`FAMILIES`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Scalars logged on every logged step.
STEP = "gradwandb/step"  # index of the optimizer step (0-based), the grad metrics' own axis
GLOBAL_NORM = "grad/global_norm"  # L2 norm over all watched gradients, before clipping
CLIP_COEF = "grad/clip_coef"  # scale clipping applied, in (0, 1]; 1.0 when it did not bite
CLIP_RATE = "grad/clip_rate"  # fraction of steps so far on which clipping bit
CLIP_THRESHOLD = "grad/clip_threshold"  # the max-norm the policy used this step
NONFINITE = "grad/nonfinite"  # number of watched tensors holding NaN or Inf
AMP_OVERFLOW_SKIP = "amp/overflow_skip"  # 1 on a step GradScaler skipped for overflow
AMP_SCALE = "amp/scale"  # the GradScaler's loss scale
GUARD_SKIPPED = "guard/skipped"  # with guard=: 1 on a step skipped for NaN/Inf gradients, else 0
GUARD_SKIPPED_TOTAL = "guard/skipped_total"  # with guard=: steps skipped so far
HEALTH = "health"  # section of the diagnosis signals, "health/<signal>", on every logged row

# Per-parameter statistics: "<family>/<parameter name>".
GRAD_NORM = "grad_norm"
GRAD_MEAN_ABS = "grad_mean_abs"
GRAD_MAX_ABS = "grad_max_abs"
GRAD_NONFINITE = "grad_nonfinite"  # count of NaN/Inf elements (histogram steps and bad steps)
GRAD_ZERO_FRAC = "grad_zero_frac"  # fraction of exactly-zero elements (histogram steps)
GRAD_HIST = "grad_hist"  # histogram of the finite gradient values
GRAD_LOG10_HIST = "grad_log10_hist"  # histogram of log10|g| over finite non-zero values
PARAM_NORM = "param_norm"  # L2 norm of the weights before the step
UPDATE_RATIO = "update_ratio"  # |w_after - w_before| / |w_before| of the step
GRAD_STD = "grad_std"  # population standard deviation of the gradient's elements
GRAD_MEAN = "grad_mean"  # signed mean of the gradient's elements

PARAM_FAMILIES = (
    GRAD_NORM,
    GRAD_MEAN_ABS,
    GRAD_MAX_ABS,
    GRAD_NONFINITE,
    GRAD_ZERO_FRAC,
    GRAD_HIST,
    GRAD_LOG10_HIST,
    PARAM_NORM,
    UPDATE_RATIO,
    GRAD_STD,
    GRAD_MEAN,
)

# Logged once.
PARAMS_TABLE = "gradwandb/params"
PARAMS_TOTAL = "gradwandb/params_total"
PARAMS_TRAINABLE = "gradwandb/params_trainable"
PARAMS_FROZEN = "gradwandb/params_frozen"
PARAM_ORDER = "gradwandb/param_order"  # watched names in forward (registration) order

# Run summary, written by diagnosis (when the tracker is removed or the run finishes).
VERDICT = "gradwandb/verdict"  # one of VERDICTS
FINDINGS = "gradwandb/findings"  # list of finding records, each with FINDING_FIELDS
UNSEEN_GRAD_CHANGE = "gradwandb/unseen_grad_change"  # True: grads changed where unseen
SETTINGS = "gradwandb/settings"  # what the tracker was asked to do: intervals, clip, monitors

# Diagnosis: the names a reader can rely on.
VERDICTS = ("healthy", "vanishing", "exploding", "nonfinite")  # in rising precedence
KINDS = (
    "exploding",
    "spike",
    "vanishing",
    "flow",
    "nonfinite",
    "dead",
    "saturation",  # activations pinned in the flat tails (warning; severe: vanishing)
    "dead_units",  # ReLU-family units never active in a step (warning)
    "activation_scale",  # activation std blowing up or collapsing across depth (warning)
    "unused",  # a trainable parameter that never receives a gradient (warning)
    "clipping",  # clipping that scales nearly every step far below 1 (warning)
    "weights",  # weights growing by decades (warning; NaN/Inf weights are nonfinite)
)
SEVERITIES = ("warning", "error")
FINDING_FIELDS = ("kind", "severity", "layer", "step", "value", "message", "fix")

# health/<signal>, on every logged row with diagnosis on.
H_EXPLODING = "exploding"  # 0/1: an exploding condition holds at this step
H_VANISHING = "vanishing"  # 0/1
H_NONFINITE = "nonfinite"  # 0/1
H_SPIKE_Z = "spike_z"  # z-score of log10 global norm against its moving average
H_GROWTH = "growth"  # decades the global norm rose over the growth window
H_VANISHING_LAYERS = "vanishing_layers"  # per-layer steps: layers under the vanishing limit
H_DEAD_LAYERS = "dead_layers"  # per-layer steps: layers with an exactly zero gradient
H_FLOW_RATIO = "flow_ratio"  # per-layer steps: log10 of latest over earliest layer's gradient
HEALTH_SIGNALS = (
    H_EXPLODING,
    H_VANISHING,
    H_NONFINITE,
    H_SPIKE_Z,
    H_GROWTH,
    H_VANISHING_LAYERS,
    H_DEAD_LAYERS,
    H_FLOW_RATIO,
)

# Activation health, act/<module>/<stat> (watch(..., activations_every=...)).
ACT = "act"
SATURATED_FRAC = "saturated_frac"  # tanh-like |y| > saturation; sigmoid y > s or y < 1 - s
DEAD_FRAC = "dead_frac"  # ReLU family: fraction of units never positive in the step
ZERO_FRAC = "zero_frac"  # fraction of elements exactly zero
MEAN = "mean"  # mean of the elements
STD = "std"  # population standard deviation of the elements
ACT_STATS = (SATURATED_FRAC, DEAD_FRAC, ZERO_FRAC, MEAN, STD)
# act/<module>/forward_nonfinite: 1 at the first module whose output held NaN/Inf in a
# checked forward (the forward check; on checked steps with a non-finite output only).
FORWARD_NONFINITE = "forward_nonfinite"
# Its value says what the check saw at that module:
FORWARD_MADE = 1.0  # its output went NaN/Inf while its weights and the model's input were finite
FORWARD_WEIGHTS = 2.0  # its own weights already held NaN/Inf
FORWARD_INPUT = 3.0  # the model's input already held NaN/Inf (the module is the model)


# Images, with watch(..., charts=True).
CHART_FLOW = "charts/grad_flow"  # bars of mean and max |g| per parameter, one step
CHART_HEATMAP = "charts/grad_norm_heatmap"  # log10 gradient norm, layer x per-layer step

# Through time, for every nn.RNN / nn.LSTM / nn.GRU (watch(..., bptt_every=...)).
BPTT = "bptt"  # bptt/<module>/<stat>
RNN_WEIGHTS = "rnn"  # rnn/<module>/<weight>[/<gate>]/<stat>
CURVE = "curve"  # Table: CURVE_COLUMNS, then OUTPUT_COLUMNS by direction count
CURVE_COLUMNS = ("timestep", "input_grad_norm")
OUTPUT_COLUMNS = {
    1: ("output_grad_norm",),
    2: ("output_grad_norm_forward", "output_grad_norm_reverse"),
}
HEATMAP = "heatmap"  # bptt/<module>/heatmap: Image, log10 input-gradient norm, timestep x step
FIRST_LAST_RATIO = "first_last_ratio"
DECAY_RATE = "decay_rate"
HORIZON = "horizon"
SEQ_LEN = "seq_len"
# The memory probe, ||d h_T / d x_t||: how strongly the final state depends on the input t
# steps back (the recurrence's memory, whatever the number of loss terms).
MEMORY_CURVE = "memory_curve"  # Table: MEMORY_COLUMNS, one row per timestep
MEMORY_COLUMNS = ("timestep", "memory_norm")
MEMORY_HORIZON = "memory_horizon"  # as HORIZON, over the memory curve
MEMORY_DECAY_RATE = "memory_decay_rate"  # as DECAY_RATE; < 0: grows going back (explodes)
MEMORY_FIRST_LAST_RATIO = "memory_first_last_ratio"  # as FIRST_LAST_RATIO
SPECTRAL_RADIUS = "spectral_radius"
SIGMA_MAX = "sigma_max"


# The sections and how many segments follow the (optional) tag in each.
GRAD = "grad"  # grad/<stat>
AMP = "amp"
GUARD = "guard"
CHARTS = "charts"
GRADWANDB = "gradwandb"
RUN_SECTIONS = (GRAD, AMP, GUARD, HEALTH, CHARTS, GRADWANDB)  # <section>/[<tag>/]<stat>
MODULE_SECTIONS = (BPTT, ACT)  # <section>/[<tag>/]<module>/<stat>
SECTIONS = (*RUN_SECTIONS, *MODULE_SECTIONS, RNN_WEIGHTS)
NO_GATE = "all"  # the gate segment of a weight block that has no gates (nn.RNN)
FAMILIES = "gradwandb/families"  # summary: every per-parameter family the tracker logs

# Scopes of a parsed key.
RUN, PARAM, MODULE, RNN = "run", "param", "module", "rnn"

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_SEGMENT = re.compile(r"(?:[^%/]|%[0-9A-Fa-f]{2})*\Z")  # a well-formed escaped segment
_registered: dict[str, None] = {}  # per-parameter families declared at runtime, in order


def escape_name(name: str) -> str:
    """A name as one key segment: ``%`` -> ``%25``, ``/`` -> ``%2F``, nothing else changes.

    >>> escape_name("encoder.rnn.weight_hh_l0"), escape_name("a/b"), escape_name("50%")
    ('encoder.rnn.weight_hh_l0', 'a%2Fb', '50%25')
    """
    return name.replace("%", "%25").replace("/", "%2F")


def unescape(segment: str) -> str:
    """The name a key segment stands for (the reverse of :func:`escape_name`).

    >>> unescape("a%2Fb"), unescape("50%25"), unescape("net.1")
    ('a/b', '50%', 'net.1')
    """
    if "%" not in segment:
        return segment
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), segment)


def _gate_segment(gate: str | None) -> str:
    if not gate:  # None or empty: a block with no gates
        return NO_GATE
    if gate == NO_GATE:  # a gate really called "all" must not read as "no gate"
        return "%61" + gate[1:]
    return escape_name(gate)


def register_family(name: str) -> str:
    """Declare a per-parameter family (``<name>/<param>`` keys) for :func:`parse_key`.

    Process-wide and idempotent; returns ``name``. The name is a token (letters, digits and
    ``_``, not starting with a digit) and must not be a section's name (``grad``, ``bptt``,
    ``act``, ``rnn``, ``health``, ``amp``, ``guard``, ``charts``, ``gradwandb``).

    >>> register_family("grad_snr")
    'grad_snr'
    >>> parse_key("grad_snr/encoder.weight").subject
    'encoder.weight'
    >>> unregister_family("grad_snr")
    """
    check_family(name)
    _registered[name] = None
    return name


def unregister_family(name: str) -> None:
    """Forget a family declared with :func:`register_family` (built-ins stay)."""
    _registered.pop(name, None)


def check_family(name: str) -> None:
    """Raise ValueError unless ``name`` can name a per-parameter family."""
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise ValueError(
            f"a statistic's family name must be letters, digits and '_' (not starting with a "
            f"digit), got {name!r}"
        )
    if name in SECTIONS:
        raise ValueError(f"{name!r} is a section of gradwandb's keys; pick another name")


def param_families(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Every per-parameter family :func:`parse_key` knows: built-ins, registered, ``extra``."""
    return tuple(dict.fromkeys([*PARAM_FAMILIES, *_registered, *extra]))


def health_key(keys: Keys, signal: str) -> str:
    """``health/<signal>``, tagged like the tracker's keys.

    >>> health_key(Keys(), H_SPIKE_Z), health_key(Keys("critic"), H_SPIKE_Z)
    ('health/spike_z', 'health/critic/spike_z')
    """
    return keys.scalar(f"{HEALTH}/{signal}")


def module_key(keys: Keys, section: str, module: str, stat: str) -> str:
    """``<section>/[<tag>/]<module>/<stat>`` for a module section (``bptt``, ``act``)."""
    return keys.scalar(f"{section}/{escape_name(module)}/{stat}")


def act_key(keys: Keys, module: str, stat: str) -> str:
    """``act/<module>/<stat>``, tagged like the tracker's keys.

    >>> act_key(Keys(), "net.1", DEAD_FRAC), act_key(Keys("critic"), "net.1", MEAN)
    ('act/net.1/dead_frac', 'act/critic/net.1/mean')
    """
    return module_key(keys, ACT, module, stat)


def is_bias(name: str) -> bool:
    """True for a bias parameter's name (``bias``, ``bias_ih_l0``, ``in_proj_bias``, ...).

    >>> is_bias("encoder.rnn.bias_hh_l0"), is_bias("0.bias"), is_bias("attn.in_proj_bias")
    (True, True, True)
    >>> is_bias("0.weight"), is_bias("biasnet.weight")
    (False, False)
    """
    last = name.rsplit(".", 1)[-1]
    return last == "bias" or last.startswith("bias_") or last.endswith("_bias")


def bptt_key(keys: Keys, module: str, stat: str) -> str:
    """``bptt/<module>/<stat>``, tagged like the tracker's keys.

    >>> bptt_key(Keys(), "encoder", HORIZON), bptt_key(Keys("critic"), "encoder", HORIZON)
    ('bptt/encoder/horizon', 'bptt/critic/encoder/horizon')
    """
    return module_key(keys, BPTT, module, stat)


def rnn_key(keys: Keys, module: str, weight: str, gate: str | None, stat: str) -> str:
    """``rnn/<module>/<weight>/<gate>/<stat>``; a block with no gates (nn.RNN) has gate
    :data:`NO_GATE`, so every rnn key has the same number of segments.

    >>> rnn_key(Keys(), "decoder", "weight_hh_l0", "f", SPECTRAL_RADIUS)
    'rnn/decoder/weight_hh_l0/f/spectral_radius'
    >>> rnn_key(Keys(), "decoder", "weight_hh_l1_reverse", None, SIGMA_MAX)
    'rnn/decoder/weight_hh_l1_reverse/all/sigma_max'
    """
    middle = f"{escape_name(module)}/{escape_name(weight)}/{_gate_segment(gate)}"
    return keys.scalar(f"{RNN_WEIGHTS}/{middle}/{stat}")


def clip_extra(name: str) -> str:
    """The key of a clipping policy's extra signal: ``grad/clip_<name>``."""
    return f"{GRAD}/clip_{name}"


def _tagged(key: str, tag: str | None) -> str:
    if not tag:
        return key
    family, _, rest = key.partition("/")
    return f"{family}/{escape_name(tag)}/{rest}"


@dataclass(frozen=True)
class Keys:
    """Builds the keys of one tracker; ``tag`` is None (or empty) for the first model in a run."""

    tag: str | None = None

    def scalar(self, key: str) -> str:
        """A run-level key such as :data:`GLOBAL_NORM`, with this tracker's tag.

        ``key`` is a built key (its names already escaped); the tag goes after its section.
        """
        return _tagged(key, self.tag)

    def param(self, family: str, name: str) -> str:
        """The key of statistic ``family`` for the parameter called ``name``."""
        return _tagged(f"{family}/{escape_name(name)}", self.tag)


@dataclass(frozen=True, repr=False)
class ParsedKey:
    """The parts of a key. ``family`` is the section (the part before the first ``/``);
    ``statistic`` what is measured (for per-parameter keys, the family itself); ``subject``
    the parameter or module name (None for run-level keys); ``weight`` and ``gate`` only for
    ``rnn`` keys (``gate`` None for a block with no gates). Names are unescaped."""

    family: str
    tag: str | None
    subject: str | None
    statistic: str
    weight: str | None = None
    gate: str | None = None

    def __repr__(self) -> str:
        shown = ["family", "tag", "subject", "statistic"]
        if self.family == RNN_WEIGHTS:
            shown += ["weight", "gate"]
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"ParsedKey({inner})"

    @property
    def scope(self) -> str:
        """:data:`RUN`, :data:`PARAM`, :data:`MODULE` or :data:`RNN`."""
        if self.family == RNN_WEIGHTS:
            return RNN
        if self.family in MODULE_SECTIONS:
            return MODULE
        return RUN if self.subject is None else PARAM

    def key(self) -> str:
        """The key these parts make (the reverse of :func:`parse_key`).

        >>> parse_key("rnn/critic/gru/weight_hh_l0/all/sigma_max").key()
        'rnn/critic/gru/weight_hh_l0/all/sigma_max'
        """
        keys = Keys(self.tag)
        if self.family == RNN_WEIGHTS:
            return rnn_key(keys, self.subject or "", self.weight or "", self.gate, self.statistic)
        if self.family in MODULE_SECTIONS:
            return module_key(keys, self.family, self.subject or "", self.statistic)
        if self.subject is None:
            return keys.scalar(f"{self.family}/{self.statistic}")
        return keys.param(self.family, self.subject)


def _segments(section: str) -> int | None:
    """How many segments follow the tag in ``section``; None for per-parameter families."""
    if section in RUN_SECTIONS:
        return 1
    if section in MODULE_SECTIONS:
        return 2
    if section == RNN_WEIGHTS:
        return 4
    return None


def parse_key(key: str, *, families: Iterable[str] | None = None) -> ParsedKey | None:
    """The parts of any key gradwandb writes, or None for a key it does not write.

    ``families`` adds per-parameter families for this call to the built-ins and those
    declared with :func:`register_family` (a run's own list is under :data:`FAMILIES`).

    >>> parse_key("bptt/encoder/horizon")
    ParsedKey(family='bptt', tag=None, subject='encoder', statistic='horizon')
    >>> p = parse_key("rnn/dec/weight_hh_l0/f/spectral_radius")
    >>> p.subject, p.weight, p.gate, p.statistic, p.scope
    ('dec', 'weight_hh_l0', 'f', 'spectral_radius', 'rnn')
    >>> parse_key("rnn/dec/weight_hh_l0/all/sigma_max").gate is None
    True
    >>> parse_key("health/critic/spike_z")
    ParsedKey(family='health', tag='critic', subject=None, statistic='spike_z')
    >>> parse_key("my_stat/0.weight") is None, parse_key("my_stat/0.weight", families=["my_stat"])
    (True, ParsedKey(family='my_stat', tag=None, subject='0.weight', statistic='my_stat'))
    """
    section, sep, rest = key.partition("/")
    if not sep:
        return None
    n = _segments(section)
    if n is None:
        known = param_families(families or ())
        if section not in known:
            return None
        n = 1
    parts = rest.split("/")
    if not all(_SEGMENT.match(p) for p in parts):
        return None  # a stray "%": not a key gradwandb built
    if len(parts) == n:
        tag = None
    elif len(parts) == n + 1 and parts[0]:
        tag = unescape(parts[0])
        parts = parts[1:]
    else:
        return None
    if section in RUN_SECTIONS:
        stat = parts[0]
        return ParsedKey(section, tag, None, stat) if _TOKEN.match(stat) else None
    if section in MODULE_SECTIONS:
        module, stat = parts
        return ParsedKey(section, tag, unescape(module), stat) if _TOKEN.match(stat) else None
    if section == RNN_WEIGHTS:
        module, weight, gate, stat = parts
        if not _TOKEN.match(stat) or not gate:
            return None
        return ParsedKey(
            section,
            tag,
            unescape(module),
            stat,
            weight=unescape(weight),
            gate=None if gate == NO_GATE else unescape(gate),
        )
    return ParsedKey(section, tag, unescape(parts[0]), section)


def split_param_key(key: str) -> tuple[str, str | None, str] | None:
    """Reverse of :meth:`Keys.param`: ``(family, tag, name)``, or None for other keys.

    >>> split_param_key("grad_norm/critic/0.weight")
    ('grad_norm', 'critic', '0.weight')
    """
    parsed = parse_key(key)
    if parsed is None or parsed.scope != PARAM or parsed.subject is None:
        return None
    return parsed.family, parsed.tag, parsed.subject
