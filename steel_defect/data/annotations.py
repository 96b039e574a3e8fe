"""Read Severstal ground truth (both csv formats) and join it with the image folder.

Two csv formats exist:

* current Kaggle format ``ImageId,ClassId,EncodedPixels``: one row per non-empty (image, class);
* competition-era format ``ImageId_ClassId,EncodedPixels``: four rows per image (``abc.jpg_3``),
  empty ``EncodedPixels`` for absent classes.

Both are turned into one *wide* frame, one row per image, columns ``ImageId, EncodedPixels_1..4``
(``""`` when a class is absent). Every error names the csv file, its 1-based line number (header = line 1)
and the offending value.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from steel_defect import DEFAULT_SHAPE, NUM_CLASSES
from steel_defect.rle import rle_area

__all__ = [
    "AnnotationError",
    "CLASS_IDS",
    "IMAGE_SUFFIXES",
    "RLE_COLUMNS",
    "DEFECT_COLUMNS",
    "read_train_csv",
    "load_annotations",
    "stratify_key",
]

CLASS_IDS: tuple[int, ...] = tuple(range(1, NUM_CLASSES + 1))
RLE_COLUMNS: list[str] = [f"EncodedPixels_{c}" for c in CLASS_IDS]
DEFECT_COLUMNS: list[str] = [f"has_defect_{c}" for c in CLASS_IDS]
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})

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


def _parse_class(token: str, path: Path, line: int, what: str) -> int:
    """Parse a class id in 1..4 or raise an error naming file, line and value."""
    try:
        class_id = int(token.strip())
    except ValueError:
        class_id = None
    if class_id not in CLASS_IDS:
        raise AnnotationError(
            f"{path}: line {line}: {what} {token!r} is not a class id; expected an integer in "
            f"{CLASS_IDS[0]}..{CLASS_IDS[-1]}"
        )
    return class_id


def _parse(path: Path, shape: tuple[int, int], validate_rle: bool) -> _Parsed:
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
                class_id = _parse_class(suffix, path, line, f"class suffix of ImageId_ClassId {key!r}:")
            else:
                image_id = row[i_image].strip()
                if not image_id:
                    raise AnnotationError(f"{path}: line {line}: empty ImageId")
                class_id = _parse_class(row[i_class], path, line, "ClassId")
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
                rles[image_id] = [""] * NUM_CLASSES
                first_line[image_id] = line
            rles[image_id][class_id - 1] = rle
    ids = sorted(rles)
    frame = pd.DataFrame(
        {"ImageId": pd.Series(ids, dtype=object)}
        | {col: pd.Series([rles[i][k] for i in ids], dtype=object) for k, col in enumerate(RLE_COLUMNS)}
    )
    return _Parsed(frame, first_line)


def read_train_csv(
    path: str | os.PathLike, shape: tuple[int, int] = DEFAULT_SHAPE, validate_rle: bool = True
) -> pd.DataFrame:
    """Read a ground-truth csv in either format into a wide frame ``ImageId, EncodedPixels_1..4``.

    One row per image appearing in the csv, sorted by ImageId; ``""`` for absent classes. RLE strings are
    kept as they are (stripped) and, when ``validate_rle``, checked against ``shape`` with ``rle_area``.
    Raises :class:`AnnotationError` naming the file, the line number and the value.
    """
    return _parse(Path(path), tuple(shape), validate_rle).frame


def _defect_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``has_defect_1..4`` and ``has_defect`` (int 0/1) computed from ``EncodedPixels_1..4``."""
    out = frame.copy()
    for rle_col, flag_col in zip(RLE_COLUMNS, DEFECT_COLUMNS, strict=True):
        out[flag_col] = (out[rle_col].astype(str).str.strip() != "").astype(np.int64)
    out["has_defect"] = out[DEFECT_COLUMNS].max(axis=1).astype(np.int64) if len(out) else np.int64(0)
    return out


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (``*.jpg``, ``*.jpeg``, ``*.png``, any case) directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.name,
    )


def load_annotations(
    root: str | os.PathLike,
    csv: str = "train.csv",
    images: str = "train_images",
    shape: tuple[int, int] = DEFAULT_SHAPE,
) -> pd.DataFrame:
    """One row per image file in ``root/images`` joined with ``root/csv``.

    Columns: ``ImageId``, ``EncodedPixels_1..4`` (``""`` when none), ``has_defect_1..4`` and ``has_defect``
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
        raise FileNotFoundError(f"no images (*.jpg, *.jpeg, *.png) in {image_dir}")
    parsed = _parse(csv_path, tuple(shape), validate_rle=True)
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
    frame[RLE_COLUMNS] = frame[RLE_COLUMNS].fillna("")
    return _defect_columns(frame).reset_index(drop=True)


def stratify_key(df: pd.DataFrame) -> pd.Series:
    """The defect-class combination of each image: ``"0"`` (no defect), ``"3"``, ``"1+3"``, ...

    Uses ``has_defect_1..4`` when present, else ``EncodedPixels_1..4``.
    """
    if all(c in df.columns for c in DEFECT_COLUMNS):
        flags = df[DEFECT_COLUMNS].to_numpy().astype(bool)
    elif all(c in df.columns for c in RLE_COLUMNS):
        flags = (df[RLE_COLUMNS].astype(str).apply(lambda s: s.str.strip()) != "").to_numpy()
    else:
        raise KeyError(
            f"stratify_key needs columns {DEFECT_COLUMNS} or {RLE_COLUMNS}; got {list(df.columns)}"
        )
    # Encode each combination as a bit pattern, then look its name up in a table of all 2**4 combinations.
    codes = flags.astype(np.int64) @ (1 << np.arange(NUM_CLASSES, dtype=np.int64))
    table = np.array(
        [
            "+".join(str(c) for c in CLASS_IDS if code >> (c - 1) & 1) or "0"
            for code in range(1 << NUM_CLASSES)
        ],
        dtype=object,
    )
    return pd.Series(table[codes], index=df.index, name="stratify", dtype=object)
