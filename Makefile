# Two targets do all the set-up on a fresh machine: `make run` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test test-all bench clean screenshot

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

# The live window on the simulated camera, under a virtual X server, saved after 90 frames
# (needs xvfb-run and the Qt xcb libraries: apt-get install xvfb libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4
# libxcb-image0 libxcb-keysyms1 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libegl1).
screenshot: $(VENV)/.runtime
	xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/bin/eyefuse live --frames 90 --screenshot docs/screenshot.png

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
