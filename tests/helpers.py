"""Helpers shared by several test modules (not part of the package)."""

from __future__ import annotations

import lightning as L


class StopAfterEpochs(L.Callback):
    """Stop cleanly after ``epochs`` training epochs (time-sliced sessions: resume later with ckpt_path)."""

    def __init__(self, epochs: int) -> None:
        if epochs < 1:
            raise ValueError(f"callbacks.stop_after.epochs must be >= 1, got {epochs}")
        self.epochs = int(epochs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True
