# Two targets do all the set-up on a fresh machine: `make run` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test test-all bench clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)

# The app needs only the runtime dependencies (no torch).
$(VENV)/.runtime: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e .
	touch $@

# Tests also exercise the trainers, so they install the `train` and `dev` extras.
$(VENV)/.dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[dev,train]'
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	$(VENV)/bin/eyefuse live

test: $(VENV)/.dev
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/pytest

# Slow tests and benchmarks too (minutes; run on purpose).
test-all: $(VENV)/.dev
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/pytest -m ''

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
