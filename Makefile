# Two commands do all the set-up: `make demo` runs the main job, `make test` the tests.
PYTHON ?= python3
# The CPU build of PyTorch; on a GPU machine: `make demo TORCH=torch`.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job: the built-in CPU suite end to end (data, 16 models, every checkpoint), then the
# quick evaluations at Pythia's log-spaced steps. Rerun it and it resumes.
demo: install
	$(BIN)/lmsuite suite configs/tiny.toml
	$(BIN)/lmsuite eval runs/tiny --steps log --tasks lambada,perplexity,pronouns,stereotypes

test: install
	$(BIN)/pytest -q

# pytest exits 5 when no test is marked slow; that is not a failure.
test-slow: install
	$(BIN)/pytest -q -m slow || [ $$? -eq 5 ]

# Benchmarks into benchmarks/results/ and benchmarks/RESULTS.md (all: about an hour on 2 cores);
# `make bench BENCH="train mkl"` runs some of them.
bench: install
	$(BIN)/python benchmarks/run.py $(BENCH)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV)
