"""Read Severstal ground truth (both csv formats) and join it with the image folder.

Two csv formats exist:

* current Kaggle format ``ImageId,ClassId,EncodedPixels``: one row per non-empty (image, class);
* competition-era format ``ImageId_ClassId,EncodedPixels``: four rows per image (``abc.jpg_3``),
  empty ``EncodedPixels`` for absent classes.

Both are turned into one *wide* frame, one row per image, columns ``ImageId, EncodedPixels_1..K``
(``""`` when a class is absent; K = ``num_classes``, Severstal's 4 by default). Every error names the csv
file, its 1-based line number (header = line 1) and the offending value. The plant's own layout (one mask
PNG per image) reads into the same frame: :mod:`steel_defect.data.folder`.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from steel_defect import DEFAULT_SHAPE, NUM_CLASSES
from steel_defect.io import IMAGE_SUFFIXES, list_images
from steel_defect.rle import rle_area

__all__ = [
    "AnnotationError",
    "CLASS_IDS",
    "IMAGE_SUFFIXES",
    "list_images",
    "RLE_COLUMNS",
    "DEFECT_COLUMNS",
    "rle_columns",
    "defect_columns",
    "frame_classes",
    "add_defect_columns",
    "read_train_csv",
    "load_annotations",
    "stratify_key",
]

CLASS_IDS: tuple[int, ...] = tuple(range(1, NUM_CLASSES + 1))


def rle_columns(num_classes: int = NUM_CLASSES) -> list[str]:
    """The wide frame's RLE columns ``EncodedPixels_1..num_classes``."""
    return [f"EncodedPixels_{c}" for c in range(1, int(num_classes) + 1)]


def defect_columns(num_classes: int = NUM_CLASSES) -> list[str]:
    """The wide frame's flag columns ``has_defect_1..num_classes``."""
    return [f"has_defect_{c}" for c in range(1, int(num_classes) + 1)]


#: Severstal's four classes (the default everywhere a frame's class count is not read from the frame).
RLE_COLUMNS: list[str] = rle_columns()
DEFECT_COLUMNS: list[str] = defect_columns()


def _consecutive(frame: pd.DataFrame, prefix: str) -> int:
    """How many columns ``prefix1, prefix2, ...`` the frame has, counted from 1 without a gap."""
    k = 0
    while f"{prefix}{k + 1}" in frame.columns:
        k += 1
    return k


def frame_classes(frame: pd.DataFrame) -> int:
    """The number of classes K of a wide frame: its columns ``EncodedPixels_1..K`` (consecutive from 1)."""
    k = _consecutive(frame, "EncodedPixels_")
    if k == 0:
        raise KeyError(f"not a wide annotation frame (no EncodedPixels_1 column): {list(frame.columns)}")
    return k


CURRENT_HEADER = ("ImageId", "ClassId", "EncodedPixels")
LEGACY_HEADER = ("ImageId_ClassId", "EncodedPixels")


class AnnotationError(ValueError):
    """A ground-truth csv (or its pairing with the image folder) is invalid."""


@dataclass(frozen=True)
class _Parsed:
    """Result of parsing a csv: the wide frame and the first line at which each image appears."""

    frame: pd.DataFrame
    first_line: dict[str, int]


