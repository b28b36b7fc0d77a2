# Two entry points: `make demo` (the main job on the built-in dataset) and `make test`.
# Both set up a virtual environment first. torch is installed before anything that depends on it:
# on a CPU machine `torch==2.13.0` is the CPU build (override TORCH_SPEC for another build).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/fewtune run

lint: setup
	$(VENV)/bin/ruff check src tests bench tools
	$(VENV)/bin/ruff format --check src tests bench tools
	$(VENV)/bin/mypy src

# Everything, including the slow end-to-end run on the real default model (what CI runs).
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Unit tests only (seconds).
test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Regenerate the generated reference pages (docs/cli.md, docs/results-format.md); tests/test_docs.py fails
# when they are stale.
.PHONY: docs
docs: setup
	$(PY) tools/docgen.py
