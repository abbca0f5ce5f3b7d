PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Test processes side by side: most tests wait on servers, not on the CPU.
TEST_PROCESSES ?= 3
# `make run` needs only the program and the embedded Redis (the `dev` extra), not the test
# and benchmark tools; a full install covers it too.
RUN_STAMP := $(VENV)/.installed-run

.PHONY: install run test test-unit lint bench bench-proxy bench-decisions bench-workers bench-webhooks clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev,bench]'
	touch $(STAMP) $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(RUN_STAMP)

run: $(RUN_STAMP)
	$(PY) -m dev.run

test: $(STAMP)
	$(PY) -m ruff check gateway workers dev tests
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n $(TEST_PROCESSES)

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

lint: $(STAMP)
	$(PY) -m ruff check gateway workers dev tests
	$(PY) -m ruff format --check gateway workers dev tests
	$(VENV)/bin/lint-imports

bench: bench-proxy bench-decisions bench-workers bench-webhooks

bench-proxy: $(STAMP)
	$(PY) -m dev.bench.proxy --write docs/benchmarks.md

bench-decisions: $(STAMP)
	$(PY) -m dev.bench.decisions --write docs/benchmarks.md

bench-workers: $(STAMP)
	$(PY) -m dev.bench.workers

bench-webhooks: $(STAMP)
	$(PY) -m dev.bench.webhooks --write docs/benchmarks.md

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
