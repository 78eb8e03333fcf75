# One-command setup, tests and demo. Every target creates .venv itself when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
KERNEL := $(VENV)/.kernel
# The torch/torchvision the tests ran with, pinned here (and so in CI) only: pyproject.toml asks for
# a compatible range. A CPU-only build installed first with these versions satisfies the pins.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup test demo bench clean gpu-wheels gpu-check

setup: $(STAMP) $(KERNEL)

# Re-installs only when pyproject.toml or the pins change, so `make test` on a set-up tree costs nothing here.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,train,export,dev,ray]' $(TORCH_PINS)
	touch $(STAMP)

# The compiled patch-entropy kernel, rebuilt in place whenever its source changes (the editable
# install above builds it once; this keeps it current on a set-up tree).
$(KERNEL): $(STAMP) setup.py nsnet_sdk/pipeline/_entropy.c
	$(PY) setup.py --quiet build_ext --inplace
	touch $(KERNEL)

# NSNET_REQUIRE_KERNEL=1: a kernel that failed to build fails the tests instead of falling back.
test: setup
	NSNET_REQUIRE_KERNEL=1 $(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(PY) -m demo $(DEMO_ARGS)

bench: setup
	$(PY) -m benchmarks.preprocess

clean:
	rm -rf $(VENV) build *.egg-info demo_out nsnet_sdk/pipeline/_entropy*.so

# ---- the NVIDIA path (docs/nvidia.md) ---------------------------------------------------------
# gpu-wheels (on a connected machine): the few wheels a GPU box with only CUDA PyTorch lacks, into
# wheelhouse/ (~31 MiB): nvImageCodec for torch's CUDA major, nvJPEG, pytest + hypothesis.
# gpu-check (on the GPU box, no network): installs them from wheelhouse/, then runs
# benchmarks.gpu_check. DEVICE=cpu runs every step on the CPU; GPU_CHECK_ARGS shrinks the run.
WHEELHOUSE ?= wheelhouse
DEVICE     ?= cuda
CUDA_MAJOR ?= $(shell $(PYTHON) -c "import torch; print((torch.version.cuda or '12').split('.')[0])" 2>/dev/null || echo 12)
GPU_WHEELS ?= nvidia-nvimgcodec-cu$(CUDA_MAJOR) nvidia-nvjpeg pytest pluggy iniconfig hypothesis sortedcontainers attrs
GPU_CHECK_ARGS ?=

gpu-wheels:
	$(PYTHON) -m pip download --only-binary=:all: --no-deps -d $(WHEELHOUSE) $(GPU_WHEELS)
	du -sh $(WHEELHOUSE)

gpu-check:
	if [ -d $(WHEELHOUSE) ]; then $(PYTHON) -m pip install --no-index --find-links $(WHEELHOUSE) --no-deps $(WHEELHOUSE)/*.whl; fi
	PYTHONPATH=$(CURDIR) $(PYTHON) -m benchmarks.gpu_check --device $(DEVICE) $(GPU_CHECK_ARGS)
