# Two entry points: `make run` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench bench-litellm litellm-client clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/mesh-images serve --host 127.0.0.1 --port 8000

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

# Benchmarks print tables and write them into docs/benchmarks.md. They need wrk (Debian's package);
# `make bench-litellm` first adds LiteLLM's proxy (its own venv under bench/) to the comparison.
bench: $(STAMP)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/overhead.py --write docs/benchmarks.md
	$(BIN)/python bench/streams.py --write docs/benchmarks.md
	$(BIN)/python bench/store.py --write docs/benchmarks.md
	$(BIN)/python bench/edits.py --write docs/benchmarks.md

bench-litellm:
	$(PYTHON) -m venv bench/.litellm
	bench/.litellm/bin/python -m pip install --quiet 'litellm[proxy]'

# LiteLLM's SDK in its own virtualenv (.litellm/), for tests/live/test_litellm.py (skipped without
# it): LiteLLM pins versions of openai and pydantic that the project's own venv must not take.
litellm-client:
	$(PYTHON) -m venv .litellm
	.litellm/bin/python -m pip install --quiet litellm

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
