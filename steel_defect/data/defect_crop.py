"""Defect-centred training crops: a crop window that holds a defect of a class drawn uniformly among those in
the image, so that a rare class with small objects (Severstal's class 1 specks, class 2 marks) is in the
crop as often as the classes whose objects fill the sheet.

Pure functions of their inputs and the given generator; :class:`~steel_defect.data.dataset.SteelDataset`
applies :func:`crop_to_defect` with probability ``data.defect_crop_p`` before its transform, whose random
crop of the same size then leaves the window as it is.
"""

from __future__ import annotations

import numpy as np

__all__ = ["crop_to_defect", "defect_window"]


def _start(pos: int, crop: int, size: int, rng: np.random.Generator) -> int:
    """A window start, uniform among those of length ``crop`` in ``[0, size)`` that contain ``pos``."""
    lo, hi = max(0, pos - crop + 1), min(pos, size - crop)
    return int(rng.integers(lo, hi + 1))


def defect_window(
    masks: np.ndarray, crop: tuple[int | None, int | None], rng: np.random.Generator
) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` of a ``crop`` window (None or a size >= the image's along an axis: that axis
    whole) that contains one pixel of a class drawn uniformly among the classes present in ``masks``
    (uint8/bool (K, H, W)), that pixel drawn uniformly among the class's pixels; None if no class is
    present."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got shape {masks.shape}")
    _, h, w = masks.shape
    present = np.flatnonzero(masks.reshape(masks.shape[0], -1).any(axis=1))
    if not len(present):
        return None
    k = int(rng.choice(present))
    pixels = np.flatnonzero(masks[k])
    y, x = divmod(int(pixels[int(rng.integers(len(pixels)))]), w)
    ch = h if crop[0] is None else min(int(crop[0]), h)
    cw = w if crop[1] is None else min(int(crop[1]), w)
    if ch < 1 or cw < 1:
        raise ValueError(f"crop sizes must be positive, got {crop!r}")
    y0, x0 = _start(y, ch, h, rng), _start(x, cw, w, rng)
    return y0, y0 + ch, x0, x0 + cw


def crop_to_defect(
    image: np.ndarray, masks: np.ndarray, crop: tuple[int | None, int | None], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (H, W, C) and ``masks`` (K, H, W) cut to :func:`defect_window`; unchanged (same objects)
    when the image has no defect."""
    if image.shape[:2] != masks.shape[1:]:
        raise ValueError(f"image {image.shape[:2]} and masks {masks.shape[1:]} differ in size")
    window = defect_window(masks, crop, rng)
    if window is None:
        return image, masks
    y0, y1, x0, x1 = window
    return image[y0:y1, x0:x1], masks[:, y0:y1, x0:x1]
