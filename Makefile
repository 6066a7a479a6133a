# Two entry points: `make demo` and `make test`. Each builds .venv from nothing when needed and
# installs again only when pyproject.toml or the torch choice changed (a stamp in .venv).
#
# TORCH: the torch requirement installed first, before gradwandb (default torch==2.13.0).
# TORCH_INDEX: the package index torch comes from, when set; for the CPU build on any machine:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
# TORCH= (empty): install no torch; use the one already in .venv, or, for a new .venv, the one
#   $(PYTHON) has (the venv is made with --system-site-packages). It stops if there is none.
# Whichever torch ends up installed is pinned while gradwandb and its tools are installed, so
# nothing after it reinstalls or upgrades torch.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PIP := $(VENV)/bin/python -m pip
# the settings of the README's benchmark table
BENCH_ARGS ?= --rounds 30 --steps 20
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell printf '%s|%s' '$(TORCH)' '$(TORCH_INDEX)' | cksum | cut -d' ' -f1)
TORCH_PIN := $(VENV)/torch-pin.txt

.PHONY: install demo test lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(if $(TORCH),,--system-site-packages) $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install -q --upgrade pip
	if [ -n '$(TORCH)' ]; then \
	  $(PIP) install -q $(if $(TORCH_INDEX),--index-url '$(TORCH_INDEX)') '$(TORCH)'; \
	fi
	$(BIN)/python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" \
	  > $(TORCH_PIN) 2>/dev/null \
	  || { echo "TORCH= installs no torch, and $(BIN)/python finds none: install one" \
	       "(or set TORCH, e.g. TORCH=torch==2.13.0, or rm -r $(VENV))" >&2; exit 1; }
	$(PIP) install -q -c $(TORCH_PIN) -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/gradwandb demo

lint: install
	$(BIN)/python -m ruff check gradwandb tests examples benchmarks
	$(BIN)/python -m ruff format --check gradwandb tests examples benchmarks
	$(BIN)/python -m mypy

test: install lint
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/overhead.py $(BENCH_ARGS)
