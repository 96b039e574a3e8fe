"""Lightning callbacks: per-epoch reseeding (exact resume), stop-after-N-epochs, an EMA of the weights,
threshold tuning at fit end (and the tuned thresholds handed to the test stage, with a val-vs-test table)."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


class ResumableSeed(L.Callback):
    """Reseed every RNG from ``(seed, epoch)`` at each training epoch start and from ``(seed, step)`` at each
    training step.

    Lightning does not store RNG states in checkpoints, and a resumed loop draws from the global RNG at
    other moments than a straight one (loader iterators are created at different points), so without this a
    resumed run would see other dropout masks than a run that went straight through. Data order and
    augmentation are seeded by :class:`steel_defect.data.datamodule.EpochSampler`.
    """

    def __init__(self, seed: int = 42) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        L.seed_everything(self.seed + trainer.current_epoch, workers=True, verbose=False)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        step_seed = int(np.random.default_rng([self.seed, trainer.global_step]).integers(2**31))
        torch.manual_seed(step_seed)
        np.random.seed(step_seed)
        random.seed(step_seed)


class EMA(EMAWeightAveraging):
    """An exponential moving average of the weights (12th place: +0.003-0.005 from weight averaging).

    Lightning's ``EMAWeightAveraging``, updated from the first step: validation runs on the
    averaged weights, so the monitored ``val/dice`` and the checkpoint choice are the EMA's; a checkpoint's
    ``state_dict`` holds the averaged weights (the raw ones go to ``current_model_state`` for resuming), so
    predict.py, threshold tuning and export use the EMA; and the module ends fit with the averaged weights.

    One difference: Lightning's callback, when a checkpoint is loaded outside fit (``trainer.test(ckpt_path=
    "best")`` after fit), puts the raw weights back into the module, so the test stage would score the
    raw network. Here loading outside fit keeps the averaged weights of the checkpoint's ``state_dict`` (and
    makes them the average that ``validate`` swaps in).
    """

    def __init__(self, decay: float = 0.999, **kwargs: Any) -> None:
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0.0 < float(decay) < 1.0:
            raise ValueError(f"callbacks.ema.decay must be in (0, 1), got {decay!r}")
        # Updates start at the first step: a delayed start would validate and checkpoint the step-0 copy.
        super().__init__(decay=float(decay), **kwargs)
        self.decay = float(decay)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
        elif self._average_model is not None:
            # validate() after fit swaps the average in: make it the checkpoint's, not fit's last one.
            self._average_model.module.load_state_dict(checkpoint["state_dict"], strict=False)


class TuneThresholds(L.Callback):
    """At the end of fit, tune the post-processing on the validation split with the best checkpoint and
    write ``thresholds.yaml`` beside it (rank 0 only, over the whole validation split: the datamodule's
    ``tune_dataloader`` when it has one, which ignores ``data.limit_val``). ``pix_modes``: the
    pixel modes searched per class (``plain``; add ``soft`` / ``scaled`` for the soft gates).

    At test start the thresholds.yaml written here is read back (rank 0) and broadcast to every process
    as plain values, and handed to the module as ``tuned_postprocess`` (so ``test/dice_tuned`` is the
    held-out Dice of exactly what predict.py would use); None when tuning did not run. At test end, rank 0
    logs :func:`format_holdout_table`: val figures are in-sample (tuned there), test figures held-out.
    """

    def __init__(
        self,
        enabled: bool = True,
        tta: list[str] | None = None,
        filename: str = "thresholds.yaml",
        pix_modes: list[str] | None = None,
    ) -> None:
        from steel_defect.postprocess.tuning import check_pix_modes

        self.enabled = enabled
        self.tta = list(tta or [])
        self.pix_modes = check_pix_modes(
            ["plain"] if pix_modes is None else list(pix_modes), "callbacks.tune_thresholds.pix_modes"
        )
        self.filename = filename
        self.report: dict | None = None
        self.path: Path | None = None
        self.table: str | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and not trainer.fast_dev_run and not trainer.interrupted:
            self._tune(trainer, pl_module)

    @rank_zero_only
    def _tune(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from steel_defect.fingerprint import net_fingerprint
        from steel_defect.inference.calibrate import TuneOptions, base_params, tune_and_save
        from steel_defect.inference.predictor import load_nets
        from steel_defect.postprocess.tuning import format_tuning_report

        ckpt = trainer.checkpoint_callback
        best = Path(ckpt.best_model_path) if ckpt is not None and ckpt.best_model_path else None
        if best is None or not best.is_file():
            log.warning("threshold tuning skipped: no best checkpoint was saved")
            return
        (net,), (meta,) = load_nets([best], device=pl_module.device)
        dm = trainer.datamodule
        loader = dm.tune_dataloader() if hasattr(dm, "tune_dataloader") else dm.val_dataloader()
        k = int(pl_module.net.config["classes"])
        self.path = best.parent / self.filename
        params, report = tune_and_save(
            self.path,
            "end_of_training",
            [best],
            [net_fingerprint(net)],
            nets=net,
            loader=loader,
            device=pl_module.device,
            base=base_params(meta, k),
            num_classes=k,
            options=TuneOptions(pix_modes=self.pix_modes, tta=self.tta),
        )
        self.report = report
        log.info("tuned thresholds written to %s\n%s", self.path, format_tuning_report(report))

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from steel_defect.postprocess.params import PostprocessParams, load_thresholds

        payload = None
        if trainer.is_global_zero and self.path is not None:
            k = pl_module.net.config["classes"]
            payload = load_thresholds(self.path, num_classes=k).to_dict()  # exactly what predict.py will read
        payload = trainer.strategy.broadcast(payload, src=0)  # every process (DDP) gets the same
        pl_module.tuned_postprocess = None if payload is None else PostprocessParams.from_dict(payload, None)
        if payload is None:
            log.info("test/dice_tuned not computed: no thresholds were tuned in this run")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/dice")}
            self.table = format_holdout_table(self.report, test, self.path)
            log.info("Kaggle Dice, in-sample (val) vs held-out (test):\n%s", self.table)


def format_holdout_table(
    val_report: Mapping[str, Any] | None, test: Mapping[str, float], thresholds: Path | None = None
) -> str:
    """Kaggle Dice (mean and per class) raw / defaults / tuned on val (from the tuning report) and on test
    (``test/dice_{raw,default,tuned}[_c]``), saying which figures are in-sample and which are held-out.

    A figure that was not computed (tuning disabled, no test split) is ``-``.
    """
    from steel_defect import NUM_CLASSES

    in_test = [c for c in range(1, 256) if f"test/dice_raw_{c}" in test]
    classes = len(val_report["classes"]) if val_report else (max(in_test) if in_test else NUM_CLASSES)
    kinds = (("raw", "dice_raw"), ("default", "dice_default"), ("tuned", "dice_tuned"))

    def fmt(v: Any) -> str:
        return f"{'-':>6}" if v is None else f"{float(v):6.4f}"

    head = f"{'split':<5} {'post-processing':<15} {'mean':>6}  " + " ".join(
        f"{c:>6}" for c in range(1, classes + 1)
    )
    lines = [head, "-" * len(head)]
    for kind, key in kinds:
        mean = val_report["mean"].get(key) if val_report else None
        per = [row.get(key) for row in val_report["classes"]] if val_report else [None] * classes
        mark = "  <- in-sample: tuned on val" if kind == "tuned" and mean is not None else ""
        lines.append(f"{'val':<5} {kind:<15} {fmt(mean)}  " + " ".join(map(fmt, per)) + mark)
    for kind, key in kinds:
        mean = test.get(f"test/{key}")
        per = [test.get(f"test/{key}_{c}") for c in range(1, classes + 1)]
        mark = "  <- held-out" if kind == "tuned" and mean is not None else ""
        lines.append(f"{'test':<5} {kind:<15} {fmt(mean)}  " + " ".join(map(fmt, per)) + mark)
    lines.append("-" * len(head))
    lines.append(
        "raw: threshold 0.5, no gates; default: the model's post-processing (notebook defaults); tuned: "
        + (str(thresholds) if thresholds is not None else "thresholds.yaml (not tuned in this run)")
    )
    lines.append(
        "val is in-sample (the thresholds were tuned and the checkpoint chosen on it); test is held-out "
        "(never used for training, checkpoint choice or tuning): quote the test figures"
    )
    return "\n".join(lines)
