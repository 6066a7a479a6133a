"""Adaptive clipping policies against direct recomputation in plain Python, step by step."""

from __future__ import annotations

import io
import math
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import gradwandb
from gradwandb.live.clip.adaptive import PercentileClip, UnitwiseClip, ValueClip, ZScoreClip
from gradwandb.live.clip.policy import ClipPolicy, ClipResult
from gradwandb.live.sinks import MemorySink

# -- plain-Python references ---------------------------------------------------------------


def _observed(x: float) -> bool:
    return math.isfinite(x) and x > 0


def _coef(x: float, threshold: float) -> float:
    return threshold / x if x > threshold else 1.0


class PercentileRef:
    """PercentileClip as its docstring states it, with a deque and ``numpy.percentile``."""

    def __init__(self, percentile: float, history: int, warmup: int) -> None:
        self.q, self.warmup = percentile, warmup
        self.past: deque[float] = deque(maxlen=history)
        self.seen = 0

    def step(self, x: float) -> tuple[float, float]:
        ready = self.seen >= self.warmup
        threshold = float(np.percentile(list(self.past), self.q)) if ready else math.inf
        coef = _coef(x, threshold)
        if _observed(x):  # after the threshold: past norms only
            self.past.append(x)
            self.seen += 1
        return coef, threshold


class ZScoreRef:
    """ZScoreClip as its docstring states it, in floats."""

    def __init__(self, z: float, alpha: float, warmup: int) -> None:
        self.z, self.alpha, self.warmup = z, alpha, warmup
        self.warm: list[float] = []
        self.mean = self.var = 0.0

    def step(self, x: float) -> tuple[float, float, float]:
        if len(self.warm) < self.warmup:
            if _observed(x):
                self.warm.append(x)
                self.mean = sum(self.warm) / len(self.warm)
                self.var = sum((v - self.mean) ** 2 for v in self.warm) / len(self.warm)
            return 1.0, math.inf, math.nan
        std = math.sqrt(self.var)
        zscore = (x - self.mean) / std if std > 0 else math.copysign(math.inf, x - self.mean)
        threshold = self.mean + self.z * std
        coef = _coef(x, threshold)
        if _observed(x):
            d = min(x, threshold) - self.mean
            self.mean += (1 - self.alpha) * d
            self.var = self.alpha * (self.var + (1 - self.alpha) * d * d)
        return coef, threshold, zscore


# -- driving a policy the way the tracker does -----------------------------------------------


@dataclass
class Outcome:
    total: float  # the pre-clip global norm the policy saw
    coef: float
    threshold: float | None
    extras: dict[str, float]
    before: list[Tensor]
    after: list[Tensor]


def _grads_with_norm(x: float) -> list[Tensor]:
    """Two float32 gradients of joint L2 norm about ``x`` (NaN/Inf planted when ``x`` is).

    Seeded by ``x`` itself, so the same norm in two sequences gives the same gradients.
    """
    seed = int(x * 1e6) % 2**31 if math.isfinite(x) else 7
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    if math.isfinite(x):
        scale = x / math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        return [(g.double() * scale).float() for g in grads]
    grads[0][1, 2] = x
    return grads


def _apply(policy: ClipPolicy, grads: list[Tensor], params: list[Tensor] | None = None) -> Outcome:
    before = [g.clone() for g in grads]
    norms = torch.stack([g.double().norm() for g in grads])
    total = norms.norm()
    result = policy.clip_(grads, norms, total, params if params is not None else grads)
    return _outcome(float(total), result, before, grads)


def _outcome(
    total: float, result: ClipResult, before: list[Tensor], after: list[Tensor]
) -> Outcome:
    for t in (result.coef, result.threshold, *result.extras.values()):
        assert t is None or t.dim() == 0
    threshold = None if result.threshold is None else float(result.threshold)
    extras = {k: float(v) for k, v in result.extras.items()}
    after = [g.clone() for g in after]
    return Outcome(total, float(result.coef), threshold, extras, before, after)


