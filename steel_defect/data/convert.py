"""Convert between the two dataset layouts, exactly both ways.

    python -m steel_defect.data.convert to-folder --csv train.csv --images DIR --out ROOT [--classes N]
        [--overwrite]
    python -m steel_defect.data.convert to-kaggle --root ROOT --out train.csv [--classes N] [--missing error|empty]
        [--overwrite]

Kaggle layout: ``train.csv`` (``ImageId,ClassId,EncodedPixels``, rows for non-empty masks only, or the
competition-era ``ImageId_ClassId,EncodedPixels``) beside an image folder. Folder layout: ``ROOT/images/``
and ``ROOT/masks/<image stem>.png``, one 8-bit single-channel PNG per image whose pixel value is the class
index (0 = background, 1..N the classes). A csv -> folder -> csv round trip gives back the same rows
(canonical RLEs, sorted by image then class); a folder -> csv -> folder one the same PNG pixels.

A PNG holds one class per pixel, so a csv in which two classes claim a pixel cannot be converted exactly:
it is refused naming the image and classes (``--overlap first|last`` keeps the lower/higher class instead).
Every refusal names the file and row or value; outputs are written atomically (temp file, then rename).

Neither direction touches data it did not write (checked before the first write, see
:mod:`steel_defect.guard`): ``to-folder`` refuses existing masks ``ROOT/masks/<stem>.png`` unless
``--overwrite`` (which then replaces only those mask PNGs), never replaces an image in ``ROOT/images`` (an
identical copy is skipped) and refuses a ``ROOT/masks`` that overlaps the image folder or holds the csv;
``to-kaggle`` refuses an ``--out`` inside ``ROOT`` and an existing ``--out`` unless ``--overwrite`` and it
is a label csv.
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from steel_defect.guard import UnsafeWriteError, csv_header, refuse_onto_inputs, refuse_unless_own
from steel_defect.io import atomic_save, atomic_write, list_images
from steel_defect.rle import rle_decode, rle_encode

CURRENT_HEADER = ("ImageId", "ClassId", "EncodedPixels")
LEGACY_HEADER = ("ImageId_ClassId", "EncodedPixels")
OVERLAPS = ("error", "first", "last")
MISSING = ("error", "empty")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MASK_KIND = "mask PNG (8-bit greyscale, as to-folder writes)"
CSV_KIND = f"label csv (header {','.join(CURRENT_HEADER)} or {','.join(LEGACY_HEADER)})"


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


# ======================================================================================================
# What the two directions may write (checked before the first write)
# ======================================================================================================
def is_mask_png(path: Path) -> bool:
    """True when ``path`` starts like an 8-bit greyscale PNG: the kind of file :func:`_write_png` writes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except OSError:
        return False
    return (
        len(head) == 26
        and head[:8] == PNG_SIGNATURE
        and head[12:16] == b"IHDR"
        and head[24] == 8  # bit depth
        and head[25] == 0  # colour type: greyscale
    )


def is_label_csv(path: Path) -> bool:
    """True when ``path`` is a text file whose first line is a Kaggle label csv header (either format)."""
    return csv_header(path) in (CURRENT_HEADER, LEGACY_HEADER)


def _refuse_non_folder(path: Path, what: str) -> None:
    if os.path.lexists(path) and not path.is_dir():
        raise UnsafeWriteError(
            f"{what}={path} exists and is not a folder: refusing to write there (nothing was written); "
            "choose another --out"
        )


