"""Diagnosis rules, each checked on synthetic StepRecords built directly (no model, no hooks)."""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from gradwandb.keys import FINDING_FIELDS
from gradwandb.live.alerts import MAX_ALERTS_PER_KIND, Alerter, alert_text
from gradwandb.live.diagnosis import (
    Diagnoser,
    DiagnosisObserver,
    Finding,
    Thresholds,
    verdict_of,
)
from gradwandb.live.diagnosis.fixes import TABLES, Setting, fix_for
from gradwandb.live.record import StepRecord
from gradwandb.live.sinks import MemorySink

NAN, INF = math.nan, math.inf
Seen = tuple[str, str | None, int]  # (kind, layer, step)


def scalars(step: int, g: float, names: Sequence[str] = ("a", "b")) -> StepRecord:
    """A record with only the global scalars (per-layer lists empty), as most steps log."""
    return StepRecord(step=step, names=list(names), norm=[], global_norm=g)


def layers(
    step: int,
    norms: Mapping[str, float],
    *,
    g: float | None = None,
    nonfinite: Mapping[str, int] | None = None,
    mean_abs: Sequence[float] = (),
) -> StepRecord:
    """A record with per-layer norms (names in forward order); the global norm from them."""
    values = list(norms.values())
    counts = dict(nonfinite or {})
    return StepRecord(
        step=step,
        names=list(norms),
        norm=values,
        global_norm=math.sqrt(sum(x * x for x in values)) if g is None else g,
        nonfinite_tensors=sum(1 for c in counts.values() if c > 0),
        mean_abs=list(mean_abs),
        nonfinite_elements=counts,
    )


def run(records: Sequence[StepRecord], **kwargs: Any) -> tuple[Diagnoser, list[Finding]]:
    diagnoser = Diagnoser(**kwargs)
    new: list[Finding] = []
    for record in records:
        new += diagnoser.update(record)
    return diagnoser, new


def seen(findings: Sequence[Finding]) -> list[Seen]:
    return [(f.kind, f.layer, f.step) for f in findings]


def calm(n: int, start: int = 0, level: float = 1.0) -> list[StepRecord]:
    """``n`` global-only steps wobbling a little (0.02 decades) around ``level``."""
    return [scalars(i, level * 10 ** (0.02 * math.sin(i))) for i in range(start, n)]


def repeat(n: int, norms: Mapping[str, float], every: int = 1, **kw: Any) -> list[StepRecord]:
    return [layers(i * every, norms, **kw) for i in range(n)]


# -- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"sustain": 0}, "sustain=0): must be an int >= 1; for example sustain=3"),
        ({"sustain": 2.5}, "sustain=2.5): must be an int"),
        ({"sustain": True}, "sustain=True): must be an int"),
        ({"growth_window": 1}, "growth_window=1): must be an int >= 2"),
        ({"vanish_norm": 0.0}, "vanish_norm=0.0): must be a finite number > 0"),
        ({"explode_global": -1.0}, "explode_global=-1.0): must be a finite number > 0"),
        ({"spike_z": NAN}, "spike_z=nan)"),
        ({"explode_norm": INF}, "explode_norm=inf)"),
        ({"flow_decades": "3"}, "flow_decades='3')"),
        ({"flow_ignore_bias": 1}, "flow_ignore_bias=1): must be True or False"),
        ({"vanish_norm": 1.0, "explode_norm": 0.5}, "vanish_norm must be below explode_norm"),
        ({"vanish_global": 200.0}, "vanish_global must be below explode_global"),
    ],
)
def test_thresholds_reject_bad_values(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=r"for example") as caught:
        Thresholds(**kwargs)
    assert fragment in str(caught.value)


def test_thresholds_defaults_follow_common_practice() -> None:
    t = Thresholds()
    assert t.vanish_norm <= 1e-4 and t.vanish_global <= 1e-4
    assert 50.0 <= t.explode_norm <= t.explode_global <= 100.0
    assert 3.0 <= t.flow_decades <= 4.0
    assert t.sustain >= 2


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"thresholds": {"sustain": 3}}, TypeError, "pass a gradwandb.Thresholds"),
        ({"layer_types": [("rnn.weight_hh_l0", "RNN")]}, TypeError, "mapping of parameter"),
        ({"layer_types": {"rnn.weight_hh_l0": 1}}, TypeError, "module class name"),
    ],
)
def test_diagnoser_rejects_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        Diagnoser(**kwargs)


def test_a_record_with_mismatched_norms_is_refused() -> None:
    bad = StepRecord(step=7, names=["a", "b"], norm=[1.0], global_norm=1.0)
    with pytest.raises(ValueError, match=r"step=7\) has 1 per-layer norms for 2 names"):
        Diagnoser().update(bad)


# -- exploding: limits and growth --------------------------------------------------------------


def _ramp(n: int, start: float, decades: float) -> list[StepRecord]:
    return [scalars(i, start * 10 ** (decades * i / (n - 1))) for i in range(n)]


