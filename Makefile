# make tables -- the three results tables: runs notebooks/01-03 with papermill, writes results/README.md
#                (PROFILE=quick|paper|smoke, DEVICE=cpu|cuda, DATASETS=..., JOBS=notebooks side by side)
# make test  -- the test suite (creates .venv on first use)
# make demo  -- a short HF-GAN run on PneumoniaMNIST with 5 hospitals at epsilon = 10
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml environment.yml | cksum | cut -d' ' -f1)
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_TELEMETRY_ENABLED=0

.PHONY: tables test demo bench env clean
PROFILE ?= quick
DEVICE ?= cpu
DATASETS ?= pneumoniamnist brainmri retinamnist
JOBS ?= 1

env: $(STAMP)

$(STAMP): pyproject.toml environment.yml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	rm -f $(VENV)/.installed-*
	touch $@

tables: $(STAMP)
	$(PY) -m hfgan_core tables --profile $(PROFILE) --device $(DEVICE) --datasets $(DATASETS) --jobs $(JOBS)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m hfgan_core train --dataset pneumoniamnist --clients 5 --partition dirichlet --alpha 0.5 \
		--rounds 300 --epsilon 10 --delta 1e-5 --seed 0 --device cpu --out results/runs/demo

bench: $(STAMP)
	$(PY) benchmarks/dp_step.py

clean:
	rm -rf $(VENV) .pytest_cache
