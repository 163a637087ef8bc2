# `make demo` opens the tutorials in JupyterLab against the embedded emulator;
# `make test` is the project's test command (CI runs it through .ci/run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two installs: the demo's (the package and JupyterLab) and the test suite's, a superset.
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed
NBVAL := --nbval --nbval-sanitize-with notebooks/sanitize.cfg
TEST_WORKERS ?= auto

.PHONY: all install demo test emulator notebooks bench chaos clean scrapi-env

all: install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(DEMO_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[demo]"
	touch $(DEMO_STAMP)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[test,demo]"
	touch $(STAMP) $(DEMO_STAMP)

install: $(STAMP)

# Our own tutorials are trusted, so JupyterLab keeps their styles on first open.
demo: $(DEMO_STAMP)
	$(BIN)/jupyter trust notebooks/*.ipynb
	$(BIN)/ces-nb demo

# cxas-scrapi from the registry in its own venv, cached per version (.venv-scrapi-VERSION),
# for tests/test_scrapi.py. `make test` builds it beside the suite, so the test itself only drives it; if
# it cannot be built there, the test says why (and fails under CI=true, else skips).
scrapi-env: install
	$(BIN)/python tests/scrapi_env.py

# --durations: the slowest tests; the conftest then lists the 10 slowest against their own timeouts
# (slow integration tests carry their own). -n: the suite runs on TEST_WORKERS processes (every core,
# at most 4), a whole test file to a worker (--dist loadfile), each with its own emulators.
# The cxas-scrapi venv builds in the background while the suite runs (minutes of pip on a new
# machine); tests/test_scrapi.py waits for it on its lock, and builds it itself if that failed.
# So does the emulated Binder build, from scratch every run (tests/binder_env.py, for test_binder.py).
test: install
	rm -rf .binder-build && mkdir .binder-build
	$(BIN)/python tests/scrapi_env.py > .scrapi-env.log 2>&1 & scrapi=$$!; \
	$(BIN)/python tests/binder_env.py .binder-build > .binder-build.log 2>&1 & binder=$$!; \
	CES_NB_BINDER_BUILD=$(CURDIR)/.binder-build $(BIN)/python -m pytest $(NBVAL) tests notebooks -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile --durations=15 $(PYTEST_ARGS); \
	code=$$?; wait $$scrapi; wait $$binder; exit $$code

emulator: $(DEMO_STAMP)
	$(BIN)/ces-nb emulator

# Re-run the tutorials in place after changing them (their outputs are checked by `make test`).
notebooks: install
	$(BIN)/python notebooks/execute.py

# All of them, in under 10 minutes on 2 cores; each prints its store and its goal lines.
bench: install
	$(BIN)/python benchmarks/emulator_turns.py
	$(BIN)/python benchmarks/session_length.py
	$(BIN)/python benchmarks/load.py
	$(BIN)/python benchmarks/client_overhead.py
	$(BIN)/python benchmarks/render_speed.py
	$(BIN)/python benchmarks/import_time.py
	$(BIN)/python benchmarks/tool_roundtrip.py
	$(BIN)/python benchmarks/frames.py
	$(BIN)/python benchmarks/isolation.py
	$(BIN)/python benchmarks/rest_vs_grpc.py
	$(BIN)/python benchmarks/callbacks.py
	$(BIN)/python benchmarks/audio.py
	$(BIN)/python benchmarks/evals.py

# The chaos test (tests/faults) with CHAOS_RUNS random seeds, each printed so a failure can be
# replayed: `make chaos SEED=1234`. (`make test` runs it too, with one fixed seed.)
CHAOS_RUNS ?= 3
chaos: install
	@seeds="$(SEED)"; failed=""; \
	if [ -z "$$seeds" ]; then seeds=$$(for _ in $$(seq $(CHAOS_RUNS)); do od -An -N4 -tu4 /dev/urandom | tr -d ' '; done); fi; \
	for seed in $$seeds; do \
		echo "== chaos seed $$seed (replay: make chaos SEED=$$seed)"; \
		CHAOS_SEED=$$seed $(BIN)/python -m pytest tests/faults -q -rA $(PYTEST_ARGS) || failed="$$failed $$seed"; \
	done; \
	if [ -n "$$failed" ]; then echo "== chaos FAILED with seed(s)$$failed; replay one: make chaos SEED=N"; exit 1; fi

clean:
	rm -rf $(VENV) build *.egg-info .binder-build .binder-build.log
