"""A W&B sweep file, checked before any run starts (the table of its runs: in sweep_results).

:func:`load_sweep` reads a sweep YAML and refuses, naming the file and line, what would only
fail later: YAML W&B's agent cannot parse (a ``command`` in flow form), a configuration the
sweep engine's schema rejects, a program that is not there, a search method that cannot use a
parameter (grid over a range), and, when the program describes itself
(``--print-config-keys``, as the examples do through :mod:`gradwandb.config`), a swept
parameter it does not know, a value it would reject, or a metric it never logs.

The table of what the runs did (:func:`run_row`, :func:`markdown`, :func:`write_csv`) is built
in :mod:`gradwandb.read.sweep_results` and importable from here too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gradwandb.config import PRINT_KEYS_FLAG, check_value
from gradwandb.read.sweep_results import RESULT_COLUMNS, markdown, run_row, write_csv

__all__ = [
    "DEFAULT_COMMAND",
    "METHODS_NEEDING_COUNT",
    "RESULT_COLUMNS",
    "SweepError",
    "SweepSpec",
    "check_against_program",
    "describe",
    "engine",
    "load_sweep",
    "markdown",
    "run_row",
    "write_csv",
]

DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")  # wandb agent's
METHODS_NEEDING_COUNT = ("random", "bayes")


def engine() -> Any:
    """The ``sweeps`` package (W&B's open-source sweep engine), imported quietly."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its pydantic v1-style config warns under v2
            import sweeps
    except ImportError:
        raise SweepError(
            "gradwandb sweep needs W&B's sweep engine: pip install 'gradwandb[sweeps]' "
            "(or pip install sweeps==0.2.0)"
        ) from None
    return sweeps


class SweepError(ValueError):
    """A sweep file that cannot run as written; the message names the file, line and key."""


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep file."""

    path: Path  # the YAML file
    config: dict[str, Any]  # the sweep configuration, as W&B reads it
    program: str  # ``program`` as written (what ${program} expands to)
    program_path: Path  # where that program is
    command: tuple[str, ...]  # the command template (the agent's default when not given)
    lines: dict[str, int] = field(default_factory=dict)  # "parameters.lr" -> line (1-based)
    schema: dict[str, dict[str, Any]] | None = None  # the program's keys, when it told them
    metrics: tuple[str, ...] | None = None  # the metrics the program logs, when it told them

    @property
    def name(self) -> str:
        """The sweep's name: ``name`` in the file, else the file's stem."""
        return str(self.config.get("name") or self.path.stem)

    @property
    def method(self) -> str:
        return str(self.config["method"])

    @property
    def metric(self) -> str | None:
        metric = self.config.get("metric")
        return str(metric["name"]) if isinstance(metric, Mapping) and "name" in metric else None

    @property
    def swept(self) -> list[str]:
        """The parameters that take more than one value, in the file's order."""
        out = []
        for name, spec in self.config["parameters"].items():
            if isinstance(spec, Mapping) and "value" in spec:
                continue
            if isinstance(spec, Mapping) and len(spec.get("values", [None, None])) == 1:
                continue
            out.append(str(name))
        return out

    def where(self, key: str) -> str:
        """``file:line`` of a dotted key of the file (the file alone if not found)."""
        line = self.lines.get(key)
        return f"{self.path}:{line}" if line else str(self.path)


def load_sweep(
    path: str | Path,
    *,
    cwd: str | Path | None = None,
    describe_program: bool = True,
    interpreter: str | None = None,
) -> SweepSpec:
    """Read and check the sweep file at ``path``; see the module's doc for what is refused.

    ``program`` is looked for relative to ``cwd`` (default: the current folder) as W&B's agent
    does, then relative to the file's folder and the folder above it. With
    ``describe_program`` the program is run once with ``--print-config-keys`` (by
    ``interpreter``, default this Python) to learn its keys and metrics.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SweepError(f"{path}: {error.strerror or error}") from None
    lines = _key_lines(path, text)
    config = yaml.safe_load(text)
    if not isinstance(config, dict):
        raise SweepError(f"{path}: a sweep file is a mapping (method, parameters, ...)")
    _check_schema(path, config, lines)
    command = _check_command(path, config, lines)
    program, program_path = _find_program(path, config, lines, Path(cwd or Path.cwd()))
    spec = SweepSpec(path, config, program, program_path, command, lines)
    _check_method(spec)
    if describe_program and program_path.suffix == ".py":
        described = describe(program_path, interpreter=interpreter)
        if described is not None:
            spec = SweepSpec(
                path,
                config,
                program,
                program_path,
                command,
                lines,
                schema=described[0],
                metrics=described[1],
            )
            check_against_program(spec)
    return spec


_described: dict[tuple[str, str, int], Any] = {}


def describe(
    program: Path, *, interpreter: str | None = None, timeout: float = 300.0
) -> tuple[dict[str, dict[str, Any]], tuple[str, ...]] | None:
    """The program's configuration keys and logged metrics from ``--print-config-keys``;
    None (with a warning) if it does not answer that flag. Asked once per program version."""
    key = (str(program.resolve()), interpreter or sys.executable, program.stat().st_mtime_ns)
    if key not in _described:
        _described[key] = _ask(program, interpreter, timeout)
    answer = _described[key]
    if answer is None:
        warnings.warn(
            f"{program} does not describe its configuration ({PRINT_KEYS_FLAG}): its swept "
            "parameters and metric are not checked before the sweep starts",
            stacklevel=2,
        )
        return None
    return answer["parameters"], tuple(str(m) for m in answer.get("metrics", []))


def _ask(program: Path, interpreter: str | None, timeout: float) -> dict[str, Any] | None:
    done = subprocess.run(
        [interpreter or sys.executable, str(program), PRINT_KEYS_FLAG],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=program.parent,
    )
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (ValueError, IndexError):
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("parameters"), dict):
        return None
    return answer


def check_against_program(spec: SweepSpec) -> None:
    """Refuse parameters the program does not know, values it would reject, and a metric it
    never logs (needs ``spec.schema``)."""
    if spec.schema is None:
        return
    known = spec.schema
    for name, param in spec.config["parameters"].items():
        where = spec.where(f"parameters.{name}")
        if name not in known:
            raise SweepError(
                f"{where}: parameter {name!r} is not a configuration key of {spec.program} "
                f"(its keys: {', '.join(known)})"
            )
        for value in _values(param):
            problem = check_value(known[name], value)
            if problem is not None:
                raise SweepError(
                    f"{where}: parameter {name!r}: value {value!r} is rejected by "
                    f"{spec.program}: {problem}"
                )
    metric = spec.metric
    if metric is not None and spec.metrics is not None and metric not in spec.metrics:
        raise SweepError(
            f"{spec.where('metric.name')}: metric {metric!r} is never logged by "
            f"{spec.program} (it logs {', '.join(spec.metrics) or 'no metric it declares'})"
        )


# -- checks ---------------------------------------------------------------------------------


def _key_lines(path: Path, text: str) -> dict[str, int]:
    """Dotted key -> 1-based line, for every mapping key in the file."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        hint = ""
        if "${" in text and "flow sequence" in str(error):
            hint = (
                "; write `command:` as a block list, one `- ${...}` item per line (the flow "
                "form [${env}, ...] is not YAML W&B can read)"
            )
        problem = getattr(error, "problem", None) or str(error)
        raise SweepError(f"{path}{line}: not valid YAML: {problem}{hint}") from None
    out: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = f"{prefix}{key.value}"
                out.setdefault(name, key.start_mark.line + 1)
                walk(value, name + ".")

    walk(root, "")
    return out


def _check_schema(path: Path, config: dict[str, Any], lines: Mapping[str, int]) -> None:
    violations = engine().schema_violations_from_proposed_config(config)
    if not violations:
        return
    located = []
    for message in violations:
        key = _locate(message, lines, config)
        where = f"{path}:{lines[key]}" if key else str(path)
        located.append(f"{where}: {message}" + (f" (at {key})" if key else ""))
    raise SweepError("the sweep engine rejects this sweep:\n  " + "\n  ".join(located))


def _locate(message: str, lines: Mapping[str, int], config: Mapping[str, Any]) -> str | None:
    """The dotted key a schema message is most likely about."""
    tokens = re.findall(r"'([^']+)'", message) + re.findall(r":\s*([\w.]+)\s*$", message)
    for token in tokens:
        for key in lines:
            if key.rsplit(".", 1)[-1] == token:
                return key
        for key, value in _leaves(config, ""):
            if str(value) == token and key in lines:
                return key
    return None


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), node


