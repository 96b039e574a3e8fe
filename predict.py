"""predict.py's tasks: `python predict.py ckpt=PATH data.root=DIR [task=NAME] [key=value ...]`, NAME one of
predict, evaluate, tune, tune_oof, pseudo, export, quantize (the config group conf/task/<NAME>.yaml).

Thin on purpose: compose (Hydra, conf/predict.yaml + conf/task/<NAME>.yaml) and hand the plain config to
:func:`steel_defect.tasks.dispatch.predict_job` (then ``run``), which validates it and dispatches on ``task``.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from steel_defect.tasks.dispatch import predict_job

    predict_job(cfg)


if __name__ == "__main__":
    main()
