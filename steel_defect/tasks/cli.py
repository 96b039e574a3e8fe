"""Console scripts (``[project.scripts]`` in pyproject.toml): ``steel-train`` and ``steel-predict``.

Each does exactly what its root script does: ``steel-train ARGS`` is ``python train.py ARGS`` and
``steel-predict ARGS`` is ``python predict.py ARGS`` (same Hydra job, same config, same run folders and
log names; train.py and predict.py call the same :func:`~steel_defect.tasks.train.train_job` and
:func:`~steel_defect.tasks.dispatch.predict_job`). ``steel-serve`` and ``steel-kaggle`` point straight at
the ``main`` of :mod:`steel_defect.deploy.serve.__main__` and :mod:`steel_defect.deploy.kaggle.bundle`.

Where the config comes from: the repository's ``conf/`` (beside ``steel_defect/``), found from this file, so
the scripts work from any working directory of a checkout installed with ``pip install -e .`` (what
``make install`` does). ``conf/`` is not package data: a plain (non-editable) install has none, and the
scripts then stop with a message saying so instead of a Hydra error about a missing primary config.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steel_defect.config import CONF_DIR

__all__ = ["CONF_DIR", "conf_dir", "predict_main", "train_main"]


def conf_dir(config_name: str, conf: Path | None = None) -> Path:
    """``conf/`` holding ``<config_name>.yaml``, or SystemExit naming what is missing and the fix."""
    conf = CONF_DIR if conf is None else conf
    if not (conf / f"{config_name}.yaml").is_file():
        raise SystemExit(
            f"error: no Hydra config {conf / (config_name + '.yaml')}: the steel-train / steel-predict scripts "
            "read the repository's conf/ and so run only from a source checkout installed with "
            "`pip install -e .` (conf/ is not packaged); from a checkout, `python train.py` / "
            "`python predict.py` do the same job"
        )
    return conf


def _hydra_run(job: Callable[[Any], Any], job_name: str, config_name: str) -> None:
    """Run ``job`` as a Hydra app on ``conf/<config_name>.yaml`` with the command-line overrides."""
    conf = conf_dir(config_name)
    import hydra

    def task(cfg: Any) -> Any:
        return job(cfg)  # a sweeper (hparams_search=optuna) reads train's optimised metric

    # Hydra names the job (its log file, hydra.job.name) after the last part of the task function's module:
    # "train" / "predict", as for `python train.py` / `python predict.py`.
    task.__module__ = f"steel_defect.tasks.{job_name}"
    hydra.main(version_base="1.3", config_path=str(conf), config_name=config_name)(
        task
    )()  # result: not an exit code


def train_main() -> None:
    """``steel-train [overrides]``: ``python train.py [overrides]``."""
    conf_dir("train")  # before importing torch and Lightning: outside a checkout, fail at once
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from steel_defect.tasks.train import train_job

    _hydra_run(train_job, "train", "train")


def predict_main() -> None:
    """``steel-predict [overrides]``: ``python predict.py [overrides]``."""
    conf_dir("predict")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from steel_defect.tasks.dispatch import predict_job

    _hydra_run(predict_job, "predict", "predict")
