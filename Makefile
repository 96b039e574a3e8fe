# `make test` is THE test command (README, .ci/run). Every target creates .venv if it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
EXTRAS ?= dev,pretrained,onnx,optuna,serve
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1

.PHONY: install browser test lint demo clean
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

test: install browser
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# End to end on CPU: synthetic data (generated once into data/synthetic, regenerated if the generator changed),
# 360 steps (about 10 min on 2 cores) of the offline-pretrained Lite1 U-Net, threshold tuning on the validation split and the
# held-out test split's Dice (raw / defaults / tuned, printed), then prediction + evaluation of the synthetic
# test images (Kaggle Dice beside the all-empty baseline) + overlays, and the same on real Severstal images.
demo: install
	rm -rf $(DEMO_DIR)
	$(PY) train.py experiment=demo_cpu hydra.run.dir=$(DEMO_DIR)/run
	$(PY) predict.py task=evaluate ckpt=$(DEMO_DIR)/run/checkpoints/best.ckpt data.root=data/synthetic \
		out=$(DEMO_DIR)/submission.csv overlays=8 overlays_dir=$(DEMO_DIR)/overlays
	@if [ -f $(REAL_DIR)/train.csv ]; then \
		echo "--- the same model on real Severstal steel ($(REAL_DIR), never trained or tuned on) ---"; \
		$(PY) predict.py task=evaluate ckpt=$(DEMO_DIR)/run/checkpoints/best.ckpt data.images=$(REAL_DIR)/train_images \
			data.labels=$(REAL_DIR)/train.csv out=$(DEMO_DIR)/real/submission.csv overlays=8 \
			overlays_dir=$(DEMO_DIR)/real/overlays; \
	else echo "($(REAL_DIR) not found: no real-steel evaluation)"; fi
	@echo "demo outputs: $(DEMO_DIR) (submission.csv, evaluation.json, overlays/, real/, run/)"

clean:
	rm -rf outputs multirun .pytest_cache
