# One-command setup, tests and demo. Every target creates .venv itself when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test demo bench clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes, so `make test` on a set-up tree costs nothing here.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,train,export,dev,ray]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(PY) -m demo $(DEMO_ARGS)

bench: setup
	$(PY) -m benchmarks.preprocess

clean:
	rm -rf $(VENV) build *.egg-info demo_out
