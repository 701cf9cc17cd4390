# make tables -- the results tables: runs notebooks/01-04 with papermill, writes results/ (paper) or results/quick/ (a preview); fetches a
#                missing PneumoniaMNIST / RetinaMNIST through medmnist. PROFILE=auto|quick|paper|smoke (auto:
#                paper on a CUDA GPU, quick otherwise), DEVICE=auto|cpu|cuda, DATASETS=..., JOBS=notebooks side
#                by side, WORKERS=processes making each notebook's rows (same numbers; on a GPU e.g. 8),
#                DATA_DIR=where the .npz files are, RESUME=1 continues a stopped run (the paper
#                profile takes hours on a CPU: run it again with RESUME=1 until every table is written)
# make quality -- generator quality on validation (results/gan_quality.md): every dataset, seeds 0-2, eps inf/10/1
# make release -- the released synthetic datasets, results/<dataset>/synthetic_eps10_seed0.npz (train, OS-entropy noise)
# make test  -- the test suite (creates .venv on first use)
# make demo  -- one HF-GAN run on PneumoniaMNIST with 5 hospitals at epsilon = 10 (the recipe)
# make bench -- speed: batched engine vs the per-hospital loop, and the DP step vs a plain step
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml environment.yml | cksum | cut -d' ' -f1)
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_TELEMETRY_ENABLED=0

.PHONY: tables quality release test demo bench env clean
PROFILE ?= auto
DEVICE ?= auto
DATASETS ?= pneumoniamnist brainmri retinamnist
JOBS ?= 3  # notebooks side by side, one torch thread each: fastest on the 2-core CI machine (quick: 17.4 min)
WORKERS ?= 1
DATA_DIR ?= data
RESUME ?=

env: $(STAMP)

$(STAMP): pyproject.toml environment.yml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	rm -f $(VENV)/.installed-*
	touch $@

tables: $(STAMP)
	$(PY) -m hfgan_core tables --profile $(PROFILE) --device $(DEVICE) --datasets $(DATASETS) --jobs $(JOBS) \
		--workers $(WORKERS) --data-dir $(DATA_DIR) $(if $(RESUME),--resume)

quality: $(STAMP)
	$(PY) -m hfgan_core quality --datasets $(DATASETS) --seeds 0 1 2 --epsilon inf 10 1 --device $(DEVICE) --out results \
		--data-dir $(DATA_DIR)

# each dataset's recipe run at epsilon = 10, seed 0, noise from OS entropy (a real release, unlike make quality's
# simulations, whose noise anyone can redraw from the seed); run folders in results/runs/release-<dataset>
release: $(STAMP)
	for d in $(DATASETS); do \
	  $(PY) -m hfgan_core train --dataset $$d --epsilon 10 --seed 0 --device $(DEVICE) --data-dir $(DATA_DIR) \
	    --out results/runs/release-$$d --no-progress $(if $(RESUME),--resume) && mkdir -p results/$$d && \
	  cp results/runs/release-$$d/synthetic.npz results/$$d/synthetic_eps10_seed0.npz && \
	  cp results/runs/release-$$d/synthetic.json results/$$d/synthetic_eps10_seed0.json || exit 1; \
	done

test: $(STAMP)
	HFGAN_DATA_DIR=$(abspath $(DATA_DIR)) $(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m hfgan_core train --dataset pneumoniamnist --clients 5 --partition dirichlet --alpha 0.5 \
		--epsilon 10 --delta 1e-5 --seed 0 --device cpu --out results/runs/demo --data-dir $(DATA_DIR) --download

bench: $(STAMP)
	$(PY) benchmarks/round_speed.py
	$(PY) benchmarks/dp_step.py

clean:
	rm -rf $(VENV) .pytest_cache
