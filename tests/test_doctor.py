"""The rules on activations, unused parameters, clipping, the middle of the stack, weights, the
loss and forward-born NaN, each checked on StepRecords built directly (no model, no hooks);
and the spread statistics against a recomputation from ``param.grad``."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
import torch
from torch import nn

import gradwandb
from gradwandb import keys as K
from gradwandb.live.diagnosis import Diagnoser, DiagnosisObserver, Finding, Thresholds
from gradwandb.live.diagnosis.fixes import TABLES, fix_for
from gradwandb.live.diagnosis.rules.clipping import percentile
from gradwandb.live.record import RecurrentSummary, StepRecord
from gradwandb.live.sinks import MemorySink

NAN, INF = math.nan, math.inf
Seen = tuple[str, str | None, int]  # (kind, layer, step)


def rec(
    step: int,
    norms: Mapping[str, float] | None = None,
    *,
    names: Sequence[str] | None = None,
    g: float = 1.0,
    acts: Mapping[str, Mapping[str, float]] | None = None,
    types: Mapping[str, str] | None = None,
    mean_abs: Sequence[float] = (),
    **fields: Any,
) -> StepRecord:
    """A record: per-layer norms when given, else only the global scalars over ``names``."""
    listed = list(norms) if norms is not None else list(names or ("a", "b"))
    return StepRecord(
        step=step,
        names=listed,
        norm=list(norms.values()) if norms is not None else [],
        global_norm=g,
        mean_abs=list(mean_abs),
        activations={m: dict(s) for m, s in (acts or {}).items()},
        module_types=dict(types or {}),
        **fields,
    )


def run(records: Sequence[StepRecord], **kwargs: Any) -> tuple[Diagnoser, list[Finding]]:
    thresholds = kwargs.pop("thresholds", None)
    diagnoser = Diagnoser(thresholds, kwargs.pop("layer_types", None), **kwargs)
    new: list[Finding] = []
    for record in records:
        new += diagnoser.update(record)
    return diagnoser, new


def seen(findings: Sequence[Finding], kinds: Sequence[str] | None = None) -> list[Seen]:
    return [(f.kind, f.layer, f.step) for f in findings if kinds is None or f.kind in kinds]


def act_series(module: str, stat: str, values: Sequence[float], kind: str) -> list[StepRecord]:
    """One activation report per value, on steps 0, 10, 20, ..."""
    return [
        rec(10 * i, acts={module: {stat: v, K.STD: 0.3}}, types={module: kind})
        for i, v in enumerate(values)
    ]


# -- saturation and dead units, for every activation module -----------------------------------


@pytest.mark.parametrize(
    ("values", "expected", "severity"),
    [
        pytest.param([0.6] * 3, [("vanishing", "net.1", 0)], "error", id="severe"),
        pytest.param([0.93] * 4, [("vanishing", "net.1", 0)], "error", id="93%"),
        pytest.param([0.5] * 3, [("saturation", "net.1", 0)], "warning", id="at-severe-limit"),
        pytest.param([0.3] * 3, [("saturation", "net.1", 0)], "warning", id="warning"),
        pytest.param([0.25] * 3, [], None, id="at-warning-limit"),
        pytest.param([0.6] * 2, [], None, id="not-sustained"),
        pytest.param([0.6, 0.6, 0.1, 0.6, 0.6], [], None, id="dip-recovers"),
        pytest.param([0.1, 0.6, 0.6, 0.6], [("vanishing", "net.1", 10)], "error", id="since"),
        pytest.param([NAN] * 3, [], None, id="no-elements"),
    ],
)
def test_saturation(values: list[float], expected: list[Seen], severity: str | None) -> None:
    diagnoser, found = run(act_series("net.1", K.SATURATED_FRAC, values, "Sigmoid"))
    assert seen(found) == expected
    if expected:
        assert found[0].severity == severity
        assert "saturated" in found[0].message and "derivative is ~0" in found[0].message
        assert "Xavier" in found[0].fix
    verdict = "vanishing" if severity == "error" else "healthy"
    assert diagnoser.diagnosis().verdict == verdict


def test_saturation_of_a_recurrent_module_judged_through_time_is_left_to_those_rules() -> None:
    summary = RecurrentSummary(step=0, seq_len=20, horizon=20, module_type="LSTM")
    records = [
        rec(i, acts={"rnn": {K.SATURATED_FRAC: 0.9}}, types={"rnn": "LSTM"}) for i in range(3)
    ]
    for r in records:
        r.through_time["rnn"] = summary
    _, found = run(records)
    assert seen(found) == [("vanishing", "rnn", 0)]
    assert "through time" in found[0].message  # the recurrent rule's words, not these
    # without the report through time, the activation rule has it
    _, found = run([rec(i, acts={"rnn": {K.SATURATED_FRAC: 0.9}}) for i in range(3)])
    assert seen(found) == [("vanishing", "rnn", 0)] and "every layer before" in found[0].message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param([0.4] * 3, [("dead_units", "net.1", 0)], id="40%"),
        pytest.param([0.3] * 3, [("dead_units", "net.1", 0)], id="at-limit"),
        pytest.param([0.29] * 3, [], id="under"),
        pytest.param([1.0] * 3, [], id="fully-dead-is-the-dead-rule"),
        pytest.param([0.5, 0.5, 0.0, 0.5, 0.5], [], id="dip-recovers"),
        pytest.param([0.5] * 2, [], id="not-sustained"),
    ],
)
def test_dead_units(values: list[float], expected: list[Seen]) -> None:
    diagnoser, found = run(act_series("net.1", K.DEAD_FRAC, values, "ReLU"))
    assert seen(found) == expected
    if expected:
        assert found[0].severity == "warning" and "dead" in found[0].message
        assert "LeakyReLU or GELU" in found[0].fix
    assert diagnoser.diagnosis().verdict == "healthy"


def _stds(*stds: float) -> list[StepRecord]:
    acts = {f"net.{2 * i + 1}": {K.STD: s} for i, s in enumerate(stds)}
    return [rec(i, acts=acts) for i in range(3)]


@pytest.mark.parametrize(
    ("records", "expected", "fragment"),
    [
        pytest.param(_stds(1.0, 0.1, 1e-4), [("activation_scale", "net.5", 0)], "fades", id="fall"),
        pytest.param(_stds(1.0, 1e-3), [("activation_scale", "net.3", 0)], "3.0 dec", id="at"),
        pytest.param(_stds(1.0, 2e-3), [], "", id="just-under"),
        pytest.param(_stds(1.0, 30.0, 2e6), [("activation_scale", "net.5", 0)], "blows", id="up"),
        pytest.param(
            _stds(2e6, 2e6),
            [("activation_scale", "net.1", 0), ("activation_scale", "net.3", 0)],
            "blows",
            id="first",
        ),
        pytest.param(_stds(1.0, 0.5, 2.0), [], "", id="healthy"),
        pytest.param(_stds(1.0, 1e-5)[:2], [], "", id="not-sustained"),
    ],
)
def test_activation_scale_across_depth(
    records: list[StepRecord], expected: list[Seen], fragment: str
) -> None:
    _, found = run(records)
    assert seen(found) == expected
    if expected:
        assert fragment in found[0].message and found[0].severity == "warning"


# -- unused parameters --------------------------------------------------------------------------


def _present(step: int, names: Sequence[str]) -> StepRecord:
    return rec(step, dict.fromkeys(names, 0.5))


@pytest.mark.parametrize(
    ("records", "trainable", "expected", "fragment"),
    [
        pytest.param(
            [_present(i, "ab") for i in range(3)],
            lambda n: True,
            [("unused", "c", 0)],
            "has never received a gradient",
            id="never",
        ),
        pytest.param(
            [_present(0, "ab"), _present(1, "ab"), _present(2, "abc")],
            lambda n: True,
            [],
            "",
            id="two-then-used",
        ),
        pytest.param(
            [_present(i, "ab") for i in range(5)], lambda n: n != "c", [], "", id="frozen"
        ),
        pytest.param(
            [_present(0, "abc")] + [_present(i, "ab") for i in range(1, 4)],
            lambda n: True,
            [("unused", "c", 1)],
            "no longer gets a gradient",
            id="stops",
        ),
        pytest.param(
            [_present(i, "ab") for i in range(3)],
            None,
            [("unused", "c", 0)],
            "if it is not frozen on purpose",
            id="names-only",
        ),
        pytest.param(
            [rec(i, names=["a", "b"]) for i in range(5)], lambda n: True, [], "", id="scalars"
        ),
        pytest.param(
            [_present(0, "ab"), _present(1, "ab"), _present(2, "abc"), _present(3, "ab")],
            lambda n: True,
            [],
            "",
            id="gap-resets",
        ),
    ],
)
def test_unused(
    records: list[StepRecord],
    trainable: Callable[[str], bool] | None,
    expected: list[Seen],
    fragment: str,
) -> None:
    diagnoser, found = run(records, watched=["a", "b", "c"], trainable=trainable)
    assert seen(found) == expected
    if expected:
        assert fragment in found[0].message and ".detach()" in found[0].message
        assert found[0].severity == "warning" and "reaches the loss" in found[0].fix
    assert diagnoser.diagnosis().verdict == "healthy"


def test_unused_is_off_without_the_watched_list() -> None:
    _, found = run([_present(i, "ab") for i in range(5)])
    assert found == []


# -- clipping that bites on every step ----------------------------------------------------------


def _clip(coefs: Sequence[float], threshold: float = 1e-3, g: float = 1.0) -> list[StepRecord]:
    return [
        rec(i, names=["a"], g=g * (1 + 0.01 * (i % 5)), clip_coef=c, clip_threshold=threshold)
        for i, c in enumerate(coefs)
    ]


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param(_clip([1e-3] * 10), [("clipping", None, 0)], id="every-step"),
        pytest.param(_clip([1e-3] * 9), [], id="window-not-full"),
        pytest.param(_clip([1e-3] * 9 + [1.0]), [("clipping", None, 0)], id="nine-of-ten"),
        pytest.param(_clip([1e-3] * 8 + [1.0] * 2), [], id="eight-of-ten"),
        pytest.param(_clip([0.1] * 12), [], id="at-coef-limit"),
        pytest.param(_clip([1e-3] * 3 + [1.0] * 12), [], id="dip-recovers"),
        pytest.param(_clip([1.0] * 5 + [1e-3] * 10), [("clipping", None, 5)], id="since"),
        pytest.param([rec(i, names=["a"]) for i in range(12)], [], id="no-clip"),
    ],
)
def test_clipping(records: list[StepRecord], expected: list[Seen]) -> None:
    diagnoser, found = run(records)
    assert seen(found) == expected
    assert diagnoser.diagnosis().verdict == "healthy"


def test_the_clipping_finding_says_the_learning_rate_factor_and_suggests_a_threshold() -> None:
    _, found = run(_clip([1e-3] * 10))
    (f,) = found
    assert f.severity == "warning" and f.value == pytest.approx(1e-3, rel=0.05)
    assert "clip=0.001" in f.message
    assert "divides the effective learning rate by ~" in f.message
    assert re.search(r"by ~(9\d\d|1e\+03|1\.0\de\+03)", f.message), f.message
    assert "95th-99th percentile" in f.message and "1.04-1.04" in f.message
    assert "PercentileClip" in f.fix


def test_percentile_interpolates_like_numpy() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    for q in (0, 10, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(
            float(torch.quantile(torch.tensor(values), q / 100))
        )


# -- flow inside the stack ----------------------------------------------------------------------

_NAMES = ("0.weight", "2.weight", "4.weight", "6.weight")


def _stack(
    norms: Sequence[float],
    mean_abs: Sequence[float] = (),
    step: int = 0,
    names: Sequence[str] = _NAMES,
) -> StepRecord:
    return rec(step, dict(zip(names, norms, strict=True)), mean_abs=mean_abs)


def _many(n: int, norms: Sequence[float], mean_abs: Sequence[float] = ()) -> list[StepRecord]:
    return [_stack(norms, mean_abs, i) for i in range(n)]


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param(
            _many(3, [0.1, 1e-3, 0.1, 0.1], [1e-3, 1e-6, 1e-3, 1e-3]),
            [("flow", "2.weight", 0)],
            id="by-mean-abs-not-by-norm",
        ),
        pytest.param(_many(3, [1.0, 1e-3, 1.0, 1.0]), [("flow", "2.weight", 0)], id="by-norm"),
        pytest.param(_many(3, [1.0, 1.0, 1e-3, 1.0]), [("flow", "4.weight", 0)], id="exactly-3"),
        pytest.param(_many(3, [1.0, 1.0, 2e-3, 1.0]), [], id="just-under"),
        pytest.param(_many(3, [1.0, 1e-3, 2e-3, 1.0]), [], id="one-neighbour-only"),
        pytest.param(
            _many(2, [1.0, 1e-5, 1.0, 1.0]) + _many(3, [1.0, 1.0, 1.0, 1.0]), [], id="dip"
        ),
        pytest.param(_many(3, [1.0, 0.0, 1.0, 1.0]), [], id="dead-is-not-flow"),
        pytest.param(
            _many(3, [1e-5, 1.0, 1.0, 1.0]),
            [("flow", "0.weight", 0)],
            id="an-end-is-the-ratio-rule",
        ),
    ],
)
def test_a_weak_layer_in_the_middle_of_the_stack(
    records: list[StepRecord], expected: list[Seen]
) -> None:
    diagnoser, found = run(records)
    assert seen(found, ["flow"]) == expected
    if expected:
        f = next(f for f in found if f.kind == "flow")
        assert f.severity == "error"
        assert ("below both its neighbours" in f.message) == (f.layer != "0.weight")
        assert diagnoser.diagnosis().verdict == "vanishing"


def test_a_weak_bias_between_weights_is_not_a_blocked_stack() -> None:
    names = ("0.weight", "0.bias", "2.weight")
    records = [_stack([1.0, 1e-6, 1.0], step=i, names=names) for i in range(3)]
    _, found = run(records)
    assert seen(found, ["flow"]) == []


# -- weights ------------------------------------------------------------------------------------


def _weights(*norms: Mapping[str, float]) -> list[StepRecord]:
    return [rec(10 * i, dict.fromkeys(n, 0.5), param_norm=dict(n)) for i, n in enumerate(norms)]


@pytest.mark.parametrize(
    ("records", "expected", "severity"),
    [
        pytest.param(_weights({"w": 5.0}, {"w": NAN}), [("nonfinite", "w", 10)], "error", id="nan"),
        pytest.param(_weights({"w": INF}), [("nonfinite", "w", 0)], "error", id="inf"),
        pytest.param(
            _weights({"w": 1.0}, {"w": 10.0}, {"w": 200.0}),
            [("weights", "w", 0)],
            "warning",
            id="runaway",
        ),
        pytest.param(_weights({"w": 1.0}, {"w": 99.0}), [], None, id="under-two-decades"),
        pytest.param(_weights({"w": 0.01}, {"w": 5.0}), [], None, id="small-still"),
        pytest.param(_weights({"b.bias": 1.0}, {"b.bias": 500.0}), [], None, id="bias"),
        pytest.param(_weights({"w": 0.0}, {"w": 1e-3}, {"w": 50.0}), [], None, id="zero-start"),
    ],
)
def test_weights(records: list[StepRecord], expected: list[Seen], severity: str | None) -> None:
    diagnoser, found = run(records)
    assert seen(found) == expected
    if expected:
        assert found[0].severity == severity
    verdict = "nonfinite" if severity == "error" else "healthy"
    assert diagnoser.diagnosis().verdict == verdict


# -- the loss and forward-born NaN ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_a_nonfinite_loss_is_nonfinite_before_the_gradients_it_poisons(bad: float) -> None:
    diagnoser = Diagnoser()
    assert diagnoser.observe_loss(2, 0.7) == []
    new = diagnoser.observe_loss(3, bad)
    assert seen(new) == [("nonfinite", None, 3)] and "the loss is" in new[0].message
    assert "log(0)" in new[0].fix
    poisoned = rec(3, {"a": NAN, "b": NAN}, g=NAN, nonfinite_tensors=2)
    assert diagnoser.update(poisoned) == []  # already said, for the whole model
    assert diagnoser.diagnosis().verdict == "nonfinite"
    assert diagnoser.health()["health/nonfinite"] == 1.0


def _born(code: float, module: str = "body.1", step: int = 4) -> StepRecord:
    return rec(
        step,
        {"0.weight": NAN, "body.1.weight": NAN, "head.weight": NAN},
        g=NAN,
        nonfinite_tensors=3,
        acts={module: {K.FORWARD_NONFINITE: code}},
        types={module: "Block"},
    )


@pytest.mark.parametrize(
    ("code", "fragment", "fix"),
    [
        (K.FORWARD_MADE, "born in the forward of 'body.1' (Block)", "sqrt or log"),
        (K.FORWARD_WEIGHTS, "own weights already hold NaN/Inf", "reload the last finite"),
        (K.FORWARD_INPUT, "the model's input holds NaN/Inf", "inputs and labels"),
    ],
)
def test_a_forward_born_nan_names_its_module_not_the_loss(
    code: float, fragment: str, fix: str
) -> None:
    diagnoser, found = run([_born(code)])
    assert seen(found) == [("nonfinite", "body.1", 4)]  # no "every layer ... the loss itself"
    assert fragment in found[0].message and fix in found[0].fix
    assert diagnoser.diagnosis().verdict == "nonfinite"
    assert diagnoser.health()["health/nonfinite"] == 1.0


def test_a_forward_origin_found_on_the_step_after_says_so() -> None:
    first = rec(3, {"0.weight": NAN, "head.weight": NAN}, g=NAN, nonfinite_tensors=2)
    _, found = run([first, _born(K.FORWARD_MADE, step=4)])
    assert seen(found) == [("nonfinite", None, 3), ("nonfinite", "body.1", 4)]
    assert "checked on the step after NaN/Inf gradients at step 3" in found[1].message


def test_a_forward_origin_in_a_norm_layer_gets_the_norm_fix() -> None:
    record = _born(K.FORWARD_MADE, module="norm")
    record.module_types["norm"] = "LayerNorm"
    _, found = run([record])
    assert "a larger eps in the norm layer" in found[0].fix


# -- the thresholds, the fixes, the observer ----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"saturation_warning": 0.6}, "saturation_warning must be below saturation"),
        ({"dead_units": 1.5}, "dead_units=1.5): must be a fraction"),
        ({"clip_frac": 0.0}, "clip_frac=0.0): must be a finite number > 0"),
        ({"clip_window": 0}, "clip_window=0): must be an int >= 1"),
        ({"unused_after": 1.5}, "unused_after=1.5): must be an int"),
        ({"flow_gap_decades": -3.0}, "flow_gap_decades=-3.0)"),
    ],
)
def test_new_thresholds_reject_bad_values(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match="for example") as caught:
        Thresholds(**kwargs)
    assert fragment in str(caught.value)


def test_the_threshold_docs_give_the_sources_values_beside_ours() -> None:
    doc = Thresholds.__doc__ or ""
    for fragment in ("1e-4", "*values*", "L2 *norm*", "1e4", "radius", "3-4 decades", "95th"):
        assert fragment in doc, fragment


@pytest.mark.parametrize(
    "remedy",
    [
        "activation_saturation",
        "dead_units",
        "activation_scale",
        "unused",
        "clipping",
        "weights",
        "weights_nonfinite",
        "forward",
    ],
)
def test_every_new_kind_has_a_fix(remedy: str) -> None:
    assert remedy in TABLES
    text = fix_for(remedy, "other")
    assert text.startswith("try: ") and text.count("try:") == 1


def test_every_new_kind_is_a_kind_a_reader_knows() -> None:
    for kind in ("saturation", "dead_units", "activation_scale", "unused", "clipping", "weights"):
        assert kind in K.KINDS
        Finding.from_record(Finding(kind, None, 0, 1.0, "", "", "warning").to_record())


def test_the_observer_takes_the_watched_parameters_and_the_loss() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)
    sink = MemorySink()
    observer = DiagnosisObserver(sink, watched=list(model.named_parameters()))
    for i in range(3):  # '1.weight' never gets a gradient; '1.bias' is frozen
        observer(rec(i, {"0.weight": 0.5, "0.bias": 0.5}))
    findings = observer.diagnosis().findings
    assert seen(findings) == [("unused", "1.weight", 0)]
    assert "although it requires grad" in findings[0].message
    assert sink.alerts == []  # a warning pages no one
    observer.observe_loss(3, torch.tensor(float("nan")))
    assert sink.summaries["gradwandb/verdict"] == "nonfinite"
    assert [a.title for a in sink.alerts] == ["gradwandb: NaN/Inf gradients"]


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda o: o.observe_loss(0, "nan"), TypeError, "pass the loss as a number"),
        (lambda o: o.observe_loss(0, torch.ones(2)), ValueError, "shape (2,)"),
        (lambda o: o.observe_loss(-1, 0.5), TypeError, "step is an int >= 0"),
        (lambda o: DiagnosisObserver(MemorySink(), watched="0.weight"), TypeError, "pairs"),
        (lambda o: DiagnosisObserver(MemorySink(), watched=[("a", 1)]), TypeError, "pairs"),
    ],
)
def test_the_observer_refuses_bad_input(
    call: Callable[[DiagnosisObserver], Any], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=re.escape(fragment)):
        call(DiagnosisObserver(MemorySink()))


def test_a_severe_saturation_alerts_like_vanishing_and_warnings_do_not() -> None:
    sink = MemorySink()
    observer = DiagnosisObserver(sink)
    for r in act_series("net.1", K.DEAD_FRAC, [0.5] * 3, "ReLU"):
        observer(r)
    assert sink.alerts == []
    for r in act_series("net.3", K.SATURATED_FRAC, [0.8] * 3, "Sigmoid"):
        observer(r)
    assert [(a.title, a.level) for a in sink.alerts] == [("gradwandb: vanishing gradients", "WARN")]


# -- the spread statistics ----------------------------------------------------------------------


def test_grad_std_and_mean_match_a_recomputation_from_param_grad() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 3), nn.Tanh())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, layers_every=1):
        model(torch.tensor([[1, 2, 2], [3, 1, 0]])).sum().backward()
        grads = {n: p.grad.to_dense().double() for n, p in model.named_parameters()}
        opt.step()
    row = sink.last()
    for name, grad in grads.items():
        std, mean = torch.std_mean(grad, correction=0)
        assert row[f"grad_std/{name}"] == pytest.approx(float(std), rel=1e-5, abs=1e-9), name
        assert row[f"grad_mean/{name}"] == pytest.approx(float(mean), rel=1e-5, abs=1e-9), name
    assert {K.GRAD_STD, K.GRAD_MEAN} <= set(K.PARAM_FAMILIES)
    assert K.parse_key("grad_std/1.weight") == K.ParsedKey("grad_std", None, "1.weight", "grad_std")


def test_the_spread_statistics_run_on_per_layer_steps_only() -> None:
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, layers_every=2):
        for _ in range(2):
            model(torch.ones(2, 3)).sum().backward()
            opt.step()
            opt.zero_grad()
    assert "grad_std/weight" in sink.rows[0][1] and "grad_std/weight" not in sink.rows[1][1]
