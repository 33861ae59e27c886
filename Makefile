# Two commands do all the set-up: `make demo` runs the main job, `make test` runs the tests.
# Each creates (or reuses) the virtual environment in $(VENV) and installs requirements.txt
# (`make test` adds requirements-dev.txt: pytest and JAX for the backend checks).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.carclf-installed
DEV_STAMP := $(VENV)/.carclf-dev-installed
PYTEST_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-fast lint bench install clean-results

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	@touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install -r requirements-dev.txt
	@touch $(DEV_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m carclf demo

# Everything on TensorFlow, then the backend-portable tests again on JAX; the slowest tests listed at the end.
test: $(DEV_STAMP)
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)
	KERAS_BACKEND=jax $(PY) -m pytest -q -m "backend and not both_ways" $(PYTEST_ARGS)

# The inner loop: the suite without the tests marked slow (the demo notebook, full-size models, kills).
test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=10 $(PYTEST_ARGS)

# What .ci/run checks before the tests.
lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) bench/input_pipeline.py
	$(PY) bench/augment.py
	$(PY) bench/train_speed.py --tiny

# Removes generated results (datasets, caches, models, logs); keeps the folders.
clean-results:
	find data pickles models logs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
