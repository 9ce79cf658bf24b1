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

.PHONY: lock setup demo test test-fast test-browser figures lab data reproduce mini mini-targets clean

## setup: create the virtual environment (torch first: the CPU wheel), install the package and dev tools
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)
setup: $(STAMP)

## lock: record the exact versions installed now in constraints.txt (after a deliberate upgrade and a green make test)
lock: setup
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

## data: the embedded synthetic dataset (SPair-71k, PF-Pascal and PF-Willow layouts) under data/synthetic
data: setup
	$(BIN)/sd4match synthetic --out data/synthetic

## demo: the main job on the embedded default: evaluate zero-shot, then run every notebook headlessly
demo: data
	$(BIN)/sd4match evaluate --dataset spair --data-root data/synthetic/SPair-71k --split test --model mini \
		--prompt text --ensemble 8 --matcher all --out $(RUNS)/demo_zero_shot
	$(MAKE) figures

## figures: regenerate every figure in figures/ by executing the notebooks (papermill, outputs kept in runs/)
figures: data
	mkdir -p $(RUNS)/notebooks figures
	cd notebooks && for nb in $(notdir $(NOTEBOOKS)); do \
		TQDM_DISABLE=1 ../$(BIN)/papermill --no-progress-bar -k python3 $$nb ../$(RUNS)/notebooks/$$nb || exit 1; \
	done

## mini: pre-train the embedded model from scratch (resumable: re-run to continue) and ship it into the package
MINI_MINUTES ?= 80
mini: setup
	$(BIN)/sd4match pretrain-mini --out $(RUNS)/mini --minutes $(MINI_MINUTES) --threads 1 --resume --ship

## mini-targets: what the shipped mini shows on held-out synthetic pairs (README "Results"; ≈ 15 min on 2 cores)
mini-targets: setup
	$(BIN)/python benchmarks/mini_targets.py --out benchmarks/mini

## reproduce: the paper's full protocol on a GPU machine with real weights and data (README "Reproducing the paper")
SD21 ?= weights/sd21
DINO ?= weights/dinov2-base
DATA ?= data/real
reproduce: setup
	bash benchmarks/reproduce.sh "$(SD21)" "$(DINO)" "$(DATA)"

## test: the whole test suite (unit tests, format fixtures, notebook runs, the JupyterLab browser test), offline
test: setup
	$(BIN)/python -m pytest

## test-fast: skip the slow end-to-end, notebook and browser tests
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

## test-browser: only the browser test (headless Chromium drives notebook 00 in JupyterLab; needs Debian's
## chromium and chromium-driver: apt-get install chromium chromium-driver)
test-browser: setup
	$(BIN)/python -m pytest -m browser

## lab: JupyterLab on notebooks/ whose python3 kernel is this environment's Python (a kernel spec written into
## the venv and put first on JUPYTER_PATH, so a user-wide "python3" kernel of another Python cannot take over)
lab: setup
	$(BIN)/python -m ipykernel install --prefix "$(CURDIR)/$(VENV)" --name python3 \
		--display-name "Python 3 (ipykernel)" >/dev/null
	JUPYTER_PATH="$(CURDIR)/$(VENV)/share/jupyter$${JUPYTER_PATH:+:$$JUPYTER_PATH}" \
		$(BIN)/jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf $(RUNS) .pytest_cache
