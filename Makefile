# `make test` is THE test command (README, .ci/run). Every target creates .venv if it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
EXTRAS ?= dev,pretrained,onnx,optuna
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1

.PHONY: install test lint demo clean
DEMO_DIR ?= logs/demo

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# End to end on CPU: synthetic data (generated once into data/synthetic), ~6 min of training of the offline-
# pretrained Lite1 U-Net, threshold tuning on the validation split (printed), then prediction + evaluation of
# the synthetic test images against test_labels.csv (Kaggle Dice beside the all-empty baseline) + overlays.
demo: install
	rm -rf $(DEMO_DIR)
	$(PY) train.py experiment=demo_cpu hydra.run.dir=$(DEMO_DIR)/run
	$(PY) predict.py task=evaluate ckpt=$(DEMO_DIR)/run/checkpoints/best.ckpt data.root=data/synthetic \
		out=$(DEMO_DIR)/submission.csv overlays=8 overlays_dir=$(DEMO_DIR)/overlays
	@echo "demo outputs: $(DEMO_DIR) (submission.csv, evaluation.json, overlays/, run/)"

clean:
	rm -rf outputs multirun .pytest_cache
