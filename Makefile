# package-validate: prove a PyTorch model behaves the same after packaging for TorchServe.
#   make package-validate   validate the default example (creates .venv on first use)
#   make test               unit and integration tests (real TorchServe on loopback)
#   make bench              replay client against ab, stage wall times -> reports/bench/

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SPEC   ?= examples/digits/spec.yaml
ARGS   ?= --force
PYTEST_ARGS ?=

.PHONY: package-validate test unit integration bench examples venv clean help

help:
	@sed -n '2,5p' Makefile

venv: $(STAMP)

$(STAMP): constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

EXAMPLES := examples/digits/.trained examples/breast_cancer/.trained

examples/%/.trained: examples/%/train.py examples/%/model.py examples/_common.py $(STAMP)
	$(PY) -m examples.$*.train
	@touch $@

examples: $(EXAMPLES)

package-validate: $(STAMP) $(EXAMPLES)
	$(PY) -m pipeline run $(SPEC) $(ARGS)

test: $(STAMP) $(EXAMPLES)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

unit: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/unit

integration: $(STAMP) $(EXAMPLES)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/integration

bench: $(STAMP) $(EXAMPLES)
	@command -v ab >/dev/null || [ "$$(id -u)" != 0 ] || (apt-get update -qq && apt-get install -y -qq apache2-utils)
	$(PY) -m pipeline.bench

clean:
	rm -rf reports/*/ model_store/*.mar examples/*/.trained examples/*/weights.pt examples/*/train.csv examples/*/test.csv