@pytest.mark.parametrize(
    ("records", "thresholds", "expected"),
    [
        pytest.param([scalars(0, 150.0)], {}, [("exploding", None, 0)], id="global-over"),
        pytest.param([scalars(0, 100.0)], {}, [], id="global-at-limit"),
        pytest.param(
            [layers(0, {"a": 60.0, "b": 1.0})], {}, [("exploding", "a", 0)], id="layer-over"
        ),
        pytest.param([layers(0, {"a": 40.0}), scalars(1, 90.0)], {}, [], id="both-under"),
        pytest.param(
            [scalars(0, 20.0)], {"explode_global": 10.0}, [("exploding", None, 0)], id="lowered"
        ),
        pytest.param([layers(0, {"a": 60.0})], {"explode_norm": 80.0}, [], id="raised"),
        pytest.param(_ramp(20, 2.0, 1.6), {}, [("exploding", None, 0)], id="growth"),
        pytest.param(_ramp(20, 0.01, 2.0), {}, [], id="growth-in-healthy-range"),
        pytest.param(_ramp(12, 2.0, 1.6), {}, [], id="window-not-full"),
        pytest.param(_ramp(20, 20.0, 0.3), {}, [], id="slow-rise"),
        pytest.param(
            [scalars(0, 1.0), *_ramp(5, 2.0, 1.2)[1:]],
            {"growth_window": 5},
            [("exploding", None, 0)],
            id="shorter-window",
        ),
        pytest.param(_ramp(20, 2.0, 1.6), {"growth_min_norm": 100.0}, [], id="growth-floor-raised"),
    ],
)
def test_exploding(
    records: list[StepRecord], thresholds: dict[str, Any], expected: list[Seen]
) -> None:
    diagnoser, found = run(records, thresholds=Thresholds(**thresholds))
    assert seen(found) == expected
    assert all(f.severity == "error" for f in found)
    assert diagnoser.diagnosis().verdict == ("exploding" if expected else "healthy")


def test_growth_signal_is_the_least_squares_rise_over_the_sliding_window() -> None:
    rng = random.Random(1)
    window = 7
    diagnoser = Diagnoser(Thresholds(growth_window=window))
    logs: list[float] = []
    for step in range(40):
        logs.append(rng.uniform(-1.0, 1.0) + 0.05 * step)
        diagnoser.update(scalars(step, 10 ** logs[-1]))
        last = logs[-window:]
        if len(last) < window:
            expected = 0.0
        else:  # slope of the straight-line fit, times the window's span
            x_mean, y_mean = (window - 1) / 2, sum(last) / window
            cov = sum((x - x_mean) * (y - y_mean) for x, y in enumerate(last))
            var = sum((x - x_mean) ** 2 for x in range(window))
            expected = cov / var * (window - 1)
        assert diagnoser.health()["health/growth"] == pytest.approx(expected, abs=1e-9), step


def test_growth_finding_measures_the_rise_in_decades() -> None:
    _, found = run(_ramp(20, 2.0, 1.6))
    (growth,) = found
    assert growth.value == pytest.approx(1.6)
    assert "grew 1.60 decades" in growth.message


# -- spikes ------------------------------------------------------------------------------------

BASE = calm(30)


@pytest.mark.parametrize(
    ("tail", "thresholds", "expected", "verdict"),
    [
        pytest.param(
            [scalars(30, 20.0), *calm(40, 31)], {}, [("spike", None, 30)], "healthy", id="recovers"
        ),
        pytest.param(
            [scalars(30, 20.0), scalars(31, 20.0), *calm(40, 32)],
            {},
            [("spike", None, 30)],
            "healthy",
            id="two-steps",
        ),
        pytest.param(
            [scalars(30 + i, 20.0) for i in range(3)],
            {},
            [("spike", None, 30), ("exploding", None, 30)],
            "exploding",
            id="lasts-sustain-steps",
        ),
        pytest.param(
            [scalars(30, 500.0), *calm(35, 31)],
            {},
            [("exploding", None, 30), ("spike", None, 30)],
            "exploding",
            id="over-the-hard-limit",
        ),
        pytest.param([scalars(30, 0.01)], {}, [], "healthy", id="a-drop-is-no-spike"),
        pytest.param([scalars(30, 20.0)], {"spike_z": 50.0}, [], "healthy", id="z-raised"),
        pytest.param(
            [scalars(30, 20.0)], {"spike_warmup": 40}, [], "healthy", id="still-warming-up"
        ),
    ],
)
def test_spikes(
    tail: list[StepRecord], thresholds: dict[str, Any], expected: list[Seen], verdict: str
) -> None:
    diagnoser, found = run(BASE + tail, thresholds=Thresholds(**thresholds))
    assert seen(found) == expected
    spikes = [f for f in found if f.kind == "spike"]
    assert all(f.severity == "warning" and f.value > 4.0 for f in spikes)
    assert diagnoser.diagnosis().verdict == verdict


def test_spike_signal_rises_only_at_the_spike() -> None:
    diagnoser = Diagnoser()
    zs, flags = [], []
    for record in [*BASE, scalars(30, 20.0), scalars(31, 1.0)]:
        diagnoser.update(record)
        zs.append(diagnoser.health()["health/spike_z"])
        flags.append(diagnoser.health()["health/exploding"])
    assert zs[:10] == [0.0] * 10  # warm-up
    assert max(abs(z) for z in zs[10:30]) < 1.0
    assert zs[30] > 20.0
    assert abs(zs[31]) < 2.0  # the spike did not drag the average up
    assert flags[30] == 0.0  # a single spike is not an explosion


@pytest.mark.parametrize("level", [1e-3, 1.0, 50.0])
def test_the_spike_average_starts_from_the_first_values(level: float) -> None:
    diagnoser = Diagnoser()
    for step in range(10):
        diagnoser.update(scalars(step, level))
    diagnoser.update(scalars(10, level))
    assert diagnoser.health()["health/spike_z"] == pytest.approx(0.0, abs=1e-9)
    diagnoser.update(scalars(11, level * 10))  # one decade over a flat history: 1 / min std
    assert diagnoser.health()["health/spike_z"] == pytest.approx(1 / Thresholds().spike_min_std)


