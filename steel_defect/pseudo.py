"""Pseudo-labels: confident test-image predictions written as training labels, and read back for training.

The rule is 1st place's (Severstal, private 0.90663 -> 0.90883 over two rounds): an image is kept only
where the classifier is confident for every class (p > ``t_pos`` or p < ``t_neg``, 0.95 / 0.05) and the
segmentation agrees (a mask after post-processing exactly for the confidently present classes). Images
with no confident class present and no mask form the "confidently empty" list.

Files: ``pseudo.csv`` in train.csv's current format (``ImageId,ClassId,EncodedPixels``, non-empty masks
only) and ``pseudo_empty.txt`` beside it (one ImageId per line). :func:`read_pseudo_labels` reads both
back into the wide annotation frame, refusing unknown images, malformed RLE and images that are also in
the validation or test split (naming the file, line and value).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steel_defect import NUM_CLASSES
from steel_defect.data.annotations import AnnotationError, read_train_csv, rle_columns
from steel_defect.io import atomic_write

__all__ = [
    "PseudoRule",
    "empty_list_path",
    "pseudo_decision",
    "read_pseudo_labels",
    "write_pseudo_labels",
]

#: Decisions of :func:`pseudo_decision`.
LABELLED, EMPTY = "labelled", "empty"


@dataclass(frozen=True)
class PseudoRule:
    """Confidence thresholds of the class head: present above ``t_pos``, absent below ``t_neg``."""

    t_pos: float = 0.95
    t_neg: float = 0.05

    def __post_init__(self) -> None:
        for name in ("t_pos", "t_neg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 < float(v) < 1.0:
                raise ValueError(f"pseudo.{name} must be in (0, 1), got {v!r}")
        if not self.t_neg < self.t_pos:
            raise ValueError(f"pseudo.t_neg ({self.t_neg}) must be below pseudo.t_pos ({self.t_pos})")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PseudoRule:
        d = dict(d or {})
        unknown = sorted(set(d) - {"t_pos", "t_neg"})
        if unknown:
            raise ValueError(f"pseudo: unknown keys {unknown}; valid: t_pos, t_neg")
        return cls(**d)


def pseudo_decision(
    class_probs: np.ndarray, masks: np.ndarray, rule: PseudoRule = PseudoRule()
) -> str | None:
    """``"labelled"``, ``"empty"`` or None (rejected) for one image's class probabilities (C,) and final
    post-processed masks (C, H, W) bool.

    Kept when every class is confident (p > t_pos or p < t_neg) and a class has a mask exactly when it is
    confidently present; ``"empty"`` when, moreover, no class is present.
    """
    probs = np.asarray(class_probs, dtype=np.float64).reshape(-1)
    present = np.asarray(masks).reshape(len(probs), -1).any(axis=1)
    pos, neg = probs > rule.t_pos, probs < rule.t_neg
    if not (pos | neg).all() or not np.array_equal(pos, present):
        return None
    return EMPTY if not pos.any() else LABELLED


def empty_list_path(csv_path: str | os.PathLike) -> Path:
    """The confidently-empty list that goes with a pseudo-label csv: ``<stem>_empty.txt`` beside it."""
    p = Path(csv_path)
    return p.with_name(f"{p.stem}_empty.txt")


def write_pseudo_labels(
    path: str | os.PathLike, labelled: Iterable[tuple[str, list[str]]], empty: Iterable[str]
) -> tuple[Path, Path]:
    """Write ``(image_id, per-class RLEs)`` rows as a current-format csv (non-empty masks only) and the
    empty ImageIds to :func:`empty_list_path`; each file atomically. Returns both paths."""
    path = Path(path)
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["ImageId", "ClassId", "EncodedPixels"])
        for image_id, rles in labelled:
            for k, rle in enumerate(rles):
                if rle:
                    writer.writerow([image_id, k + 1, rle])
    empty_path = empty_list_path(path)
    with atomic_write(empty_path, "w", encoding="utf-8") as fh:
        fh.writelines(f"{image_id}\n" for image_id in empty)
    return path, empty_path


def _first_lines(path: Path) -> dict[str, int]:
    """ImageId -> the 1-based line of its first row (header = line 1), for either csv format."""
    lines: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        legacy = "ImageId_ClassId" in header
        col = header.index("ImageId_ClassId" if legacy else "ImageId")
        for number, row in enumerate(reader, start=2):
            if len(row) > col:
                key = row[col].strip()
                lines.setdefault(key.rsplit("_", 1)[0] if legacy else key, number)
    return lines


def read_pseudo_labels(
    csv_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    shape: tuple[int, int],
    exclude: Mapping[str, Collection[str]] | None = None,
    empty_path: str | os.PathLike | None = None,
    num_classes: int = NUM_CLASSES,
) -> pd.DataFrame:
    """The pseudo-labelled images as a wide annotation frame (``ImageId``, ``EncodedPixels_1..K``).

    Reads ``csv_path`` (train.csv's current or legacy format; RLE validated against ``shape``) and the
    confidently-empty list (``empty_path``, default :func:`empty_list_path`; optional). Raises
    :class:`~steel_defect.data.annotations.AnnotationError` naming the file, line and value for malformed
    rows or RLE, an image missing from ``image_dir``, an image in both files, or one that is in a split
    part of ``exclude`` (e.g. ``{"val": ids}``: pseudo-labels never reach validation).
    """
    csv_path, image_dir = Path(csv_path), Path(image_dir)
    if not csv_path.is_file():
        raise FileNotFoundError(f"data.pseudo_labels: pseudo-label csv not found: {csv_path}")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"data.pseudo_images: image folder not found: {image_dir}")
    frame = read_train_csv(csv_path, shape=tuple(shape), validate_rle=True, num_classes=num_classes)
    lines = _first_lines(csv_path)
    where = {str(i): (csv_path, lines.get(str(i), 0)) for i in frame["ImageId"]}
    empty_path = empty_list_path(csv_path) if empty_path is None else Path(empty_path)
    empty_ids: list[str] = []
    if empty_path.is_file():
        for number, line in enumerate(empty_path.read_text(encoding="utf-8").splitlines(), start=1):
            image_id = line.strip()
            if not image_id:
                continue
            if image_id in where:
                f, n = where[image_id]
                what = "is listed twice (first" if f == empty_path else "is listed as empty but has masks in"
                raise AnnotationError(
                    f"{empty_path}:{number}: image {image_id!r} {what} {f}:{n}{')' if f == empty_path else ''}"
                )
            where[image_id] = (empty_path, number)
            empty_ids.append(image_id)
    for image_id, (f, n) in where.items():
        if not (image_dir / image_id).is_file():
            raise AnnotationError(f"{f}:{n}: image {image_id!r} is not in {image_dir} (data.pseudo_images)")
        for part, ids in (exclude or {}).items():
            if image_id in ids:
                raise AnnotationError(
                    f"{f}:{n}: image {image_id!r} is in the {part} split; pseudo-labels must never "
                    f"overlap validation or test images"
                )
    if empty_ids:
        blank = pd.DataFrame({"ImageId": empty_ids, **{c: "" for c in rle_columns(num_classes)}})
        frame = pd.concat([frame, blank], ignore_index=True)
    return frame.sort_values("ImageId").reset_index(drop=True)


def run_pseudo(c: Any, console: Any = None) -> dict[str, Any]:
    """task=pseudo: predict ``data.images`` (default ``data.root/test_images``) with the checkpoint(s) and
    their thresholds, keep the images that pass :func:`pseudo_decision`, write ``out`` (a csv) and its
    empty list; returns and prints the counts."""
    from rich.console import Console

    from steel_defect.inference import _images_dir, _setup
    from steel_defect.rle import masks_to_rles

    console = console if console is not None else Console()
    if Path(c.out).suffix.lower() != ".csv" or Path(c.out).name == "submission.csv":
        raise ValueError(
            f"task=pseudo writes pseudo-labels: out={c.out} must be a .csv other than submission.csv "
            "(e.g. out=pseudo.csv)"
        )
    rule = PseudoRule.from_dict(c.pseudo)
    images = _images_dir(c, "test_images")
    predictor = _setup(c)
    source = predictor.source
    loader = predictor.loader(images, c.batch_size, c.num_workers)
    labelled: list[tuple[str, list[str]]] = []
    empty: list[str] = []
    per_class = np.zeros(0, dtype=np.int64)
    unreadable = 0
    for pred in predictor.iter_loader(loader):
        if not pred.ok:
            unreadable += 1
            continue
        decision = pseudo_decision(pred.class_probs, pred.masks, rule)
        if decision == EMPTY:
            empty.append(pred.image_id)
        elif decision == LABELLED:
            labelled.append((pred.image_id, masks_to_rles(pred.masks)))
            present = pred.masks.reshape(len(pred.masks), -1).any(axis=1).astype(np.int64)
            per_class = present if per_class.size == 0 else per_class + present
    csv_path, empty_path = write_pseudo_labels(c.out, labelled, empty)
    n = len(loader.dataset)
    summary = {
        "images": n,
        "labelled": len(labelled),
        "empty": len(empty),
        "rejected": n - len(labelled) - len(empty) - unreadable,
        "unreadable": unreadable,
        "labelled_per_class": per_class.tolist(),
        "rule": {"t_pos": rule.t_pos, "t_neg": rule.t_neg},
        "thresholds": source,
        "csv": str(csv_path),
        "empty_list": str(empty_path),
    }
    console.print(
        f"pseudo-labels from {n} images in {images} (thresholds: {source}; rule p > {rule.t_pos} or "
        f"< {rule.t_neg} for every class, masks agreeing): {len(labelled)} labelled "
        f"(per class {summary['labelled_per_class'] or [0]}), {len(empty)} confidently empty, "
        f"{summary['rejected']} rejected, {unreadable} unreadable\n"
        f"written to {csv_path} and {empty_path}; train with data.pseudo_labels={csv_path} "
        f"data.pseudo_images={images}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    return summary
