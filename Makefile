# Fresh clone:  make run   (set up .venv, run `peftbench run --methods lora,adapter`)
#               make test  (set up .venv, run the test suite)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Offline defaults (override on the command line or in the environment).
export PEFTBENCH_DATA ?= ../shared/datasets
export HF_HUB_OFFLINE ?= 1

.PHONY: install run test bench results clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0 -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/peftbench run --methods lora,adapter

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/latency.py

clean:
	rm -rf $(VENV) runs .pytest_cache
