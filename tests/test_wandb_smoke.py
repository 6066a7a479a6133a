import torch

import gradwandb
from tests.conftest import read_back


def test_offline_run_reads_back(wandb_run):
    run = wandb_run()
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwandb.watch(model, opt, run=run, hist_every=1):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 3)).sum().backward()
            opt.step()
            run.log({"loss": 1.0})
    log = read_back(run)
    assert [s for s, _ in log.series("grad/global_norm")] == [0, 1, 2]
    assert [s for s, _ in log.series("loss")] == [0, 1, 2]
    assert log.series("grad_hist/weight")[0][1]["_type"] == "histogram"


def test_offline_run_typed_view(wandb_run):
    run = wandb_run()
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwandb.watch(model, opt, run=run, layers_every=1, hist_every=1):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 3)).sum().backward()
            opt.step()
    log = read_back(run)
    assert log.complete and log.tags == [None]
    assert [s for s, _ in log.global_series("global_norm")] == [0, 1, 2]
    matrix = log.layer_matrix("grad_norm")
    assert matrix.names == ["weight", "bias"] and matrix.steps == [0, 1, 2]
    assert all(v is not None for row in matrix.values for v in row)
    assert [s for s, _ in log.histograms("weight")] == [0, 1, 2]
    assert log.verdict == "healthy"
