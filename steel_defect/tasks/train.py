"""What ``train.py`` runs: one fit (and test) from a composed config, or a fold ensemble.

* :func:`train`: instantiate, fit, test; writes ``RUN/model.yaml`` (the run's model: its best checkpoint and
  the thresholds tuned for it, :mod:`steel_defect.run_record`), so ``predict.py ckpt=RUN`` finds both.
* :func:`train_folds` (``folds: K``, e.g. ``experiment=fewshot_cpu``): the K folds of one stratified k-fold
  split, each trained in ``RUN/fold_<i>/`` on the other folds, then one threshold search on the pooled
  out-of-fold predictions (every labelled image informs the thresholds) and ``RUN/model.yaml`` naming the
  K checkpoints as one ensemble with ``RUN/thresholds.yaml``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, open_dict

from steel_defect.config import keys
from steel_defect.run_record import read_run_record, write_run_record
from steel_defect.tasks.config import parse_config
from steel_defect.tasks.tune import run_tune_oof
from steel_defect.training.instantiate import (
    instantiate_group,
    instantiate_plain,
    metric_value,
    validate_config,
)

__all__ = ["run", "train", "train_folds"]

log = logging.getLogger(__name__)


def _record_single(trainer: L.Trainer, output_dir: Path) -> Path | None:
    """``output_dir/model.yaml`` for a single-model run: its best (else last) checkpoint and, when tuned,
    the ``thresholds.yaml`` beside it."""
    from steel_defect.postprocess.thresholds import THRESHOLDS_FILE

    callback = trainer.checkpoint_callback
    best = Path(callback.best_model_path) if callback is not None and callback.best_model_path else None
    if best is None or not best.is_file():
        last = output_dir / "checkpoints" / "last.ckpt"
        best = last if last.is_file() else None
    if best is None:
        return None
    tuned = best.parent / THRESHOLDS_FILE
    return write_run_record(output_dir, [best], tuned if tuned.is_file() else None, kind="single")


def _resolve_precision(cfg: DictConfig) -> None:
    """``trainer.precision=auto-bf16``: bf16 autocast where this CPU has it natively, else fp32 (logged)."""
    from steel_defect.cpu_features import AUTO_BF16, has_native_bf16, resolve_precision

    trainer_cfg = cfg.get("trainer")
    if trainer_cfg is None or trainer_cfg.get("precision") != AUTO_BF16:
        return
    chosen = resolve_precision(AUTO_BF16, trainer_cfg.get("accelerator"))
    with open_dict(cfg):
        cfg.trainer.precision = chosen
    why = "native bf16 (AMX / AVX512-BF16)" if has_native_bf16() else "no native bf16 on this CPU"
    log.info("trainer.precision=%s: %s (accelerator %s)", chosen, why, trainer_cfg.get("accelerator"))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and test) from a composed config; returns every logged metric."""
    validate_config(cfg)
    _resolve_precision(cfg)
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
        if trainer.is_global_zero and not trainer.fast_dev_run:
            _record_single(trainer, Path(cfg.paths.output_dir))
    metrics = dict(trainer.callback_metrics)
    if cfg.get("test") and not trainer.fast_dev_run and datamodule.has_test_split:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(trainer.callback_metrics)
    return metrics


def _fold_config(cfg: DictConfig, fold: int, n_splits: int, base: Path) -> DictConfig:
    """The config of fold ``fold``: the k-fold split's fold as validation, outputs in ``base/fold_<i>``."""
    fold_cfg = copy.deepcopy(cfg)
    with open_dict(fold_cfg):
        fold_cfg.folds = None
        fold_cfg.test = False  # a k-fold split has no test part
        fold_cfg.paths.output_dir = str(base / f"fold_{fold}")
        fold_cfg.data.split = {"kind": "kfold", "n_splits": n_splits, "fold": fold, "seed": cfg.seed}
    return fold_cfg


