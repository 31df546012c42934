# The two commands a new user needs: `make up` and `make test`. Both install what they need first.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install browser up down test lint unit bench clean

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { echo "error: python3 (3.11 or newer) is needed"; exit 1; }
	@python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python 3.11 or newer is needed"; exit 1; }
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)
	$(BIN)/clm infra install

# Debian's Chromium, for the dashboard's browser tests (installed as root when missing).
browser: $(STAMP)
	$(BIN)/clm infra browser

up: install
	$(BIN)/clm up

down: $(STAMP)
	$(BIN)/clm down

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

test: install browser lint
	$(BIN)/pytest

bench: install
	$(BIN)/python -m bench.ingest.run
	$(BIN)/python -m bench.stage_engine.run
	$(BIN)/python -m bench.stage_engine.preview
	$(BIN)/python -m bench.metrics.run
	$(BIN)/python -m bench.campaigns.run
	$(BIN)/python -m bench.e2e.run

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
