# The two commands a new user needs: `make demo` and `make test`. Both create the virtualenv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SOURCES := ai_pipeline ai_pipeline_tests bench

.PHONY: install demo dev test lint format bench chaos clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create the virtualenv and install the package with its dev tools.

demo: $(STAMP) ## Start embedded Postgres, a local S3 endpoint and the emulator; run a sample batch through Dagster.
	$(BIN)/ai-pipeline demo

dev: $(STAMP) ## The same local services plus the Dagster UI (webserver + daemon) on http://127.0.0.1:3000.
	$(BIN)/ai-pipeline dev

test: $(STAMP) lint ## Lint, then the whole test suite against real Postgres, S3 protocol, emulator and Dagster.
	$(BIN)/pytest

lint: $(STAMP) ## Style (ruff), types (mypy), import contracts (lint-imports), declared dependencies (deptry).
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/deptry ai_pipeline --extend-exclude ai_pipeline/dev
	$(BIN)/deptry . --ignore DEP004

format: $(STAMP)
	$(BIN)/ruff check --fix $(SOURCES)
	$(BIN)/ruff format $(SOURCES)

bench: $(STAMP) ## Benchmarks; results go to bench/RESULTS.md.
	$(BIN)/python bench/run_all.py

chaos: $(STAMP) ## Faults, SIGKILLed workers and dropped connections on 10,000 requests; then checks every invariant.
	$(BIN)/python -m ai_pipeline.dev.chaos --requests 10000

clean:
	rm -rf $(VENV) .ai_pipeline .pytest_cache .ruff_cache .mypy_cache
