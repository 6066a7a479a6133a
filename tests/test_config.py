"""gradwandb.config: YAML defaults, both argument forms a sweep agent passes, wandb.config,
and one clear message naming the key for everything the schema refuses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from gradwandb.config import ConfigError, describe, knob, load, parse_overrides


@dataclass
class Knobs:
    lr: float = knob(0.01, "learning rate", low=0.0, low_open=True)
    cell: str = knob("rnn", "cell", choices=("rnn", "lstm", "gru"))
    hidden_size: int = knob(64, "hidden units", low=1, high=4096)
    clip: float | None = knob(None, "max norm", low=0.0, low_open=True)
    layer_norm: bool = knob(False, "layer norm")
    norm: str = knob("none", "normalisation", choices=("none", "layer"))


@pytest.mark.parametrize(
    "argv",
    [
        ["lr=0.5", "cell=gru", "hidden_size=128"],
        ["--lr=0.5", "--cell=gru", "--hidden_size=128"],
        ["--lr", "0.5", "--cell", "gru", "--hidden-size", "128"],
    ],
    ids=["args_no_hyphens", "args", "args_no_equals"],
)
def test_every_argument_form_gives_the_same_config(argv: list[str]) -> None:
    assert load(Knobs, overrides=argv) == Knobs(lr=0.5, cell="gru", hidden_size=128)


def test_none_and_booleans_as_an_agent_spells_them() -> None:
    got = load(Knobs, overrides=["clip=None", "layer_norm=True"])
    assert got.clip is None and got.layer_norm is True
    assert load(Knobs, overrides=["layer_norm=yes"]).layer_norm is True
    assert load(Knobs, overrides=["layer_norm=on"]).layer_norm is True
    assert load(Knobs, overrides=["layer_norm=off"]).layer_norm is False
    assert load(Knobs, overrides=["clip=null"]).clip is None
    assert load(Knobs, overrides=["clip=1"]).clip == 1.0
    # "none" is an ordinary string where the key may not be None
    assert load(Knobs, overrides=["norm=none"]).norm == "none"


def test_layers_defaults_then_command_line_then_wandb_config(tmp_path: Path) -> None:
    defaults = tmp_path / "d.yaml"
    defaults.write_text("lr: 0.2\ncell: lstm\nclip: 2.0\n")
    got = load(Knobs, defaults=defaults, overrides=["cell=gru"], sweep={"hidden_size": 32.0})
    assert got == Knobs(lr=0.2, cell="gru", hidden_size=32, clip=2.0)
    assert load(Knobs, overrides=["lr=0.1"], sweep={"lr": 0.3}).lr == 0.3  # swept values win


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["lrr=0.1"], "lrr (command line): unknown key; did you mean 'lr'?"),
        (["hidden_size=abc"], "hidden_size='abc' (command line): expected an integer"),
        (["hidden_size=1.5"], "hidden_size=1.5 (command line): expected an integer"),
        (["lr=fast"], "lr='fast' (command line): expected a number"),
        (["layer_norm=maybe"], "layer_norm='maybe' (command line): expected true or false"),
        (["cell=transformer"], "cell='transformer' (command line): must be one of rnn, lstm"),
        (["lr=0"], "lr=0.0 (command line): must be > 0"),
        (["hidden_size=0"], "hidden_size=0 (command line): must be >= 1"),
        (["hidden_size=10000"], "hidden_size=10000 (command line): must be <= 4096"),
        (["lr=None"], "lr='None' (command line): expected a number"),
        (["lr"], "lr: expected name=value or --name=value"),
    ],
)
def test_a_bad_config_is_refused_naming_the_key(argv: list[str], named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(Knobs, overrides=argv)
    assert str(raised.value).startswith(named), str(raised.value)


def test_wandb_config_is_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"^cell='x' \(wandb.config\): must be one of"):
        load(Knobs, sweep={"cell": "x"})
    with pytest.raises(ConfigError, match=r"^depth \(wandb.config\): unknown key"):
        load(Knobs, sweep={"depth": 3})


def test_a_bad_defaults_file_is_named(tmp_path: Path) -> None:
    defaults = tmp_path / "d.yaml"
    defaults.write_text("lr: 0.1\nwidth: 3\n")
    with pytest.raises(ConfigError, match=rf"^width \({defaults}\): unknown key"):
        load(Knobs, defaults=defaults)


def test_describe_gives_types_defaults_and_ranges() -> None:
    d = describe(Knobs)
    assert d["lr"] == {"type": "float", "optional": False, "default": 0.01,
                       "help": "learning rate", "low": 0.0, "low_open": True}  # fmt: skip
    assert d["clip"]["optional"] is True and d["cell"]["choices"] == ["rnn", "lstm", "gru"]
    assert list(d) == ["lr", "cell", "hidden_size", "clip", "layer_norm", "norm"]


def test_parse_overrides_keeps_the_order() -> None:
    assert parse_overrides(["b=1", "--a=2"]) == [("b", "1"), ("a", "2")]
