"""Train the one-network steel defect model: `python train.py [model=unet_effb1] [data=severstal data.root=DIR]`.

Thin on purpose: compose (Hydra), instantiate, fit, test, return the optimised metric for sweepers.
"""

from __future__ import annotations

import logging
import os
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from steel_defect.instantiate import (  # noqa: E402
    instantiate_group,
    instantiate_plain,
    metric_value,
    validate_config,
)

log = logging.getLogger("train")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and test) from a composed config; returns every logged metric."""
    validate_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    model = instantiate_plain(cfg.model)
    datamodule = instantiate_plain(cfg.data)
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=instantiate_group(cfg.get("callbacks"), "callbacks"),
        logger=instantiate_group(cfg.get("logger"), "logger"),
    )
    if cfg.get("train"):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = dict(trainer.callback_metrics)
    if cfg.get("test") and not trainer.fast_dev_run and datamodule.has_test_split:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(trainer.callback_metrics)
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return metric_value(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
