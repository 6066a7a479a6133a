"""Configuration of the example programs, with omegaconf: a dataclass schema, YAML defaults,
overrides from the command line, and what a W&B sweep agent put in ``wandb.config``.

A program declares its knobs as a dataclass whose fields are made with :func:`knob` (a
default, a help line, and optionally the allowed choices or range). The resolved
configuration is built in layers, each later one winning:

1. the schema's defaults;
2. a YAML file of defaults (``examples/configs/<program>.yaml``);
3. overrides given as ``name=value`` or ``--name=value`` (what a sweep agent's
   ``${args_no_hyphens}`` and ``${args}`` macros pass), and ``--name value``;
4. under a sweep agent, ``wandb.config``: ``wandb.init`` loads the agent's parameter file
   (``WANDB_SWEEP_PARAM_PATH``) into it, and those values are locked.

Every layer is checked against the schema in struct mode, so a mistyped key, a value of the
wrong type or one out of range fails at once, before any training, with one message that
names the key. For a key that may be None, the strings ``None``/``none``/``null`` (how an agent
passes Python's None) read as None; ``yes``/``on``/``true`` and ``no``/``off``/``false`` read as
booleans.

>>> from dataclasses import dataclass
>>> @dataclass
... class Knobs:
...     lr: float = knob(0.1, "learning rate", low=0.0, low_open=True)
...     cell: str = knob("rnn", "recurrent cell", choices=("rnn", "gru"))
...     clip: float | None = knob(None, "max gradient norm; None: no clipping")
>>> load(Knobs, overrides=["--lr=0.5", "cell=gru", "clip=None"])
Knobs(lr=0.5, cell='gru', clip=None)
>>> load(Knobs, overrides=["lr=-1"])
Traceback (most recent call last):
...
gradwandb.config.ConfigError: lr=-1.0 (command line): must be > 0
>>> load(Knobs, overrides=["cel=gru"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
gradwandb.config.ConfigError: cel (command line): unknown key; did you mean 'cell'? ...
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import signal
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

PRINT_KEYS_FLAG = "--print-config-keys"  # a program prints its schema and metrics as JSON
ONLINE_FLAG = "--online"
STEPS_ENV = "GRADWANDB_EXAMPLE_STEPS"  # the examples' step count, for tests
_NONE = ("none", "null", "~")


class ConfigError(ValueError):
    """A configuration the schema rejects; the message names the key and where it came from."""


def knob(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> Any:
    """A schema field: its default, a one-line help, and the values it allows (``choices``,
    or a range ``[low, high]``; ``low_open`` excludes ``low`` itself)."""
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "low": low,
        "high": high,
        "low_open": low_open,
    }
    return dataclasses.field(default=default, metadata=metadata)


def keys(schema: type[Any]) -> list[str]:
    """The schema's keys, in declaration order."""
    return [f.name for f in dataclasses.fields(schema)]


def describe(schema: type[Any]) -> dict[str, dict[str, Any]]:
    """Each key's type, default, help and allowed values, as JSON-ready data (what
    ``--print-config-keys`` prints, and what ``gradwandb sweep`` checks a sweep against)."""
    hints = typing.get_type_hints(schema)
    out: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(schema):
        kind, optional = _kind(hints[f.name])
        meta = f.metadata
        entry: dict[str, Any] = {"type": kind, "optional": optional, "default": f.default}
        for name in ("help", "choices", "low", "high", "low_open"):
            value = meta.get(name)
            if value is not None and value is not False:
                entry[name] = list(value) if isinstance(value, tuple) else value
        out[f.name] = entry
    return out


def normalise(entry: Mapping[str, Any], value: Any) -> Any:
    """``value`` as the key described by ``entry`` takes it: ``"None"`` as None where None is
    allowed, a whole float (a sampled ``64.0``) as an int, an int as a float."""
    if entry.get("optional") and isinstance(value, str) and value.strip().lower() in _NONE:
        return None  # how an agent passes Python's None
    if entry.get("type") == "int" and isinstance(value, float) and _integral(value):
        return int(value)
    if entry.get("type") == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def check_value(entry: Mapping[str, Any], value: Any) -> str | None:
    """Why ``value`` does not fit a key described by :func:`describe` (None if it fits);
    ``value`` as :func:`normalise` gives it."""
    value = normalise(entry, value)
    if value is None:
        return None if entry.get("optional") else "must not be None"
    kind = entry.get("type")
    if kind == "bool" and not isinstance(value, bool):
        return f"expected true or false, got {value!r}"
    if kind == "int" and (isinstance(value, bool) or not _integral(value)):
        return f"expected an integer, got {value!r}"
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"expected a number, got {value!r}"
    if kind == "str" and not isinstance(value, str):
        return f"expected a string, got {value!r}"
    choices = entry.get("choices")
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            return "must be finite"
        low, high = entry.get("low"), entry.get("high")
        if low is not None and (value <= low if entry.get("low_open") else value < low):
            return f"must be {'>' if entry.get('low_open') else '>='} {low:g}"
        if high is not None and value > high:
            return f"must be <= {high:g}"
    return None


