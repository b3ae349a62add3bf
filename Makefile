# Every target builds its own environment in .venv on first use; only Python 3.11+ and make
# need to be present.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint check clean bench bench-quick

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "TaskForge needs Python 3.11 or newer on PATH (python3.11, python3.12, ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## make demo: enqueue 10,000+ jobs on the embedded SQLite default and run a worker through them
demo: $(STAMP)
	$(BIN)/taskforge demo

## make test: the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest

## make lint: ruff and mypy, as CI runs them
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy benchmarks/harness.py benchmarks/report.py benchmarks/profile_top.py benchmarks/pg_verbs.py
	cd benchmarks/systems && ../../$(BIN)/mypy _common.py taskforge_system.py

check: lint test

## make bench: TaskForge and its peers side by side, every workload, three rounds (about 25
## minutes; each peer gets its own venv under benchmarks/.venvs on first use). BENCH_REPEAT sets
## the rounds; BENCH_ARGS passes options on, e.g.
## make bench BENCH_ARGS="--systems taskforge-postgres,pgqueuer --soak-jobs 100000".
## Results go to results/<timestamp>/ (results.md, results.json, *.png).
BENCH_REPEAT ?= 3
bench: $(STAMP)
	$(BIN)/python benchmarks/harness.py $(if $(QUICK),--quick,--repeat $(BENCH_REPEAT)) $(BENCH_ARGS)

## make bench-quick (or make bench QUICK=1): a smoke run, TaskForge only, small N
bench-quick: $(STAMP)
	$(BIN)/python benchmarks/harness.py --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) benchmarks/.venvs .pytest_cache .mypy_cache .ruff_cache .hypothesis taskforge-demo.db*
