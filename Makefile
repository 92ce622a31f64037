# The only two set-up commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit unit-pg install clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cme-mailbot demo

lint: $(STAMP)
	$(BIN)/ruff check cme_mailbot tests
	$(BIN)/ruff format --check cme_mailbot tests

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

# The same suite on PostgreSQL: tests/pg.py starts a throw-away server on 127.0.0.1.
unit-pg: $(STAMP)
	CME_TEST_DATABASE=postgresql $(BIN)/pytest

test: lint typecheck unit unit-pg

bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-output