def test_a_noisy_healthy_run_finds_nothing() -> None:
    rng = random.Random(0)
    records: list[StepRecord] = []
    for step in range(600):
        g = 10 ** rng.gauss(0.0, 0.15)
        if step % 10:
            records.append(scalars(step, g))
        else:
            names = ("0.weight", "0.bias", "2.weight", "2.bias")
            records.append(layers(step, {n: g * 10 ** rng.gauss(-0.5, 0.2) for n in names}))
    diagnoser, found = run(records)
    assert found == []
    assert diagnoser.diagnosis().verdict == "healthy"


# -- non-finite --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected", "fragments"),
    [
        pytest.param(
            [
                layers(
                    0,
                    {"a": 1.0, "b": NAN, "c": NAN, "d": 1.0},
                    nonfinite={"a": 0, "b": 4, "c": 2, "d": 0},
                )
            ],
            ("nonfinite", "c", 0),
            ["starting at 'c' (2 NaN/Inf elements)", "backward order: 'b'"],
            id="origin-is-the-last-culprit",
        ),
        pytest.param(
            [layers(0, {"a": NAN, "b": NAN, "c": INF}, nonfinite={"a": 9, "b": 3, "c": 1})],
            ("nonfinite", None, 0),
            ["every watched layer (3)", "the loss (or the model output) itself"],
            id="nan-only-in-the-loss",
        ),
        pytest.param(
            [layers(0, {"w": NAN}, nonfinite={"w": 5})],
            ("nonfinite", "w", 0),
            ["'w' (5 NaN/Inf elements)", "the only watched layer"],
            id="single-layer",
        ),
        pytest.param(
            [scalars(0, 1.0), scalars(1, NAN)],
            ("nonfinite", None, 1),
            ["norm is nan at step 1", "no per-layer values"],
            id="global-nan-without-layers",
        ),
        pytest.param(
            [StepRecord(step=4, names=["a"], norm=[], global_norm=INF, nonfinite_tensors=1)],
            ("nonfinite", None, 4),
            ["norm is inf", "1 non-finite tensors"],
            id="global-inf-without-layers",
        ),
        pytest.param(
            [layers(0, {"a": 1.0, "b": INF, "c": 1.0})],
            ("nonfinite", "b", 0),
            ["starting at 'b' (a NaN/Inf norm)"],
            id="culprit-from-norms-without-counts",
        ),
        pytest.param(
            [
                layers(0, {"a": 1.0, "b": 1.0}),
                layers(1, {"a": 1.0, "b": NAN}, nonfinite={"b": 1}),
                layers(2, {"a": 1.0, "b": NAN}, nonfinite={"b": 7}),
            ],
            ("nonfinite", "b", 1),
            ["from step 1"],
            id="first-step-kept",
        ),
    ],
)
def test_nonfinite(records: list[StepRecord], expected: Seen, fragments: list[str]) -> None:
    diagnoser, found = run(records)
    assert seen(found) == [expected]
    (finding,) = found
    assert finding.severity == "error"
    for fragment in fragments:
        assert fragment in finding.message
    assert diagnoser.diagnosis().verdict == "nonfinite"
    assert diagnoser.health()["health/nonfinite"] == 1.0


def test_many_culprits_are_listed_in_backward_order_and_capped() -> None:
    names = [f"{i}.weight" for i in range(9)]
    norms = {n: (NAN if i else 1.0) for i, n in enumerate(names)}
    _, found = run([layers(0, norms, nonfinite={n: 1 for n in names[1:]})])
    (finding,) = found
    assert finding.layer == "8.weight"
    assert "then, in backward order: '7.weight', '6.weight'" in finding.message
    assert "and 2 more" in finding.message


@pytest.mark.parametrize("bad", [NAN, INF])
def test_a_nonfinite_step_does_not_poison_the_running_statistics(bad: float) -> None:
    diagnoser = Diagnoser()
    for record in [*BASE, scalars(30, bad)]:
        diagnoser.update(record)
    assert diagnoser.health()["health/nonfinite"] == 1.0
    assert diagnoser.health()["health/spike_z"] == 0.0
    assert diagnoser.update(scalars(31, 1.0)) == []
    assert diagnoser.health()["health/nonfinite"] == 0.0
    assert abs(diagnoser.health()["health/spike_z"]) < 1.0
    assert [f.kind for f in diagnoser.diagnosis().findings] == ["nonfinite"]


# -- vanishing and dead ------------------------------------------------------------------------

SMALL = {"a": 1.0, "b": 1e-6}
DEAD = {"a": 1.0, "b": 0.0}


