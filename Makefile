# `make demo` opens the tutorials in JupyterLab against the embedded emulator;
# `make test` is the project's test command (CI runs it through .ci/run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NBVAL := --nbval --nbval-sanitize-with notebooks/sanitize.cfg

.PHONY: all install demo test emulator notebooks bench clean

all: install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[test,demo]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/ces-nb demo

test: install
	$(BIN)/python -m pytest $(NBVAL) tests notebooks $(PYTEST_ARGS)

emulator: install
	$(BIN)/ces-nb emulator

# Re-run the tutorials in place after changing them (their outputs are checked by `make test`).
notebooks: install
	$(BIN)/python notebooks/execute.py

bench: install
	$(BIN)/python benchmarks/emulator_turns.py
	$(BIN)/python benchmarks/client_overhead.py
	$(BIN)/python benchmarks/render_speed.py
	$(BIN)/python benchmarks/import_time.py
	$(BIN)/python benchmarks/tool_roundtrip.py
	$(BIN)/python benchmarks/frames.py

clean:
	rm -rf $(VENV) build *.egg-info