def _short(value: str, limit: int = 60) -> str:
    """``repr`` of ``value`` cut to ``limit`` characters (RLE strings can be huge)."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _parse_class(token: str, path: Path, line: int, what: str, num_classes: int) -> int:
    """Parse a class id in 1..num_classes or raise an error naming file, line and value."""
    try:
        class_id = int(token.strip())
    except ValueError:
        class_id = None
    if class_id is None or not 1 <= class_id <= num_classes:
        raise AnnotationError(
            f"{path}: line {line}: {what} {token!r} is not a class id; expected an integer in 1..{num_classes}"
        )
    return class_id


def _parse(path: Path, shape: tuple[int, int], validate_rle: bool, num_classes: int = NUM_CLASSES) -> _Parsed:
    """Parse either csv format into the wide frame (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation csv not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise AnnotationError(f"{path}: empty file; expected a header line")
        names = tuple(h.strip() for h in header)
        if sorted(names) == sorted(CURRENT_HEADER):
            legacy = False
            i_image, i_class, i_rle = (names.index(n) for n in CURRENT_HEADER)
        elif sorted(names) == sorted(LEGACY_HEADER):
            legacy = True
            i_key, i_rle = (names.index(n) for n in LEGACY_HEADER)
        else:
            raise AnnotationError(
                f"{path}: line 1: unrecognised header {','.join(names)!r}; expected "
                f"{','.join(CURRENT_HEADER)!r} (current Kaggle format) or "
                f"{','.join(LEGACY_HEADER)!r} (competition-era format)"
            )
        n_fields = len(names)
        rles: dict[str, list[str]] = {}
        first_line: dict[str, int] = {}
        seen: dict[tuple[str, int], int] = {}
        for row in reader:
            line = reader.line_num
            if not row or all(not f.strip() for f in row):
                continue  # blank line
            if len(row) != n_fields:
                raise AnnotationError(
                    f"{path}: line {line}: expected {n_fields} fields, got {len(row)}: {_short(','.join(row))}"
                )
            if legacy:
                key = row[i_key].strip()
                image_id, sep, suffix = key.rpartition("_")
                if not sep or not image_id:
                    raise AnnotationError(
                        f"{path}: line {line}: ImageId_ClassId {key!r} has no '_<class>' suffix "
                        f"(expected e.g. 'abc123.jpg_3')"
                    )
                class_id = _parse_class(
                    suffix, path, line, f"class suffix of ImageId_ClassId {key!r}:", num_classes
                )
            else:
                image_id = row[i_image].strip()
                if not image_id:
                    raise AnnotationError(f"{path}: line {line}: empty ImageId")
                class_id = _parse_class(row[i_class], path, line, "ClassId", num_classes)
            previous = seen.get((image_id, class_id))
            if previous is not None:
                raise AnnotationError(
                    f"{path}: line {line}: duplicated (ImageId, ClassId) = ({image_id!r}, {class_id}); "
                    f"first given on line {previous}"
                )
            seen[(image_id, class_id)] = line
            rle = row[i_rle].strip()
            if rle and validate_rle:
                try:
                    rle_area(rle, shape)
                except ValueError as err:
                    raise AnnotationError(
                        f"{path}: line {line}: malformed EncodedPixels for ({image_id!r}, class {class_id}) "
                        f"{_short(rle)}: {err}"
                    ) from err
            if image_id not in rles:
                rles[image_id] = [""] * num_classes
                first_line[image_id] = line
            rles[image_id][class_id - 1] = rle
    ids = sorted(rles)
    frame = pd.DataFrame(
        {"ImageId": pd.Series(ids, dtype=object)}
        | {
            col: pd.Series([rles[i][k] for i in ids], dtype=object)
            for k, col in enumerate(rle_columns(num_classes))
        }
    )
    return _Parsed(frame, first_line)


def read_train_csv(
    path: str | os.PathLike,
    shape: tuple[int, int] = DEFAULT_SHAPE,
    validate_rle: bool = True,
    num_classes: int = NUM_CLASSES,
) -> pd.DataFrame:
    """Read a ground-truth csv in either format into a wide frame ``ImageId, EncodedPixels_1..K``.

    One row per image appearing in the csv, sorted by ImageId; ``""`` for absent classes. RLE strings are
    kept as they are (stripped) and, when ``validate_rle``, checked against ``shape`` with ``rle_area``.
    Raises :class:`AnnotationError` naming the file, the line number and the value.
    """
    return _parse(Path(path), tuple(shape), validate_rle, int(num_classes)).frame


def add_defect_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``has_defect_1..K`` and ``has_defect`` (int 0/1) computed from ``EncodedPixels_1..K``."""
    out = frame.copy()
    k = frame_classes(frame)
    for rle_col, flag_col in zip(rle_columns(k), defect_columns(k), strict=True):
        out[flag_col] = (out[rle_col].astype(str).str.strip() != "").astype(np.int64)
    out["has_defect"] = out[defect_columns(k)].max(axis=1).astype(np.int64) if len(out) else np.int64(0)
    return out


def load_annotations(
    root: str | os.PathLike,
    csv: str = "train.csv",
    images: str = "train_images",
    shape: tuple[int, int] = DEFAULT_SHAPE,
    num_classes: int = NUM_CLASSES,
) -> pd.DataFrame:
    """One row per image file in ``root/images`` joined with ``root/csv``.

    Columns: ``ImageId``, ``EncodedPixels_1..K`` (``""`` when none), ``has_defect_1..K`` and ``has_defect``
    (int 0/1). Images without a csv row are defect-free. A csv row whose image is not in the folder raises
    :class:`AnnotationError` naming the csv, the line and the ImageId.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root}")
    csv_path, image_dir = root / csv, root / images
    if not csv_path.is_file():
        raise FileNotFoundError(f"annotation csv not found: {csv_path}")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    files = list_images(image_dir)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {image_dir}")
    parsed = _parse(csv_path, tuple(shape), validate_rle=True, num_classes=int(num_classes))
    on_disk = pd.DataFrame({"ImageId": pd.Series([p.name for p in files], dtype=object)})
    missing = sorted(set(parsed.frame["ImageId"]) - set(on_disk["ImageId"]), key=parsed.first_line.get)
    if missing:
        first = missing[0]
        more = f" ({len(missing) - 1} more images are missing too)" if len(missing) > 1 else ""
        raise AnnotationError(
            f"{csv_path}: line {parsed.first_line[first]}: ImageId {first!r} has no image file in "
            f"{image_dir}{more}"
        )
    frame = on_disk.merge(parsed.frame, on="ImageId", how="left", validate="one_to_one")
    columns = rle_columns(num_classes)
    frame[columns] = frame[columns].fillna("")
    return add_defect_columns(frame).reset_index(drop=True)


def stratify_key(df: pd.DataFrame) -> pd.Series:
    """The defect-class combination of each image: ``"0"`` (no defect), ``"3"``, ``"1+3"``, ...

    Uses ``has_defect_1..K`` when present, else ``EncodedPixels_1..K`` (K read from the frame).
    """
    k = _consecutive(df, "has_defect_") or _consecutive(df, "EncodedPixels_")
    if k == 0:
        raise KeyError(
            f"stratify_key needs columns has_defect_1.. or EncodedPixels_1..; got {list(df.columns)}"
        )
    flags_cols, rle_cols = defect_columns(k), rle_columns(k)
    if all(c in df.columns for c in flags_cols):
        flags = df[flags_cols].to_numpy().astype(bool)
    elif all(c in df.columns for c in rle_cols):
        flags = (df[rle_cols].astype(str).apply(lambda s: s.str.strip()) != "").to_numpy()
    else:
        raise KeyError(f"stratify_key needs columns {flags_cols} or {rle_cols}; got {list(df.columns)}")
    names = [str(c) for c in range(1, k + 1)]
    keys = ["+".join(n for n, f in zip(names, row, strict=True) if f) or "0" for row in flags]
    return pd.Series(keys, index=df.index, name="stratify", dtype=object)