@pytest.mark.parametrize(
    ("records", "thresholds", "expected", "verdict"),
    [
        pytest.param(
            repeat(3, SMALL), {}, [("vanishing", "b", 0, "error")], "vanishing", id="k-records"
        ),
        pytest.param(repeat(2, SMALL), {}, [], "healthy", id="k-minus-1"),
        pytest.param(
            [layers(i, {"a": 1.0, "b": x}) for i, x in enumerate([1e-6, 1e-6, 1.0, 1e-6, 1e-6])],
            {},
            [],
            "healthy",
            id="interrupted",
        ),
        pytest.param(
            [
                layers(0, SMALL),
                scalars(1, 1.0),
                layers(10, SMALL),
                scalars(11, 1.0),
                layers(20, SMALL),
            ],
            {},
            [("vanishing", "b", 0, "error")],
            "vanishing",
            id="global-only-records-between",
        ),
        pytest.param(
            [layers(i, {"a": 1.0, "b": x}) for i, x in enumerate([1e-6, 1e-6, 60.0, 1e-6])],
            {},
            [("exploding", "b", 2, "error")],
            "exploding",
            id="interrupted-by-an-explosion",
        ),
        pytest.param(
            [layers(0, SMALL), layers(10, {"a": 1.0}), layers(20, SMALL), layers(30, SMALL)],
            {},
            [],
            "healthy",
            id="missing-from-a-record-breaks-it",
        ),
        pytest.param(
            repeat(3, {"a.weight": 1.0, "a.bias": 1e-6}),
            {},
            [("vanishing", "a.bias", 0, "warning")],
            "healthy",
            id="a-bias-is-a-warning",
        ),
        pytest.param(
            [layers(5, SMALL)],
            {"sustain": 1},
            [("vanishing", "b", 5, "error")],
            "vanishing",
            id="sustain-1",
        ),
        pytest.param(repeat(3, {"a": 1.0, "b": 1e-3}), {}, [], "healthy", id="above-limit"),
        pytest.param(repeat(3, {"a": 50.0, "b": 1e-4}), {}, [], "healthy", id="at-the-limits"),
        pytest.param(
            repeat(3, {"a": 1.0, "b": 1e-3}),
            {"vanish_norm": 1e-2},
            [("vanishing", "b", 0, "error")],
            "vanishing",
            id="limit-raised",
        ),
        pytest.param(
            [scalars(i, 1e-6) for i in range(3)],
            {},
            [("vanishing", None, 0, "error")],
            "vanishing",
            id="global-only-records",
        ),
        pytest.param(
            [scalars(i, 1e-6) for i in range(3)],
            {"vanish_global": 1e-7},
            [],
            "healthy",
            id="global-limit-lowered",
        ),
        pytest.param(
            repeat(3, {"a": 1.0, "b": 0.0}),
            {},
            [("dead", "b", 0, "warning")],
            "healthy",
            id="dead",
        ),
        pytest.param(
            [layers(i, {"a": 1.0, "b": x}) for i, x in enumerate([0.0, 0.0, 1.0, 0.0])],
            {},
            [],
            "healthy",
            id="dead-interrupted",
        ),
        pytest.param(
            [layers(0, DEAD), layers(10, {"a": 1.0}), layers(20, DEAD), layers(30, DEAD)],
            {},
            [],
            "healthy",
            id="dead-missing-from-a-record",
        ),
        pytest.param(
            [layers(i, {"a": 1.0, "b": x}) for i, x in enumerate([0.0, 0.0, 1e-6])],
            {},
            [("vanishing", "b", 0, "error")],
            "vanishing",
            id="zeros-then-tiny",
        ),
        pytest.param(
            repeat(3, {"a": 0.0, "b": 0.0}),
            {},
            [
                ("vanishing", None, 0, "error"),
                ("dead", "a", 0, "warning"),
                ("dead", "b", 0, "warning"),
            ],
            "vanishing",
            id="all-zeros",
        ),
    ],
)
def test_vanishing_and_dead(
    records: list[StepRecord],
    thresholds: dict[str, Any],
    expected: list[tuple[str, str | None, int, str]],
    verdict: str,
) -> None:
    diagnoser, found = run(records, thresholds=Thresholds(**thresholds))
    assert [(f.kind, f.layer, f.step, f.severity) for f in found] == expected
    assert diagnoser.diagnosis().verdict == verdict


@pytest.mark.parametrize(
    ("g", "fragment"),
    [(0.0, "now exactly 0: is the loss detached"), (1e-6, "now 1e-06, under 0.0001: no signal")],
)
def test_global_vanishing_message_tells_zero_from_tiny(g: float, fragment: str) -> None:
    _, found = run([scalars(i, g) for i in range(3)])
    (finding,) = found
    assert fragment in finding.message
    assert "for 3 logged steps since step 0" in finding.message


def test_vanishing_message_says_since_when_and_how_small() -> None:
    _, found = run(repeat(3, SMALL, every=10))
    (finding,) = found
    assert finding.step == 0 and finding.value == 1e-6
    assert "under 0.0001 for 3 per-layer records since step 0 (now 1e-06)" in finding.message


# -- flow --------------------------------------------------------------------------------------


def _mlp(w0: float, w2: float) -> dict[str, float]:
    """Norms of a 3-layer MLP in forward order; the middle layer and the biases at 1."""
    return {"0.weight": w0, "0.bias": 1.0, "1.weight": 1.0, "1.bias": 1.0, "2.weight": w2}


BIG_BIAS = {"0.weight": 1.0, "0.bias": 1.0, "2.weight": 1.0, "2.bias": 1e4}
NO_LIMITS = {"explode_norm": 1e5, "explode_global": 1e6}


