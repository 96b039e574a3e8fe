"""A folder of images -> a submission csv (and, with labels, an evaluation): :func:`predict_images`,
:func:`read_labels`. THE folder -> submission loop, for any engine
(:class:`~steel_defect.inference.engine.Inferencer`): used by predict.py's tasks, the Kaggle kernel (torch and
ONNX-only: nothing here imports torch, and rich only when it is installed) and the benchmarks."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steel_defect import NUM_CLASSES
from steel_defect.inference.engine import ImagePrediction, Inferencer
from steel_defect.submission import run_summary, write_submission

log = logging.getLogger(__name__)


def progress_bar(console: Any):
    """A rich progress bar on ``console``; a silent stand-in where rich is not installed (the ONNX-only
    kernel's fresh environment)."""
    try:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
    except ImportError:
        return _NoProgress()

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


def stderr_console():
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(stderr=True)


def _image_uint8(image: Any) -> np.ndarray:
    """(3, H, W) float [0, 1] (a tensor or an array) -> (H, W, 3) uint8 (exact for images that were uint8 / 255)."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    array = np.clip(np.round(array.astype(np.float32) * np.float32(255.0)), 0, 255)
    return array.astype(np.uint8).transpose(1, 2, 0)


def read_labels(
    path: str | os.PathLike, image_ids: Sequence[str], num_classes: int = NUM_CLASSES
) -> dict[str, list[str]]:
    """Ground truth for ``image_ids`` from a csv in either Kaggle format: image_id -> C RLE strings.

    Images without rows are defect-free; a csv row naming an image that is not among ``image_ids`` raises.
    RLEs are decoded later, at each image's own size.
    """
    from steel_defect.data.annotations import read_train_csv, rle_columns

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.labels: label csv not found: {path}")
    frame = read_train_csv(path, validate_rle=False, num_classes=num_classes)
    columns = rle_columns(num_classes)
    rles = dict(zip(frame["ImageId"], frame[columns].fillna("").astype(str).to_numpy().tolist(), strict=True))
    missing = sorted(set(rles) - set(image_ids))
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} labelled images are not in the image folder, e.g. {missing[:3]} "
            "(point data.images at the folder these labels describe)"
        )
    return {i: rles.get(i, [""] * num_classes) for i in image_ids}


@dataclass
class _Evaluation:
    """Per-image accumulators of task=evaluate: pair Dice and "defect present" flags, (N, C) each."""

    dice: list[np.ndarray] = field(default_factory=list)
    pred: list[np.ndarray] = field(default_factory=list)
    true: list[np.ndarray] = field(default_factory=list)

    def add(
        self,
        image_id: str,
        pred_masks: np.ndarray | None,
        true_rles: Sequence[str],
        shape: tuple[int, int] | None,
    ) -> np.ndarray | None:
        """Score one image; returns its true masks (None for an unreadable image, scored as empty)."""
        from steel_defect.metrics import dice_per_pair
        from steel_defect.rle import rles_to_masks

        true_flags = np.asarray([bool(r.strip()) for r in true_rles])
        if pred_masks is None:
            self.dice.append((~true_flags).astype(np.float64))
            self.pred.append(np.zeros_like(true_flags))
            self.true.append(true_flags)
            return None
        try:
            true_masks = rles_to_masks(true_rles, shape).astype(bool)
        except ValueError as err:
            raise ValueError(
                f"labels of image {image_id!r} do not fit its {shape[0]}x{shape[1]} size: {err}"
            ) from err
        self.dice.append(dice_per_pair(pred_masks[None], true_masks[None])[0])
        self.pred.append(pred_masks.reshape(len(pred_masks), -1).any(axis=1))
        self.true.append(true_flags)
        return true_masks


def predict_images(
    predictor: Inferencer,
    source: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    fmt: str = "current",
    batch_size: int = 4,
    num_workers: int = 0,
    labels: str | os.PathLike | None = None,
    overlays: int = 0,
    overlays_dir: str | os.PathLike = "overlays",
    console: Any = None,
) -> dict[str, Any]:
    """Predict every image of ``source`` (a folder, sorted by name, or a list of files) into a submission,
    with any engine (its :meth:`~steel_defect.inference.engine.Inferencer.predict_source`).

    Streams: each batch is post-processed and RLE-encoded at once, so memory does not grow with the number
    of images. Unreadable images get empty masks, a warning and a count. Every image is predicted at its
    own size (padded to the stride). With ``labels`` (a csv), also scores every image (``evaluation`` in the
    returned summary). The first ``overlays`` readable images are drawn to ``overlays_dir`` as PNG. The
    summary names the thresholds' source (``thresholds``).
    """
    image_ids, predictions = predictor.predict_source(source, batch_size, num_workers)
    truth = None if labels is None else read_labels(labels, image_ids, predictor.num_classes)
    run = _FolderRun(predictor, truth, overlays, Path(overlays_dir))
    start = time.perf_counter()
    with progress_bar(console if console is not None else stderr_console()) as progress:
        task = progress.add_task("predict" if truth is None else "evaluate", total=len(image_ids), rate="")

        def rows() -> Iterator[tuple[str, list[str]]]:
            for done, pred in enumerate(predictions, 1):
                yield pred.image_id, run.add(pred)
                elapsed = time.perf_counter() - start
                progress.update(task, advance=1, rate=f"{done / elapsed:.2f} img/s" if elapsed > 0 else "")

        count = write_submission(rows(), out, fmt, num_classes=predictor.num_classes)
    seconds = time.perf_counter() - start
    summary = run_summary(
        out, fmt, count, seconds, predictor.classes, run.nonempty, run.unreadable, run.written
    )
    if run.evaluation is not None:
        from steel_defect.report import evaluation_report

        summary["evaluation"] = evaluation_report(
            np.stack(run.evaluation.dice),
            np.stack(run.evaluation.pred),
            np.stack(run.evaluation.true),
            len(run.unreadable),
            class_names=predictor.classes,
        )
    summary["thresholds"] = predictor.source
    return summary


class _FolderRun:
    """What :func:`predict_images` counts per image: unreadable images, non-empty masks per class, the
    evaluation (with labels) and the overlays written."""

    def __init__(
        self, predictor: Inferencer, truth: dict[str, list[str]] | None, overlays: int, overlays_dir: Path
    ) -> None:
        self.classes = predictor.classes
        self.truth, self.overlays, self.overlays_dir = truth, overlays, overlays_dir
        self.evaluation = _Evaluation() if truth is not None else None
        self.unreadable: list[str] = []
        self.nonempty = np.zeros(predictor.num_classes, dtype=np.int64)
        self.written: list[Path] = []

    def add(self, pred: ImagePrediction) -> list[str]:
        """Count one prediction; returns its RLEs."""
        if not pred.ok:
            self.unreadable.append(pred.image_id)
            log.warning("unreadable image %s: written with empty masks", pred.image_id)
        else:
            self.nonempty += pred.masks.reshape(len(pred.masks), -1).any(axis=1)
        true_masks = None
        if self.evaluation is not None:
            shape = None if pred.masks is None else pred.masks.shape[-2:]
            true_masks = self.evaluation.add(pred.image_id, pred.masks, self.truth[pred.image_id], shape)
        if pred.ok and len(self.written) < self.overlays and pred.image is not None:
            from steel_defect.report import render_overlay, save_overlay

            picture = render_overlay(
                _image_uint8(pred.image),
                pred.masks,
                pred.class_probs,
                pred.image_id,
                true_masks=true_masks,
                class_names=self.classes,
            )
            self.written.append(save_overlay(self.overlays_dir / f"{Path(pred.image_id).stem}.png", picture))
        return pred.rles