def parse_overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
    """``name=value``, ``--name=value`` and ``--name value`` arguments as ``(name, text)``.

    >>> parse_overrides(["lr=0.1", "--cell=gru", "--steps", "5"])
    [('lr', '0.1'), ('cell', 'gru'), ('steps', '5')]
    """
    out: list[tuple[str, str]] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        bare = item[2:] if item.startswith("--") else item
        if "=" in bare:
            name, _, text = bare.partition("=")
        elif item.startswith("--") and i + 1 < len(items) and not items[i + 1].startswith("--"):
            name, text = bare, items[i + 1]
            i += 1
        else:
            raise ConfigError(
                f"{item}: expected name=value or --name=value (e.g. lr=0.01 or --lr=0.01)"
            )
        name = name.strip().replace("-", "_")
        if not name:
            raise ConfigError(f"{item}: no key before '='")
        out.append((name, text))
        i += 1
    return out


def load(
    schema: type[T],
    *,
    defaults: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    sweep: Mapping[str, Any] | None = None,
) -> T:
    """The configuration ``schema`` resolves to from its layers (see the module's doc); an
    instance of ``schema``. Raises :class:`ConfigError` naming the first bad key."""
    cfg: DictConfig = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    described = describe(schema)
    if defaults is not None:
        if isinstance(defaults, Mapping):
            source, items = "defaults", dict(defaults)
        else:
            source, items = str(defaults), _read_yaml(Path(defaults))
        cfg = _merge(cfg, described, items.items(), source)
    if isinstance(overrides, Mapping):
        cfg = _merge(cfg, described, overrides.items(), "overrides")
    else:
        parsed = [(k, _parse_text(t)) for k, t in parse_overrides(overrides)]
        cfg = _merge(cfg, described, parsed, "command line")
    if sweep is not None:
        cfg = _merge(cfg, described, sweep.items(), "wandb.config")
    result = OmegaConf.to_object(cfg)
    for name, entry in described.items():
        problem = check_value(entry, getattr(result, name))
        if problem is not None:  # a default that breaks its own rule
            raise ConfigError(f"{name}={getattr(result, name)!r} (defaults): {problem}")
    return typing.cast(T, result)


def as_dict(config: Any) -> dict[str, Any]:
    """A loaded configuration as a plain dict (what goes into ``wandb.config``)."""
    return dataclasses.asdict(config)


# -- the examples' start: flags, offline by default, the run, a graceful stop ---------------


@dataclasses.dataclass
class Started:
    """What :func:`start` gives a program: its configuration, its W&B run, and whether it has
    been asked to stop (SIGTERM or SIGINT, as an agent stops a run early)."""

    config: Any
    run: Any
    stop: Callable[[], bool]

    def train(
        self,
        tracker: Any,
        step: Callable[[], Any],
        evaluate: Callable[[], float],
        *,
        steps: int,
        eval_every: int,
    ) -> Outcome:
        """The loop every sweep program runs, then the run's end.

        ``step()`` takes one optimizer step and returns its loss (a tensor or a number);
        ``evaluate()`` returns the held-out accuracy. Logs ``loss`` every step and
        ``accuracy`` every ``eval_every`` steps and at the end; stops early when asked
        (:attr:`stop`) or when the loss goes non-finite (a sweep goes on: the program
        exits 0); removes ``tracker`` (its verdict and findings reach the run summary),
        records ``ended`` and ``final_accuracy`` and finishes the run.
        """
        ended, done, loss, accuracy = "completed", 0, math.nan, math.nan
        for done in range(1, steps + 1):
            if self.stop():
                ended = "stopped"
                break
            loss = float(step())
            row = {"loss": loss}
            if not math.isfinite(loss):
                ended = "nonfinite"
            if done % eval_every == 0 or done == steps or ended == "nonfinite":
                accuracy = row["accuracy"] = evaluate()
            self.run.log(row)
            if ended == "nonfinite":
                break
        if ended == "stopped" or math.isnan(accuracy):
            accuracy = evaluate()
            self.run.log({"accuracy": accuracy})
        tracker.remove()  # writes gradwandb/verdict and gradwandb/findings to the summary
        verdict = str(tracker.diagnosis().verdict)
        self.run.summary.update({"ended": ended, "final_accuracy": accuracy})
        self.run.finish()
        return Outcome(ended, done, loss, accuracy, verdict)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a program's training ended (:meth:`Started.train`)."""

    ended: str  # "completed", "stopped" or "nonfinite"
    steps: int  # the steps taken
    loss: float  # the last step's loss
    accuracy: float
    verdict: str  # gradwandb's


