# `make test` is THE test command (README, .ci/run). Every target creates .venv if it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
EXTRAS ?= dev,pretrained,onnx,optuna,serve
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1

.PHONY: install browser test test-fast lint demo clean
DEMO_DIR ?= logs/demo
# real labelled Severstal images, when the shared folder is beside the checkout (the yardstick)
REAL_DIR ?= ../shared/data/severstal-real

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed

# The viewer's browser test needs Chromium: installed with apt where this user can (root), else it skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; } \
		&& echo "installed chromium for the browser test"; } || echo "chromium not installed: the browser test will be skipped"

# everything, slow tests included (CI: .ci/run); prints the 15 slowest
test: install browser
	$(PY) -m pytest -q --durations=15

# the quick lane while editing: no subprocesses, servers, venvs, browsers or trainings (tests marked slow)
test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The demo, on real steel when there is some: DATA=DIR (Kaggle layout: train.csv + train_images/), else the
# 27 real labelled images in ../shared when present. It trains the few-shot recipe (experiment=fewshot_cpu:
# a 3-fold ensemble, about 10-15 minutes on 2 cores), prints its out-of-fold (held-out) Dice beside the
# all-empty submission, then predicts DIR/test_images (submission + overlays). Without real data: the
# synthetic demo (experiment=demo_cpu, about 10 minutes). Nothing is ever written into the data folder; only
# a folder this target made (it holds .steel-defect-demo) is replaced.
DATA ?=
demo: install
	@if [ -e "$(DEMO_DIR)" ] && [ ! -f "$(DEMO_DIR)/.steel-defect-demo" ]; then \
		echo "refusing to replace $(DEMO_DIR): it exists and is not a folder make demo made (set DEMO_DIR=...)"; exit 2; fi
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR) && touch $(DEMO_DIR)/.steel-defect-demo
	@data="$(DATA)"; why="DATA=$(DATA)"; \
	if [ -z "$$data" ] && [ -f "$(REAL_DIR)/train.csv" ]; then data="$(REAL_DIR)"; why="the real labelled images in $(REAL_DIR)"; fi; \
	if [ -n "$$data" ]; then \
		echo "=== few-shot demo on real steel: $$why (experiment=fewshot_cpu; scores are out of fold: each image predicted by the fold model that never saw it) ==="; \
		$(PY) train.py experiment=fewshot_cpu data=severstal data.root=$$data hydra.run.dir=$(DEMO_DIR)/run || exit 1; \
		if [ -d "$$data/test_images" ]; then \
			$(PY) predict.py ckpt=$(DEMO_DIR)/run data.root=$$data out=$(DEMO_DIR)/submission.csv overlays=8 \
				overlays_dir=$(DEMO_DIR)/overlays || exit 1; fi; \
	else \
		echo "=== synthetic demo: no DATA=DIR and no real labelled images at $(REAL_DIR) (experiment=demo_cpu) ==="; \
		$(PY) train.py experiment=demo_cpu hydra.run.dir=$(DEMO_DIR)/run || exit 1; \
		$(PY) predict.py task=evaluate ckpt=$(DEMO_DIR)/run data.root=data/synthetic \
			out=$(DEMO_DIR)/submission.csv overlays=8 overlays_dir=$(DEMO_DIR)/overlays || exit 1; \
	fi
	@echo "demo outputs: $(DEMO_DIR) (run/ with model.yaml, submission.csv, overlays/)"

clean:
	rm -rf outputs multirun .pytest_cache
