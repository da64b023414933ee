# The README's commands. `make demo` and `make test` create or refresh the
# virtualenv in $(VENV) and install what they need, so on a fresh machine they
# are all a user types.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,deploy,hypertune
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-run
PYTEST_ARGS ?=
# Test files run in parallel worker processes (pytest-xdist), each file's tests
# in one worker so its module fixtures (a trained job, a demo run) are built once.
TEST_WORKERS ?= 2

.PHONY: install demo test test-fast test-dev lint bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh $(DEMO_DIR)

# Three tiers (tests/tiers.py; conftest marks every test by what it uses): fast after each
# change, dev before each commit, test (every tier) is what CI runs.
# --no-loadscope-reorder keeps conftest's order: the costliest files first (tests/conftest.py).
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: install
	$(PYTEST) -m fast $(PYTEST_ARGS)

test-dev: install
	$(PYTEST) -m "not long" $(PYTEST_ARGS)

test: install
	$(PYTEST) $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint --no-color Dockerfile

bench: install
	$(PY) -m pip install --quiet -e ".[$(EXTRAS),bench]"
	$(PY) benchmarks/preprocess.py
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/explain.py
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
