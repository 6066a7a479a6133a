"""``gradwandb report``: pages rendered from real offline runs of tiny seeded models (healthy,
exploding through time, vanishing, killed mid-training), read as HTML; the online reader's seam
with a stand-in for wandb's Run; the W&B Report built and serialized offline; errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gradwandb
from gradwandb.cli import main
from gradwandb.read.run import Finding, RunLog, read_run
from gradwandb.report import sections as S
from gradwandb.report.downsample import bin_columns, thin_series
from gradwandb.report.online import run_log
from gradwandb.report.publish import (
    INSTALL_HINT,
    PublishError,
    RunBrief,
    brief_of,
    build_wandb_report,
    summary_markdown,
    workspaces,
)
from gradwandb.report.render import render_report
from gradwandb.report.sources import ReportError

ROOT = Path(__file__).resolve().parents[1]
EVIL = "<script>alert(1)</script>"


# -- runs made once for the module -------------------------------------------------------------


class Recurrent(nn.Module):
    """A vanilla RNN with a head of huge weights: the gradients explode."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(3, 8, batch_first=True)
        self.head = nn.Linear(8, 2)
        with torch.no_grad():
            self.rnn.weight_hh_l0.mul_(3.0)
            self.head.weight.mul_(300.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x)
        return self.head(h[:, -1])