def _check_command(
    path: Path, config: Mapping[str, Any], lines: Mapping[str, int]
) -> tuple[str, ...]:
    command = config.get("command")
    if command is None:
        return DEFAULT_COMMAND
    where = f"{path}:{lines.get('command', '?')}"
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        raise SweepError(
            f"{where}: `command` must be a block list of strings, one `- ${{...}}` per line"
        )
    return tuple(str(c) for c in command)


def _find_program(
    path: Path, config: Mapping[str, Any], lines: Mapping[str, int], cwd: Path
) -> tuple[str, Path]:
    program = config.get("program")
    command = config.get("command") or DEFAULT_COMMAND
    if program is None:
        if any("${program}" in str(c) for c in command):
            raise SweepError(f"{path}: no `program:` (its command uses ${{program}})")
        return "", Path()
    where = f"{path}:{lines.get('program', '?')}"
    text = str(program)
    candidates = [cwd / text, path.parent / text, path.parent.parent / text]
    for candidate in candidates:
        if candidate.is_file():
            return text, candidate.resolve()
    looked = ", ".join(str(c.parent) for c in candidates)
    raise SweepError(f"{where}: program {text!r} not found (looked in {looked})")


def _check_method(spec: SweepSpec) -> None:
    """Ask the engine for a first suggestion: it refuses what the schema lets through (a grid
    over a range, a distribution it cannot sample)."""
    try:
        engine().next_run(spec.config, [])
    except (ValueError, KeyError, TypeError) as error:
        message = str(error)
        key = next(
            (
                f"parameters.{p}"
                for p in spec.config["parameters"]
                if re.search(rf"\b{re.escape(str(p))}\b", message)
            ),
            "method",
        )
        raise SweepError(
            f"{spec.where(key)}: the sweep engine cannot run this: {message}"
        ) from None


def _values(param: Any) -> list[Any]:
    """The concrete values a parameter's spec names (value, values, min and max)."""
    if not isinstance(param, Mapping):
        return []
    if "value" in param:
        return [param["value"]]
    if "values" in param:
        return list(param["values"])
    return [param[k] for k in ("min", "max") if k in param]