def _norm_sequence(seed: int, n: int) -> list[float]:
    """Seeded log-normal norms drifting down, with a spike of 8-30x every seventh step."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = math.exp(rng.gauss(0.0, 0.3)) * (1.0 - 0.01 * i)
        out.append(x * (rng.uniform(8, 30) if i % 7 == 5 else 1.0))
    return out


def _drive(policy: ClipPolicy, norms: list[float]) -> Iterator[Outcome]:
    for x in norms:
        yield _apply(policy, _grads_with_norm(x))


def _same(a: float, b: float) -> bool:
    return a == pytest.approx(b, rel=1e-9, nan_ok=True)


def _check_scaled(out: Outcome) -> None:
    """The gradients are the originals times the reported coefficient (untouched at 1.0)."""
    for b, a in zip(out.before, out.after, strict=True):
        if out.coef == 1.0:
            assert torch.equal(a, b) or torch.allclose(a, b, equal_nan=True)
        else:
            torch.testing.assert_close(a, b * torch.tensor(out.coef, dtype=torch.float32))


# -- PercentileClip --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percentile", "history", "warmup"), [(10.0, 7, 3), (50.0, 1000, 1), (100.0, 5, 6)]
)
def test_percentile_clip_matches_recomputation(
    percentile: float, history: int, warmup: int
) -> None:
    norms = _norm_sequence(1, 40)
    ref = PercentileRef(percentile, history, warmup)
    outs = list(_drive(PercentileClip(percentile, history=history, warmup=warmup), norms))
    for i, out in enumerate(outs):
        coef, threshold = ref.step(out.total)
        assert out.threshold is not None
        assert _same(out.threshold, threshold), i
        assert _same(out.coef, coef), i
        assert out.extras == {}
        _check_scaled(out)
    assert math.isinf(outs[warmup - 1].threshold or 0.0)  # no history yet: no limit
    bit = [o.coef < 1.0 for o in outs]
    assert any(bit) and not all(bit)  # the sequence exercises both branches


def test_percentile_threshold_uses_past_norms_only() -> None:
    policy = PercentileClip(percentile=50.0, warmup=3)
    outs = list(_drive(policy, [1.0, 2.0, 3.0, 10.0, 10.0]))
    totals = [o.total for o in outs]  # 1, 2, 3, 10, 10 up to float32 rounding
    assert [o.threshold for o in outs[:3]] == [math.inf] * 3
    assert outs[3].threshold == pytest.approx(totals[1], rel=1e-12)  # the median of 1, 2, 3
    assert outs[3].coef == pytest.approx(totals[1] / totals[3], rel=1e-12)  # about 0.2
    # the pre-clip 10 joined the history: the median of 1, 2, 3, 10
    assert outs[4].threshold == pytest.approx((totals[1] + totals[2]) / 2, rel=1e-12)


# -- ZScoreClip ------------------------------------------------------------------------------


@pytest.mark.parametrize(("z", "alpha", "warmup"), [(2.5, 0.97, 25), (1.5, 0.8, 5), (3.0, 0.5, 2)])
def test_zscore_clip_matches_recomputation(z: float, alpha: float, warmup: int) -> None:
    norms = _norm_sequence(2, 60)
    ref = ZScoreRef(z, alpha, warmup)
    outs = list(_drive(ZScoreClip(z=z, alpha=alpha, warmup=warmup), norms))
    for i, out in enumerate(outs):
        coef, threshold, zscore = ref.step(out.total)
        assert out.threshold is not None
        assert _same(out.threshold, threshold), i
        assert _same(out.coef, coef), i
        assert _same(out.extras["zscore"], zscore), i
        assert (out.coef < 1.0) == (i >= warmup and zscore > z)
        _check_scaled(out)
    assert any(o.coef < 1.0 for o in outs[warmup:])
    assert all(o.coef == 1.0 and math.isnan(o.extras["zscore"]) for o in outs[:warmup])


def test_zscore_clip_updates_statistics_with_the_clipped_norm() -> None:
    policy = ZScoreClip(z=1.0, alpha=0.5, warmup=2)
    outs = list(_drive(policy, [1.0, 3.0, 100.0, 2.0]))
    # warm-up: mean 2, variance 1; the spike 100 is clipped to 2 + 1 * 1 = 3
    assert outs[2].threshold == pytest.approx(3.0) and outs[2].coef == pytest.approx(0.03)
    # then d = 3 - 2: mean 2.5, variance 0.5 * (1 + 0.5 * 1) = 0.75, not inflated by 100
    assert outs[3].threshold == pytest.approx(2.5 + math.sqrt(0.75))
    assert outs[3].extras["zscore"] == pytest.approx((2.0 - 2.5) / math.sqrt(0.75))


# -- UnitwiseClip ----------------------------------------------------------------------------


def _agc_reference(
    grads: list[Tensor], params: list[Tensor], factor: float, eps: float
) -> tuple[list[list[float]], float, float]:
    """Each unit clipped in plain Python; returns flat clipped grads, coef, fraction clipped."""
    out, pre, post, clipped, units = [], 0.0, 0.0, 0, 0
    for g, p in zip(grads, params, strict=True):
        rows_g = g.reshape(g.shape[0], -1).tolist() if g.dim() >= 2 else [g.reshape(-1).tolist()]
        rows_w = p.reshape(p.shape[0], -1).tolist() if p.dim() >= 2 else [p.reshape(-1).tolist()]
        flat: list[float] = []
        for rg, rw in zip(rows_g, rows_w, strict=True):
            gn = math.sqrt(sum(v * v for v in rg))
            limit = factor * max(math.sqrt(sum(v * v for v in rw)), eps)
            scale = limit / gn if gn > limit else 1.0
            flat += [v * scale for v in rg]
            pre += gn * gn
            post += (gn * scale) ** 2
            clipped += gn > limit
            units += 1
        out.append(flat)
    return out, math.sqrt(post / pre) if clipped else 1.0, clipped / units


def _agc_case(seed: int, grad_scale: float) -> tuple[list[Tensor], list[Tensor]]:
    """A linear weight, a bias, a conv kernel and a scalar gain; some weight rows tiny."""
    gen = torch.Generator().manual_seed(seed)
    params = [
        torch.randn(5, 4, generator=gen),
        torch.randn(5, generator=gen),
        torch.randn(3, 2, 3, 3, generator=gen),
        torch.tensor(0.5),
    ]
    params[0][2] = 1e-5  # below eps: the limit uses eps
    grads = [torch.randn(p.shape, generator=gen) * grad_scale for p in params]
    grads[0][4] *= 100  # one loud unit
    return grads, params


@pytest.mark.parametrize(
    ("seed", "grad_scale", "factor", "eps"),
    [(0, 0.01, 0.01, 1e-3), (1, 1.0, 1.0, 1e-2), (2, 1e-4, 0.05, 1e-3)],
)
def test_unitwise_clip_matches_recomputation(
    seed: int, grad_scale: float, factor: float, eps: float
) -> None:
    grads, params = _agc_case(seed, grad_scale)
    expected, coef, frac = _agc_reference(grads, params, factor, eps)
    out = _apply(UnitwiseClip(clip_factor=factor, eps=eps), grads, params)
    for got, want in zip(out.after, expected, strict=True):
        assert got.reshape(-1).tolist() == pytest.approx(want, rel=1e-5, abs=1e-12)
    assert out.coef == pytest.approx(coef, rel=1e-6)
    assert out.extras["unit_frac"] == pytest.approx(frac)
    assert out.threshold is None
    assert 0 < frac < 1  # some units clipped, some not


def test_unitwise_clip_that_does_not_bite_reports_exactly_one() -> None:
    grads, params = _agc_case(3, 1e-6)
    out = _apply(UnitwiseClip(clip_factor=1.0), grads, params)
    assert out.coef == 1.0 and out.extras["unit_frac"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(out.after, out.before, strict=True))


def test_unitwise_clip_of_half_precision_gradients() -> None:
    grads, params = _agc_case(4, 0.5)
    expected, coef, _ = _agc_reference(grads, params, 0.05, 1e-3)
    half = [g.half() for g in grads]
    out = _apply(UnitwiseClip(clip_factor=0.05), half, params)
    assert all(g.dtype == torch.float16 for g in out.after)
    for got, want in zip(out.after, expected, strict=True):
        assert got.float().reshape(-1).tolist() == pytest.approx(want, rel=2e-3, abs=1e-4)
    assert out.coef == pytest.approx(coef, rel=2e-3)


# -- ValueClip -------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0.05, 0.5, 100.0])
def test_value_clip_matches_clip_grad_value(limit: float) -> None:
    grads, _ = _agc_case(5, 0.3)
    ref = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(ref, grads, strict=True):
        p.grad = g.clone()
    nn.utils.clip_grad_value_(ref, limit)
    out = _apply(ValueClip(limit), grads)
    flat_before = [v for g in out.before for v in g.reshape(-1).tolist()]
    clamped = [min(max(v, -limit), limit) for v in flat_before]
    pre = math.sqrt(sum(v * v for v in flat_before))
    post = math.sqrt(sum(v * v for v in clamped))
    for got, p in zip(out.after, ref, strict=True):
        assert p.grad is not None and torch.equal(got, p.grad)
    assert [v for g in out.after for v in g.reshape(-1).tolist()] == pytest.approx(clamped)
    assert out.coef == (pytest.approx(post / pre, rel=1e-6) if post < pre else 1.0)
    assert out.threshold == limit


# -- sparse gradients ------------------------------------------------------------------------


def _sparse_case() -> tuple[Tensor, Tensor]:
    """An uncoalesced embedding gradient (row 2 stored three times) and its weight."""
    gen = torch.Generator().manual_seed(6)
    weight = torch.randn(6, 3, generator=gen)
    rows = torch.tensor([[2, 0, 2, 5, 2]])
    values = torch.randn(5, 3, generator=gen) * torch.tensor([[1.0], [0.001], [1.0], [0.02], [1.0]])
    return torch.sparse_coo_tensor(rows, values, (6, 3), check_invariants=True), weight


@pytest.mark.parametrize("policy", [UnitwiseClip(0.1), ValueClip(0.3)], ids=repr)
def test_sparse_gradients_clip_like_their_dense_form(policy: ClipPolicy) -> None:
    sparse, weight = _sparse_case()
    dense = sparse.to_dense()
    out_sparse = _apply(policy, [sparse], [weight])
    out_dense = _apply(policy, [dense], [weight])
    assert out_sparse.after[0].is_sparse
    torch.testing.assert_close(out_sparse.after[0].to_dense(), out_dense.after[0])
    assert out_sparse.coef == pytest.approx(out_dense.coef, rel=1e-6)
    assert out_dense.coef < 1.0  # the case bites


# -- NaN, Inf and empty steps ----------------------------------------------------------------

STATEFUL: list[Callable[[], ClipPolicy]] = [
    lambda: PercentileClip(25.0, history=6, warmup=3),
    lambda: ZScoreClip(z=1.5, alpha=0.8, warmup=4),
]


def _signals(outs: list[Outcome]) -> list[tuple[object, ...]]:
    """Threshold, coefficient and extras of each step, NaN spelled out so ``==`` is exact."""

    def spell(v: float | None) -> object:
        return "nan" if v is not None and math.isnan(v) else v

    return [
        (spell(o.threshold), o.coef, *((k, spell(v)) for k, v in sorted(o.extras.items())))
        for o in outs
    ]


@pytest.mark.parametrize("make", STATEFUL, ids=["percentile", "zscore"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.0])
@pytest.mark.parametrize("at", [1, 9])  # during warm-up, after it
def test_a_bad_step_does_not_change_later_thresholds(
    make: Callable[[], ClipPolicy], bad: float, at: int
) -> None:
    norms = _norm_sequence(3, 25)
    clean = list(_drive(make(), norms))
    dirty = list(_drive(make(), [*norms[:at], bad, *norms[at:]]))
    skipped = dirty.pop(at)
    assert skipped.coef == 1.0
    _check_scaled(skipped)  # untouched, NaN where it was planted
    assert skipped.threshold == clean[at].threshold  # the state it saw was the clean one
    assert _signals(dirty) == _signals(clean)
    assert any(o.coef < 1.0 for o in clean[at:])


@pytest.mark.parametrize("policy", [UnitwiseClip(1e-4), ValueClip(1e-4)], ids=repr)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_stateless_policies_leave_a_nonfinite_step_alone(policy: ClipPolicy, bad: float) -> None:
    grads, params = _agc_case(7, 1.0)
    grads[0][0, 0] = bad
    out = _apply(policy, grads, params)
    assert out.coef == 1.0
    for a, b in zip(out.after, out.before, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)


# -- resuming --------------------------------------------------------------------------------

RESUMABLE: list[Callable[[], ClipPolicy]] = [
    *STATEFUL,
    lambda: PercentileClip(10.0, history=1000, warmup=25),
    lambda: ZScoreClip(),
]


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer)
    return loaded


@pytest.mark.parametrize("make", RESUMABLE, ids=["pct", "z", "pct-default", "z-default"])
@pytest.mark.parametrize("k", [0, 2, 30])
def test_a_resumed_policy_clips_exactly_as_the_uninterrupted_one(
    make: Callable[[], ClipPolicy], k: int
) -> None:
    norms = _norm_sequence(4, 50)
    norms[35] = math.nan
    whole = list(_drive(make(), norms))
    first = make()
    list(_drive(first, norms[:k]))
    state = first.state_dict()
    assert state and all(v.device.type == "cpu" for v in state.values())
    second = make()
    second.load_state_dict(_roundtrip(state))
    rest = list(_drive(second, norms[k:]))
    assert _signals(rest) == _signals(whole[k:])
    for a, b in zip(rest, whole[k:], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.after, b.after, strict=True)) or (
            a.coef == b.coef == 1.0  # the NaN step: equal up to NaN != NaN
        )


def test_state_dict_is_a_copy_and_load_checks_its_input() -> None:
    policy = PercentileClip(history=8, warmup=1)
    list(_drive(policy, [1.0, 2.0]))
    state = policy.state_dict()
    state["norms"].fill_(0.0)
    assert policy.state_dict()["norms"][:2].tolist() == pytest.approx([1.0, 2.0], rel=1e-6)
    with pytest.raises(ValueError, match=r"'norms' must be a tensor of shape \(1000,\)"):
        PercentileClip(history=1000).load_state_dict(policy.state_dict())
    with pytest.raises(ValueError, match="expects the keys"):
        ZScoreClip().load_state_dict(policy.state_dict())
    assert UnitwiseClip().state_dict() == {} and ValueClip(1.0).state_dict() == {}


# -- no host sync ----------------------------------------------------------------------------


@pytest.fixture
def no_host_reads(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make every Python-level way of reading a tensor back to the host raise."""

    def arm() -> None:
        def refuse(*args: object, **kwargs: object) -> Any:
            raise AssertionError("a host read inside clip_")

        for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__"):
            monkeypatch.setattr(torch.Tensor, name, refuse)

    return arm


