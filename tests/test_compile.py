"""torch.compile: watching a compiled model adds no graph break, and its numbers are those of
the same model uncompiled (statistics are taken on ``p.grad`` after backward, outside the
compiled region)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwandb
from gradwandb.live.sinks import MemorySink

STEPS = 3


def _train(compiled: bool) -> tuple[MemorySink, list[str]]:
    torch.manual_seed(0)
    model: nn.Module = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if compiled:
        model = torch.compile(model, backend="aot_eager")  # type: ignore[assignment]
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, layers_every=1, hist_every=2, clip=0.5) as t:
        for k in range(STEPS):
            g = torch.Generator().manual_seed(k)
            x, y = torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        names = t.names
    return sink, names


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_compiled_model_has_no_graph_break_and_the_same_numbers() -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled, names = _train(compiled=True)
    assert dict(counters["graph_break"]) == {}, dict(counters["graph_break"])
    assert sum(counters["stats"].values()) > 0  # dynamo did compile the model
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    eager, eager_names = _train(compiled=False)
    assert names == eager_names == ["0.weight", "0.bias", "2.weight", "2.bias"]  # no _orig_mod.
    assert len(compiled.rows) == len(eager.rows) == STEPS
    for (k, got), (_, want) in zip(compiled.rows, eager.rows, strict=True):
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-9), (k, key)
    torch._dynamo.reset()
