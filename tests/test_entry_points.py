"""The console scripts of pyproject.toml ([project.scripts]): each points at a function that exists and does
what the `python train.py` / `python predict.py` / `python -m ...` form does."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import tomllib

from steel_defect.tasks.cli import conf_dir
from tests.conftest import REPO


def test_every_script_names_an_existing_function():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"steel-train", "steel-predict", "steel-serve", "steel-kaggle"}
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), target


@pytest.mark.parametrize("script, config", [("train_main", "train"), ("predict_main", "predict")])
def test_hydra_scripts_compose_the_checkouts_conf_from_anywhere(tmp_path, script, config):
    code = f"import sys; sys.argv = ['steel-x', '--cfg', 'hydra']; from steel_defect.tasks.cli import {script}; {script}()"
    env = {
        "PYTHONPATH": str(REPO),
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "HF_HUB_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"name: {config}" in proc.stdout  # the job is named as with `python {config}.py` (its log file)
    assert f"config_name: {config}" in proc.stdout


def test_hydra_scripts_outside_a_checkout_say_why(tmp_path):
    with pytest.raises(SystemExit, match=r"no Hydra config .*train.yaml.*source checkout.*pip install -e"):
        conf_dir("train", tmp_path / "conf")
