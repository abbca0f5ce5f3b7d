PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench bench-gateway bench-workers clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m gateway.devrun

test: $(STAMP)
	$(PY) -m ruff check gateway workers tests
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check gateway workers tests
	$(PY) -m ruff format --check gateway workers tests

bench: bench-gateway bench-workers

bench-gateway: $(STAMP)
	$(PY) -m gateway.bench

bench-workers: $(STAMP)
	$(PY) -m workers.bench

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