ALL: list[Callable[[], ClipPolicy]] = [
    *STATEFUL,
    lambda: UnitwiseClip(0.01),
    lambda: ValueClip(0.01),
]


@pytest.mark.parametrize("make", ALL, ids=["percentile", "zscore", "unitwise", "value"])
def test_clip_reads_nothing_back_to_the_host(
    make: Callable[[], ClipPolicy], no_host_reads: Callable[[], None]
) -> None:
    policy = make()
    cases = [_agc_case(i, 10.0 if i == 6 else 0.01) for i in range(8)]
    cases[3][0][1][0] = math.nan
    norms = [torch.stack([g.double().norm() for g in grads]) for grads, _ in cases]
    no_host_reads()
    results = [
        policy.clip_(grads, n, n.norm(), params)
        for (grads, params), n in zip(cases, norms, strict=True)
    ]
    with pytest.raises(AssertionError, match="host read"):
        float(results[0].coef)  # the guard is armed
    assert len(results) == len(cases)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an accelerator")
@pytest.mark.parametrize("make", ALL, ids=["percentile", "zscore", "unitwise", "value"])
def test_clip_does_not_synchronize_the_accelerator(make: Callable[[], ClipPolicy]) -> None:
    policy = make()
    cases = [_agc_case(i, 10.0 if i == 6 else 0.01) for i in range(8)]
    cases[3][0][1][0] = math.nan
    moved = [([g.cuda() for g in gs], [p.cuda() for p in ps]) for gs, ps in cases]
    norms = [torch.stack([g.double().norm() for g in gs]) for gs, _ in moved]
    first_grads, first_params = moved[0]
    policy.clip_(first_grads, norms[0], norms[0].norm(), first_params)  # state created here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for (grads, params), n in zip(moved[1:], norms[1:], strict=True):
            policy.clip_(grads, n, n.norm(), params)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # and the same numbers as on the CPU
    cpu = make()
    cpu_norms = [torch.stack([g.double().norm() for g in gs]) for gs, _ in cases]
    for (grads, params), n in zip(cases, cpu_norms, strict=True):
        cpu.clip_(grads, n, n.norm(), params)
    for (gc, _), (gd, _) in zip(cases, moved, strict=True):
        for a, b in zip(gc, gd, strict=True):
            torch.testing.assert_close(b.cpu(), a, equal_nan=True, rtol=1e-5, atol=1e-7)