@pytest.mark.parametrize(
    ("records", "thresholds", "expected", "ratio"),
    [
        pytest.param(repeat(3, _mlp(1e-3, 10.0)), {}, [("flow", "0.weight", 0)], 4.0, id="4-dec"),
        pytest.param(repeat(2, _mlp(1e-3, 10.0)), {}, [], 4.0, id="not-yet-sustained"),
        pytest.param(repeat(3, _mlp(0.1, 10.0)), {}, [], 2.0, id="two-decades"),
        pytest.param(
            [layers(i, _mlp(w0, 10.0)) for i, w0 in enumerate([1e-3, 1e-3, 0.1, 1e-3, 1e-3])],
            {},
            [],
            4.0,
            id="interrupted",
        ),
        pytest.param(
            repeat(3, _mlp(0.1, 10.0)),
            {"flow_decades": 1.5},
            [("flow", "0.weight", 0)],
            2.0,
            id="limit-lowered",
        ),
        pytest.param(repeat(3, _mlp(10.0, 1e-3)), {}, [], -4.0, id="growing-toward-the-input"),
        pytest.param(repeat(3, BIG_BIAS), NO_LIMITS, [], 0.0, id="biases-ignored"),
        pytest.param(
            repeat(3, BIG_BIAS),
            {"flow_ignore_bias": False, **NO_LIMITS},
            [("flow", "0.weight", 0)],
            4.0,
            id="biases-counted",
        ),
        pytest.param(
            repeat(3, {"0.weight": 1.0, "2.weight": 1.0}, mean_abs=[1e-5, 1.0]),
            {},
            [("flow", "0.weight", 0)],
            5.0,
            id="mean-abs-when-present",
        ),
    ],
)
def test_flow(
    records: list[StepRecord], thresholds: dict[str, Any], expected: list[Seen], ratio: float
) -> None:
    diagnoser, found = run(records, thresholds=Thresholds(**thresholds))
    assert seen(found) == expected
    assert diagnoser.health()["health/flow_ratio"] == pytest.approx(ratio)
    flows = [f for f in found if f.kind == "flow"]
    assert all(f.severity == "error" and f.value == pytest.approx(ratio) for f in flows)
    assert diagnoser.diagnosis().verdict == ("vanishing" if flows else "healthy")


def test_flow_skips_a_nonfinite_end() -> None:
    norms = {"0.weight": NAN, "1.weight": 1e-3, "2.weight": 10.0}
    diagnoser, found = run(repeat(3, norms, nonfinite={"0.weight": 1}))
    assert seen(found) == [("nonfinite", "0.weight", 0), ("flow", "1.weight", 0)]
    assert diagnoser.health()["health/flow_ratio"] == pytest.approx(4.0)


@pytest.mark.parametrize(
    "norms",
    [{"w": 1e-3}, {"w": 1.0, "b.bias": 1e-3}, {"0.weight": 0.0, "2.weight": 0.0}],
    ids=["single-layer", "one-weight-and-a-bias", "both-ends-zero"],
)
def test_no_flow_ratio_without_two_ends(norms: dict[str, float]) -> None:
    diagnoser, found = run(repeat(3, norms))
    assert "health/flow_ratio" not in diagnoser.health()
    assert all(f.kind != "flow" for f in found)


# -- once per kind and layer; verdict ----------------------------------------------------------


def test_each_finding_is_reported_once_per_kind_and_layer_with_its_first_step() -> None:
    diagnoser = Diagnoser()
    news = [diagnoser.update(layers(i, {"a": 60.0, "b": 1.0}, g=150.0)) for i in range(10)]
    assert seen(news[0]) == [("exploding", None, 0), ("exploding", "a", 0)]
    assert all(new == [] for new in news[1:])
    later = diagnoser.update(layers(10, {"a": 60.0, "b": 70.0}, g=150.0))
    assert seen(later) == [("exploding", "b", 10)]  # another layer is a new finding
    assert len(diagnoser.diagnosis().findings) == 3


def _f(kind: str, severity: str = "error") -> Finding:
    return Finding(kind, None, 0, 1.0, "", "", severity)


@pytest.mark.parametrize(
    ("findings", "verdict"),
    [
        ([], "healthy"),
        ([_f("spike", "warning")], "healthy"),
        ([_f("dead", "warning")], "healthy"),
        ([_f("vanishing", "warning")], "healthy"),
        ([_f("vanishing")], "vanishing"),
        ([_f("flow")], "vanishing"),
        ([_f("vanishing"), _f("exploding")], "exploding"),
        ([_f("exploding"), _f("spike", "warning"), _f("vanishing")], "exploding"),
        ([_f("exploding"), _f("nonfinite")], "nonfinite"),
        ([_f("nonfinite"), _f("vanishing"), _f("exploding")], "nonfinite"),
    ],
)
def test_verdict_precedence(findings: list[Finding], verdict: str) -> None:
    assert verdict_of(findings) == verdict
    assert verdict_of(reversed(findings)) == verdict


def test_the_verdict_keeps_the_worst_seen_even_after_recovery() -> None:
    diagnoser = Diagnoser()
    verdicts = []
    for records in (
        repeat(3, SMALL),
        [scalars(3, 150.0)],
        [layers(4, {"a": NAN, "b": 1.0}, nonfinite={"a": 1})],
        [layers(5 + i, {"a": 1.0, "b": 1.0}) for i in range(5)],
    ):
        for record in records:
            diagnoser.update(record)
        verdicts.append(diagnoser.diagnosis().verdict)
    assert verdicts == ["vanishing", "exploding", "nonfinite", "nonfinite"]


# -- fixes per layer type ----------------------------------------------------------------------

RNN = {"emb.weight": "Embedding", "rnn.weight_ih_l0": "RNN", "rnn.weight_hh_l0": "RNN"}
LSTM = {"rnn.weight_ih_l0": "LSTM", "rnn.weight_hh_l0": "LSTM", "out.weight": "Linear"}


