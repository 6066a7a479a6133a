"""The shape of the package's imports: ``import gradwandb`` stays light, the modules import one
another without a cycle, and the reading wing never reaches into the live wing.

The graph is read from the source with :mod:`ast`. An edge is an import at module level (run
when the module is imported; imports under ``if TYPE_CHECKING:`` are not). An import inside a
function runs when the function is called, after every module is loaded: that is how a module
reaches one that imports it (``Tracker.remove`` calling back into ``watching``), so it is no
edge of the import-time graph.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gradwandb"


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its __init__)."""
    out: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: at module level, also inside ``if``,
    ``try`` and ``with`` blocks, but not under ``if TYPE_CHECKING:`` nor in a def or class."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _top_level(block)
            for handler in node.handlers:
                yield from _top_level(handler.body)
        elif isinstance(node, ast.With):
            yield from _top_level(node.body)


def _known(name: str) -> str | None:
    """``name`` if it is a module of the package, else its closest enclosing one (or None)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The package's modules an import statement of ``module`` names: ``import a.b`` names
    ``a.b``; ``from a import b`` names ``a.b`` if that is a module, else ``a``."""
    if isinstance(node, ast.Import):
        found = {_known(alias.name) for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        found = set()
        for alias in node.names:
            full = f"{base}.{alias.name}"
            found.add(full if full in MODULES else _known(base))
    return {name for name in found if name is not None}


def _tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))


def _graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports at import time."""
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        edges: set[str] = set()
        for node in _top_level(_tree(module).body):
            edges |= _targets(module, node)
        graph[module] = edges - {module}
    return graph


def _every_import(module: str) -> set[str]:
    """The package's modules ``module`` imports anywhere (functions included)."""
    out: set[str] = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= _targets(module, node)
    return out - {module}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_graph_reader_sees_the_known_edges() -> None:
    graph = _graph()
    assert "gradwandb.keys" in graph["gradwandb.live.record"]
    assert "gradwandb.live.monitors.base" in graph["gradwandb.live.monitors.activations"]
    assert "gradwandb.live.sinks" in graph["gradwandb.live.record"]
    # drawing is imported when a chart is drawn, not with the monitors
    assert "gradwandb.plots.charts" not in graph["gradwandb.live.monitors.charts"]
    assert "gradwandb.plots.charts" in _every_import("gradwandb.live.monitors.charts")
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_import_gradwandb_leaves_matplotlib_and_the_plots_out() -> None:
    code = (
        "import sys, gradwandb\n"
        "print(sorted(m for m in sys.modules if m == 'matplotlib' or m.startswith("
        "('matplotlib.', 'gradwandb.plots'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_package_has_no_import_cycle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("gradwandb.read")))
def test_the_reading_wing_imports_nothing_of_the_live_wing(module: str) -> None:
    graph = _graph()
    reached: set[str] = set()
    todo = list(_every_import(module))
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += graph.get(name, set())
    live = sorted(m for m in reached if m == "gradwandb.live" or m.startswith("gradwandb.live."))
    assert live == [], f"{module} reaches the live wing through {live}"


# -- the optional frameworks (gradwandb[lightning], gradwandb[huggingface]) ---------------------

FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate")


def test_import_gradwandb_leaves_lightning_and_huggingface_out() -> None:
    code = (
        "import sys, gradwandb, gradwandb.integrations\n"  # the live wing: checked from the source
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_only_the_integrations_import_lightning_or_huggingface() -> None:
    for module in MODULES:
        if module.startswith("gradwandb.integrations"):
            continue
        assert not any(m.startswith("gradwandb.integrations") for m in _every_import(module)), (
            module
        )
        for node in ast.walk(_tree(module)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                assert not any(n.split(".")[0] in FRAMEWORKS for n in names), module


@pytest.mark.parametrize(
    ("integration", "missing", "extra"),
    [
        ("lightning", ("lightning", "lightning.pytorch", "pytorch_lightning"), "lightning"),
        ("huggingface", ("transformers",), "huggingface"),
    ],
)
def test_a_missing_framework_names_the_extra_to_install(
    integration: str, missing: tuple[str, ...], extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # import of it raises ImportError
    monkeypatch.delitem(sys.modules, f"gradwandb.integrations.{integration}", raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'gradwandb\[{extra}\]'"):
        importlib.import_module(f"gradwandb.integrations.{integration}")


def test_import_gradwandb_and_the_reports_leave_drawing_workspaces_and_torch_out() -> None:
    code = (
        "import sys, gradwandb, gradwandb.report, gradwandb.report.sweep\n"
        "gradwandb.write_report, gradwandb.build_wandb_report\n"
        "heavy = ('matplotlib', 'wandb_workspaces', 'torch', 'wandb')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "             or m.startswith(('gradwandb.live', 'gradwandb.plots'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_reports_draw_and_publish_only_when_asked() -> None:
    graph = _graph()
    for module in (m for m in MODULES if m.startswith("gradwandb.report")):
        assert not {e for e in graph[module] if e.startswith("gradwandb.plots")}, module
    assert "gradwandb.plots.lines" in _every_import("gradwandb.report.sections")
    assert "gradwandb.plots.verdicts" in _every_import("gradwandb.report.sweep")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("gradwandb.report")))
def test_the_reports_import_nothing_of_the_live_wing(module: str) -> None:
    test_the_reading_wing_imports_nothing_of_the_live_wing(module)
