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

# The migration story in a few seconds, on SQLite from the standard library: a first run
# stopped after 16 of its 40 id ranges (--limit, as an interruption would), where it stands,
# then --resume from the checkpoint to a complete table. --rate slows it down to be watched.
DEMO := --rate 12/s --log-every 0.5 --state-file examples/.demo.state.json
run: install
	@rm -f examples/.demo.sqlite* examples/.demo.state.json examples/.demo.failures.jsonl
	@echo '== 1. Migrate users to users_v2 (20,000 rows, 40 id ranges); stop after 16 ranges'
	$(BIN)/tm-run examples/sqlite_migration.py 2 $(DEMO) --limit 16
	@echo '== 2. Where it stands: the checkpoint, and the tables'
	$(BIN)/tm-status examples/.demo.state.json
	$(BIN)/python examples/sqlite_migration.py
	@echo '== 3. Resume: only the ranges not done yet run'
	$(BIN)/tm-run examples/sqlite_migration.py 2 $(DEMO) --resume
	$(BIN)/python examples/sqlite_migration.py

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