def _vanish(name: str) -> list[StepRecord]:
    return repeat(3, {name: 1e-6, "head.weight": 1e-6})


@pytest.mark.parametrize(
    ("records", "types", "layer", "present", "absent"),
    [
        pytest.param(
            _vanish("rnn.weight_hh_l0"),
            RNN,
            "rnn.weight_hh_l0",
            ["nn.LSTM or nn.GRU instead of a vanilla nn.RNN", "orthogonal", "truncated BPTT"],
            ["Kaiming"],
            id="vanishing-rnn",
        ),
        pytest.param(
            _vanish("rnn.weight_hh_l0"),
            LSTM,
            "rnn.weight_hh_l0",
            ["truncated BPTT", "orthogonal", "forget-gate bias"],
            ["instead of a vanilla"],
            id="vanishing-lstm",
        ),
        pytest.param(
            _vanish("rnn.weight_hh_l0"),
            {},
            "rnn.weight_hh_l0",
            ["if it is a vanilla RNN", "orthogonal", "truncated BPTT"],
            [],
            id="vanishing-recurrent-by-name",
        ),
        pytest.param(
            _vanish("0.weight"),
            {"0.weight": "Linear"},
            "0.weight",
            ["Kaiming", "Xavier", "residual", "nn.LayerNorm", "ReLU or GELU instead of sigmoid"],
            ["LSTM"],
            id="vanishing-linear",
        ),
        pytest.param(
            _vanish("conv.weight"),
            {"conv.weight": "Conv2d"},
            "conv.weight",
            ["Kaiming", "batch norm", "residual"],
            ["LSTM"],
            id="vanishing-conv",
        ),
        pytest.param(
            repeat(3, {"emb.weight": 1e-3, "rnn.weight_hh_l0": 10.0}),
            RNN,
            "emb.weight",
            ["layers above it", "residual"],
            [],
            id="flow-from-an-embedding",
        ),
        pytest.param(
            [layers(0, {"0.weight": 60.0, "2.weight": 1.0})],
            {"0.weight": "Linear"},
            "0.weight",
            ["clip=1.0", "adaptive clip policy", "lower the learning rate"],
            ["LSTM"],
            id="exploding-linear",
        ),
        pytest.param(
            [layers(0, {"rnn.weight_hh_l0": 60.0})],
            RNN,
            "rnn.weight_hh_l0",
            ["clip=1.0", "lower the learning rate", "nn.LSTM or nn.GRU", "truncated BPTT"],
            [],
            id="exploding-rnn",
        ),
        pytest.param(
            [scalars(0, 500.0)],
            RNN,
            None,
            ["clip=1.0", "nn.LSTM or nn.GRU"],
            [],
            id="exploding-whole-rnn-model",
        ),
        pytest.param(
            [layers(0, {"ln.weight": NAN, "out.weight": 1.0}, nonfinite={"ln.weight": 2})],
            {"ln.weight": "LayerNorm"},
            "ln.weight",
            ["guard=True", "larger eps", "fp32", "log(0)", "lower the learning rate"],
            [],
            id="nonfinite-layernorm",
        ),
        pytest.param(
            [layers(0, {"0.weight": 1.0, "2.weight": INF}, nonfinite={"2.weight": 1})],
            {"2.weight": "Linear"},
            "2.weight",
            ["guard=True", "fp32", "log(0)", "lower the learning rate"],
            ["eps in the norm"],
            id="nonfinite-linear",
        ),
        pytest.param(
            [layers(0, {"a": NAN, "b": NAN}, nonfinite={"a": 1, "b": 1})],
            {},
            None,
            ["log(0)", "inputs and labels", "guard=True", "fp32"],
            [],
            id="nonfinite-loss",
        ),
        pytest.param(
            repeat(3, {"0.weight": 1.0, "head.weight": 0.0}),
            {"head.weight": "Linear"},
            "head.weight",
            [".detach()", "torch.no_grad()", "LeakyReLU"],
            [],
            id="dead-linear",
        ),
        pytest.param(
            repeat(3, {"emb.weight": 0.0, "out.weight": 0.0}),
            {"emb.weight": "Embedding"},
            "emb.weight",
            ["padding_idx"],
            [],
            id="dead-embedding",
        ),
    ],
)
def test_fix_names_the_remedy_for_the_layer_type(
    records: list[StepRecord],
    types: dict[str, str],
    layer: str | None,
    present: list[str],
    absent: list[str],
) -> None:
    _, found = run(records, layer_types=types)
    (finding,) = [f for f in found if f.layer == layer]
    assert finding.fix.startswith("try: ")
    for remedy in present:
        assert remedy in finding.fix
    for remedy in absent:
        assert remedy not in finding.fix


def test_spike_fix_points_to_adaptive_clipping() -> None:
    _, found = run([*BASE, scalars(30, 20.0)])
    (spike,) = found
    assert "adaptive clip policy" in spike.fix and "warmup" in spike.fix


# -- health signals ----------------------------------------------------------------------------

GLOBAL_KEYS = {"exploding", "vanishing", "nonfinite", "spike_z", "growth"}
LAYER_KEYS = GLOBAL_KEYS | {"vanishing_layers", "dead_layers", "flow_ratio"}