# -- end to end ------------------------------------------------------------------------------


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def test_watch_with_zscore_clip_logs_coef_threshold_and_zscore() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights fixed: grads depend on data only
    sink = MemorySink()
    spikes = {6: 50.0, 9: 20.0}
    applied = []
    with gradwandb.watch(
        model, opt, sink=sink, clip=ZScoreClip(z=2.0, alpha=0.9, warmup=4), hist_every=None
    ):
        for i in range(12):
            opt.zero_grad()
            gen = torch.Generator().manual_seed(i)
            x = torch.randn(16, 6, generator=gen) * spikes.get(i, 1.0)
            model(x).pow(2).mean().backward()
            before = [p.grad.clone() for p in model.parameters() if p.grad is not None]
            opt.step()
            after = [p.grad for p in model.parameters() if p.grad is not None]
            applied.append(
                math.sqrt(sum(float(a.double().pow(2).sum()) for a in after))
                / math.sqrt(sum(float(b.double().pow(2).sum()) for b in before))
            )
    keys = ["global_norm", "clip_coef", "clip_threshold", "clip_zscore", "clip_rate"]
    rows = [{k: float(row[f"grad/{k}"]) for k in keys} for _, row in sink.rows]  # type: ignore[arg-type]
    assert len(rows) == 12
    ref = ZScoreRef(2.0, 0.9, 4)
    for i, row in enumerate(rows):
        coef, threshold, zscore = ref.step(row["global_norm"])
        assert row["clip_coef"] == pytest.approx(coef, rel=1e-9), i
        assert row["clip_threshold"] == pytest.approx(threshold, rel=1e-9), i
        assert row["clip_zscore"] == pytest.approx(zscore, rel=1e-9, nan_ok=True), i
        assert applied[i] == pytest.approx(coef, rel=1e-5), i
    assert rows[6]["clip_coef"] < 0.5  # the spike was clipped
    assert rows[-1]["clip_rate"] == pytest.approx(sum(r["clip_coef"] < 1.0 for r in rows) / 12)


