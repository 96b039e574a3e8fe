"""The pseudo-label file format: a Kaggle-style csv of confident predictions plus the list of confidently
empty images beside it (written by ``task=pseudo``, read by the training datamodule)."""

from __future__ import annotations

import csv
import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import pandas as pd

from steel_defect import NUM_CLASSES
from steel_defect.data.annotations import AnnotationError, read_train_csv, rle_columns
from steel_defect.io import atomic_write


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
