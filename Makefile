# sd4match: two commands on a fresh machine with only Python:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export MPLBACKEND ?= agg
export TOKENIZERS_PARALLELISM ?= false

NOTEBOOKS := $(sort $(wildcard notebooks/0*.ipynb))
RUNS      := runs

.PHONY: setup demo test test-fast figures lab data clean

## setup: create the virtual environment (torch first: the CPU wheel), install the package and dev tools
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)
setup: $(STAMP)

## data: the embedded synthetic dataset (SPair-71k, PF-Pascal and PF-Willow layouts) under data/synthetic
data: setup
	$(BIN)/sd4match synthetic --out data/synthetic

## demo: the main job on the embedded default: evaluate zero-shot, then run every notebook headlessly
demo: data
	$(BIN)/sd4match evaluate --dataset spair --data-root data/synthetic/SPair-71k --split test --model tiny \
		--prompt text --layer 1 --timestep 50 --ensemble 8 --matcher all --out $(RUNS)/demo_zero_shot
	$(MAKE) figures

## figures: regenerate every figure in figures/ by executing the notebooks (papermill, outputs kept in runs/)
figures: data
	mkdir -p $(RUNS)/notebooks figures
	cd notebooks && for nb in $(notdir $(NOTEBOOKS)); do \
		TQDM_DISABLE=1 ../$(BIN)/papermill --no-progress-bar -k python3 $$nb ../$(RUNS)/notebooks/$$nb || exit 1; \
	done

## test: the whole test suite (unit tests, format fixtures, notebook runs), offline
test: setup
	$(BIN)/python -m pytest

## test-fast: skip the slow end-to-end and notebook tests
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

## lab: JupyterLab with the project's environment
lab: setup
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf $(RUNS) .pytest_cache
