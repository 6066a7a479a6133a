"""Every wrong argument to ``gradwandb.watch`` is refused at once, by name, with the fix.

None of them may surface as an obscure error from deep inside, leave hooks behind, or be a
tracker that silently does nothing; a message never prints a tensor whole.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import gradwandb
from gradwandb.live import user_clip
from gradwandb.live.sinks import MemorySink


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))


class _Tagger(nn.Module):
    """Token ids -> embedding -> GRU -> logits: a model with an embedding before its RNN."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.rnn = nn.GRU(4, 5, batch_first=True)
        self.head = nn.Linear(5, 7)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(ids))
        return self.head(out)


def _refused(
    model: nn.Module, optimizer: Any, error: type[Exception], *words: str, **kwargs: Any
) -> str:
    """watch(...) raises ``error`` whose message holds every one of ``words``, and leaves
    nothing behind: torch's clip functions and the optimizer's step are untouched."""
    kwargs.setdefault("sink", MemorySink())
    step_before = getattr(optimizer, "__dict__", {}).get("step")
    listening = len(user_clip.listeners())
    with pytest.raises(error) as caught:
        gradwandb.watch(model, optimizer, **kwargs)
    message = str(caught.value)
    for word in words:
        assert word in message, (word, message)
    assert len(user_clip.listeners()) == listening  # nothing routed through a failed watch
    if isinstance(optimizer, torch.optim.Optimizer):
        assert optimizer.__dict__.get("step") is step_before  # the step was never wrapped
    assert gradwandb.watch  # the module is still importable and usable
    return message


def _opt(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1)


# -- what the arguments are -----------------------------------------------------------------


def test_params_not_a_selection() -> None:
    model = _mlp()
    _refused(model, _opt(model), TypeError, "params", "prefix", "got 5", params=5)


def test_params_list_of_tensors() -> None:
    model = _mlp()
    message = _refused(
        model, _opt(model), TypeError, "params", "params=['fc.']", params=list(model.parameters())
    )
    assert "tensor(" not in message and "Parameter containing" not in message


def test_params_empty_list() -> None:
    model = _mlp()
    _refused(model, _opt(model), ValueError, "params=[]", params=[])


def test_sink_without_the_sink_methods() -> None:
    model = _mlp()
    _refused(model, _opt(model), TypeError, "sink", "MemorySink", "log", sink=object())


def test_sink_without_alert_is_fine_when_alerts_are_off() -> None:
    class Quiet:
        def __init__(self) -> None:
            self.rows: list[int] = []

        def log(self, row: Any, step: int) -> None:
            self.rows.append(step)

        def summary(self, values: Any) -> None:
            pass

        def alive(self) -> bool:
            return True

        def close(self) -> None:
            pass

    model = _mlp()
    _refused(model, _opt(model), TypeError, "alert", sink=Quiet())
    sink = Quiet()
    opt = _opt(model)
    with gradwandb.watch(model, opt, sink=sink, alerts=False):  # type: ignore[arg-type]
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
    assert sink.rows == [0]


def test_run_given_as_a_string() -> None:
    model = _mlp()
    _refused(model, _opt(model), TypeError, "run", "wandb.init()", "'abc'", run="abc", sink=None)


def test_optimizer_named_by_string() -> None:
    _refused(_mlp(), "sgd", TypeError, "optimizer", "torch.optim", "'sgd'")


def test_optimizer_empty_list() -> None:
    _refused(_mlp(), [], ValueError, "optimizer=[]", "None")


def test_optimizer_list_with_a_stranger() -> None:
    model = _mlp()
    _refused(model, [_opt(model), "adam"], TypeError, "optimizer", "'adam'")


def test_optimizer_twice_in_the_list() -> None:
    model = _mlp()
    opt = _opt(model)
    _refused(model, [opt, opt], ValueError, "optimizer", "twice")


def test_optimizer_of_another_model() -> None:
    _refused(_mlp(), _opt(nn.Linear(2, 2)), ValueError, "optimizer", "owns none")


def test_scheduler_passed_as_scaler() -> None:
    model = _mlp()
    opt = _opt(model)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    message = _refused(
        model, opt, TypeError, "scaler", "GradScaler", "StepLR", "scheduler", scaler=scheduler
    )
    assert " at 0x" not in message


# -- through time and activations ------------------------------------------------------------


def test_embedding_named_in_bptt_modules() -> None:
    model = _Tagger()
    _refused(
        model,
        _opt(model),
        ValueError,
        "bptt_modules",
        "'embed'",
        "Embedding",
        "'rnn'",
        bptt_every=1,
        bptt_modules=["embed"],
    )


def test_unknown_module_in_bptt_modules() -> None:
    model = _Tagger()
    _refused(
        model,
        _opt(model),
        ValueError,
        "bptt_modules",
        "'encoder'",
        "['rnn']",
        bptt_every=1,
        bptt_modules=["encoder"],
    )


