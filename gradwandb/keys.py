"""The key contract: every name gradwandb logs, in one place both wings import.

The statistic comes first so that each W&B panel section holds one statistic across all
layers. A tracker watching a second model in the same run carries a *tag*, inserted after
the first ``/`` so the section stays the same and the keys stay distinct:

>>> Keys().param("grad_norm", "encoder.weight")
'grad_norm/encoder.weight'
>>> Keys("critic").param("grad_norm", "0.weight")
'grad_norm/critic/0.weight'
>>> Keys("critic").scalar(GLOBAL_NORM)
'grad/critic/global_norm'
>>> split_param_key("grad_norm/critic/0.weight")
('grad_norm', 'critic', '0.weight')
"""

from __future__ import annotations

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
SETTINGS = "gradwandb/settings"  # what the tracker was asked to do: intervals, clip, monitors

# Diagnosis: the names a reader can rely on.
VERDICTS = ("healthy", "vanishing", "exploding", "nonfinite")  # in rising precedence
KINDS = ("exploding", "spike", "vanishing", "flow", "nonfinite", "dead")
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
SPECTRAL_RADIUS = "spectral_radius"
SIGMA_MAX = "sigma_max"


def health_key(keys: Keys, signal: str) -> str:
    """``health/<signal>``, tagged like the tracker's keys.

    >>> health_key(Keys(), H_SPIKE_Z), health_key(Keys("critic"), H_SPIKE_Z)
    ('health/spike_z', 'health/critic/spike_z')
    """
    return keys.scalar(f"{HEALTH}/{signal}")


def act_key(keys: Keys, module: str, stat: str) -> str:
    """``act/<module>/<stat>``, tagged like the tracker's keys.

    >>> act_key(Keys(), "net.1", DEAD_FRAC), act_key(Keys("critic"), "net.1", MEAN)
    ('act/net.1/dead_frac', 'act/critic/net.1/mean')
    """
    return keys.scalar(f"{ACT}/{module}/{stat}")


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
    return keys.scalar(f"{BPTT}/{module}/{stat}")


def rnn_key(keys: Keys, module: str, weight: str, gate: str | None, stat: str) -> str:
    """``rnn/<module>/<weight>/<gate>/<stat>`` (no gate level for a vanilla RNN).

    >>> rnn_key(Keys(), "decoder", "weight_hh_l0", "f", SPECTRAL_RADIUS)
    'rnn/decoder/weight_hh_l0/f/spectral_radius'
    >>> rnn_key(Keys(), "decoder", "weight_hh_l1_reverse", None, SIGMA_MAX)
    'rnn/decoder/weight_hh_l1_reverse/sigma_max'
    """
    middle = f"{weight}/{gate}" if gate else weight
    return keys.scalar(f"{RNN_WEIGHTS}/{module}/{middle}/{stat}")


def clip_extra(name: str) -> str:
    """The key of a clipping policy's extra signal: ``grad/clip_<name>``."""
    return f"grad/clip_{name}"


def _tagged(key: str, tag: str | None) -> str:
    if not tag:
        return key
    family, _, rest = key.partition("/")
    return f"{family}/{tag}/{rest}"


@dataclass(frozen=True)
class Keys:
    """Builds the keys of one tracker; ``tag`` is None for the first model in a run."""

    tag: str | None = None

    def scalar(self, key: str) -> str:
        """A run-level key such as :data:`GLOBAL_NORM`, with this tracker's tag."""
        return _tagged(key, self.tag)

    def param(self, family: str, name: str) -> str:
        """The key of statistic ``family`` for the parameter called ``name``."""
        return _tagged(f"{family}/{name}", self.tag)


def split_param_key(key: str) -> tuple[str, str | None, str] | None:
    """Reverse of :meth:`Keys.param`: ``(family, tag, name)``, or None for other keys.

    A key with three parts is read as tagged; parameter names never contain ``/``.
    """
    family, sep, rest = key.partition("/")
    if not sep or family not in PARAM_FAMILIES or not rest:
        return None
    tag, sep, name = rest.partition("/")
    if sep:
        return family, tag, name
    return family, None, rest
