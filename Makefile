# medkfp: make help lists the targets.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= medkfp/medkfp:$(VERSION)

.PHONY: help setup test test-integration test-containers test-all demo lint compile bench soak clean \
	container-engine image image-gpu constraints

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## Create .venv and install the project with its dev extras

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: setup ## Run the test suite: unit, compile, manifests (slow layers: test-integration, test-containers)
	@echo "make test: the end-to-end and container layers run in make test-integration and make test-containers"
	$(VENV)/bin/pytest -m "not integration and not containers" $(PYTEST_ARGS)

test-integration: setup ## Run the end-to-end tests (kfp.local runs, loopback S3, gRPC)
	$(VENV)/bin/pytest -m integration $(PYTEST_ARGS)

test-all: test test-integration test-containers ## Every layer, as CI runs them

test-containers: setup image ## Build the image and run the container tests (docker runner, kube play)
	MEDKFP_TEST_IMAGE=$(IMAGE) $(VENV)/bin/pytest -m containers $(PYTEST_ARGS)

container-engine: ## Install and start Podman where no container engine answers (a no-op elsewhere)
	bash scripts/container-engine.sh

image: ## Build the CPU image medkfp/medkfp:<version> (docker, else podman)
	IMAGE=$(IMAGE) bash scripts/build-image.sh cpu

image-gpu: ## Build the GPU variant medkfp/medkfp:<version>-gpu (CUDA wheels; needs a GPU node to use)
	IMAGE=$(IMAGE)-gpu bash scripts/build-image.sh gpu

constraints: setup ## Re-pin requirements/constraints.txt (the image's exact versions) from .venv
	{ sed -n '1,2p' requirements/constraints.txt; $(VENV)/bin/pip freeze --exclude-editable | grep -v '^medkfp'; } \
		> requirements/constraints.txt.new && mv requirements/constraints.txt.new requirements/constraints.txt

demo: setup ## Whole flow on this machine: S3 server, synth data, pipeline run, serve, predict
	$(PY) -m medkfp.demo

compile: setup ## Compile the pipeline to pipeline.yaml
	$(VENV)/bin/medkfp compile --out pipeline.yaml

bench: setup ## Benchmarks, each beside its limit: preprocess, ingest upload, input pipeline, predict, soak, CLI
	$(PY) bench/cli_bench.py
	$(PY) bench/preprocess_bench.py
	$(PY) bench/input_pipeline_bench.py
	$(PY) bench/predict_bench.py
	$(PY) bench/soak_bench.py --seconds $(SOAK_SECONDS)

# make bench runs a short soak so that it fits in 15 minutes; make soak runs the full 5 minutes.
SOAK_SECONDS ?= 120
soak: setup ## Soak: 8 clients for 5 minutes against medkfp serve, zero errors and flat memory
	$(PY) bench/soak_bench.py --seconds 300

lint: setup ## Lint and check the formatting with ruff (ruff format . fixes the formatting)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean: ## Remove the virtualenv, caches and local stores
	rm -rf $(VENV) .medkfp .pytest_cache .ruff_cache *.egg-info demo-out
