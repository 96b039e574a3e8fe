"""Multi-GPU / multi-node batch prediction through Lightning's ``Trainer.predict`` and a prediction writer.

    python predict.py ckpt=... data.root=DIR trainer=ddp trainer.devices=4        # GPUs
    python predict.py ckpt=... data.root=DIR trainer=ddp_cpu trainer.devices=2    # CPU processes (gloo)

Every process predicts its share of the images (Lightning's distributed sampler) with the same code as the
single-process path (:func:`steel_defect.inference.predictor.iter_predictions`) and writes its rows to a part file;
after a barrier, rank 0 drops the sampler's padding repeats, orders the rows by ImageId and writes the
submission with :func:`steel_defect.submission.write_submission`: the same bytes as one process writes.
Only this path imports Lightning; plain prediction does not.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from steel_defect.guard import UnsafeWriteError
from steel_defect.inference.predictor import iter_predictions, load_nets, prediction_loader
from steel_defect.postprocess.thresholds import checked_thresholds
from steel_defect.submission import write_submission
from steel_defect.tasks.common import images_dir
from steel_defect.tasks.config import PredictConfig

__all__ = ["run_distributed"]

#: Trainer keys that this path sets itself (prediction writes no logs and no checkpoints).
_FORCED = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


class _PredictModule(L.LightningModule):
    """The nets + post-processing as a LightningModule whose ``predict_step`` returns finished rows."""

    def __init__(self, nets: Sequence[torch.nn.Module], params: Any, tta: Sequence[str], amp: bool) -> None:
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)
        self.params, self.tta, self.amp = params, list(tta), bool(amp)

    def predict_step(self, batch: Any, batch_idx: int) -> list[tuple[str, list[str], bool]]:
        preds = iter_predictions(
            list(self.nets),
            [batch],
            self.params,
            self.device,
            self.tta,
            self.amp,
            num_classes=self.params.num_classes,
        )
        return [(p.image_id, p.rles, p.ok) for p in preds]


class _PartWriter(BasePredictionWriter):
    """Each process writes its rows to ``parts/rank<N>.json`` at the end of the predict epoch."""

    def __init__(self, parts: Path) -> None:
        super().__init__(write_interval="epoch")
        self.parts = parts

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:  # noqa: ANN001
        rows = [row for batch in predictions for row in batch]
        self.parts.mkdir(parents=True, exist_ok=True)
        path = self.parts / f"rank{trainer.global_rank}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows), encoding="utf-8")
        tmp.replace(path)


def merge_parts(parts: Path, world_size: int) -> list[tuple[str, list[str], bool]]:
    """Rows of every rank, each image once (the sampler pads by repeating images), ordered by ImageId."""
    rows: dict[str, tuple[str, list[str], bool]] = {}
    for rank in range(world_size):
        path = parts / f"rank{rank}.json"
        if not path.is_file():
            raise FileNotFoundError(f"rank {rank} wrote no predictions ({path} is missing)")
        for image_id, rles, ok in json.loads(path.read_text(encoding="utf-8")):
            rows.setdefault(str(image_id), (str(image_id), list(rles), bool(ok)))
    return [rows[k] for k in sorted(rows)]


_PART_RE = re.compile(r"^rank\d+\.(json|tmp)$")


def remove_parts(parts: Path, world_size: int) -> None:
    """Delete the per-process files (and the folder once empty): never anything else that is there."""
    for rank in range(world_size):
        (parts / f"rank{rank}.json").unlink(missing_ok=True)
        (parts / f"rank{rank}.tmp").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        parts.rmdir()


def run_distributed(c: PredictConfig, trainer_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """task=predict with ``trainer=...``: the submission ``c.out`` from every process's share."""

    if c.task != "predict":
        raise ValueError(f"trainer=... (distributed prediction) runs task=predict only, not task={c.task}")
    kwargs = {k: v for k, v in dict(trainer_cfg).items() if k != "_target_" and k not in _FORCED}
    images = images_dir(c, "test_images")
    nets, metas = load_nets(c.ckpt, "cpu", c.runtime)
    params, source = checked_thresholds(c.thresholds, c.ckpt, nets, metas, c.tta, c.check_thresholds)
    loader = prediction_loader(images, nets, c.batch_size, c.num_workers)
    parts = Path(str(c.out) + ".parts")
    foreign = sorted(p.name for p in parts.iterdir() if not _PART_RE.match(p.name)) if parts.is_dir() else []
    if foreign or (parts.exists() and not parts.is_dir()):
        raise UnsafeWriteError(
            f"{parts} (the per-process folder of out={c.out}) exists and holds files this command did not "
            f"write ({foreign[:3] or 'it is not a folder'}): refusing to use it; move it away"
        )
    trainer = L.Trainer(**kwargs, **_FORCED, callbacks=[_PartWriter(parts)])
    module = _PredictModule(nets, params, c.tta, amp=c.amp and trainer.strategy.root_device.type == "cuda")
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    trainer.strategy.barrier()
    summary: dict[str, Any] = {"out": str(c.out), "processes": trainer.world_size, "thresholds": source}
    if trainer.is_global_zero:
        rows = merge_parts(parts, trainer.world_size)
        summary["images"] = write_submission(
            ((i, r) for i, r, _ in rows), c.out, c.format, num_classes=params.num_classes
        )
        summary["unreadable"] = [i for i, _, ok in rows if not ok]
        remove_parts(parts, trainer.world_size)
        print(
            f"wrote {c.out}: {summary['images']} images from {trainer.world_size} processes; thresholds: {source}",
            flush=True,
        )
    trainer.strategy.barrier()
    return summary
