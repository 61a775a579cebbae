# Two entry points: `make demo` (set up, then purify the embedded Fashion-MNIST BadNets victim)
# and `make test` (set up, then run the test suite). Both work on a fresh Debian machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup demo test bench clean

$(BIN)/nftkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[test]"
	touch $@

$(FMNIST):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; fi

setup: $(BIN)/nftkit $(FMNIST)

demo: setup
	$(BIN)/nftkit recipe run image/fmnist_badnets

test: setup
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs build *.egg-info
