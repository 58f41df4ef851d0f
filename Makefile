# The two commands of README.md: `make setup` then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint format

setup:
	bash tools/setup_env.sh

# Lint (ruff), then the whole pytest suite; non-zero exit on any failure.
test: lint
	$(PY) -m pytest -q

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .
