# w2v2-pretrain: every target does its own set-up on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_FLAGS ?=
LOGDIR ?= outputs
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test test-full lint format tensorboard bench gpu-wheels gpu-check-dry clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@# test oracle: transformers' fairseq conversion script ships only in wheels up to 4.46
	$(BIN)/python -m pip download --quiet --no-deps -d $(VENV)/oracles transformers==4.46.3
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the package (editable) with the pinned stack

demo: install ## pretrain the demo experiment on the embedded corpus (CPU, minutes)
	$(BIN)/w2v2-pretrain experiment=demo $(ARGS)

test: install ## the default test suite (fast; no slow tests)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_FLAGS)

test-full: install ## every test, slow ones included
	$(BIN)/python -m pytest $(PYTEST_FLAGS)

lint: install ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

tensorboard: install ## serve TensorBoard for every run under outputs/ (LOGDIR=DIR for another)
	$(BIN)/tensorboard --logdir $(LOGDIR) --bind_all

bench: install ## step speed against transformers (tiny, BASE); data set-up cost and crop rate
	$(BIN)/python scripts/benchmark.py --preset tiny --batch 2 --seconds 5 --steps 7
	$(BIN)/python scripts/benchmark.py --preset base --batch 2 --seconds 5
	$(BIN)/python scripts/benchmark_data.py

gpu-wheels: install ## the Python 3.12 wheels the GPU machine lacks, into .whl/ (docs/gpu.md)
	$(BIN)/python scripts/gpu_wheels.py --dest .whl

gpu-check-dry: install ## the GPU check's every step on this CPU, tiny (docs/gpu.md; ~3 min)
	PYTHON=$(BIN)/python bash scripts/gpu_check.sh --dry-run --out outputs/gpu_check_dry

clean: ## remove the venv, run outputs and caches
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
