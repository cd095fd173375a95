# nre_localization: one-command setup, demo and tests.  `make help` lists the targets.
# Every target first runs tools/setup_env.sh, which creates .venv on first use and is a no-op
# (well under a second) once it is up to date.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Type-checked library core (pyproject.toml [tool.mypy] files: same list); folders that hold no
# .py file yet are skipped, since mypy refuses them.
MYPY_CORE := nre_localization/__init__.py nre_localization/errors.py nre_localization/geometry \
	nre_localization/engine nre_localization/testing
MYPY_PATHS ?= $(foreach p,$(MYPY_CORE),$(if $(filter %.py,$(p)),$(wildcard $(p)),$(if $(wildcard $(p)/*.py),$(p))))

# The ament index of the ROS 2 wheels and of the generated interfaces lives in the virtualenv;
# a sourced ROS 2 installation (if any) stays on the path after it.
export AMENT_PREFIX_PATH := $(abspath $(VENV))$(if $(AMENT_PREFIX_PATH),:$(AMENT_PREFIX_PATH))
# Fast DDS profile (shared memory for camera images, UDP on loopback only) for every ROS process.
export FASTRTPS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds.xml
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds.xml

.PHONY: help setup demo test lint format typecheck pytest bench clean

help:
	@echo "make demo       run the end-to-end demo (tools/run_demo.py)"
	@echo "make test       setup + lint + format check + type check + all tests"
	@echo "make setup      create/update the virtualenv $(VENV) only"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make format     ruff format + ruff check --fix"
	@echo "make typecheck  mypy (paths from pyproject.toml)"
	@echo "make pytest     pytest only (PYTEST_ARGS='-k name' to select)"
	@echo "make bench      run benchmarks/*.py"
	@echo "make clean      remove build/ outputs (keeps $(VENV))"

setup:
	@VENV="$(VENV)" bash tools/setup_env.sh

demo: setup
	$(PY) tools/run_demo.py

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

typecheck: setup
	$(PY) -m mypy $(MYPY_PATHS)

# pytest exits 5 when it collects no test: that is a failure here, as any other non-zero code.
pytest: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy $(MYPY_PATHS)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	@shopt -s nullglob; scripts=(benchmarks/*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "no benchmarks/*.py yet"; exit 0; fi; \
	for script in "$${scripts[@]}"; do echo "== $$script"; $(PY) "$$script"; done

clean:
	rm -rf build/ install/ log/ .pytest_cache .ruff_cache .mypy_cache
