"""Convert between the two dataset layouts, exactly both ways.

    python -m steel_defect.data.convert to-folder --csv train.csv --images DIR --out ROOT [--classes N]
    python -m steel_defect.data.convert to-kaggle --root ROOT --out train.csv [--classes N] [--missing error|empty]

Kaggle layout: ``train.csv`` (``ImageId,ClassId,EncodedPixels``, rows for non-empty masks only, or the
competition-era ``ImageId_ClassId,EncodedPixels``) beside an image folder. Folder layout: ``ROOT/images/``
and ``ROOT/masks/<image stem>.png``, one 8-bit single-channel PNG per image whose pixel value is the class
index (0 = background, 1..N the classes). A csv -> folder -> csv round trip gives back the same rows
(canonical RLEs, sorted by image then class); a folder -> csv -> folder one the same PNG pixels.

A PNG holds one class per pixel, so a csv in which two classes claim a pixel cannot be converted exactly:
it is refused naming the image and classes (``--overlap first|last`` keeps the lower/higher class instead).
Every refusal names the file and row or value; outputs are written atomically (temp file, then rename).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from steel_defect.io import atomic_save, atomic_write, list_images
from steel_defect.rle import rle_decode, rle_encode

CURRENT_HEADER = ("ImageId", "ClassId", "EncodedPixels")
LEGACY_HEADER = ("ImageId_ClassId", "EncodedPixels")
OVERLAPS = ("error", "first", "last")
MISSING = ("error", "empty")


class ConversionError(ValueError):
    """Input that cannot be converted exactly; the message names the file and row or value."""


def read_kaggle_csv(path: str | os.PathLike, num_classes: int | None = None) -> dict[str, dict[int, str]]:
    """``image id -> {class id: rle}`` (non-empty masks only) from either Kaggle csv format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label csv not found: {path}")
    out: dict[str, dict[int, str]] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = tuple(h.strip() for h in next(reader, ()))
        if header not in (CURRENT_HEADER, LEGACY_HEADER):
            raise ConversionError(
                f"{path}: line 1: header {','.join(header)!r}; expected {','.join(CURRENT_HEADER)!r} or "
                f"{','.join(LEGACY_HEADER)!r}"
            )
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ConversionError(f"{path}: line {line}: {len(row)} fields, expected {len(header)}")
            if header == LEGACY_HEADER:
                key, rle = row
                image_id, sep, cls = key.rpartition("_")
                if not sep:
                    raise ConversionError(f"{path}: line {line}: {key!r} is not ImageId_ClassId")
            else:
                image_id, cls, rle = row
            try:
                class_id = int(cls)
            except ValueError as err:
                raise ConversionError(f"{path}: line {line}: class {cls!r} is not an integer") from err
            limit = num_classes if num_classes is not None else 255
            if not 1 <= class_id <= limit:
                raise ConversionError(f"{path}: line {line}: class {class_id} is outside 1..{limit}")
            per_image = out.setdefault(image_id.strip(), {})
            if not rle.strip():
                continue
            if class_id in per_image:
                raise ConversionError(f"{path}: line {line}: image {image_id!r} class {class_id} given twice")
            per_image[class_id] = rle.strip()
    return out


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError) as err:
        raise ConversionError(f"{path}: not a readable image ({err})") from err
    return height, width


def index_mask(
    rles: dict[int, str], shape: tuple[int, int], image_id: str, overlap: str = "error"
) -> np.ndarray:
    """Per-class RLEs -> one (H, W) uint8 class-index mask (0 background)."""
    out = np.zeros(shape, np.uint8)
    for class_id in sorted(rles):
        try:
            mask = rle_decode(rles[class_id], shape).astype(bool)
        except ValueError as err:
            raise ConversionError(f"image {image_id!r} class {class_id}: {err}") from err
        taken = mask & (out > 0)
        if taken.any():
            if overlap == "error":
                others = sorted(set(np.unique(out[taken]).tolist()))
                raise ConversionError(
                    f"image {image_id!r}: {int(taken.sum())} pixels are in class {class_id} and class(es) "
                    f"{others}; a class-index PNG holds one class per pixel (--overlap first|last to choose)"
                )
            if overlap == "first":
                mask &= ~taken
        out[mask] = class_id
    return out


def masks_from_index(index: np.ndarray, num_classes: int, where: str) -> list[str]:
    """A class-index mask -> ``num_classes`` RLEs (refusing values above ``num_classes``)."""
    top = int(index.max()) if index.size else 0
    if top > num_classes:
        raise ConversionError(f"{where}: pixel value {top} is above the {num_classes} classes configured")
    return [rle_encode(index == c) for c in range(1, num_classes + 1)]


