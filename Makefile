# make test  -- the test suite (creates .venv on first use)
# make demo  -- a short HF-GAN run on PneumoniaMNIST with 5 hospitals at epsilon = 10
# make benchmark -- the comparison tables (PROFILE=quick|paper|smoke, DEVICE=cpu|cuda)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml environment.yml | cksum | cut -d' ' -f1)
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_TELEMETRY_ENABLED=0

.PHONY: test demo bench benchmark env clean
PROFILE ?= quick
DEVICE ?= cpu
DATASETS ?= pneumoniamnist brainmri retinamnist

env: $(STAMP)

$(STAMP): pyproject.toml environment.yml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m hfgan_core train --dataset pneumoniamnist --clients 5 --partition dirichlet --alpha 0.5 \
		--rounds 300 --epsilon 10 --delta 1e-5 --seed 0 --device cpu --out results/runs/demo

# every method, 3 seeds, epsilon 10: results/<dataset>/table.{md,csv}, runs.json
benchmark: $(STAMP)
	for d in $(DATASETS); do \
		$(PY) -m hfgan_core benchmark --dataset $$d --methods all --seeds 0 1 2 --profile $(PROFILE) \
			--epsilon 10 --alpha 0.5 --device $(DEVICE) --out results/$$d || exit 1; \
	done

bench: $(STAMP)
	$(PY) benchmarks/dp_step.py

clean:
	rm -rf $(VENV) .pytest_cache
