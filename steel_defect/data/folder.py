"""The plant's own layout: ``root/images/`` + ``root/masks/<image stem>.png`` (pixel value = class index).

A mask is an 8-bit single-channel PNG of its image's size, 0 = background and 1..K the configured classes
(``data.classes``). :func:`load_folder_annotations` reads every mask once, checks it and turns it into the
same wide frame the Kaggle layout gives (``ImageId``, ``EncodedPixels_1..K``, ``has_defect_1..K``,
``has_defect``) plus each image's ``height`` and ``width``: everything downstream (splits, datasets,
tuning) is shared by both layouts. Images may differ in size. ``python -m steel_defect.data.convert``
converts between this layout and a Kaggle csv.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from steel_defect.data.annotations import AnnotationError, add_defect_columns, rle_columns
from steel_defect.data.convert import MISSING, ConversionError, image_size, masks_from_index, read_index_png
from steel_defect.io import IMAGE_SUFFIXES, list_images

__all__ = ["MISSING_MASK", "load_folder_annotations"]

#: What an image without a mask PNG means: ``error`` (refused, naming the file) or ``empty`` (defect-free);
#: the same choices as ``python -m steel_defect.data.convert to-kaggle --missing``.
MISSING_MASK: tuple[str, ...] = MISSING


def load_folder_annotations(
    root: str | os.PathLike,
    num_classes: int,
    images: str = "images",
    masks: str = "masks",
    missing_mask: str = "error",
) -> pd.DataFrame:
    """One row per image of ``root/images``, its masks read from ``root/masks/<stem>.png``.

    Refused with :class:`AnnotationError` naming the file: a mask whose size differs from its image, a
    pixel value above ``num_classes``, a mask that is not 8-bit single-channel, an unreadable image, two
    images sharing a stem (their masks would collide), a mask without an image, and an image without a
    mask unless ``missing_mask="empty"`` (then it is defect-free).
    """
    if missing_mask not in MISSING_MASK:
        raise ValueError(f"data.missing_mask={missing_mask!r}; choose one of: {', '.join(MISSING_MASK)}")
    if int(num_classes) < 1 or int(num_classes) > 255:
        raise ValueError(f"a class-index PNG holds 1..255 classes, got {num_classes!r} classes")
    root = Path(root)
    image_dir, mask_dir = root / images, root / masks
    for what, folder in (("data.root", root), ("image folder", image_dir), ("mask folder", mask_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} not found: {folder}")
    files = list_images(image_dir)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {image_dir}")
    by_stem: dict[str, Path] = {}
    for p in files:
        if p.stem in by_stem:
            raise AnnotationError(
                f"{p} and {by_stem[p.stem]} share the stem {p.stem!r}: one mask name for two images"
            )
        by_stem[p.stem] = p
    orphans = sorted(p.name for p in mask_dir.glob("*.png") if p.stem not in by_stem)
    if orphans:
        raise AnnotationError(
            f"{mask_dir / orphans[0]}: a mask without an image in {image_dir}"
            + (f" ({len(orphans) - 1} more)" if len(orphans) > 1 else "")
        )
    rows = []
    for p in files:
        try:
            height, width = image_size(p)
            mask_path = mask_dir / f"{p.stem}.png"
            if mask_path.is_file():
                rles = masks_from_index(
                    read_index_png(mask_path, (height, width), num_classes), num_classes, str(mask_path)
                )
            elif missing_mask == "empty":
                rles = [""] * num_classes
            else:
                raise AnnotationError(
                    f"{p}: no mask {mask_path} (data.missing_mask=empty treats images without a mask as defect-free)"
                )
        except ConversionError as err:
            raise AnnotationError(str(err)) from err
        rows.append([p.name, *rles, height, width])
    frame = pd.DataFrame(rows, columns=["ImageId", *rle_columns(num_classes), "height", "width"])
    return add_defect_columns(frame).reset_index(drop=True)
