# `make test` is the project's test command; CI runs it through .ci/run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all install test emulator bench clean

all: install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

emulator: install
	$(BIN)/ces-nb emulator

bench: install
	$(BIN)/python benchmarks/emulator_turns.py

clean:
	rm -rf $(VENV) build *.egg-info