def test_bptt_modules_as_one_string() -> None:
    model = _Tagger()
    _refused(
        model, _opt(model), TypeError, "bptt_modules", "list", bptt_every=1, bptt_modules="rnn"
    )


def test_bptt_modules_without_bptt_every() -> None:
    model = _Tagger()
    _refused(model, _opt(model), ValueError, "bptt_modules", "bptt_every", bptt_modules=["rnn"])


def test_bptt_every_on_a_model_without_rnn() -> None:
    model = _mlp()
    _refused(model, _opt(model), ValueError, "bptt_every", "nn.LSTM", "bptt_modules", bptt_every=5)


def test_activations_every_on_a_model_without_activation_modules() -> None:
    model = nn.Linear(3, 2)
    _refused(model, _opt(model), ValueError, "activations_every", "nn.ReLU()", activations_every=5)


def test_bptt_modules_may_name_a_sequence_module() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh())  # runs over [batch, time, features]
    opt = _opt(model)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, bptt_every=1, bptt_modules=["0"]):
        model(torch.randn(2, 5, 3)).sum().backward()
        opt.step()
    assert sink.last()["bptt/0/seq_len"] == 5


# -- names and flags --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_blank_name(name: str) -> None:
    model = _mlp()
    _refused(model, _opt(model), ValueError, "name", "name='encoder'", name=name)


def test_name_with_slash_and_name_not_a_string() -> None:
    model = _mlp()
    _refused(model, _opt(model), ValueError, "name", "'/'", name="enc/dec")
    _refused(model, _opt(model), TypeError, "name", "string", name=3)


@pytest.mark.parametrize("argument", ["alerts", "charts"])
def test_flags_must_be_bools(argument: str) -> None:
    model = _mlp()
    _refused(model, _opt(model), TypeError, argument, "True or False", **{argument: "yes"})


def test_guard_zero_and_guard_text() -> None:
    model = _mlp()
    _refused(model, _opt(model), ValueError, "guard", "at least 1", guard=0)
    _refused(model, _opt(model), TypeError, "guard", "whole number", guard="on")


def test_diagnose_not_a_flag() -> None:
    model = _mlp()
    _refused(model, _opt(model), TypeError, "diagnose", "Thresholds", diagnose="yes")


# -- intervals ---------------------------------------------------------------------------------

INTERVALS = ["log_every", "layers_every", "hist_every", "bptt_every", "activations_every"]


@pytest.mark.parametrize("argument", INTERVALS)
def test_numpy_integers_are_intervals(argument: str) -> None:
    model = _Tagger()
    opt = _opt(model)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, **{argument: np.int64(2)}):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randint(0, 7, (2, 4))).sum().backward()
            opt.step()
    settings = sink.summaries["gradwandb/settings"]
    assert settings[argument] == 2 and type(settings[argument]) is int
    assert [s for s, _ in sink.rows]  # something was logged
    assert sink.summaries["gradwandb/verdict"] in ("healthy", "vanishing", "exploding")


def test_numpy_integer_guard() -> None:
    model = _mlp()
    opt = _opt(model)
    sink = MemorySink()
    with gradwandb.watch(model, opt, sink=sink, guard=np.int64(3)):
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
    assert sink.summaries["gradwandb/settings"]["guard"] == 3


@pytest.mark.parametrize("argument", INTERVALS)
def test_tensor_interval_shows_its_shape_not_its_values(argument: str) -> None:
    model = _Tagger()
    message = _refused(
        model,
        _opt(model),
        TypeError,
        argument,
        "Tensor of shape (1000,)",
        "whole number",
        **{argument: torch.arange(1000.0)},
    )
    assert "tensor(" not in message and "999" not in message


@pytest.mark.parametrize("value", [0, -3, np.int64(0)])
def test_interval_below_one(value: Any) -> None:
    model = _mlp()
    _refused(model, _opt(model), ValueError, "log_every", "at least 1", log_every=value)


@pytest.mark.parametrize("value", [2.5, "10", True])
def test_interval_not_a_whole_number(value: Any) -> None:
    model = _mlp()
    _refused(model, _opt(model), TypeError, "layers_every", "whole number", layers_every=value)


def test_tensor_clip_shows_its_shape() -> None:
    model = _mlp()
    message = _refused(
        model, _opt(model), TypeError, "clip", "Tensor of shape (50,)", clip=torch.ones(50)
    )
    assert "tensor(" not in message
    message = _refused(model, _opt(model), TypeError, "clip", "t.item()", clip=torch.tensor(1.0))
    assert "tensor(" not in message


def test_array_interval_shows_its_shape() -> None:
    model = _mlp()
    message = _refused(
        model,
        _opt(model),
        TypeError,
        "hist_every",
        "ndarray of shape (300,)",
        hist_every=np.ones(300),
    )
    assert not re.search(r"1\., 1\.", message)


def test_model_not_a_module() -> None:
    _refused(torch.zeros(3), None, TypeError, "model", "nn.Module")  # type: ignore[arg-type]
