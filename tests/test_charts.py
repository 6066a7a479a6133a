"""The charts: what the flow chart and the heatmap draw, when the observer draws them, and that
they reach W&B as images."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from PIL import Image as PILImage
from torch import nn
from torch.nn import functional as F

import gradwandb
from gradwandb.keys import CHART_FLOW, CHART_HEATMAP, Keys
from gradwandb.live.monitors import charts as observer_charts
from gradwandb.live.monitors.charts import ChartObserver
from gradwandb.live.record import REPORT, StepRecord
from gradwandb.live.sinks import Image, MemorySink
from gradwandb.plots import charts as charts
from gradwandb.plots.charts import _flow_figure, _heatmap_figure, norm_heatmap, timestep_heatmap
from tests.conftest import read_back

NAMES = ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight"]
MEAN = [1e-3, 2e-3, 0.0, 0.0, 5e-2]  # layer 1 has an all-zero gradient
MAX = [1e-2, 3e-2, 0.0, 0.0, 4e-1]
NAN = float("nan")
INF = float("inf")


def _rgb255(color: str) -> tuple[int, ...]:
    return tuple(round(255 * c) for c in to_rgb(color))


RED = _rgb255(charts._BAD_COLOR)


def _record(step: int = 7, mean: list[float] = MEAN, top: list[float] = MAX) -> StepRecord:
    norm = [m * 10 for m in mean]
    return StepRecord(
        step=step, names=list(NAMES), norm=norm, global_norm=1.0, mean_abs=mean, max_abs=top
    )


def flow_chart(record: StepRecord, *, biases: bool = False) -> bytes:
    """The flow chart of a record's arrays, as the observer draws it."""
    return charts.flow_chart(
        record.names, record.mean_abs, record.max_abs, step=record.step, biases=biases
    )


def _flow(record: StepRecord, *, biases: bool = False) -> Any:
    return _flow_figure(
        record.names, record.mean_abs, record.max_abs, step=record.step, biases=biases
    )


def _decode(png: bytes) -> PILImage.Image:
    image = PILImage.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG"
    return image


def _sensible(png: bytes) -> PILImage.Image:
    image = _decode(png)
    width, height = image.size
    assert 500 <= width <= 2000 and 250 <= height <= 1500, image.size
    assert len(png) < 100_000
    return image


def _pixels(image: PILImage.Image, rgb: tuple[int, ...]) -> int:
    data = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    return int((np.abs(data - np.array(rgb)).sum(axis=1) <= 6).sum())


def _masked(array: object) -> np.ma.MaskedArray[Any, Any]:
    assert isinstance(array, np.ma.MaskedArray)
    return array


def _bars(fig: Any) -> dict[str, list[float]]:
    ax = fig.axes[0]
    return {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers}


def _marker(fig: Any, label: str) -> list[float]:
    lines = [line for line in fig.axes[0].lines if line.get_label() == label]
    return [float(x) for line in lines for x in line.get_xdata()]


# -- flow chart -------------------------------------------------------------------------------


def test_flow_chart_is_a_png_of_sensible_size() -> None:
    image = _sensible(flow_chart(_record()))
    assert _pixels(image, _rgb255(charts._MEAN_COLOR)) > 100  # the mean bars are drawn
    assert _pixels(image, RED) == 0  # red is kept for NaN/Inf


def test_flow_bars_are_max_and_mean_per_weight_in_forward_order() -> None:
    fig = _flow(_record(step=7))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.weight", "1.weight", "2.weight"]
    assert _bars(fig) == {"max |g|": [1e-2, 0.0, 4e-1], "mean |g|": [1e-3, 0.0, 5e-2]}
    assert ax.get_yscale() == "log"
    low, high = ax.get_ylim()
    assert low <= 1e-3 / 2 and high >= 4e-1 * 2  # every bar shows in full
    assert _marker(fig, "zero gradient") == [1.0]  # the zero layer is marked at the bottom
    assert _marker(fig, "NaN/Inf") == []
    assert "step 7" in ax.get_title(loc="left")
    assert "2 biases hidden" in ax.get_title(loc="left")


