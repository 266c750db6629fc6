# Two commands on a fresh machine:  make demo  |  make test
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export MUJOCO_GL ?= egl
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test lint test-slow bench clean

# Python 3.12 (LeRobot 0.6.1 needs >= 3.12): $(PYTHON) if given, else python3.12 on PATH, else a pyenv
# install; each candidate must really run (pyenv shims exist for versions that are not selected).
PYTHON312 := $(shell for c in $(PYTHON) python3.12 $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python 2>/dev/null | sort -V -r) python3; do \
	$$c -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1 && { command -v $$c; break; }; done)

$(STAMP): pyproject.toml
	@if [ ! -x "$(PY)" ]; then \
	  if [ -z "$(PYTHON312)" ]; then echo "error: Python 3.12 not found: put python3.12 on PATH, run 'pyenv install 3.12', or pass PYTHON=/path/to/python3.12"; exit 1; fi; \
	  echo ">> creating $(VENV) with $(PYTHON312)"; "$(PYTHON312)" -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[sim,franka,dev,async]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP) lint
	$(PY) -m pytest tests

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test-slow: $(STAMP)
	$(PY) -m pytest tests -m slow

bench: $(STAMP)
	$(PY) benchmarks/contraction_cost.py

clean:
	rm -rf outputs .pytest_cache
