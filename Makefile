# Two commands do all the set-up: `make demo` runs the main job, `make test` the tests.
PYTHON ?= python3
# The CPU build of PyTorch; on a GPU machine: `make demo TORCH=torch`.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev demo results test test-slow lint bench clean

# lmsuite and what it runs on (the main job needs no more)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

# and what the tests and benchmarks use
$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

# The main job: the built-in CPU suite from nothing to its report (data, 16 models, evaluations,
# memorization, term frequency, the intervention): runs/tiny/report/index.html. It resumes.
demo: install
	$(BIN)/lmsuite run

# After the main job: README's figure and RESULTS.md (findings and stage times), redrawn from
# runs/tiny's files; with PYTHIA_EVALS=<a copy of Pythia's evals/ folder>, the report also
# draws Pythia's published results beside the run's.
PYTHIA_EVALS ?=
results:
	$(BIN)/lmsuite report runs/tiny --markdown RESULTS.md $(if $(PYTHIA_EVALS),--compare $(PYTHIA_EVALS))
	mkdir -p docs && cp runs/tiny/report/lambada.png docs/lambada.png

test: install-dev
	$(BIN)/pytest -q

# pytest exits 5 when no test is marked slow; that is not a failure.
test-slow: install-dev
	$(BIN)/pytest -q -m slow || [ $$? -eq 5 ]

# Benchmarks into benchmarks/results/ and benchmarks/RESULTS.md (all: about an hour on 2 cores);
# `make bench BENCH="train mkl"` runs some of them.
bench: install-dev
	$(BIN)/python benchmarks/run.py $(BENCH)

lint: install-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV)
