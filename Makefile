# ARM suite. `make demo` runs the recipe on the embedded ShapeWorld default; `make test` runs the fast tests.
# Every target that runs code depends on `setup`, which builds .venv once (a stamp tracks pyproject.toml).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
export PYTHONUNBUFFERED := 1

.PHONY: setup test test-all demo bench lint table7 table8 eval figures clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first, as a matched pair (see ../shared/stack.md): a lone torch from the
	# registry leaves torchvision unimportable. The grep only hides pip's notes about local mirrors.
	$(PIP) torch==2.14.1 torchvision==0.29.1 2> >(grep -v "is ignored" >&2)
	$(PIP) -e ".[dev]" 2> >(grep -v "is ignored" >&2)
	$(PY) -c "import torch, torchvision, lightning, webdataset, arm" || (echo "setup failed: see pip output above" >&2; exit 1)
	touch $(STAMP)

test: setup
	$(PY) -m pytest -m "not slow" -q

test-all: setup
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/arm demo --out results/demo

bench: setup
	GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184 \
		$(VENV)/bin/arm bench --out results/bench.json

# One CUDA GPU: ~1B AR model, bf16, FSDP2, tokens/s and MFU against a bf16 matmul peak measured in the same run.
# On a GPU machine whose Python already has torch and lightning (no registry to install from), skip the venv:
# `make bench-gpu GPU_PY=python3`. Two runs: fp32 parameters under autocast, then FSDP2 gathering them in bf16.
GPU_PY ?=
BENCH_GPU_ARGS ?=
bench-gpu: $(if $(GPU_PY),,setup)
	PYTHONPATH=src $(or $(GPU_PY),$(PY)) scripts/bench_gpu.py --param-dtype fp32 --out results/bench_gpu_fp32_params.json $(BENCH_GPU_ARGS)
	PYTHONPATH=src $(or $(GPU_PY),$(PY)) scripts/bench_gpu.py --param-dtype bf16 --out results/bench_gpu.json $(BENCH_GPU_ARGS)

table7: setup
	$(VENV)/bin/arm tokenizer table7 --out results --demo results/demo --steps 650

# Table 8 (RL recipes x benchmarks, paired intervals against SFT); needs `make demo` first (its SFT export).
table8: setup
	$(VENV)/bin/arm rl table8 --out results --demo results/demo

# Every benchmark protocol on a bench folder: make eval CKPT=dummy DATA=results/demo/world/bench
CKPT ?= dummy
DATA ?= results/demo/world/bench
EVAL_OUT ?= results/eval
eval: setup
	$(VENV)/bin/arm eval all --ckpt $(CKPT) --data $(DATA) --out $(EVAL_OUT)

# Tables and figures from results files only (no model is run); missing inputs are listed as skipped.
figures: setup
	$(VENV)/bin/arm figures --results results --out figures

lint: setup
	$(VENV)/bin/ruff check src tests eval

clean:
	rm -rf results/demo .pytest_cache
