# The two commands the README promises, on a machine with only Python 3.11+.
#   make demo   install into .venv, then run the pipeline on the offline demo
#   make test   install into .venv, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
# A CPU build is enough for the demo and the tests; override for another build,
# e.g. make demo TORCH="torch==2.13.0 --index-url <your CPU wheel index>".
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint dry-run clean-demo mutation

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --profile profiles/demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --profile profiles/demo --lint

dry-run: $(STAMP)
	$(BIN)/snakemake --profile profiles/demo -n

clean-demo:
	rm -rf results/demo

# Mutation testing of the science modules against the fast unit tests (not part of `make test` or CI:
# it takes hours on 2 cores). Survivors are triaged in mutation/*.md.
mutation: $(STAMP)
	rm -rf mutants
	$(BIN)/mutmut run
	$(BIN)/mutmut results
