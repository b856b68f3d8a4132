# ana-lightning: `make train` and `make test` set everything up on a fresh machine (Python >= 3.10).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ana-installed
# torch/torchvision pinned: these wheels are what this project is tested with.
TORCH_PINS := "torch==2.14.1" "torchvision==0.29.1"
TEST_ENV := HF_HUB_OFFLINE=1 WANDB_MODE=offline NO_ALBUMENTATIONS_UPDATE=1 WANDB_SILENT=true
ARGS ?=

.PHONY: install train test test-slow test-all lint format clean help bench-synth bench-nst bench-augment augment-grid test-browser bench-predict bench-throughput test-dist test-cluster train-mixed low-data paper cv-real

help:
	@echo "make train      set up .venv if needed, then run ana-train (ARGS='key=value ...' to override)"
	@echo "make test       set up .venv if needed, then run the test suite (slow and dist tests excluded)"
	@echo "make test-slow  the slow tests (notebook, longer training runs)"
	@echo "make test-dist  the tests that start several processes (DDP ranks, sweeps, a killed run resumed)"
	@echo "make test-cluster  the SLURM tests on a one-node SLURM started here (root; installs slurm-wlm, munge)"
	@echo "make lint       ruff"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(TORCH_PINS)
	$(BIN)/python -m pip install -e ".[dev]" $(TORCH_PINS)
	@touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 $(BIN)/ana-train $(ARGS)

test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q $(ARGS)

test-slow: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m slow $(ARGS)

test-all: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "slow or not slow" $(ARGS)

bench-synth: $(STAMP)
	$(TEST_ENV) $(BIN)/python experiments/benchmarks/synth_speed.py $(ARGS)

bench-nst: $(STAMP)
	$(TEST_ENV) $(BIN)/python experiments/benchmarks/nst_speed.py $(ARGS)

bench-augment: $(STAMP)
	$(TEST_ENV) $(BIN)/python experiments/benchmarks/augment_speed.py $(ARGS)

augment-grid: $(STAMP)
	$(TEST_ENV) $(BIN)/python experiments/augmentation_grid.py --out outputs/augmentation_grid.png

# The real-browser test of ana-app: installs Debian's Chromium with apt (Playwright drives it; it never
# downloads a browser of its own).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: $(STAMP)
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }
	$(TEST_ENV) $(BIN)/python -m pytest -q -m browser tests/serving/test_app_browser.py $(ARGS)

bench-predict: $(STAMP)
	$(TEST_ENV) $(BIN)/python experiments/benchmarks/predict.py $(ARGS)

bench-throughput: $(STAMP)
	$(TEST_ENV) $(BIN)/python experiments/benchmarks/throughput.py $(ARGS)

# Tests that start several processes (DDP ranks, multirun sweeps, a killed run resumed): each process
# spends most of its time importing torch and Lightning, so they are kept out of `make test` and run
# here; .ci/run runs them after `make test`.
test-dist: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m dist $(ARGS)

# Jobs through a real SLURM: starts munged, slurmctld and slurmd on this machine (one node, config in a
# temporary folder), runs the tests marked `cluster`, stops the daemons. Skips where not root / no apt.
test-cluster: $(STAMP)
	PYTHON=$(BIN)/python .ci/test-cluster $(ARGS)

train-mixed: $(STAMP)
	HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 $(BIN)/ana-train experiment=mixed_ensemble $(ARGS)

low-data: $(STAMP)
	HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 $(BIN)/python experiments/low_data/run.py $(ARGS)

# Cross-validation on the real reference fields: texture SVM vs CNN, 3-fold x 2 repeats, then ana-compare
cv-real: $(STAMP)
	BIN=$(BIN) bash experiments/cross_validation/run.sh

paper: $(STAMP)
	$(BIN)/ana-train experiment=paper_level1 $(ARGS) && $(BIN)/ana-train experiment=paper_level2 $(ARGS) && $(BIN)/ana-train experiment=paper_level3 $(ARGS)
	@echo "then: ana-eval --config-name eval_hierarchy pipeline.level1=<run> pipeline.level2=<run> pipeline.level3=<run>"

lint: $(STAMP)
	$(BIN)/ruff check ana_lightning tests experiments
	$(BIN)/ruff format --check ana_lightning tests experiments

format: $(STAMP)
	$(BIN)/ruff format ana_lightning tests experiments

clean:
	rm -rf outputs .pytest_cache .ruff_cache build dist *.egg-info
