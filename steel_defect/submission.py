"""Kaggle submission files, both formats, in one place: streaming atomic writing and validated reading.

``current``: ``ImageId,EncodedPixels,ClassId`` (C rows per image); ``legacy`` (competition era):
``ImageId_ClassId,EncodedPixels``. :func:`write_submission` refuses unsorted or repeated images and leaves
an existing file untouched on any error; :func:`read_submission` reads either format into the current one.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steel_defect import NUM_CLASSES
from steel_defect.io import atomic_write

__all__ = [
    "CURRENT_HEADER",
    "LEGACY_HEADER",
    "SUBMISSION_FORMATS",
    "format_summary",
    "is_submission_file",
    "read_submission",
    "run_summary",
    "write_submission",
]

SUBMISSION_FORMATS: tuple[str, ...] = ("current", "legacy")
CURRENT_HEADER: tuple[str, ...] = ("ImageId", "EncodedPixels", "ClassId")
LEGACY_HEADER: tuple[str, ...] = ("ImageId_ClassId", "EncodedPixels")


def is_submission_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a submission (its header is one of the two formats'), so ``out=`` may replace it."""
    from steel_defect.guard import csv_header

    return csv_header(path) in (CURRENT_HEADER, LEGACY_HEADER)


def write_submission(
    rows: Iterable[tuple[str, Sequence[str]]],
    path: str | os.PathLike,
    fmt: str = "current",
    num_classes: int = NUM_CLASSES,
) -> int:
    """Stream ``(image_id, [rle_1..rle_C])`` rows into a Kaggle submission, atomically; return the image count.

    ``current``: ``ImageId,EncodedPixels,ClassId``, C rows per image (ClassId 1..C, empty EncodedPixels when
    no defect). ``legacy``: ``ImageId_ClassId,EncodedPixels`` (``abc.jpg_3``). Rows must come sorted by
    ImageId with no repeats (the file is then sorted by ImageId, ClassId); anything else raises and an
    existing file at ``path`` is left untouched.
    """
    if fmt not in SUBMISSION_FORMATS:
        raise ValueError(f"format={fmt!r} is not valid; choose one of: {', '.join(SUBMISSION_FORMATS)}")
    from steel_defect.guard import refuse_unless_own

    refuse_unless_own(path, is_submission_file, what="out", kind="submission csv")
    count, previous = 0, None
    with atomic_write(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CURRENT_HEADER if fmt == "current" else LEGACY_HEADER)
        for image_id, rles in rows:
            image_id = str(image_id)
            if previous is not None and image_id <= previous:
                raise ValueError(
                    f"submission rows must be sorted by ImageId without repeats: {image_id!r} came after {previous!r}"
                )
            rles = ["" if r is None else str(r) for r in rles]
            if len(rles) != num_classes:
                raise ValueError(f"image {image_id!r}: expected {num_classes} RLE strings, got {len(rles)}")
            for class_id, rle in enumerate(rles, start=1):
                if fmt == "current":
                    writer.writerow((image_id, rle, class_id))
                else:
                    writer.writerow((f"{image_id}_{class_id}", rle))
            previous, count = image_id, count + 1
    return count


def read_submission(path: str | os.PathLike) -> Any:
    """Read a submission in either format -> DataFrame ``ImageId, ClassId (int), EncodedPixels ("" if none)``.

    Rows keep the file's order. Errors name the file and the 1-based line (header = line 1).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"submission file not found: {path}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    header = tuple(frame.columns)
    if header == LEGACY_HEADER:
        parts = frame["ImageId_ClassId"].str.rpartition("_")
        bad = np.flatnonzero((parts[1] == "").to_numpy())
        if len(bad):
            raise ValueError(
                f"{path}: line {bad[0] + 2}: {frame['ImageId_ClassId'].iloc[bad[0]]!r} is not IMAGE_CLASSID"
            )
        image_ids, class_ids = parts[0], parts[2]
    elif set(header) == set(CURRENT_HEADER) and len(header) == 3:
        image_ids, class_ids = frame["ImageId"], frame["ClassId"]
    else:
        raise ValueError(
            f"{path}: header {','.join(header)!r} is neither {','.join(CURRENT_HEADER)!r} nor {','.join(LEGACY_HEADER)!r}"
        )
    numeric = pd.to_numeric(class_ids.str.strip(), errors="coerce")
    bad = np.flatnonzero(numeric.isna().to_numpy() | (numeric.fillna(0) % 1 != 0).to_numpy())
    if len(bad):
        raise ValueError(f"{path}: line {bad[0] + 2}: ClassId {class_ids.iloc[bad[0]]!r} is not an integer")
    return pd.DataFrame(
        {
            "ImageId": image_ids.to_numpy(dtype=object),
            "ClassId": numeric.astype(np.int64).to_numpy(),
            "EncodedPixels": frame["EncodedPixels"].str.strip().to_numpy(dtype=object),
        }
    )


def run_summary(
    out: str | os.PathLike,
    fmt: str,
    count: int,
    seconds: float,
    classes: Sequence[str],
    nonempty: Sequence[int],
    unreadable: Sequence[str],
    overlays: Sequence[Any] = (),
) -> dict[str, Any]:
    """What a prediction run reports (``predict.py``, the kernel, the torch-free predictor): the file, the
    image count and speed, the non-empty masks per class name, the unreadable images, the overlays."""
    return {
        "out": str(out),
        "format": fmt,
        "images": count,
        "seconds": seconds,
        "images_per_s": count / seconds if seconds > 0 else float("inf"),
        "seconds_per_image": seconds / count if count else 0.0,
        "nonempty_masks": {str(name): int(v) for name, v in zip(classes, nonempty, strict=True)},
        "unreadable": list(unreadable),
        "overlays": [str(p) for p in overlays],
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """The lines printed at the end of a prediction run (of :func:`run_summary`'s dict)."""
    per_class = ", ".join(f"{c}: {n}" for c, n in summary["nonempty_masks"].items())
    lines = [
        f"wrote {summary['out']} ({summary['format']} format): {summary['images']} images in "
        f"{summary['seconds']:.1f} s ({summary['images_per_s']:.2f} images/s, "
        f"{summary['seconds_per_image']:.3f} s/image)",
        f"non-empty masks per class: {per_class}",
        f"unreadable images: {len(summary['unreadable'])}"
        + (
            f" ({', '.join(summary['unreadable'][:10])}{', ...' if len(summary['unreadable']) > 10 else ''})"
            if summary["unreadable"]
            else ""
        ),
    ]
    if summary.get("overlays"):
        lines.append(f"overlays: {len(summary['overlays'])} PNGs in {Path(summary['overlays'][0]).parent}")
    return "\n".join(lines)
