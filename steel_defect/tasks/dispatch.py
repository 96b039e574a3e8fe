"""``predict.py``'s dispatcher: validate the plain config, check the outputs, run the task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from steel_defect.tasks.config import TASKS, parse_config
from steel_defect.tasks.export import run_export, run_quantize
from steel_defect.tasks.outputs import check_task_outputs
from steel_defect.tasks.predict import run_predict
from steel_defect.tasks.pseudo import run_pseudo
from steel_defect.tasks.tune import run_tune, run_tune_oof

__all__ = ["TASKS", "predict_job", "run"]


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Entry point of ``predict.py``: validate the plain config, then run its ``task``; with a ``trainer``
    config (``trainer=ddp``), predict with Lightning's Trainer.predict in several processes."""
    cfg = dict(cfg)
    trainer_cfg = cfg.pop("trainer", None)
    c = parse_config(cfg)
    check_task_outputs(c)  # before anything runs: no output onto an input, none replacing another kind
    if trainer_cfg is not None:
        if not isinstance(trainer_cfg, Mapping):
            raise ValueError(
                f"trainer must be a trainer config (trainer=ddp, trainer=ddp_cpu), got {trainer_cfg!r}"
            )
        # Lightning is imported only for trainer=...: plain prediction never loads it
        from steel_defect.tasks.distributed import run_distributed

        return run_distributed(c, trainer_cfg)
    if c.task in ("predict", "evaluate"):
        return run_predict(c)
    if c.task == "tune":
        return run_tune(c)
    if c.task == "tune_oof":
        return run_tune_oof(c)
    if c.task == "pseudo":
        return run_pseudo(c)
    if c.task == "quantize":
        return run_quantize(c)
    return run_export(c)


def predict_job(cfg: DictConfig) -> dict[str, Any]:
    """The Hydra job of ``python predict.py`` and ``steel-predict``: the composed config, resolved to plain
    python, to :func:`run`."""
    if cfg.get("trainer") is not None:  # distributed prediction: no run folder, the trainer writes nothing
        with open_dict(cfg):
            cfg.trainer.default_root_dir = "."
    return run(OmegaConf.to_container(cfg, resolve=True))
