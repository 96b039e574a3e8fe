"""Train the one-network steel defect model: `python train.py [model=unet_effb1] [data=severstal data.root=DIR]`.

Thin on purpose: compose (Hydra), then :func:`steel_defect.tasks.train.run` (one fit and test, or a fold
ensemble with ``folds=K``); returns the optimised metric for sweepers.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from steel_defect.tasks.train import train, train_job  # noqa: E402

__all__ = ["main", "train"]


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train_job(cfg)


if __name__ == "__main__":
    main()
