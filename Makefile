# make run   : set up (if needed) and run the demo SFT job on an embedded Ray + local MLflow
# make test  : set up (if needed) and run the test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
TORCH_CPU := torch==2.13.0
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export PYTHONUNBUFFERED := 1
# the venv's tools first (as an activated venv): one ninja for DeepSpeed's JIT op in every process (another one
# hashes the build differently and rebuilds it)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup run test test-fast lint bench-sft bench-quant bench-overhead mlflow-ui mlflow-server clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# CPU machines: the pinned CPU build first, so nothing pulls a multi-GB CUDA wheel
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -m pip install -q -e '.[test]'
	@# DeepSpeed JIT-builds its CPU comm op at a job's first engine (about 30 s): build it once, here
	$(PY) -c "from deepspeed.accelerator import get_accelerator; \
	  get_accelerator().create_op_builder('ShareMemCommBuilder').load()" >/dev/null 2>&1 || true
	rm -f $(VENV)/.installed-*; touch $@

setup: $(STAMP)

run: setup
	$(PY) -m orchestrator job=sft $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# the unit lane: everything but the end-to-end tests (marked e2e: real Ray jobs, DeepSpeed engines, servers)
test-fast: setup
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db --host 127.0.0.1 --port 5000

# An MLflow tracking server (sqlite backend; artifacts proxied to MLFLOW_ARTIFACTS, e.g. s3://bucket/mlflow
# with AWS_* (and AWS_ENDPOINT_URL or MLFLOW_S3_ENDPOINT_URL off AWS) in the environment); jobs use it with
# tracking.uri=http://127.0.0.1:$(MLFLOW_PORT)
MLFLOW_ARTIFACTS ?= $(CURDIR)/runs/server-artifacts
MLFLOW_PORT ?= 5000
mlflow-server: setup
	mkdir -p $(CURDIR)/runs
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) \
	  --workers 1 --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow-server.db --artifacts-destination $(MLFLOW_ARTIFACTS)

# GPU machine: run with the image's python (torch/transformers there); see README.md "Benchmarks (GPU machine)"
BENCH_PY ?= python3
bench-sft:
	$(BENCH_PY) -m benchmarks.sft $(ARGS)

bench-quant:
	$(BENCH_PY) -m benchmarks.quant $(ARGS)

# fixed cost per job: tiny jobs of each kind, embedded and attached, split into phases (CPU or GPU)
# (the venv's python where it exists: a CPU machine after `make setup`; else BENCH_PY, the GPU image's)
bench-overhead:
	$(if $(wildcard $(PY)),$(PY),$(BENCH_PY)) -m benchmarks.overhead $(ARGS)

.PHONY: bench-sensitivity
bench-sensitivity:
	$(BENCH_PY) -m benchmarks.sensitivity $(ARGS)

.PHONY: bench-vlm
bench-vlm:
	$(BENCH_PY) -m benchmarks.vlm $(ARGS)

clean:
	rm -rf runs .cache .pytest_cache