@pytest.mark.parametrize(
    ("policy", "keys", "absent"),
    [
        (PercentileClip(warmup=2), {"grad/clip_threshold"}, "grad/clip_zscore"),
        (UnitwiseClip(), {"grad/clip_unit_frac"}, "grad/clip_threshold"),
        (ValueClip(1e-3), {"grad/clip_threshold"}, "grad/clip_zscore"),
    ],
    ids=repr,
)
def test_watch_logs_each_policys_signals(policy: ClipPolicy, keys: set[str], absent: str) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, clip=policy, hist_every=None):
        for i in range(4):
            opt.zero_grad()
            model(torch.randn(8, 6, generator=torch.Generator().manual_seed(i))).sum().backward()
            opt.step()
    last = sink.last()
    assert keys <= set(last) and absent not in last
    assert 0 < last["grad/clip_coef"] <= 1.0  # type: ignore[operator]


# -- arguments -------------------------------------------------------------------------------

BAD_ARGUMENTS: list[tuple[Callable[..., ClipPolicy], dict[str, Any], type[Exception], str]] = [
    (PercentileClip, {"percentile": 0}, ValueError, "percentile"),
    (PercentileClip, {"percentile": 100.5}, ValueError, "percentile"),
    (PercentileClip, {"percentile": "10"}, TypeError, "percentile"),
    (PercentileClip, {"history": 0}, ValueError, "history"),
    (PercentileClip, {"history": 10.0}, TypeError, "history"),
    (PercentileClip, {"warmup": 0}, ValueError, "warmup"),
    (PercentileClip, {"warmup": True}, TypeError, "warmup"),
    (ZScoreClip, {"z": -1.0}, ValueError, "z"),
    (ZScoreClip, {"z": math.inf}, ValueError, "z"),
    (ZScoreClip, {"alpha": 0.0}, ValueError, "alpha"),
    (ZScoreClip, {"alpha": 1.0}, ValueError, "alpha"),
    (ZScoreClip, {"warmup": 1}, ValueError, "warmup"),
    (UnitwiseClip, {"clip_factor": 0}, ValueError, "clip_factor"),
    (UnitwiseClip, {"eps": math.nan}, ValueError, "eps"),
    (ValueClip, {"limit": -0.1}, ValueError, "limit"),
    (ValueClip, {"limit": None}, TypeError, "limit"),
]


@pytest.mark.parametrize(("cls", "kwargs", "error", "name"), BAD_ARGUMENTS)
def test_bad_arguments_name_the_argument(
    cls: Callable[..., ClipPolicy], kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=rf"^{name} must be"):
        cls(**kwargs)
