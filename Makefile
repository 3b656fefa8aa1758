# Two commands do everything on a fresh machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint format typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	rm -f examples/.example.state.json examples/.example.failures.jsonl
	$(BIN)/tm-run examples/example.py 2 --state-file examples/.example.state.json

lint: install
	$(BIN)/ruff check taskmaster tests benchmarks examples
	$(BIN)/ruff format --check taskmaster tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

format: install
	$(BIN)/ruff format taskmaster tests benchmarks examples
	$(BIN)/ruff check --fix taskmaster tests benchmarks examples

test: install lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m pip install --quiet mpire joblib || echo 'mpire/joblib not installed: their rows are skipped'
	$(BIN)/python -m compileall -q taskmaster benchmarks  # as an installed package has them
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
