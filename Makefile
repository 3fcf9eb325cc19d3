# Entry points, all from a clean clone:
#   make run    set up .venv and run the default kvbench job (embedded workload, no download)
#   make test   set up .venv and run lint, format check, type check and the CPU tests
#   make test-cluster   (root) start a local SLURM cluster, run sweeps on it, tear it down
# TORCH is installed first and separately: on a CUDA machine, set TORCH to your own build
# (e.g. TORCH=torch), or keep an existing torch by installing into that environment yourself.
VENV  ?= .venv
TORCH ?= torch==2.13.0
PY    := $(VENV)/bin/python
BIN   := $(VENV)/bin

.PHONY: run test test-cluster setup
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: setup
	$(BIN)/kvbench

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

test-cluster: setup
	experiments/cluster/test_cluster.sh $(PY)