def test_flow_chart_shows_biases_when_asked() -> None:
    fig = _flow(_record(), biases=True)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == NAMES
    assert _bars(fig)["max |g|"] == MAX
    assert _marker(fig, "zero gradient") == [2.0, 3.0]  # 1.weight and 1.bias
    assert "hidden" not in fig.axes[0].get_title(loc="left")


def test_flow_chart_marks_nonfinite_layers() -> None:
    mean, top = [1e-3, 1.0, NAN, 1.0, 5e-2], [1e-2, 1.0, NAN, 1.0, INF]
    fig = _flow(_record(mean=mean, top=top))
    bars = _bars(fig)
    assert bars["max |g|"] == [1e-2, 0.0, 0.0]  # no bar for NaN or Inf
    assert bars["mean |g|"] == [1e-3, 0.0, 5e-2]
    assert _marker(fig, "NaN/Inf") == [1.0, 2.0]
    labels = fig.axes[0].get_xticklabels()
    assert to_rgb(labels[1].get_color()) == to_rgb(charts._BAD_COLOR)
    assert to_rgb(labels[0].get_color()) != to_rgb(charts._BAD_COLOR)
    assert _pixels(_decode(flow_chart(_record(mean=mean, top=top))), RED) > 0


def test_flow_chart_of_only_biases_shows_them() -> None:
    record = StepRecord(
        step=0, names=["b.bias"], norm=[1.0], global_norm=1.0, mean_abs=[0.1], max_abs=[0.5]
    )
    assert _bars(_flow(record)) == {"max |g|": [0.5], "mean |g|": [0.1]}


def test_flow_chart_needs_per_layer_values() -> None:
    record = StepRecord(step=3, names=["w"], norm=[0.5], global_norm=0.5)
    with pytest.raises(ValueError, match=r"step 3 .*layers_every"):
        flow_chart(record)
    uneven = StepRecord(
        step=4, names=["w", "v"], norm=[1, 1], global_norm=1.0, mean_abs=[1.0], max_abs=[1.0]
    )
    with pytest.raises(ValueError, match="2 names but 1 mean_abs"):
        flow_chart(uneven)


# -- heatmap ----------------------------------------------------------------------------------


def test_heatmap_data_is_the_log10_norms_in_forward_order() -> None:
    names = ["enc.weight", "mid.weight", "dec.weight"]
    grid: list[list[float | None]] = [
        [-3.0, -2.5, -2.0, -1.5],
        [-1.0, -INF, NAN, -0.5],
        [0.5, INF, 0.25, None],
    ]
    fig = _heatmap_figure([0, 10, 20, 30], names, grid)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == names  # first layer on top
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # row 0 at the top
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "10", "20", "30"]

    values, marks = (_masked(im.get_array()) for im in ax.images)
    expected = np.array([[math.nan if v is None else v for v in row] for row in grid])
    np.testing.assert_array_equal(values.data, expected)  # NaN == NaN here
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.ma.getmaskarray(values), ~finite)
    # the non-finite cells are painted by a second layer: grey for -inf (zero), red for NaN/Inf
    shown = ~np.ma.getmaskarray(marks)
    assert shown.tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0]]
    assert marks[1, 1] == 0 and marks[1, 2] == 1 and marks[2, 1] == 1
    cmap = ax.images[1].get_cmap()
    assert to_rgb(cmap(0.0)) == to_rgb(charts._ZERO_COLOR)
    assert to_rgb(cmap(1.0)) == to_rgb(charts._BAD_COLOR)
    assert ax.images[0].get_clim() == (-3.0, 0.5)  # colour range over finite values only
    assert fig.axes[1].get_ylabel() == "log10 gradient norm"  # the colorbar
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["zero gradient", "NaN/Inf", "not logged"]


