"""The statistics kernels against direct recomputation, per dtype, layout and device path."""

from __future__ import annotations

import math

import pytest
import torch

from gradwandb.live.stats import kernels as S


def _tensors(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    return [torch.randn(s, generator=g).to(dtype) for s in shapes]


def _reference(t: torch.Tensor) -> tuple[float, float, float]:
    x = t.detach().double()
    return float(x.norm()), float(x.abs().mean()), float(x.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", ["cpu", "foreach"])
def test_grad_stats_match_direct_recomputation(dtype: torch.dtype, path: str) -> None:
    tensors = _tensors(dtype)
    rows = S._cpu_rows(tensors) if path == "cpu" else S._foreach_rows(tensors, (2.0, 1.0, math.inf))
    assert S.grad_norms(tensors).tolist() == pytest.approx(rows[S.NORM].tolist(), rel=1e-6)
    rows[S.L1_SUM] /= torch.tensor([t.numel() for t in tensors], dtype=torch.float64)
    tol = 1e-6 if dtype in (torch.float32, torch.float64) else 1e-2
    for i, t in enumerate(tensors):
        norm, mean_abs, max_abs = _reference(t)
        assert rows[S.NORM, i].item() == pytest.approx(norm, rel=tol)
        assert rows[S.L1_SUM, i].item() == pytest.approx(mean_abs, rel=tol)
        assert rows[S.MAX_ABS, i].item() == pytest.approx(max_abs, rel=tol)


def test_exact_norms_survive_float32_underflow_and_overflow() -> None:
    tiny = torch.full((1000,), 1e-25)
    huge = torch.full((4,), 3e38)
    fast = S.grad_stats([tiny, huge])
    assert fast[S.NORM].tolist() == [0.0, math.inf]  # squares underflow / overflow float32
    # the tracker corrects an overflow of finite values at once (clipping and the guard see
    # it), and an underflow on logged steps (its second look)
    fixed = S.without_overflow(fast[S.NORM].clone(), [tiny, huge])
    assert fixed.tolist()[0] == 0.0 and fixed.tolist()[1] == pytest.approx(6e38, rel=1e-6)
    assert S.exact_norms([tiny, huge]) == pytest.approx([1e-25 * math.sqrt(1000), 6e38], rel=1e-6)


def test_sparse_gradient_uses_coalesced_values_and_dense_count() -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 1, 4])).pow(2).sum().backward()
    grad = emb.weight.grad
    assert grad is not None and grad.is_sparse
    values = S.dense_values(grad)
    stats = S.grad_stats([values])
    stats[S.L1_SUM] /= emb.weight.numel()
    norm, mean_abs, max_abs = _reference(grad.to_dense())
    assert stats[:, 0].tolist() == pytest.approx([norm, mean_abs, max_abs], rel=1e-6)


def test_nonfinite_flags_and_counts() -> None:
    clean = torch.ones(4)
    nan = torch.tensor([1.0, math.nan, 2.0, math.nan])
    inf = torch.tensor([-math.inf, 1.0, 0.0, 0.0])
    stats = S.grad_stats([clean, nan, inf])
    assert S.nonfinite_flags(stats[S.NORM]).tolist() == [False, True, True]
    assert S.nonfinite_counts([clean, nan, inf]) == [0, 2, 1]


def test_histograms_count_every_element_once() -> None:
    t = torch.tensor([0.0, 0.0, 1e-3, -2.0, 4.0, math.nan, math.inf, 1e-30, 1e-41])
    h = S.histograms([t], S.grad_stats([t])[S.MAX_ABS])
    assert h.scale[0].item() == 4.0  # the largest finite magnitude
    assert h.values[0].sum().item() == 7  # the finite values; NaN and Inf fall outside
    assert h.zeros[0].item() == 2
    logs = h.log10[0].tolist()
    assert sum(logs) == 9  # every element: zeros and denormals in bin 0, NaN/Inf in the last
    assert logs[0] == 3 and logs[-1] == 2
    edges = S.log10_edges()
    for value in (1e-3, 2.0, 4.0, 1e-30):
        k = next(i for i in range(S.LOG10_BINS) if edges[i] <= math.log10(value) < edges[i + 1])
        assert logs[k] >= 1, value


def test_magnitude_bins_match_a_computed_log() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(10_000, generator=g) * torch.logspace(-30, 10, 10_000)
    counts = S.histograms([t], S.grad_stats([t])[S.MAX_ABS]).log10[0]
    edges = torch.tensor(S.log10_edges(), dtype=torch.float64)
    expected = torch.histogram(t.abs().double().log10(), bins=edges).hist
    assert counts.tolist() == expected.tolist()


def test_value_histogram_range_is_symmetric_around_zero() -> None:
    edges = S.value_edges(2.0)
    assert len(edges) == S.VALUE_BINS + 1
    assert edges[0] == -2.0 and edges[-1] == pytest.approx(2.0)
    assert edges[S.VALUE_BINS // 2] == pytest.approx(0.0)


def test_global_norm_is_norm_of_concatenation() -> None:
    tensors = _tensors(torch.float32)
    stats = S.grad_stats(tensors)
    expected = torch.cat([t.reshape(-1).double() for t in tensors]).norm().item()
    assert S.global_norm(stats[S.NORM]).item() == pytest.approx(expected, rel=1e-6)


def test_to_host_keeps_order_and_shapes() -> None:
    out = S.to_host({"m": torch.arange(6.0).reshape(2, 3), "s": torch.tensor(7.0)})
    assert out == {"m": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "s": [7.0]}
