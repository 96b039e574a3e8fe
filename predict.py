"""Predict, evaluate, tune thresholds or export: `python predict.py ckpt=PATH data.root=DIR [task=...]`.

Thin on purpose: compose (Hydra, conf/predict.yaml) and hand the plain config to
:func:`steel_defect.inference.run`, which validates it and dispatches on ``task``.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from steel_defect.inference import run

    if cfg.get("trainer") is not None:  # distributed prediction: no run folder, the trainer writes nothing
        with open_dict(cfg):
            cfg.trainer.default_root_dir = "."
    run(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