def _train(
    root: Path, name: str, model: nn.Module, data: torch.Tensor, steps: int, **watch: Any
) -> Path:
    import wandb

    run = wandb.init(
        project="gradwandb-report-tests",
        dir=str(root),
        name=name,
        reinit="create_new",
        config={"model": name, "note": EVIL, "lr": 0.05},
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tracker = gradwandb.watch(model, opt, run=run, **watch)
    for _ in range(steps):
        loss = model(data).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        run.log({"loss": loss.item()})
    tracker.remove()
    run.finish()
    return Path(run.settings.sync_dir)


KILLED = textwrap.dedent(
    """
    import os, signal, sys, time
    import torch, wandb
    from torch import nn
    import gradwandb

    torch.manual_seed(0)
    run = wandb.init(project="gradwandb-report-tests", dir=sys.argv[1], name="killed")
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gradwandb.watch(model, opt, run=run, layers_every=1, hist_every=None)
    x = torch.randn(8, 3)
    for _ in range(40):  # enough for W&B's service to write its first blocks to disk
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    print(run.settings.sync_dir, flush=True)
    time.sleep(0.5)  # let the service write, then die mid-training
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report-runs")
    killer = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(root)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    torch.manual_seed(0)
    out = {}
    healthy = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    healthy.add_module(EVIL, nn.Linear(2, 2))  # a parameter name that must be escaped
    out["healthy"] = _train(
        root, "healthy", healthy, torch.randn(16, 4), 6, layers_every=2, hist_every=3
    )
    torch.manual_seed(0)
    out["exploding"] = _train(
        root, "exploding", Recurrent(), torch.randn(4, 6, 3), 5,
        layers_every=1, hist_every=None, bptt_every=1,
    )  # fmt: skip
    torch.manual_seed(0)
    deep = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(6, 6), nn.Sigmoid())])
    with torch.no_grad():
        for p in deep.parameters():
            p.mul_(0.05)
    out["vanishing"] = _train(
        root, "vanishing", deep, torch.randn(8, 6), 6, layers_every=1, hist_every=2
    )
    stdout, _ = killer.communicate(timeout=120)
    assert killer.returncode == -signal.SIGKILL
    out["killed"] = Path(stdout.strip().splitlines()[-1])
    return out


@pytest.fixture(scope="module")
def page(runs: dict[str, Path]) -> str:
    """One page of three runs side by side, in the order of ``ORDER``; the flow bars of step
    0 only, to keep the drawing short."""
    return render_report([runs[k] for k in ORDER], steps=[0])


ORDER = ("healthy", "exploding", "killed")


class Page(HTMLParser):
    """Every tag with its attributes, the text, and each section's cells' text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.cells: dict[str, list[str]] = {}
        self._section: str | None = None
        self._depth = 0  # div depth inside the current cell (0: not in a cell)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "section":
            self._section = a.get("id")
            self.cells[self._section or ""] = []
        elif tag == "div" and a.get("class") == "cell" and self._section:
            self.cells[self._section].append("")
            self._depth = 1
        elif tag == "div" and self._depth:
            self._depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._depth and self._section:
            self.cells[self._section][-1] += data


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    p.close()
    return p


def cell(page: Page, section: str, run: str) -> str:
    return page.cells[section][ORDER.index(run)]


# -- the page ----------------------------------------------------------------------------------


def test_the_runs_are_what_their_models_make(runs: dict[str, Path]) -> None:
    logs = {k: read_run(v) for k, v in runs.items()}
    assert logs["healthy"].verdict == "healthy"
    assert logs["exploding"].verdict == "exploding"
    assert logs["vanishing"].verdict == "vanishing"
    assert not logs["killed"].complete and logs["killed"].steps()


def test_the_page_is_one_self_contained_file(page: str) -> None:
    p = parse(page)
    images = [a for t, a in p.tags if t == "img"]
    assert len(images) >= 10
    assert all((a.get("src") or "").startswith("data:image/png;base64,") for a in images)
    for tag, attrs in p.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        for name in ("src", "href", "srcset", "action"):
            value = attrs.get(name) or ""
            assert not value.startswith(("http:", "https:", "//")), (tag, name, value)
    assert "url(" not in page and "@import" not in page  # no fetched CSS or fonts
    for png in (a["src"] for a in images if a.get("src")):
        data = __import__("base64").b64decode(png.split(",", 1)[1])
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    sections = [a.get("id") for t, a in p.tags if t == "section"]
    assert sections == [key for key, _, _ in S.BUILDERS]
    assert all(len(cells) == 3 for cells in p.cells.values())  # one cell per run, aligned


def test_names_config_and_messages_are_escaped(page: str) -> None:
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    p = parse(page)
    assert EVIL in cell(p, "config", "healthy")  # the config value, read back as text
    assert f"{EVIL}.weight" in cell(p, "params", "healthy")  # the parameter's name


def test_each_section_shows_what_the_run_logged_or_says_why_not(page: str) -> None:
    p = parse(page)
    assert "exploding" in cell(p, "status", "exploding")
    assert "healthy" in cell(p, "status", "healthy")
    assert "fix" in cell(p, "findings", "exploding") and "clip" in cell(p, "findings", "exploding")
    assert "No per-timestep (BPTT) gradients were logged" in cell(p, "bptt", "healthy")
    assert "bptt_every" in cell(p, "bptt", "healthy")
    assert "rnn" in cell(p, "bptt", "exploding")  # the module's curves, not the note
    assert "No per-timestep" not in cell(p, "bptt", "exploding")
    assert "No gradient histograms were logged" in cell(p, "histograms", "exploding")
    assert "hist_every" in cell(p, "histograms", "exploding")
    assert "No gradient histograms" not in cell(p, "histograms", "healthy")
    assert "rnn.weight_hh_l0" in cell(p, "params", "exploding")


def test_a_killed_run_renders_what_it_wrote_and_says_it_is_incomplete(page: str) -> None:
    p = parse(page)
    killed = cell(p, "status", "killed")
    assert "Incomplete run" in killed and "up to optimizer step" in killed
    for run in ("healthy", "exploding"):
        assert "Incomplete run" not in cell(p, "status", run)
    assert "did not finish" in cell(p, "findings", "killed")
    assert "No global gradient norm" not in cell(p, "global", "killed")  # its norms are drawn


def test_flow_steps_are_chosen_and_moved_to_logged_ones(runs: dict[str, Path]) -> None:
    run = read_run(runs["healthy"])  # layers logged every 2nd step: 0, 2, 4
    col = S.Column("h", "here", run, run.view(None))
    assert 1 not in run.layer_matrix("grad_mean_abs").steps
    body = S.flow(col, S.Options(steps=(1, 0)))
    assert body.count("<img") == 1  # 1 moves to 0, which is drawn once
    assert "step 1 logged no per-layer values; the nearest that did, 0, is shown" in body
    assert S.choose_steps([0, 2, 4, 6], None) == ([0, 4, 6], [])


def test_the_vanishing_run_shows_its_findings_and_fixes(runs: dict[str, Path]) -> None:
    run = read_run(runs["vanishing"])
    body = S.findings(S.Column("v", "here", run, run.view(None)), S.Options())
    assert "verdict: <b>vanishing</b>" in body
    kinds = {f.kind for f in run.findings}
    assert "vanishing" in kinds and body.count('<td class="fix">') == len(run.findings)


# -- the command -------------------------------------------------------------------------------


def test_the_command_writes_the_page(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    code = main(["report", str(runs["killed"]), "-o", str(out), "--steps", "0", "--no-progress"])
    assert code == 0 and out.read_text().startswith("<!DOCTYPE html>")
    assert "Incomplete run" in out.read_text()


def test_a_path_that_is_not_a_run_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    assert main(["report", str(empty), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "run-<id>.wandb" in err and "Traceback" not in err
    assert main(["report", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["report", "--no-progress"]) == 2
    with pytest.raises(ReportError, match="no run given"):
        render_report([])


# -- long runs ---------------------------------------------------------------------------------


def test_long_series_are_thinned_keeping_their_spikes() -> None:
    series = [(i, 1.0) for i in range(10_000)]
    series[4_321] = (4_321, 1e6)  # a spike between kept points
    thin = thin_series(series, limit=2000)
    assert thin.stride == 5 and len(thin.points) == 2000 and thin.total == 10_000
    assert max(v for _, v in thin.points) == 1.0  # the spike is not a kept point...
    assert max(h for h in thin.high if h is not None) == 1e6  # ...but its bucket's range is
    assert "every 5th logged step of 10,000 shown" in thin.note()
    assert thin_series(series[:10], limit=2000).note() == ""
    with pytest.raises(ValueError, match="limit"):
        thin_series(series, limit=0)


def test_wide_grids_are_binned_keeping_the_worst_cell() -> None:
    steps = list(range(10_000))
    grid: list[list[float | None]] = [[-2.0] * 10_000 for _ in range(100)]
    grid[7][5_003] = 3.0
    grid[8][5_004] = math.nan
    grid[9] = [None] * 10_000
    binned = bin_columns(steps, grid, limit=400)
    assert binned.width == 25 and len(binned.steps) == 400 and len(binned.values) == 100
    assert all(len(row) == 400 for row in binned.values)
    assert binned.values[7][200] == 3.0 and math.isnan(binned.values[8][200] or 0.0)
    assert binned.values[9] == [None] * 400 and binned.values[0][200] == -2.0
    assert binned.steps[:2] == [0, 25] and "each column shows the largest" in binned.note()


def _png_size(data: bytes) -> tuple[int, int]:
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_a_big_run_draws_a_capped_heatmap(tmp_path: Path) -> None:
    names = [f"layer{i}.weight" for i in range(100)]
    rows = [
        {"_step": s, "gradwandb/step": s, **{f"grad_norm/{n}": 1.0 + s for n in names}}
        for s in range(0, 5_000, 5)
    ]
    big = RunLog(tmp_path / "run-big.wandb", history=rows, complete=True)
    body = S.heatmap(S.Column("big", "synthetic", big, big.view(None)), S.Options())
    assert "1,000 logged steps in 334 columns" in body
    png = __import__("base64").b64decode(body.split("base64,", 1)[1].split('"', 1)[0])
    width, height = _png_size(png)
    assert width <= 1300 and height <= 1100 and len(png) < 400_000


# -- the online reader's seam --------------------------------------------------------------------


class StandInFile:
    def __init__(self, source: Path) -> None:
        self.source = source

    def download(self, root: str, exist_ok: bool = False, **_: Any) -> None:
        target = Path(root) / self.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.source / self.name, target)

    name = ""


class StandInRun:
    """Shaped like ``wandb.Api().run(path)``: id, state, config, summary, scan_history, file."""

    def __init__(self, log: RunLog, state: str) -> None:
        self.id = "abc123"
        self.state = state
        self.config = {**log.config, "_wandb": {"internal": 1}}
        self.summary = dict(log.summary)
        self._log = log
        self.asked: list[str] = []

    def scan_history(self) -> Iterator[dict[str, Any]]:
        yield from reversed(self._log.history)  # any order: the reader sorts by _step

    def file(self, name: str) -> StandInFile:
        self.asked.append(name)
        f = StandInFile(self._log.run_dir / "files")
        f.name = name
        return f


def test_an_online_run_reads_like_the_offline_one(runs: dict[str, Path], tmp_path: Path) -> None:
    offline = read_run(runs["exploding"])
    stand_in = StandInRun(offline, state="running")
    online = run_log(stand_in, tmp_path / "online")
    assert online.layer_matrix("grad_norm") == offline.layer_matrix("grad_norm")
    assert online.verdict == offline.verdict and "_wandb" not in online.config
    assert not online.complete  # state "running": not finished
    assert online.params is not None and online.params.records() == offline.params.records()
    assert [t.rows for _, t in online.curves("rnn")] == [t.rows for _, t in offline.curves("rnn")]
    assert stand_in.asked  # the tables came through run.file(...)
    assert run_log(StandInRun(offline, state="finished"), tmp_path / "f").complete
    body = S.status(S.Column("e/p/abc123", "W&B", online, online.view(None)), S.Options())
    assert "Incomplete run" in body


# -- the W&B Report ------------------------------------------------------------------------------


def _panels(spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for block in spec["blocks"]:
        if block.get("type") == "panel-grid":
            out += block["metadata"]["panelBankSectionConfig"]["panels"]
    return out


def test_the_wandb_report_is_built_and_serialized_offline(runs: dict[str, Path]) -> None:
    briefs = [brief_of(k, read_run(runs[k])) for k in ("exploding", "healthy")]
    report = build_wandb_report("team", "proj", runs=briefs, bind_runsets=False)
    spec = json.loads(report._to_model().spec.model_dump_json(by_alias=True, exclude_none=True))
    panels = _panels(spec)
    lines = [p["config"] for p in panels if p["viewType"] == "Run History Line Plot"]
    metrics = [c.get("metrics") for c in lines]
    assert ["grad/global_norm"] in metrics and ["grad/clip_coef"] in metrics
    assert ["grad_norm/rnn.weight_hh_l0"] in metrics
    assert any(c.get("metricRegex") == "grad_norm/.*" for c in lines)
    norm = next(c for c in lines if c.get("metrics") == ["grad/global_norm"])
    assert norm["yLogScale"] is True and norm["xAxis"] == "gradwandb/step"
    text = json.dumps(spec)
    assert "**exploding**" in text and "fix:" in text  # the markdown block of verdicts
    evil = RunBrief(
        "x1", EVIL, "exploding", findings=[Finding("spike", "error", EVIL, 3, 1.0, EVIL, "a|b")]
    )
    md = summary_markdown([evil])
    assert "<script" not in md and "&lt;script&gt;" in md and "a\\|b" in md
    runset = spec["blocks"][4]["metadata"]["runSets"][0]
    ids = runset["filters"]["filters"][0]["value"]
    assert ids == [b.id for b in briefs] and all(len(i) == 8 for i in ids)
    assert report.entity == "team" and report.project == "proj"


def test_publishing_without_an_api_key_says_how_to_log_in(
    runs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    args = ["report", str(runs["healthy"]), "--publish", "--entity", "e", "--project", "p"]
    code = main([*args, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "wandb login" in err and "report.html" in err and "Traceback" not in err
    assert main(["report", str(runs["healthy"]), "--publish", "--no-progress"]) == 1
    assert "--entity" in capsys.readouterr().err


def test_a_missing_wandb_workspaces_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)
    monkeypatch.setitem(sys.modules, "wandb_workspaces.reports", None)
    monkeypatch.setitem(sys.modules, "wandb_workspaces.reports.v2", None)
    with pytest.raises(PublishError, match=INSTALL_HINT.replace("[", r"\[").replace("]", r"\]")):
        workspaces()


# -- in a browser ------------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_the_page_renders_in_a_headless_browser(page: str, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    html_file = tmp_path / "report.html"
    html_file.write_text(page)
    shot = tmp_path / "shot.png"
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1400,1800", html_file.as_uri()],
        capture_output=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert shot.is_file(), "chromium wrote no screenshot"
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1400, 1800)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # a drawn page, not a blank one
