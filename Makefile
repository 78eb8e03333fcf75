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
$(KERNEL): $(STAMP) setup.py nsnet_sdk/pipeline/_entropy.c nsnet_sdk/pipeline/_entropy_lanes.h
	$(PY) setup.py --quiet build_ext --inplace
	touch $(KERNEL)

# NSNET_REQUIRE_KERNEL=1: a kernel that failed to build fails the tests instead of falling back.
# Triton's container runs Python 3.12: the generated Python-backend model is tested in a clean
# 3.12 environment holding only what docs/nvidia.md installs there (`pip install '<checkout>[cpu]'`).
# Made once per change of the package; skipped (the test says why) where no Python 3.12 exists.
TRITON_PY  ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do $$p -c 'import sys; print(sys.executable)' 2>/dev/null && break; done)
TRITON_ENV := .venv-triton
TRITON_STAMP := $(TRITON_ENV)/.installed

$(TRITON_STAMP): pyproject.toml setup.py $(shell git ls-files nsnet_sdk 2>/dev/null)
	@if [ -n "$(TRITON_PY)" ]; then \
	  rm -rf $(TRITON_ENV) && $(TRITON_PY) -m venv $(TRITON_ENV) && \
	  $(TRITON_ENV)/bin/python -m pip install --quiet '.[cpu]' && touch $@; \
	else echo "make: no Python 3.12 found: the Triton model's clean-environment test will skip"; fi

# Two pytest workers, each taking whole files (module fixtures such as a Ray cluster or a served
# model are built once): alone, the suite keeps one core busy about 80 % of its time, because much
# of it waits on Ray, servers and subprocesses. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: setup $(TRITON_STAMP)
	NSNET_REQUIRE_KERNEL=1 NSNET_TRITON_PYTHON=$$([ -f $(TRITON_STAMP) ] && echo $(CURDIR)/$(TRITON_ENV)/bin/python) \
	  $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: setup
	$(PY) -m demo $(DEMO_ARGS)

bench: setup
	$(PY) -m benchmarks.preprocess

clean:
	rm -rf $(VENV) $(TRITON_ENV) build *.egg-info demo_out nsnet_sdk/pipeline/_entropy*.so

# ---- the NVIDIA path (docs/nvidia.md) ---------------------------------------------------------
# gpu-wheels (on a connected machine): the wheel set a GPU box with CUDA PyTorch needs, as pip's
# resolver picks it (dependencies included) for one CUDA major: the [gpu-cuNN] extra of
# pyproject.toml plus the test runner. TensorRT's libraries come from pypi.nvidia.com (their PyPI
# entry only points there). GPU_WHEEL_ARGS targets another Python/platform, e.g.
# "--python-version 3.12 --platform manylinux_2_28_x86_64 --only-binary=:all:".
# gpu-check (on the GPU box, no network): installs that set from the wheelhouse with the resolver
# (a missing wheel fails here, loudly), then runs benchmarks.gpu_check, which exits non-zero when a
# step could not run. DEVICE=cpu runs every step on the CPU; GPU_CHECK_ARGS shrinks the run.
WHEELHOUSE     ?= wheelhouse
DEVICE         ?= cuda
CUDA_MAJOR     ?= $(shell $(PYTHON) -c "import torch; print((torch.version.cuda or '13').split('.')[0])" 2>/dev/null || echo 13)
GPU_REQS        = $(shell $(PYTHON) -c "import tomllib; x = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; print(' '.join(repr(r) for r in x['gpu-cu$(CUDA_MAJOR)']))")
GPU_TEST_REQS  ?= pytest hypothesis pillow
GPU_WHEEL_ARGS ?=
GPU_CHECK_ARGS ?=
GPU_WHEELS_DIR  = $(WHEELHOUSE)/cu$(CUDA_MAJOR)

gpu-wheels:
	test -n "$(GPU_REQS)" || { echo "pyproject.toml has no [gpu-cu$(CUDA_MAJOR)] extra"; exit 1; }
	$(PYTHON) -m pip download --dest $(GPU_WHEELS_DIR) --extra-index-url https://pypi.nvidia.com \
		$(GPU_WHEEL_ARGS) $(GPU_REQS) $(GPU_TEST_REQS)
	printf '%s\n' $(GPU_REQS) $(GPU_TEST_REQS) > $(GPU_WHEELS_DIR)/requirements.txt
	du -sh $(GPU_WHEELS_DIR)

gpu-check:
	if [ -d $(GPU_WHEELS_DIR) ]; then \
		if $(PYTHON) -m pip show -q onnxruntime 2>/dev/null; then \
			echo "gpu-check: onnxruntime (the CPU build) is installed and shadows onnxruntime-gpu: pip uninstall -y onnxruntime"; exit 1; fi; \
		$(PYTHON) -m pip install --no-index --find-links $(GPU_WHEELS_DIR) -r $(GPU_WHEELS_DIR)/requirements.txt || exit 1; \
	fi
	PYTHONPATH=$(CURDIR) $(PYTHON) -m benchmarks.gpu_check --device $(DEVICE) $(GPU_CHECK_ARGS)