def read_index_png(path: Path, shape: tuple[int, int], num_classes: int) -> np.ndarray:
    """A mask PNG, checked: single channel, 8-bit, the image's size, values in 0..num_classes."""
    import cv2

    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ConversionError(f"{path}: not a readable PNG")
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ConversionError(
            f"{path}: a mask must be an 8-bit single-channel PNG (pixel = class index), got shape {mask.shape} "
            f"dtype {mask.dtype}"
        )
    if mask.shape != tuple(shape):
        raise ConversionError(
            f"{path}: mask is {mask.shape[0]}x{mask.shape[1]}, its image {shape[0]}x{shape[1]}"
        )
    top = int(mask.max())
    if top > num_classes:
        raise ConversionError(f"{path}: pixel value {top} is above the {num_classes} classes configured")
    return mask


def _write_png(path: Path, mask: np.ndarray) -> None:
    import cv2

    def writer(tmp: str) -> None:
        if not cv2.imwrite(tmp, mask):
            raise OSError(f"cv2.imwrite could not write {path}")

    atomic_save(path, writer)


def kaggle_to_folder(
    csv_path: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    num_classes: int = 4,
    overlap: str = "error",
) -> dict[str, int]:
    """Kaggle csv + image folder -> ``out/images`` (copies) + ``out/masks/*.png``; returns counts.

    Every image of the folder gets a mask (all zero when the csv has no row for it); a csv row naming an
    image that is not in the folder is refused before anything is written; each file is written atomically.
    """
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap={overlap!r}; choose one of: {', '.join(OVERLAPS)}")
    labels = read_kaggle_csv(csv_path, num_classes)
    files = list_images(Path(images))
    by_name = {p.name: p for p in files}
    unknown = sorted(set(labels) - set(by_name))
    if unknown:
        raise ConversionError(
            f"{csv_path}: {len(unknown)} labelled images are not in {images}, e.g. {unknown[:3]}"
        )
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise ConversionError(f"{images}: images share a stem ({dup[:3]}), their masks would collide")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with_defects = 0
    for p in files:  # one image at a time: memory does not grow with the data set
        mask = index_mask(labels.get(p.name, {}), image_size(p), p.name, overlap)
        target = out / "images" / p.name
        if p.resolve() != target.resolve():
            atomic_save(target, lambda tmp, src=p: shutil.copyfile(src, tmp))
        _write_png(out / "masks" / f"{p.stem}.png", mask)
        with_defects += int(mask.any())
    return {"images": len(files), "with_defects": with_defects}


def folder_to_kaggle(
    root: str | os.PathLike,
    out: str | os.PathLike,
    num_classes: int = 4,
    missing: str = "error",
) -> dict[str, int]:
    """``root/images`` + ``root/masks`` -> a current-format Kaggle csv (non-empty masks only, sorted)."""
    if missing not in MISSING:
        raise ValueError(f"missing={missing!r}; choose one of: {', '.join(MISSING)}")
    root = Path(root)
    files = list_images(root / "images")
    rows: list[tuple[str, int, str]] = []
    for p in files:
        mask_path = root / "masks" / f"{p.stem}.png"
        if not mask_path.is_file():
            if missing == "error":
                raise ConversionError(
                    f"{p}: no mask {mask_path} (--missing empty treats images without a mask as defect-free)"
                )
            continue
        index = read_index_png(mask_path, image_size(p), num_classes)
        for class_id, rle in enumerate(masks_from_index(index, num_classes, str(mask_path)), start=1):
            if rle:
                rows.append((p.name, class_id, rle))
    write_kaggle_csv(rows, out)
    return {"images": len(files), "rows": len(rows)}


def write_kaggle_csv(rows: Iterable[tuple[str, int, str]], out: str | os.PathLike) -> Path:
    """Current-format train.csv rows, sorted by image then class, written atomically."""
    with atomic_write(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CURRENT_HEADER)
        for image_id, class_id, rle in sorted(rows, key=lambda r: (r[0], r[1])):
            writer.writerow([image_id, class_id, rle])
    return Path(out)


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(
        description="Convert between the Kaggle csv and the images/ + masks/ layouts."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("to-folder", help="Kaggle csv + images -> ROOT/images + ROOT/masks")
    a.add_argument("--csv", type=Path, required=True)
    a.add_argument("--images", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--classes", type=int, default=4)
    a.add_argument("--overlap", choices=OVERLAPS, default="error")
    b = sub.add_parser("to-kaggle", help="ROOT/images + ROOT/masks -> a Kaggle csv")
    b.add_argument("--root", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--classes", type=int, default=4)
    b.add_argument("--missing", choices=MISSING, default="error")
    args = parser.parse_args(argv)
    if not 1 <= args.classes <= 255:
        parser.error(f"--classes {args.classes}: a class-index PNG holds 1..255 classes")
    try:
        if args.command == "to-folder":
            counts = kaggle_to_folder(args.csv, args.images, args.out, args.classes, args.overlap)
        else:
            counts = folder_to_kaggle(args.root, args.out, args.classes, args.missing)
    except (ConversionError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return counts


if __name__ == "__main__":
    main()
