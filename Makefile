# Two targets do all the set-up on a fresh machine: `make run` and `make test` (see README.md).
# Both install the exact versions in requirements/*.txt (the lock files; `make lock` refreshes them).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test test-all lock bench clean screenshot

$(VENV)/bin/python:
	python3 -m venv $(VENV)

# The app needs only the runtime dependencies (no torch). The burst kernels are compiled into
# numba's cache here, once, so the first burst does not stop for a minute.
$(VENV)/.runtime: requirements/runtime.txt pyproject.toml | $(VENV)/bin/python
	$(PIP) -r requirements/runtime.txt
	$(PIP) --no-deps -e .
	$(PY) -m engine.burst.precompile
	touch $@

# Tests also exercise the trainers, so they install the `train` and `dev` extras' locked versions.
$(VENV)/.dev: requirements/dev.txt pyproject.toml | $(VENV)/bin/python
	$(PIP) -r requirements/dev.txt
	$(PIP) --no-deps -e .
	$(PY) -m engine.burst.precompile
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	$(VENV)/bin/eyefuse live

# The default tier: unit and integration tests, random order, a per-test timeout (pyproject.toml).
test: $(VENV)/.dev
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/pytest

# Everything, the slow tests and benchmark checks too (minutes; run on purpose).
test-all: $(VENV)/.dev
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/pytest -m ''

# Refresh the lock files from pyproject.toml's ranges (pip-tools, in the dev venv). The runtime
# lock is resolved within the dev lock, so both hold the same version of every shared package.
lock: $(VENV)/.dev
	$(VENV)/bin/pip-compile --quiet --no-emit-index-url --no-emit-find-links --strip-extras --upgrade \
		--extra dev --extra train --output-file requirements/dev.txt pyproject.toml
	$(VENV)/bin/pip-compile --quiet --no-emit-index-url --no-emit-find-links --strip-extras --upgrade \
		--constraint requirements/dev.txt --output-file requirements/runtime.txt pyproject.toml

# The live window on the simulated camera, under a virtual X server, saved after 90 frames
# (needs xvfb-run and the Qt xcb libraries: apt-get install xvfb libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4
# libxcb-image0 libxcb-keysyms1 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libegl1).
screenshot: $(VENV)/.runtime
	xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/bin/eyefuse live --frames 90 --screenshot docs/screenshot.png

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