def check_folder_outputs(
    csv_path: str | os.PathLike,
    images: str | os.PathLike,
    files: Sequence[Path],
    out: Path,
    overwrite: bool,
) -> dict[Path, Path]:
    """Check every file that ``to-folder`` would write, before the first write; ``{image: copy target}``.

    Refused: an ``out`` that is the csv or not a folder; an ``out/masks`` that is, holds or lies in the
    image folder, or holds the csv; an existing ``out/masks/<stem>.png`` that is not a mask PNG, or any
    existing one without ``overwrite``; an ``out/images/<name>`` that exists with other bytes than its
    image (an image is never replaced). ``out/images`` may be the image folder itself (nothing is copied).
    """
    if os.path.lexists(out) and not out.is_dir():
        refuse_onto_inputs(out, what="--out", inputs=[csv_path])
        _refuse_non_folder(out, "--out")
    masks_dir, images_dir = out / "masks", out / "images"
    refuse_onto_inputs(masks_dir, what="--out masks folder", inputs=[csv_path], input_dirs=[images])
    _refuse_non_folder(masks_dir, "--out masks folder")
    _refuse_non_folder(images_dir, "--out images folder")
    existing = [m for m in (masks_dir / f"{p.stem}.png" for p in files) if os.path.lexists(m)]
    for mask in existing:
        refuse_unless_own(mask, is_mask_png, what="--out mask", kind=MASK_KIND)
    if existing and not overwrite:
        raise UnsafeWriteError(
            f"--out={out}: {len(existing)} of the {len(files)} masks already exist in {masks_dir} "
            f"(e.g. {existing[0]}): refusing to replace them (nothing was written); pass --overwrite to "
            "replace the masks of these images, or choose another --out"
        )
    to_copy: dict[Path, Path] = {}
    for p in files:
        target = images_dir / p.name
        if p.resolve() == target.resolve():
            continue  # converting in place: the image already is out/images/<name>
        if not os.path.lexists(target):
            to_copy[p] = target
        elif not target.is_file() or not filecmp.cmp(p, target, shallow=False):
            raise UnsafeWriteError(
                f"--out image {target} exists and is not a copy of {p}: refusing to replace it (an image is "
                "never replaced, not even with --overwrite; nothing was written); choose another --out or "
                "move that file away"
            )
    return to_copy


def check_csv_output(root: str | os.PathLike, out: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an ``out`` csv inside ``root``, and an existing one unless ``overwrite`` and a label csv."""
    refuse_onto_inputs(out, what="--out", input_dirs=[root])
    if os.path.lexists(out):
        refuse_unless_own(out, is_label_csv, what="--out", kind=CSV_KIND)
        if not overwrite:
            raise UnsafeWriteError(
                f"--out={out} exists: refusing to replace it (nothing was written); pass --overwrite to "
                "replace this label csv, or choose another --out"
            )


def kaggle_to_folder(
    csv_path: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    num_classes: int = 4,
    overlap: str = "error",
    overwrite: bool = False,
) -> dict[str, int]:
    """Kaggle csv + image folder -> ``out/images`` (copies) + ``out/masks/*.png``; returns counts.

    Every image of the folder gets a mask (all zero when the csv has no row for it); a csv row naming an
    image that is not in the folder is refused before anything is written; each file is written atomically.
    Existing masks are replaced only with ``overwrite``; existing images never (see
    :func:`check_folder_outputs`).
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
    to_copy = check_folder_outputs(csv_path, images, files, out, overwrite)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with_defects = 0
    for p in files:  # one image at a time: memory does not grow with the data set
        mask = index_mask(labels.get(p.name, {}), image_size(p), p.name, overlap)
        if p in to_copy:
            atomic_save(to_copy[p], lambda tmp, src=p: shutil.copyfile(src, tmp))
        _write_png(out / "masks" / f"{p.stem}.png", mask)
        with_defects += int(mask.any())
    return {"images": len(files), "with_defects": with_defects}


def folder_to_kaggle(
    root: str | os.PathLike,
    out: str | os.PathLike,
    num_classes: int = 4,
    missing: str = "error",
    overwrite: bool = False,
) -> dict[str, int]:
    """``root/images`` + ``root/masks`` -> a current-format Kaggle csv (non-empty masks only, sorted).

    ``out`` may not lie inside ``root``; an existing ``out`` is replaced only with ``overwrite`` and only
    when it is a label csv (see :func:`check_csv_output`).
    """
    if missing not in MISSING:
        raise ValueError(f"missing={missing!r}; choose one of: {', '.join(MISSING)}")
    check_csv_output(root, out, overwrite)
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
    a.add_argument(
        "--overwrite", action="store_true", help="replace existing ROOT/masks/<stem>.png of these images"
    )
    b = sub.add_parser("to-kaggle", help="ROOT/images + ROOT/masks -> a Kaggle csv")
    b.add_argument("--root", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--classes", type=int, default=4)
    b.add_argument("--missing", choices=MISSING, default="error")
    b.add_argument("--overwrite", action="store_true", help="replace an existing label csv --out")
    args = parser.parse_args(argv)
    if not 1 <= args.classes <= 255:
        parser.error(f"--classes {args.classes}: a class-index PNG holds 1..255 classes")
    try:
        if args.command == "to-folder":
            counts = kaggle_to_folder(
                args.csv, args.images, args.out, args.classes, args.overlap, args.overwrite
            )
        else:
            counts = folder_to_kaggle(args.root, args.out, args.classes, args.missing, args.overwrite)
    except (ConversionError, UnsafeWriteError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return counts


if __name__ == "__main__":
    main()
