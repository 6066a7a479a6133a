"""The fixes to try: remedy tables per finding and layer family, and :func:`fix_for`, which
picks one for a finding, given what the run already does (clipping, the guard).

A family comes from the class name of the module that owns a parameter (:func:`family`):
``rnn``, ``gated``, ``conv``, ``embedding``, ``norm`` or ``other``; a parameter with a
recurrent name but no known module is ``recurrent``, and the rules through time add ``lstm``.

>>> fix_for("exploding", "other").split("; ")[:2]
['try: clip the global norm: gradwandb.watch(..., clip=1.0), or an adaptive clip policy', \
'lower the learning rate (or add warmup)']
>>> "guard=True" in fix_for("nonfinite", "other", Setting(guard=True))
False
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SUGGESTED_CLIP = 1.0  # the max-norm a fix suggests (as clip=1.0 in the texts below)

_CLIP = "clip the global norm: gradwandb.watch(..., clip=1.0), or an adaptive clip policy"
_LOWER_LR = "lower the learning rate (or add warmup)"
_GATED = "nn.LSTM or nn.GRU instead of a vanilla nn.RNN"
_ORTHO = "orthogonal init of the recurrent weights (nn.init.orthogonal_ on weight_hh)"
_TBPTT = "a shorter unroll (truncated BPTT: detach the hidden state every k steps)"
_INIT = "Kaiming init for ReLU layers, Xavier for tanh/sigmoid ones (nn.init.kaiming_normal_)"
_RESIDUAL = "residual connections"
_LAYERNORM = "layer norm (nn.LayerNorm) between layers"
_RELU = "ReLU or GELU instead of sigmoid/tanh"
_GUARD = "gradwandb.watch(..., guard=True) to skip steps with NaN/Inf gradients"
_LOSS = (
    "check the loss for log(0) or a division by zero (add an epsilon; use log_softmax or "
    "BCEWithLogitsLoss)"
)
_FP32 = "run that layer in fp32 (outside autocast)"
_SPIKE_CLIP = (
    "an adaptive clip policy (z-score or percentile) absorbs such spikes, or a fixed "
    "gradwandb.watch(..., clip=1.0)"
)
_FORGET_BIAS = "a forget-gate bias of 1 (LSTM: fill the f block of bias_ih with 1)"
_UPDATE_BIAS = (
    "an update-gate bias of about 2, so the cell keeps its state by default (GRU: fill the z "
    "block, the second of r z n, of bias_ih with 2 and of bias_hh with 0)"
)
_SPECTRAL_NORM = (
    "spectral normalisation of weight_hh (torch.nn.utils.parametrizations.spectral_norm)"
)

_LEAKY = "LeakyReLU or GELU instead of ReLU (units keep a gradient below 0)"
_KAIMING = (
    "Kaiming init for the layer feeding it (nn.init.kaiming_normal_), biases at 0 or a bit above"
)
_NORM_BEFORE = "batch or layer norm before the activation"
_EPS_OPS = (
    "guard the op in that module's forward that can make NaN/Inf: sqrt or log of a value "
    "<= 0 (clamp_min(eps) first), a division by ~0 (add eps), exp or pow overflow (clamp, "
    "logsumexp)"
)

Table = Mapping[str, Sequence[str]]  # family -> remedies, "other" for the rest

TABLES: dict[str, Table] = {
    "vanishing": {
        "rnn": (_GATED, _ORTHO, _TBPTT),
        "recurrent": ("if it is a vanilla RNN: " + _GATED, _ORTHO, _TBPTT),
        "gated": (_TBPTT, _ORTHO, "layer norm inside the cell", "a forget-gate bias of 1 (LSTM)"),
        "conv": (_INIT, _RESIDUAL, "batch norm (nn.BatchNorm2d) after each conv", _RELU),
        "embedding": (
            "fix the layers above it, where the signal fades: " + _INIT,
            _RESIDUAL,
            _LAYERNORM,
        ),
        "other": (_INIT, _RESIDUAL, _LAYERNORM, _RELU),
    },
    "exploding": {
        "rnn": (_CLIP, _LOWER_LR, _GATED, _ORTHO, _TBPTT),
        "recurrent": (_CLIP, _LOWER_LR, _ORTHO, _TBPTT),
        "gated": (_CLIP, _LOWER_LR, _TBPTT, _ORTHO),
        "other": (_CLIP, _LOWER_LR, "check the init scale (Kaiming/Xavier)", _LAYERNORM),
    },
    "nonfinite": {
        "norm": (_GUARD, "a larger eps in the norm layer", _LOWER_LR, _LOSS, _FP32),
        "rnn": (_GUARD, _CLIP, _LOWER_LR, _LOSS, _FP32),
        "recurrent": (_GUARD, _CLIP, _LOWER_LR, _LOSS, _FP32),
        "gated": (_GUARD, _CLIP, _LOWER_LR, _LOSS, _FP32),
        "other": (_GUARD, _LOWER_LR, _LOSS, _FP32),
    },
    "loss": {  # every layer non-finite at once, or no per-layer values to name one
        "other": (
            _LOSS,
            "check the inputs and labels for NaN/Inf",
            "compute the loss in fp32 under AMP",
            _GUARD,
            _LOWER_LR,
        ),
    },
    "spike": {
        "other": (
            _SPIKE_CLIP,
            "if they recur, lower the learning rate or add warmup, and look at the batch of "
            "that step",
        ),
    },
    "dead": {
        "embedding": (
            "check that the inputs use more than the padding row (padding_idx) and that the "
            "embedding output is not detached",
        ),
        "other": (
            "check that the parameter reaches the loss (no .detach() or torch.no_grad() on its "
            "path, not an unused branch or output)",
            f"if the units feeding it are dead ReLUs: LeakyReLU or GELU, {_INIT}, and {_LOWER_LR}",
        ),
    },
    "time_vanishing": {
        "rnn": (_GATED, _ORTHO, _TBPTT),
        "lstm": (_FORGET_BIAS, _ORTHO, _TBPTT),
        "gated": (_UPDATE_BIAS, _ORTHO, _TBPTT),
        "other": (_ORTHO, _TBPTT),
    },
    "time_exploding": {
        "lstm": (_CLIP, _LOWER_LR, _TBPTT, "layer norm inside the cell"),
        "gated": (_CLIP, _LOWER_LR, _TBPTT, "layer norm inside the cell"),
        "other": (_CLIP, _ORTHO + " or " + _SPECTRAL_NORM, _LOWER_LR, _TBPTT),
    },
    "saturation": {
        "other": (
            "a smaller init scale of the weights feeding it (input and recurrent)",
            _LAYERNORM + " or inside the cell",
            _LOWER_LR,
        ),
    },
    # feed-forward activations pinned in the flat tails of sigmoid/tanh
    "activation_saturation": {
        "other": (
            "Xavier init of the layer feeding it (nn.init.xavier_normal_), or smaller weights",
            _NORM_BEFORE,
            _RELU,
            _LOWER_LR,
        ),
    },
    "dead_units": {
        "other": (_LEAKY, _KAIMING, _LOWER_LR, _NORM_BEFORE),
    },
    "activation_scale": {
        "other": (
            _INIT + " (the std should stay ~1 layer after layer)",
            _LAYERNORM,
            _RESIDUAL + " with a small scale on each branch",
        ),
    },
    "unused": {
        "other": (
            "check that its output reaches the loss: an unused head or branch, a .detach(), "
            "torch.no_grad() or .data on its path cut it off",
            "if it is unused on purpose, freeze it (p.requires_grad_(False)) or leave it out of "
            "the optimizer",
            "under DDP, an unused parameter needs find_unused_parameters=True",
        ),
    },
    "clipping": {
        "other": (
            "raise the max-norm to the 95th-99th percentile of the pre-clip norms (the message "
            "gives them), or an adaptive policy: gradwandb.PercentileClip(percentile=10) "
            "follows the norms as they change",
            "if the clip is meant to be that tight, raise the learning rate to match (clip and "
            "learning rate multiply)",
        ),
    },
    "weights": {
        "other": (
            "weight decay (AdamW(weight_decay=0.01..0.1))",
            _LOWER_LR,
            _CLIP,
            _LAYERNORM,
        ),
    },
    "weights_nonfinite": {
        "other": (
            _GUARD,
            _LOWER_LR,
            "keep fp32 master weights under AMP (torch.autocast, not model.half())",
            "reload the last finite checkpoint: NaN/Inf weights do not recover",
        ),
    },
    "forward": {  # NaN/Inf born in a module's forward, named by the forward check
        "norm": (_EPS_OPS, "a larger eps in the norm layer", _FP32, _GUARD),
        "other": (
            _EPS_OPS,
            "check the inputs for NaN/Inf",
            _FP32,
            _GUARD,
        ),
    },
}


@dataclass(frozen=True)
class Setting:
    """What the run already does at the step of a finding: the max-norm clipping used
    (``clip``, None when it does not clip) and whether the non-finite guard is on."""

    clip: float | None = None
    guard: bool = False


def family(class_name: str | None, layer: str | None) -> str:
    """Which remedies apply, from the owning module's class name (or the parameter's name).

    >>> family("LSTM", None), family(None, "rnn.weight_hh_l0"), family("BatchNorm2d", None)
    ('gated', 'recurrent', 'norm')
    """
    if class_name is not None:
        if class_name in ("RNN", "RNNCell"):
            return "rnn"
        if class_name in ("LSTM", "GRU", "LSTMCell", "GRUCell"):
            return "gated"
        if class_name.startswith(("Conv", "LazyConv")):
            return "conv"
        if class_name.startswith("Embedding"):
            return "embedding"
        if "Norm" in class_name:  # LayerNorm, BatchNorm2d, GroupNorm, RMSNorm
            return "norm"
        return "other"
    if layer is not None and layer.rsplit(".", 1)[-1].startswith(
        ("weight_hh", "weight_ih", "bias_hh", "bias_ih")
    ):
        return "recurrent"
    return "other"


def time_family(module_type: str) -> str:
    """The family of a module judged through time: an LSTM has remedies of its own."""
    return "lstm" if module_type == "LSTM" else family(module_type or None, None)


def model_family(layer_types: Mapping[str, str]) -> str:
    """For findings about the whole model: its recurrent (or conv) layers matter most.

    >>> model_family({"emb.weight": "Embedding", "rnn.weight_hh_l0": "RNN"})
    'rnn'
    """
    families = {family(c, None) for c in layer_types.values()}
    return next((f for f in ("rnn", "gated", "conv") if f in families), "other")


def fix_for(remedy: str, family: str, setting: Setting = Setting()) -> str:
    """``"try: "`` and the remedies of table ``remedy`` for ``family``, fitted to ``setting``:
    no guard=True to a run whose guard is on, no clip=1.0 to a run already clipping at or
    below it.

    >>> fix_for("spike", "other", Setting(clip=0.5)).split("; ")[0]
    'try: an adaptive clip policy (z-score or percentile) absorbs such spikes (the fixed \
clip=0.5 in use caps each update, not the spike)'
    """
    table = TABLES[remedy]
    remedies = [_fitted(r, setting) for r in table.get(family) or table["other"]]
    return "try: " + "; ".join(r for r in remedies if r)


def _fitted(remedy: str, setting: Setting) -> str:
    """``remedy`` as it reads to a run with ``setting`` ("" when it no longer applies)."""
    if remedy == _GUARD and setting.guard:
        return ""
    clip = setting.clip
    if clip is None or not clip <= SUGGESTED_CLIP:
        return remedy
    if remedy == _CLIP:
        return (
            f"an adaptive clip policy (z-score or percentile): the norms here are before the "
            f"fixed clip={clip:g} in use"
        )
    if remedy == _SPIKE_CLIP:
        return (
            "an adaptive clip policy (z-score or percentile) absorbs such spikes (the fixed "
            f"clip={clip:g} in use caps each update, not the spike)"
        )
    return remedy