@pytest.mark.parametrize(
    ("records", "keys", "values"),
    [
        pytest.param([scalars(0, 1.0)], GLOBAL_KEYS, {"exploding": 0.0}, id="global-only"),
        pytest.param([scalars(0, 150.0)], GLOBAL_KEYS, {"exploding": 1.0}, id="exploding-now"),
        pytest.param(
            [scalars(0, 150.0), scalars(1, 1.0)], GLOBAL_KEYS, {"exploding": 0.0}, id="over"
        ),
        pytest.param(
            [layers(0, {"a.weight": 1e-5, "b.weight": 0.0, "c.weight": 1.0})],
            LAYER_KEYS,
            {"vanishing_layers": 2.0, "dead_layers": 1.0, "vanishing": 0.0, "flow_ratio": 5.0},
            id="per-layer",
        ),
        pytest.param(
            repeat(3, {"a": 1.0, "b": 1e-6}),
            LAYER_KEYS,
            {"vanishing_layers": 1.0, "vanishing": 1.0},
            id="vanishing-sustained",
        ),
        pytest.param(
            [*repeat(3, {"a": 1.0, "b": 1e-6}), scalars(3, 1.0)],
            GLOBAL_KEYS,
            {"vanishing": 1.0},
            id="vanishing-between-per-layer-records",
        ),
        pytest.param(
            [*repeat(3, {"a": 1.0, "b": 1e-6}), layers(3, {"a": 1.0, "b": 1.0})],
            LAYER_KEYS,
            {"vanishing": 0.0, "vanishing_layers": 0.0},
            id="vanishing-over",
        ),
        pytest.param(_ramp(20, 2.0, 1.6), GLOBAL_KEYS, {"exploding": 1.0}, id="growth"),
    ],
)
def test_health_signals(
    records: list[StepRecord], keys: set[str], values: dict[str, float]
) -> None:
    diagnoser, _ = run(records)
    health = diagnoser.health()
    assert set(health) == {f"health/{k}" for k in keys}
    assert all(type(v) is float for v in health.values())
    for key, value in values.items():
        assert health[f"health/{key}"] == pytest.approx(value), key


def test_health_is_empty_before_the_first_record_and_a_copy_after() -> None:
    diagnoser = Diagnoser()
    assert diagnoser.health() == {}
    diagnoser.update(scalars(0, 150.0))
    diagnoser.health()["health/exploding"] = 0.0
    assert diagnoser.health()["health/exploding"] == 1.0
    assert diagnoser.health()["health/growth"] == 0.0  # window not full yet


def test_a_dead_first_layer_is_dead_not_a_flow_problem() -> None:
    from gradwandb.live.diagnosis import Diagnoser
    from gradwandb.live.record import StepRecord

    diagnoser = Diagnoser()
    for step in range(6):
        diagnoser.update(
            StepRecord(
                step=step,
                names=["0.weight", "1.weight", "2.weight"],
                norm=[0.0, 0.5, 1.0],
                mean_abs=[0.0, 0.01, 0.02],
                max_abs=[0.0, 0.1, 0.2],
                global_norm=1.1,
            )
        )
    kinds = {(f.kind, f.layer) for f in diagnoser.diagnosis().findings}
    assert ("dead", "0.weight") in kinds
    assert not any(kind == "flow" for kind, _ in kinds)


# -- findings as records -----------------------------------------------------------------------


@pytest.mark.parametrize("layer", [None, "encoder.rnn.weight_hh_l0"])
@pytest.mark.parametrize("value", [2.5, NAN, INF])
def test_a_finding_is_a_record_and_back(layer: str | None, value: float) -> None:
    finding = Finding("exploding", layer, 7, value, "the message", "try: a fix", "error")
    record = finding.to_record()
    assert list(record) == list(FINDING_FIELDS)
    back = Finding.from_record(record)
    assert (back.kind, back.layer, back.step, back.message, back.fix, back.severity) == (
        "exploding",
        layer,
        7,
        "the message",
        "try: a fix",
        "error",
    )
    assert back.value == value or (math.isnan(back.value) and math.isnan(value))


@pytest.mark.parametrize(
    ("record", "error", "fragment"),
    [
        ({"kind": "spike"}, ValueError, "lacks ['severity', 'layer'"),
        ({**_f("spike").to_record(), "kind": "bad"}, ValueError, "kind='bad'"),
        ({**_f("spike").to_record(), "severity": "fatal"}, ValueError, "severity='fatal'"),
        (["spike"], TypeError, "a mapping of"),
    ],
)
def test_a_bad_finding_record_is_refused(
    record: Any, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=re.escape(fragment)):
        Finding.from_record(record)


def test_findings_read_back_from_json_as_they_were() -> None:
    _, found = run([*BASE, scalars(30, 500.0), *repeat(3, {"a": 1.0, "b": 1e-6})])
    text = json.dumps([f.to_record() for f in found])
    assert [Finding.from_record(r) for r in json.loads(text)] == found


# -- fixes fitted to what the run already does -------------------------------------------------

SETTINGS = [Setting(), Setting(clip=0.5), Setting(clip=1.0), Setting(clip=5.0), Setting(guard=True)]


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
@pytest.mark.parametrize("remedy", sorted(TABLES))
def test_every_fix_says_try_once(remedy: str, setting: Setting) -> None:
    for family in (*TABLES[remedy], "lstm", "other"):
        fix = fix_for(remedy, family, setting)
        assert fix.startswith("try: ") and fix.count("try:") == 1, (remedy, family)
        assert "; ;" not in fix and not fix.endswith("; ")
        if setting.guard:
            assert "guard=True" not in fix
        if setting.clip is not None and setting.clip <= 1.0:
            assert "clip=1.0" not in fix


