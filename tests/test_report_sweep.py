"""``gradwandb report --sweep``: a real local sweep (a grid of two runs of a tiny watched
model, one exploding, run by the local sweep runner) turned into a page with the phase
diagram, the parameter-versus-outcome plots and the table; a phase diagram of three swept
parameters; the W&B sweep seam; the W&B Report's sweep panels, offline."""

from __future__ import annotations

import json
import textwrap
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from gradwandb.cli import main
from gradwandb.read.sweep import load_sweep
from gradwandb.read.sweep_runner import run_sweep
from gradwandb.report.publish import build_wandb_report
from gradwandb.report.sweep import SweepData, api_sweep, local_sweep, render_sweep_report

PROGRAM = textwrap.dedent(
    """
    import torch, wandb
    from torch import nn
    import gradwandb

    run = wandb.init(project="gradwandb-report-sweep")
    lr, scale = float(run.config["lr"]), float(run.config["scale"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    with torch.no_grad():
        model[2].weight.mul_(scale)  # a head of huge weights: gradients explode
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gradwandb.watch(model, opt, run=run, layers_every=1, hist_every=None)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for _ in range(4):
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        run.log({"loss": loss.item()})
    run.finish()
    """
)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report-sweep")
    (root / "train.py").write_text(PROGRAM)
    config = {
        "name": "grid",
        "program": "train.py",
        "method": "grid",
        "metric": {"name": "loss", "goal": "minimize"},
        "command": ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"],
        "parameters": {"lr": {"value": 0.05}, "scale": {"values": [1, 1000]}},
    }
    (root / "grid.yaml").write_text(yaml.safe_dump(config))
    spec = load_sweep(root / "grid.yaml", cwd=root, describe_program=False)
    folder = root / "sweep"
    with (root / "out.txt").open("w") as out:
        run_sweep(spec, folder, workers=2, progress=False, cwd=root, out=out)
    return folder


@pytest.fixture(scope="module")
def page(sweep_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("report-sweep-page") / "sweep.html"
    assert main(["report", "--sweep", str(sweep_dir), "-o", str(out), "--no-progress"]) == 0
    return out.read_text()


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_sweep_reads_back_with_each_cells_verdict(sweep_dir: Path) -> None:
    data = local_sweep(sweep_dir)
    assert data.name == "grid" and data.params == ["scale"] and data.metric == "loss"
    assert len(data.rows) == 2 and {r["status"] for r in data.rows} == {"finished"}
    verdicts = {r["scale"]: r["verdict"] for r in data.rows}
    assert verdicts == {1: "healthy", 1000: "exploding"}
    assert all(r["max_grad_norm"] is not None for r in data.rows)


def test_the_sweep_page_has_the_phase_diagram_plots_and_table(page: str) -> None:
    p = Tags()
    p.feed(page)
    sections = [a.get("id") for t, a in p.tags if t == "section"]
    assert sections == ["phase", "outcomes", "table"]
    images = [a for t, a in p.tags if t == "img"]
    assert any("phase diagram" in (a.get("alt") or "") for a in images)
    assert any(a.get("alt") == "final_loss against scale" for a in images)
    assert any(a.get("alt") == "max_grad_norm against scale" for a in images)
    assert all((a.get("src") or "").startswith("data:image/png;base64,") for a in images)
    assert not any(t in ("script", "link") for t, _ in p.tags)
    rows = [t for t, _ in p.tags if t == "tr"]
    assert len(rows) == 1 + 2  # header + one per run
    assert page.count('class="verdict v-exploding"') == 1
    assert page.count('class="verdict v-healthy"') == 1


def test_a_folder_that_is_not_a_sweep_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--sweep", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "sweep.json" in err and "Traceback" not in err


def test_a_third_parameter_becomes_panels_of_the_phase_diagram() -> None:
    rows = [
        {"run": f"r{a}{b}{c}", "a": a, "b": b, "c": c, "verdict": v, "max_grad_norm": 1.0}
        for a in (1, 2)
        for b in ("x", "y")
        for c in (0.1, 0.2)
        for v in ["exploding" if a == 2 else "healthy"]
    ]
    text = render_sweep_report(SweepData("s", "here", ["a", "b", "c"], None, rows))
    assert "phase diagram" in text and "Not on the grid" not in text
    assert text.count('class="verdict v-exploding"') == 4  # the table: a=2 explodes


class StandInSweepRun:
    def __init__(self, i: int, verdict: str) -> None:
        self.id, self.state = f"run{i}", "finished"
        self.config = {"lr": 0.1 * i}
        self.summary = {"gradwandb/verdict": verdict, "loss": 1.0 / i}

    def scan_history(self, keys: list[str]) -> list[dict[str, Any]]:
        return [{"grad/global_norm": 2.0, "grad/clip_coef": 0.5}, {"grad/global_norm": 3.0}]


def test_a_wandb_sweep_reads_through_the_api_shape() -> None:
    class StandInSweep:
        def __init__(self) -> None:
            self.config = {"name": "online", "metric": {"name": "loss"},
                           "parameters": {"lr": {"values": [0.1, 0.2]}}}  # fmt: skip
            self.runs = [StandInSweepRun(1, "healthy"), StandInSweepRun(2, "exploding")]

    data = api_sweep(StandInSweep(), "W&B sweep e/p/s")
    assert data.params == ["lr"] and data.name == "online"
    assert [r["verdict"] for r in data.rows] == ["healthy", "exploding"]
    assert data.rows[0]["max_grad_norm"] == 3.0 and data.rows[0]["clip_rate"] == 1.0


def test_the_wandb_report_of_a_sweep_has_its_panels(sweep_dir: Path) -> None:
    data = local_sweep(sweep_dir)
    report = build_wandb_report("team", "proj", sweep=data, bind_runsets=False)
    spec = json.loads(report._to_model().spec.model_dump_json(by_alias=True, exclude_none=True))
    panels = [
        p
        for b in spec["blocks"]
        if b.get("type") == "panel-grid"
        for p in b["metadata"]["panelBankSectionConfig"]["panels"]
    ]
    kinds = {p["viewType"] for p in panels}
    assert {"Parallel Coordinates Plot", "Parameter Importance", "Run History Line Plot"} <= kinds
    parallel = next(p for p in panels if p["viewType"] == "Parallel Coordinates Plot")
    accessors = [c["accessor"] for c in parallel["config"]["columns"]]
    assert accessors[:2] == ["config:scale.value", "summary:loss"]
    importance = next(p for p in panels if p["viewType"] == "Parameter Importance")
    assert importance["config"]["targetKey"] == "loss"
    text = json.dumps(spec)
    assert "Sweep grid: 2 runs" in text and "exploding" in text
    assert all(r["run"] in text for r in data.rows)  # the runset selects the sweep's runs
