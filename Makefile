# Two entry points: `make demo` and `make test`. Each builds .venv from nothing when needed.
# TORCH picks the torch to install first; `make test TORCH=` keeps the torch already there.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	if [ -n "$(TORCH)" ]; then $(BIN)/python -m pip install -q "$(TORCH)"; fi
	$(BIN)/python -m pip install -q -e ".[test]"

demo: install
	$(BIN)/gradwandb demo

lint:
	$(BIN)/ruff check gradwandb tests examples benchmarks
	$(BIN)/ruff format --check gradwandb tests examples benchmarks
	$(BIN)/mypy

test: install lint
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/overhead.py
