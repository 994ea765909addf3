# Two commands on a fresh machine: `make train` and `make test`. Everything else is set up on the way.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/default.yaml
ARGS   ?=

.PHONY: help setup data train test test-fast bench clean

help:
	@echo "make train   set up, fetch the data, train $(CONFIG), print its test accuracy"
	@echo "make test    set up, fetch the data, run the test suite"
	@echo "make bench   speed benchmark against PyTorch (installs the CPU build of torch)"
	@echo "make data    fetch and verify Fashion-MNIST only"

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The cache, Debian's dataset folder and the web mirrors are tried in turn; on a machine that
# reaches no mirror, Debian's package is installed when apt-get can be used.
data: setup
	@FMNIST_MLP=$(BIN)/fmnist-mlp sh scripts/get-data.sh

train: data
	$(BIN)/fmnist-mlp train --config $(CONFIG) $(ARGS)

test: data
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

bench: data
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
