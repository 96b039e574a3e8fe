"""What several predict.py tasks share: the images folder, the loaded predictor, the labelled data for tuning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from steel_defect import NUM_CLASSES
from steel_defect.inference.engine import Inferencer
from steel_defect.inference.engine import load_predictor as load_engine
from steel_defect.tasks.config import PredictConfig


def images_dir(c: PredictConfig, default: str) -> Path:
    if c.images is not None:
        return c.images
    if c.root is None:
        raise ValueError(
            f"data.root (or data.images) is required for task={c.task}: the folder holding {default}/"
        )
    return c.root / default


def load_predictor(c: PredictConfig, engine: str = "torch") -> Inferencer:
    """The run's predictor, from the one factory (:func:`steel_defect.inference.engine.load_predictor`):
    thresholds checked against the weights, except when tuning them. ``engine``: ``torch`` (the default:
    the tasks that tune, or pseudo-label, use its nets), or ``auto`` (task=predict / evaluate: any engine)."""
    return load_engine(
        c.ckpt,
        engine=engine,
        thresholds=c.thresholds,
        device=c.device,
        runtime=c.runtime,
        tta=c.tta,
        amp=c.amp,
        check_thresholds=c.check_thresholds and c.task not in ("tune", "tune_oof"),
    )


def tuning_sources(c: PredictConfig) -> tuple[Path, Path]:
    """The labelled images folder and label csv of task=tune / tune_oof (defaults under data.root)."""
    images = images_dir(c, "train_images")
    labels = c.labels
    if labels is None:
        if c.root is None:
            raise ValueError(f"task={c.task} needs data.root (for train.csv) or data.labels=CSV")
        labels = c.root / "train.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"data.labels: label csv not found: {labels}")
    return images, labels


def labelled_loader(
    ids: Sequence[str],
    images: Path,
    labels: Path,
    split_path: Path,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    num_classes: int = NUM_CLASSES,
) -> Any:
    """A loader over the labelled images ``ids`` (from ``split_path``) at full size, no augmentation; images
    of several sizes are batched one size per batch."""
    import pandas as pd
    from torch.utils.data import DataLoader, SequentialSampler

    from steel_defect.data.annotations import read_train_csv, rle_columns
    from steel_defect.data.convert import image_size
    from steel_defect.data.dataset import SizeBatchSampler, SteelDataset
    from steel_defect.data.transforms import build_transforms

    missing = [i for i in ids if not (images / i).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{split_path}: {len(missing)} validation images are not in {images}, e.g. {missing[:3]}"
        )
    frame = pd.DataFrame({"ImageId": list(ids)}).merge(
        read_train_csv(labels, validate_rle=False, num_classes=num_classes), on="ImageId", how="left"
    )
    frame[rle_columns(num_classes)] = frame[rle_columns(num_classes)].fillna("")
    dataset = SteelDataset(frame, images, build_transforms("val"))
    sizes = [image_size(images / i) for i in ids]
    return DataLoader(
        dataset,
        batch_sampler=SizeBatchSampler(SequentialSampler(dataset), batch_size, False, sizes=sizes),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