def _clipped(record: StepRecord, clip: float | None) -> StepRecord:
    record.clip_threshold = clip
    return record


@pytest.mark.parametrize(
    ("clip", "suggests"), [(None, True), (5.0, True), (1.0, False), (0.5, False)]
)
def test_a_spike_fix_never_suggests_a_clip_the_run_already_has(
    clip: float | None, suggests: bool
) -> None:
    _, found = run([_clipped(r, clip) for r in [*BASE, scalars(30, 20.0)]])
    (spike,) = found
    assert ("clip=1.0" in spike.fix) == suggests
    assert "adaptive clip policy" in spike.fix and "warmup" in spike.fix
    if not suggests:
        assert f"clip={clip:g} in use" in spike.fix


def test_an_exploding_fix_under_clipping_names_the_clip_in_use() -> None:
    _, found = run([_clipped(scalars(0, 500.0), 0.25)])
    (finding,) = found
    assert "clip=1.0" not in finding.fix and "clip=0.25 in use" in finding.fix
    assert "lower the learning rate" in finding.fix


@pytest.mark.parametrize(
    "record",
    [
        layers(0, {"0.weight": 1.0, "2.weight": INF}, nonfinite={"2.weight": 1}),
        layers(0, {"a": NAN, "b": NAN}, nonfinite={"a": 1, "b": 1}),
        scalars(0, NAN),
    ],
    ids=["a-layer", "every-layer", "no-layers"],
)
@pytest.mark.parametrize("guard", [False, True])
def test_a_nonfinite_fix_suggests_the_guard_only_when_it_is_off(
    record: StepRecord, guard: bool
) -> None:
    record.guard_skipped = 1 if guard else None
    _, found = run([record])
    (finding,) = found
    assert ("guard=True" in finding.fix) == (not guard)
    assert "log(0)" in finding.fix


# -- alerts ------------------------------------------------------------------------------------


def _error(kind: str, layer: str | None) -> Finding:
    return Finding(kind, layer, 0, 1.0, f"{kind} in {layer}", f"try: fix {kind}", "error")


def test_alerts_group_a_kind_once_per_layer_capped_per_kind() -> None:
    sink = MemorySink()
    alerter = Alerter(sink)
    assert alerter.send([_error("exploding", "a"), _error("exploding", "b")]) == 1
    assert alerter.send([_error("exploding", "a")]) == 0  # that layer was alerted on
    assert alerter.send([Finding("spike", None, 0, 9.0, "", "", "warning")]) == 0
    assert alerter.send([_error("dead", "a")]) == 0  # not a kind worth an alert
    for layer in "cdefg":
        alerter.send([_error("exploding", layer)])
    assert len(sink.alerts) == MAX_ALERTS_PER_KIND
    assert sink.alerts[0].text.splitlines() == [
        "exploding in a",
        "exploding in b",
        "try: fix exploding",
    ]
    assert alerter.send([_error("vanishing", "a")]) == 1  # another kind has its own limit
    assert sink.alerts[-1].level == "WARN"


def test_an_alert_text_spells_out_a_few_and_counts_the_rest() -> None:
    group = [_error("flow", f"{i}.weight") for i in range(8)]
    lines = alert_text(group).splitlines()
    assert lines[:5] == [f"flow in {i}.weight" for i in range(5)]
    assert lines[5] == "... and 3 more: 5.weight, 6.weight, 7.weight"
    assert lines[6:] == ["try: fix flow"]


def test_an_alert_title_stays_under_64_characters() -> None:
    sink = MemorySink()
    Alerter(sink, tag="a-very-long-model-name-" * 4).send([_error("nonfinite", None)])
    (alert,) = sink.alerts
    assert len(alert.title) < 64 and alert.title.startswith("gradwandb: NaN/Inf gradients (")


def test_a_failing_alert_switches_alerts_off_with_one_warning() -> None:
    class Broken(MemorySink):
        def alert(self, title: str, text: str, level: str) -> None:
            raise ConnectionError("no network")

    alerter = Alerter(Broken())
    with pytest.warns(RuntimeWarning, match="sending an alert failed.*no network") as caught:
        assert alerter.send([_error("exploding", "a"), _error("vanishing", "b")]) == 0
        assert alerter.send([_error("nonfinite", "c")]) == 0
    assert len(caught) == 1 and not alerter.on


# -- the observer ------------------------------------------------------------------------------


def test_the_observer_writes_the_verdict_on_new_findings_and_at_the_end() -> None:
    sink = MemorySink()
    observer = DiagnosisObserver(sink, alerts=False)
    observer.finish()
    assert sink.summaries == {}  # nothing judged, nothing written
    row = observer(scalars(0, 1.0))
    assert set(row) == {f"health/{k}" for k in GLOBAL_KEYS}
    assert sink.summaries == {}  # no finding yet: no summary write on this step
    observer(scalars(1, 150.0))
    assert sink.summaries["gradwandb/verdict"] == "exploding" and sink.alerts == []
    assert sink.summaries["gradwandb/findings"] == [observer.diagnosis().findings[0].to_record()]
    sink.summaries.clear()
    observer.finish()
    assert sink.summaries["gradwandb/verdict"] == "exploding"
    sink.summaries.clear()
    observer.finish()  # once is enough
    assert sink.summaries == {}