def _labels_for_tuning(cfg: DictConfig, base: Path) -> tuple[Path, Path]:
    """The labelled images folder and a Kaggle csv of their labels, for the out-of-fold threshold search
    (the folder layout's masks are written as a csv into the run folder, never into the data)."""
    root = Path(str(cfg.data.root))
    if cfg.data.get("layout", "kaggle") == "folder":
        from steel_defect.data.convert import folder_to_kaggle

        labels = base / "labels.csv"
        folder_to_kaggle(root, labels, num_classes=len(cfg.data.classes), missing=cfg.data.missing_mask)
        return root / str(cfg.data.images), labels
    return root / str(cfg.data.train_images), root / str(cfg.data.train_csv)


def train_folds(cfg: DictConfig) -> dict[str, Any]:
    """``folds: K``: train the K folds, tune one thresholds.yaml out of fold, record the fold ensemble."""

    n_splits = int(cfg.folds)
    if n_splits < 2:
        raise ValueError(f"folds must be an integer >= 2 (or null for one model), got {cfg.folds!r}")
    validate_config(cfg)
    base = Path(str(cfg.paths.output_dir))
    ckpts, metrics = [], {}
    for fold in range(n_splits):
        log.info("fold %d of %d -> %s", fold + 1, n_splits, base / f"fold_{fold}")
        fold_metrics = train(_fold_config(cfg, fold, n_splits, base))
        record = base / f"fold_{fold}" / "model.yaml"
        if not record.is_file():
            raise RuntimeError(f"fold {fold} recorded no checkpoint ({record} is missing)")
        ckpts.extend(read_run_record(record)[0])
        metrics.update({f"fold_{fold}/{k}": v for k, v in fold_metrics.items()})
    images, labels = _labels_for_tuning(cfg, base)
    oof = keys("oof", cfg.get("oof"), ("tta", "min_gain_pairs"))  # a misspelt key fails, not ignored
    c = parse_config(
        {
            "task": "tune_oof",
            "ckpt": [str(p) for p in ckpts],
            "thresholds": "defaults",
            "data": {"images": str(images), "labels": str(labels)},
            "out": str(base / "thresholds.yaml"),
            "device": "cpu" if cfg.trainer.get("accelerator") == "cpu" else "auto",
            "num_workers": 0,
            "tta": list(oof.get("tta") or []),  # the fold ensemble's thresholds are bound to this TTA
            "min_gain_pairs": oof.get("min_gain_pairs", 0),
        }
    )
    tuned = run_tune_oof(c)
    write_run_record(base, ckpts, base / "thresholds.yaml", kind="fold_ensemble", folds=n_splits)
    for key in ("dice_default", "dice_tuned"):  # pooled out-of-fold Dice, in-sample for the tuned one
        metrics[f"oof/{key}"] = tuned["report"]["mean"][key]
    metrics["oof/dice_empty"] = _all_empty_dice(labels, tuned["report"]["num_images"], len(cfg.data.classes))
    log.info(
        "out-of-fold Kaggle Dice on %d labelled images (each predicted by the fold model that never saw it): "
        "notebook thresholds %.4f, tuned %.4f (tuned on these same predictions: optimistic), "
        "all-empty submission %.4f; the model: %s",
        tuned["report"]["num_images"],
        metrics["oof/dice_default"],
        metrics["oof/dice_tuned"],
        metrics["oof/dice_empty"],
        base / "model.yaml",
    )
    return metrics


def _all_empty_dice(labels: Path, num_images: int, num_classes: int) -> float:
    """The Kaggle Dice of an empty submission on ``num_images`` images labelled by ``labels``: the share of
    (image, class) pairs without a defect."""
    from steel_defect.data.annotations import read_train_csv, rle_columns

    frame = read_train_csv(labels, validate_rle=False, num_classes=num_classes)
    nonempty = int((frame[rle_columns(num_classes)].fillna("").astype(str) != "").to_numpy().sum())
    return 1.0 - nonempty / (num_images * num_classes)


def run(cfg: DictConfig) -> dict[str, Any]:
    """``train.py``'s job: a fold ensemble when ``folds`` is set, else one fit."""
    return train_folds(cfg) if cfg.get("folds") else train(cfg)


def train_job(cfg: DictConfig) -> float | None:
    """The Hydra job of ``python train.py`` and ``steel-train``: :func:`run`, then the metric a sweeper
    optimises (``optimized_metric``)."""
    return metric_value(run(cfg), cfg.get("optimized_metric"))
