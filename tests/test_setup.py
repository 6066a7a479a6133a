"""The README's set-up holds: what the Makefile installs, when it installs again, and
``make bench`` runs with the settings of the README's benchmark table.

Every check asks ``make`` what it would do (``make -n`` / ``make -q``) with ``VENV`` in a temp
folder: nothing is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(*args: str, venv: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), f"VENV={venv}", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def fake_venv(tmp_path: Path) -> Path:
    """A folder the Makefile takes for a built venv (``make -n`` never runs its python)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    return venv


def stamp_of(venv: Path, *args: str) -> Path:
    """The stamp file ``make install`` would touch for these variables."""
    dry = make("-n", "install", *args, venv=venv).stdout
    touched = re.findall(r"^touch (\S+)$", dry, re.MULTILINE)
    assert touched, dry
    return Path(touched[-1])


@needs_make
def test_the_default_installs_torch_first_then_pins_it(tmp_path: Path) -> None:
    dry = make("-n", "install", venv=fake_venv(tmp_path)).stdout
    torch_at = dry.index("install -q  'torch==2.13.0'")
    pinned = re.search(r"pip install -q -c \S+ -e \"\.\[test\]\"", dry)
    assert pinned, "gradwandb must install with the torch installed pinned"
    assert torch_at < pinned.start()


@needs_make
def test_a_torch_index_is_passed_to_the_torch_install(tmp_path: Path) -> None:
    index = "https://download.pytorch.org/whl/cpu"
    dry = make("-n", "install", f"TORCH_INDEX={index}", venv=fake_venv(tmp_path)).stdout
    assert f"--index-url '{index}' 'torch==2.13.0'" in dry


@needs_make
def test_an_empty_torch_installs_none_and_sees_the_pythons_packages(tmp_path: Path) -> None:
    venv = tmp_path / "new-venv"  # not built yet: the dry run shows how it would be made
    dry = make("-n", "install", "TORCH=", venv=venv).stdout
    assert "-m venv --system-site-packages" in dry
    assert not re.search(r"pip install -q .*'torch", dry), "installs no torch"
    assert re.search(r"pip install -q -c \S+ -e", dry), "the torch found must be pinned"


@needs_make
def test_nothing_is_installed_again_until_something_changed(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    stamp = stamp_of(venv)
    assert make("-q", "install", venv=venv).returncode == 1  # never installed
    stamp.touch()
    assert make("-q", "install", venv=venv).returncode == 0  # up to date: nothing to do
    assert make("-q", "install", "TORCH=", venv=venv).returncode == 1  # another torch choice
    assert stamp_of(venv, "TORCH=") != stamp


@needs_make
def test_make_bench_uses_the_readme_settings(tmp_path: Path) -> None:
    found = re.search(r"medians\s+of\s+(\d+)\s+rounds\s+of\s+(\d+)\s+steps", README)
    assert found, "the README states the benchmark's rounds and steps"
    rounds, steps = found.groups()
    dry = make("-n", "bench", venv=fake_venv(tmp_path)).stdout
    assert f"benchmarks/overhead.py --rounds {rounds} --steps {steps}" in dry


def test_the_license_is_an_spdx_expression() -> None:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "MIT"  # a table is deprecated by setuptools
    assert "setuptools>=77" in pyproject["build-system"]["requires"]  # reads SPDX strings
