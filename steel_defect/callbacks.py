"""Lightning callbacks: per-epoch reseeding (exact resume), stop-after-N-epochs, threshold tuning at fit end."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
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


class StopAfterEpochs(L.Callback):
    """Stop cleanly after ``epochs`` training epochs (time-sliced sessions: resume later with ckpt_path)."""

    def __init__(self, epochs: int) -> None:
        if epochs < 1:
            raise ValueError(f"callbacks.stop_after.epochs must be >= 1, got {epochs}")
        self.epochs = int(epochs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class TuneThresholds(L.Callback):
    """At the end of fit, tune the post-processing on the validation split with the best checkpoint and
    write ``thresholds.yaml`` beside it (rank 0 only, over the whole validation split)."""

    def __init__(
        self, enabled: bool = True, tta: list[str] | None = None, filename: str = "thresholds.yaml"
    ) -> None:
        self.enabled = enabled
        self.tta = list(tta or [])
        self.filename = filename
        self.report: dict | None = None
        self.path: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and not trainer.fast_dev_run and not trainer.interrupted:
            self._tune(trainer, pl_module)

    @rank_zero_only
    def _tune(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from steel_defect.inference import collect_tuning_stats, load_nets
        from steel_defect.postprocess import (
            PostprocessParams,
            format_tuning_report,
            save_thresholds,
            tune_thresholds,
        )

        ckpt = trainer.checkpoint_callback
        best = Path(ckpt.best_model_path) if ckpt is not None and ckpt.best_model_path else None
        if best is None or not best.is_file():
            log.warning("threshold tuning skipped: no best checkpoint was saved")
            return
        (net,), (meta,) = load_nets([best], device=pl_module.device)
        loader = trainer.datamodule.val_dataloader()
        stats = collect_tuning_stats(net, loader, device=pl_module.device, tta=self.tta)
        base = PostprocessParams.from_dict(meta["postprocess"]) if meta.get("postprocess") else None
        params, report = tune_thresholds(stats, base=base) if base is not None else tune_thresholds(stats)
        self.path = best.parent / self.filename
        save_thresholds(params, self.path, report=report, meta={"checkpoint": best.name, "tta": self.tta})
        self.report = report
        log.info("tuned thresholds written to %s\n%s", self.path, format_tuning_report(report))
