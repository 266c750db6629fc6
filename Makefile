# Two commands on a fresh machine:  make demo  |  make test
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export MUJOCO_GL ?= egl
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test test-slow bench clean

# Python 3.12 (LeRobot 0.6.1 needs >= 3.12): on PATH, else through pyenv, else a clear error.
PYTHON312 := $(shell command -v python3.12 2>/dev/null || ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python 2>/dev/null | tail -n 1)

$(STAMP): pyproject.toml
	@if [ ! -x "$(PY)" ]; then \
	  if [ -z "$(PYTHON312)" ]; then echo "error: Python 3.12 not found (need python3.12 on PATH or pyenv install 3.12)"; exit 1; fi; \
	  echo ">> creating $(VENV) with $(PYTHON312)"; "$(PYTHON312)" -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[sim,franka,dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest tests

test-slow: $(STAMP)
	$(PY) -m pytest tests -m slow

bench: $(STAMP)
	$(PY) benchmarks/contraction_cost.py

clean:
	rm -rf outputs .pytest_cache
