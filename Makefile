# medkfp: make help lists the targets.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-unit test-integration demo lint compile bench clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## Create .venv and install the project with its dev extras

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: setup ## Run every test (unit and integration)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-unit: setup ## Run the fast tests only
	$(VENV)/bin/pytest -m "not integration" $(PYTEST_ARGS)

test-integration: setup ## Run the end-to-end tests (kfp.local, loopback S3, gRPC)
	$(VENV)/bin/pytest -m integration $(PYTEST_ARGS)

demo: setup ## Whole flow on this machine: S3 server, synth data, pipeline run, serve, predict
	$(PY) -m medkfp.demo

compile: setup ## Compile the pipeline to pipeline.yaml
	$(VENV)/bin/medkfp compile --out pipeline.yaml

bench: setup ## Benchmarks: preprocess throughput and memory, predict latency and throughput
	$(PY) bench/preprocess_bench.py
	$(PY) bench/predict_bench.py

lint: setup ## Lint with ruff
	$(VENV)/bin/ruff check .

clean: ## Remove the virtualenv, caches and local stores
	rm -rf $(VENV) .medkfp .pytest_cache .ruff_cache *.egg-info demo-out
