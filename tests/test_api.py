"""The public surface: the exported names, and the errors bad input gets."""

from __future__ import annotations

import math
import subprocess
import sys
import types
from typing import Any

import pytest
import torch
from torch import nn

import gradwandb
from gradwandb.live.sinks import MemorySink


def test_all_lists_exactly_the_public_names() -> None:
    for name in gradwandb.__all__:  # each one resolves (the names load on first use)
        getattr(gradwandb, name)
    public = {
        name
        for name, value in vars(gradwandb).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    public -= {"annotations", "importlib", "TYPE_CHECKING", "Any"}  # the module's own imports
    public.add("__version__")
    assert set(gradwandb.__all__) == public
    assert list(gradwandb.__all__) == sorted(gradwandb.__all__)
    assert set(gradwandb.__all__) <= set(dir(gradwandb))


def test_import_gradwandb_loads_neither_torch_nor_the_live_wing() -> None:
    code = (
        "import sys, gradwandb, gradwandb.read; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('gradwandb.live')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))


BAD: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("not a module", {"model": "model.pt"}, TypeError, "torch.nn.Module"),
    ("no parameters", {"model": nn.ReLU()}, ValueError, "nothing to watch"),
    ("prefix matches nothing", {"params": "decoder."}, ValueError, "decoder."),
    ("foreign optimizer", {"optimizer": "foreign"}, ValueError, "owns none"),
    ("not an optimizer", {"optimizer": 0.1}, TypeError, "torch.optim.Optimizer"),
    ("log_every zero", {"log_every": 0}, ValueError, "log_every"),
    ("log_every negative", {"log_every": -5}, ValueError, "log_every"),
    ("log_every fractional", {"log_every": 1.5}, TypeError, "log_every"),
    ("hist_every zero", {"hist_every": 0}, ValueError, "hist_every"),
    ("clip zero", {"clip": 0}, ValueError, "clip"),
    ("clip negative", {"clip": -1.0}, ValueError, "clip"),
    ("clip nan", {"clip": math.nan}, ValueError, "clip"),
    ("clip inf", {"clip": math.inf}, ValueError, "clip"),
    ("clip string", {"clip": "1.0"}, TypeError, "clip"),
    ("bad name", {"name": "a/b"}, ValueError, "name"),
    ("bad scaler", {"scaler": object()}, TypeError, "GradScaler"),
    ("diagnose string", {"diagnose": "yes"}, TypeError, "diagnose"),
    ("diagnose int", {"diagnose": 1}, TypeError, "Thresholds"),
    ("alerts int", {"alerts": 1}, TypeError, "alerts"),
    ("alerts none", {"alerts": None}, TypeError, "alerts"),
    ("guard zero", {"guard": 0}, ValueError, "guard=True"),
    ("guard negative", {"guard": -2}, ValueError, "at least 1"),
    ("guard fractional", {"guard": 1.5}, TypeError, "guard"),
    ("guard string", {"guard": "2"}, TypeError, "guard"),
]


@pytest.mark.parametrize(("case", "kwargs", "error", "words"), BAD, ids=[c[0] for c in BAD])
def test_bad_input_names_the_argument(
    case: str, kwargs: dict[str, Any], error: type[Exception], words: str
) -> None:
    model = kwargs.pop("model", _model())
    optimizer = kwargs.pop("optimizer", None)
    if optimizer == "foreign":
        optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    with pytest.raises(error, match=words.replace(".", r"\.")):
        gradwandb.watch(model, optimizer, sink=MemorySink(), **kwargs)


def test_fully_frozen_model_warns_but_watches() -> None:
    model = _model().requires_grad_(False)
    with pytest.warns(UserWarning, match="frozen"):
        tracker = gradwandb.watch(model, sink=MemorySink())
    tracker.remove()