def start(
    schema: type[T],
    argv: Sequence[str] | None = None,
    *,
    project: str,
    defaults: str | Path | None = None,
    metrics: Sequence[str] = (),
) -> Started:
    """Resolve the configuration, start the W&B run and record the configuration in it.

    ``argv`` (default ``sys.argv[1:]``) holds the overrides plus two flags: ``--online`` (let
    W&B choose the mode; otherwise the run is offline unless ``WANDB_MODE`` is set) and
    ``--print-config-keys`` (print the schema and the ``metrics`` the program logs as JSON,
    and exit). A bad configuration prints one line naming the key and exits with status 2.
    ``GRADWANDB_EXAMPLE_STEPS`` overrides the defaults' ``steps``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if PRINT_KEYS_FLAG in args:
        print(json.dumps({"parameters": describe(schema), "metrics": list(metrics)}))
        raise SystemExit(0)
    online = ONLINE_FLAG in args
    args = [a for a in args if a != ONLINE_FLAG]
    base: dict[str, Any] = _read_yaml(Path(defaults)) if defaults is not None else {}
    if os.environ.get(STEPS_ENV) and "steps" in keys(schema):
        base["steps"] = int(os.environ[STEPS_ENV])
    try:
        config = load(schema, defaults=base, overrides=args)
    except ConfigError as error:
        _fail(error)
    if not online:
        os.environ.setdefault("WANDB_MODE", "offline")
    if os.environ.get("WANDB_MODE") == "offline":
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")

    import wandb

    run: Any = wandb.init(project=project, config=as_dict(config))
    try:  # under an agent, the swept values in wandb.config win (and are locked)
        given = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
        config = load(schema, defaults=as_dict(config), sweep=given)
    except ConfigError as error:
        run.finish(exit_code=2)
        _fail(error)
    run.config.update(as_dict(config), allow_val_change=True)
    return Started(config=config, run=run, stop=_stop_flag())


def _fail(error: ConfigError) -> typing.NoReturn:
    print(f"error: bad configuration: {error}", file=sys.stderr)
    raise SystemExit(2)


def _stop_flag() -> Callable[[], bool]:
    """Turn SIGTERM (how an agent stops a run) and SIGINT into a flag the loop polls, so the
    run ends cleanly: the tracker writes its verdict and W&B finishes the run."""
    asked: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        asked.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave the signals alone
            break
    return lambda: bool(asked)


# -- layers ---------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: no such defaults file")
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except (OSError, OmegaConfBaseException, ValueError) as error:
        raise ConfigError(f"{path}: {error}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    return {str(k): v for k, v in loaded.items()}


def _parse_text(text: str) -> Any:
    """A command-line value as omegaconf reads it (YAML scalars)."""
    parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]))
    return typing.cast(dict[str, Any], parsed)["v"]


def _merge(
    cfg: DictConfig,
    described: Mapping[str, Mapping[str, Any]],
    items: Any,
    source: str,
) -> DictConfig:
    for name, value in items:
        name = str(name)
        if name not in described:
            close = difflib.get_close_matches(name, list(described), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"{name} ({source}): unknown key; {hint}known keys: {', '.join(described)}"
            )
        entry = described[name]
        value = normalise(entry, value)
        problem = check_value(entry, value)
        if problem is not None:
            raise ConfigError(f"{name}={value!r} ({source}): {problem}")
        try:
            cfg = typing.cast(DictConfig, OmegaConf.merge(cfg, {name: value}))
        except OmegaConfBaseException as error:
            reason = str(error).splitlines()[0]
            raise ConfigError(f"{name}={value!r} ({source}): {reason}") from None
    return cfg


def _kind(hint: Any) -> tuple[str, bool]:
    """``(type name, optional)`` of a field's annotation."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    names = {bool: "bool", int: "int", float: "float", str: "str"}
    if hint not in names:
        raise TypeError(f"unsupported config type {hint!r}: use bool, int, float or str")
    return names[hint], optional


def _integral(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


__all__ = [
    "ConfigError",
    "Outcome",
    "Started",
    "as_dict",
    "check_value",
    "describe",
    "keys",
    "knob",
    "load",
    "normalise",
    "parse_overrides",
    "start",
]