def test_heatmap_png_paints_nonfinite_cells_red() -> None:
    names = [f"layer{i}.weight" for i in range(6)]
    gen = np.random.default_rng(0)
    grid = gen.uniform(-6.0, 0.0, size=(6, 40)).tolist()
    clean = _sensible(norm_heatmap(list(range(0, 400, 10)), names, grid))
    assert _pixels(clean, RED) == 0
    grid[2][17] = NAN
    bad = _sensible(norm_heatmap(list(range(0, 400, 10)), names, grid))
    assert _pixels(bad, RED) > 20


def test_heatmap_of_many_layers_stays_small() -> None:
    gen = np.random.default_rng(1)  # noise: the hardest picture to compress
    rows = 150
    cols = observer_charts.MAX_CELLS // rows
    names = [f"blocks.{i}.mlp.weight" for i in range(rows)]
    png = norm_heatmap(list(range(cols)), names, gen.uniform(-8, 2, (rows, cols)).tolist())
    _sensible(png)


@pytest.mark.parametrize(
    ("steps", "names", "grid", "message"),
    [
        ([], ["w"], [[]], "nothing to draw"),
        ([0], ["w", "v"], [[1.0]], "1 rows for 2 names"),
        ([0, 1], ["w"], [[1.0]], "row 'w' of log10_norms has 1 values for 2 steps"),
    ],
)
def test_heatmap_rejects_misshapen_input(
    steps: list[int], names: list[str], grid: list[list[float]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        norm_heatmap(steps, names, grid)


def test_timestep_heatmap_has_a_row_per_timestep() -> None:
    grid: list[list[float | None]] = [[-1.0, -2.0, -3.0], [-0.5, -1.5, None]]
    fig = charts._timestep_figure("encoder", [5, 10, 15], grid)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5", "10", "15"]
    assert ax.get_ylabel() == "timestep"
    assert ax.get_xlabel() == "optimizer step (monitored steps)"
    assert ax.get_title(loc="left").startswith("encoder: log10 input-gradient norm dL/dx_t")
    _sensible(timestep_heatmap("encoder", [5, 10, 15], grid))


def test_the_drawing_takes_plain_arrays() -> None:
    names = ["a.weight", "a.bias", "b.weight"]
    fig = _flow_figure(names, np.array([1e-3, 1e-2, 0.0]), np.array([1e-2, 1e-1, 0.0]))
    assert _bars(fig) == {"max |g|": [1e-2, 0.0], "mean |g|": [1e-3, 0.0]}
    assert fig.axes[0].get_title(loc="left") == "gradient flow (1 biases hidden)"  # no step
    with pytest.raises(ValueError, match="no per-layer values"):
        charts.flow_chart(names, [], [])
    grid = np.array([[-1.0, -2.0], [0.0, -np.inf]])
    values, _ = (
        _masked(im.get_array()) for im in _heatmap_figure([0, 1], names[:2], grid).axes[0].images
    )
    np.testing.assert_array_equal(values.data, grid)


# -- observer ---------------------------------------------------------------------------------


def _stream(last: int, layers: Callable[[int], bool]) -> list[StepRecord]:
    """Records 0..last; per-layer values where ``layers(step)``, global scalars elsewhere."""
    out = []
    for k in range(last + 1):
        scale = 10.0 ** (-k / 4)
        record = StepRecord(step=k, names=list(NAMES), norm=[], global_norm=scale)
        if layers(k):
            record.norm = [scale * (i + 1) for i in range(len(NAMES))]
            record.mean_abs = [scale * (i + 1) / 100 for i in range(len(NAMES))]
            record.max_abs = [scale * (i + 1) / 10 for i in range(len(NAMES))]
        out.append(record)
    return out


@pytest.fixture
def sketch(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Replace the drawing with a note of what would be drawn: (chart, step or column count)."""
    drawn: list[tuple[str, int]] = []

    def flow(names: Any, mean: Any, top: Any, *, step: int, biases: bool = False) -> bytes:
        assert len(names) == len(mean) == len(top)
        drawn.append(("flow", step))
        return b"flow"

    def heat(steps: Any, names: Any, grid: Any) -> bytes:
        drawn.append(("heat", len(steps)))
        return b"heat"

    monkeypatch.setattr(charts, "flow_chart", flow)
    monkeypatch.setattr(charts, "norm_heatmap", heat)
    return drawn


def test_observer_draws_exactly_on_schedule(sketch: list[tuple[str, int]]) -> None:
    observer = ChartObserver(flow_every=3, heatmap_every=5)
    drawn: dict[int, list[str]] = {}
    for record in _stream(20, lambda k: k % 2 == 0):
        out = observer(record)
        if out is not None:
            assert all(isinstance(v, Image) for v in out.values())
            drawn[record.step] = sorted(out)
    flow = [k for k, keys in drawn.items() if CHART_FLOW in keys]
    heat = [k for k, keys in drawn.items() if CHART_HEATMAP in keys]
    assert flow == [0, 6, 12, 18]  # multiples of 3 that carry per-layer values
    assert heat == [0, 5, 10, 15, 20]  # multiples of 5 (the buffer is never empty)
    assert set(drawn) == set(flow) | set(heat)
    # (chart, step) for the flow chart, (chart, columns so far) for the heatmap
    assert sketch == [
        ("flow", 0), ("heat", 1), ("heat", 3), ("flow", 6), ("heat", 6),
        ("flow", 12), ("heat", 8), ("flow", 18), ("heat", 11),
    ]  # fmt: skip
    steps, names, grid = observer.heatmap_data()
    assert steps == list(range(0, 21, 2))  # only the per-layer records, in order
    assert names == ["0.weight", "1.weight", "2.weight"]  # biases left out
    assert grid[0][1] == pytest.approx(math.log10(10.0 ** (-2 / 4)))
    assert grid[2][-1] == pytest.approx(math.log10(5 * 10.0 ** (-20 / 4)))


def test_observer_draws_nothing_without_per_layer_values_or_when_off(
    sketch: list[tuple[str, int]],
) -> None:
    off = ChartObserver(flow_every=None, heatmap_every=None)
    quiet = ChartObserver(flow_every=1, heatmap_every=1)
    for record in _stream(5, lambda k: True):
        assert off(record) is None
    for record in _stream(5, lambda k: False):
        assert quiet(record) is None  # nothing per-layer yet: no flow, and no heatmap columns
    assert sketch == []


def test_observer_heatmap_counts_bad_steps_and_keeps_a_bounded_buffer() -> None:
    observer = ChartObserver(flow_every=None, heatmap_every=None, max_columns=3, biases=True)
    for record in _stream(9, lambda k: k % 4 == 0):
        observer(record)
    # a NaN step off the per-layer schedule: norms only, which name the culprit
    bad = StepRecord(step=10, names=list(NAMES), norm=[1.0, NAN, 0.0, INF, 1.0], global_norm=NAN)
    observer(bad)
    steps, names, grid = observer.heatmap_data()
    assert steps == [4, 8, 10]
    assert names == NAMES
    assert [row[-1] for row in grid][1:4] == pytest.approx([NAN, -INF, INF], nan_ok=True)


def test_observer_caps_heatmap_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observer_charts, "MAX_CELLS", 7)
    observer = ChartObserver(flow_every=None, heatmap_every=None)
    for record in _stream(5, lambda k: True):
        observer(record)
    steps, names, _ = observer.heatmap_data()
    assert len(names) == 3 and steps == [4, 5]  # 7 // 3 columns, the latest


def test_observer_keeps_forward_order_when_layers_come_and_go() -> None:
    observer = ChartObserver(flow_every=None, heatmap_every=None)
    first = StepRecord(step=0, names=["a.weight", "c.weight"], norm=[1.0, 10.0], global_norm=1)
    later = StepRecord(  # b was frozen at first, a is unused now
        step=1, names=["b.weight", "c.weight"], norm=[100.0, 1000.0], global_norm=1
    )
    observer(first)
    observer(later)
    assert observer.heatmap_data() == (
        [0, 1],
        ["a.weight", "b.weight", "c.weight"],
        [[0.0, None], [None, 2.0], [1.0, 3.0]],
    )
    png = norm_heatmap(*observer.heatmap_data())
    _decode(png)


def test_observer_tags_its_keys_and_captions() -> None:
    observer = ChartObserver(flow_every=1, heatmap_every=1, keys=Keys("critic"))
    out = observer(_stream(0, lambda k: True)[0])
    assert out is not None
    assert sorted(out) == ["charts/critic/grad_flow", "charts/critic/grad_norm_heatmap"]
    assert out["charts/critic/grad_flow"].caption == "critic, step 0"


def test_observer_warns_once_and_stops_when_a_chart_fails() -> None:
    observer = ChartObserver(flow_every=1, heatmap_every=None)
    broken = StepRecord(
        step=0, names=["w"], norm=[1.0], global_norm=1, mean_abs=[1, 2], max_abs=[1]
    )
    with pytest.warns(RuntimeWarning, match=r"step 0 .*charts are switched off"):
        assert observer(broken) is None
    assert observer(_stream(0, lambda k: True)[0]) is None


def test_observer_reports_after_the_diagnosis() -> None:
    assert ChartObserver.stage == REPORT


def test_observer_rejects_bad_intervals() -> None:
    with pytest.raises(ValueError, match="flow_every must be at least 1"):
        ChartObserver(flow_every=0)
    with pytest.raises(TypeError, match=r"heatmap_every .*'often'"):
        ChartObserver(heatmap_every="often")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"max_columns .* got 0"):
        ChartObserver(max_columns=0)


# -- with the tracker -------------------------------------------------------------------------


def _model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 4, generator=gen), torch.randn(16, 2, generator=gen)
        opt.zero_grad()
        torch.autograd.backward(F.mse_loss(model(x), y))
        opt.step()


def test_tracker_logs_the_charts_on_their_steps() -> None:
    model = _model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    observer = ChartObserver(flow_every=5, heatmap_every=10)
    with gradwandb.watch(model, opt, sink=sink, layers_every=1, hist_every=None) as tracker:
        tracker.add_observer(observer)
        _train(model, opt, steps=10, seed=1)
    assert [k for k, _ in sink.series(CHART_FLOW)] == [0, 5]
    assert [k for k, _ in sink.series(CHART_HEATMAP)] == [0]
    for _, image in sink.series(CHART_FLOW) + sink.series(CHART_HEATMAP):
        assert isinstance(image, Image)
        _sensible(image.png)
    rows = dict(sink.rows)
    assert "grad/global_norm" in rows[5] and "grad_norm/0.weight" in rows[5]  # numbers stay
    steps, names, grid = observer.heatmap_data()
    assert steps == list(range(10))  # what the heatmap at step 10 would show
    assert names == ["0.weight", "2.weight"]
    for i, name in enumerate(names):
        logged = [float(v) for _, v in sink.series(f"grad_norm/{name}")]  # type: ignore[arg-type]
        assert grid[i] == pytest.approx([math.log10(v) for v in logged])


def test_charts_read_back_from_a_real_wandb_run(wandb_run: Callable[..., Any]) -> None:
    run = wandb_run()
    model = _model(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = gradwandb.watch(model, opt, run=run, layers_every=1, hist_every=None)
    tracker.add_observer(ChartObserver(flow_every=2, heatmap_every=3, keys=tracker.keys))
    _train(model, opt, steps=4, seed=3)
    tracker.remove()
    log = read_back(run)
    rows = {row["gradwandb/step"]: row for row in log.history if "gradwandb/step" in row}
    assert sorted(rows) == [0, 1, 2, 3]
    flow = [k for k, row in rows.items() if CHART_FLOW in row]
    heat = [k for k, row in rows.items() if CHART_HEATMAP in row]
    assert (flow, heat) == ([0, 2], [0, 3])
    for k in flow:
        assert rows[k][CHART_FLOW]["_type"] == "image-file"
        assert rows[k][CHART_FLOW]["format"] == "png"
    assert rows[3][CHART_HEATMAP]["_type"] == "image-file"
    assert rows[3][CHART_HEATMAP]["width"] > 500
