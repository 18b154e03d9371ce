# Two entry points: `make run` and `make test`. Both install into .venv when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: run test lint install

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The embedded default: SQLite file, API + dashboard + one local worker, auth explicitly off
# (local use only; see README for keys).
run: $(STAMP)
	BNSWEEP_AUTH=$${BNSWEEP_AUTH:-off} $(BIN)/bnsweep serve --workers 1

# Lint and type-check, everything in parallel, then the scenarios that restart the shared
# PostgreSQL server, alone (they must exist: "no tests collected" fails too).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "not outage"
	$(BIN)/python -m pytest -m outage

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
