"""Defect blackout: erase one class's defect so the image becomes a negative example for that class.

Proposed in the original notebook and used by the winning solution. The region is filled with nearby clean
steel texture rather than black, so the network cannot learn "black patch = no defect": each defect pixel is
copied from a horizontally (else vertically) shifted position whose pixel is defect-free in every class and
not part of the black unimaged border; pixels no shift can serve get the median of the clean pixels of
their row.
"""

from __future__ import annotations

import numpy as np

__all__ = ["blackout_defect"]

#: At most this many defect pixels are used to rank the candidate shifts.
_RANK_SAMPLE = 4096


def _candidate_shifts(height: int, width: int, rng: np.random.Generator, n_x: int, n_y: int) -> np.ndarray:
    """(S, 2) ``(dy, dx)`` source offsets: horizontal ones first, then vertical, each nearest first.

    Magnitudes are spread geometrically (fine steps near the defect, coarse far away); the side tried first
    (left/right, up/down) is drawn from ``rng``.
    """

    def signed(size: int, count: int) -> np.ndarray:
        if size < 2:
            return np.zeros(0, dtype=np.int64)
        mags = np.unique(np.rint(np.geomspace(1, size - 1, count)).astype(np.int64))
        sign = 1 if rng.random() < 0.5 else -1
        return np.stack([sign * mags, -sign * mags], axis=1).reshape(-1)

    dx = signed(width, n_x)
    dy = signed(height, n_y)
    return np.concatenate(
        [np.stack([np.zeros_like(dx), dx], axis=1), np.stack([dy, np.zeros_like(dy)], axis=1)]
    ).reshape(-1, 2)


def _row_median_fill(image: np.ndarray, clean: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Per-pixel fill values (len(ys), C): median of the clean pixels of each pixel's row."""
    channels = image.shape[2]
    if clean.any():
        fallback = np.median(image[clean], axis=0)
    else:
        fallback = np.zeros(channels, dtype=np.float64)
    rows, inverse = np.unique(ys, return_inverse=True)
    row_clean = clean[rows]  # (R, W)
    values = np.broadcast_to(fallback, (len(rows), channels)).astype(np.float64)
    has_clean = row_clean.any(axis=1)
    if has_clean.any():
        sub = np.where(row_clean[has_clean][..., None], image[rows[has_clean]].astype(np.float64), np.nan)
        values[has_clean] = np.nanmedian(sub, axis=1)
    return values[inverse]


def blackout_defect(
    image: np.ndarray,
    masks: np.ndarray,
    class_index: int,
    rng: np.random.Generator,
    dark_threshold: int = 10,
    n_horizontal: int = 32,
    n_vertical: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill class ``class_index``'s (0-based channel) defect with clean texture and clear its mask.

    ``image``: (H, W, C) uint8; ``masks``: (K, H, W) 0/1. Returns new arrays (inputs are not modified):
    only pixels of that class's mask change in the image (pixels also labelled with another class are left
    alone, as that class stays labelled) and mask channel ``class_index`` becomes all zeros.

    Source pixels must be defect-free in every class and brighter than ``dark_threshold`` in some channel
    (Severstal images have black, unimaged borders that are no steel texture). Horizontal shifts (same row)
    are tried before vertical ones (same column); the shift serving most pixels is used first, the next
    shifts fill what is left, and the row-median fallback takes the rest.
    """
    image = np.asarray(image)
    masks = np.asarray(masks)
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks must be (K, H, W) with (H, W) = {image.shape[:2]}, got shape {masks.shape}")
    if isinstance(class_index, bool) or not 0 <= int(class_index) < masks.shape[0]:
        raise ValueError(f"class_index must be in 0..{masks.shape[0] - 1}, got {class_index!r}")
    class_index = int(class_index)
    out_image = image.copy()
    out_masks = masks.copy()
    out_masks[class_index] = 0
    defect = masks > 0
    others = np.delete(defect, class_index, axis=0).any(axis=0)
    target = defect[class_index] & ~others
    if not target.any():
        return out_image, out_masks
    source = ~defect.any(axis=0) & (image.max(axis=2) > dark_threshold)
    height, width = target.shape
    ys, xs = np.nonzero(target)
    shifts = _candidate_shifts(height, width, rng, n_horizontal, n_vertical)

    # Rank the shifts by how many defect pixels they can serve (source inside the image, defect-free, not
    # black), estimated on an evenly spread sample of at most ``_RANK_SAMPLE`` pixels; nearer/horizontal
    # shifts win ties. Then fill greedily: each shift serves what it can of the pixels still unfilled.
    flat_source = source.reshape(-1)

    def servable(
        dy: np.ndarray, dx: np.ndarray, y: np.ndarray, x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        sy, sx = y + dy, x + dx
        inside = (sy >= 0) & (sy < height) & (sx >= 0) & (sx < width)
        flat = np.where(inside, sy * width + sx, 0)
        return inside & flat_source[flat], flat

    sample = np.unique(np.linspace(0, len(ys) - 1, min(len(ys), _RANK_SAMPLE)).astype(np.int64))
    coverage = servable(shifts[:, :1], shifts[:, 1:], ys[sample][None, :], xs[sample][None, :])[0].sum(axis=1)
    order = np.lexsort((np.arange(len(shifts)), -coverage))

    flat_image = image.reshape(-1, image.shape[2])
    flat_out = out_image.reshape(-1, image.shape[2])
    target_flat = ys * width + xs
    remaining = np.arange(len(ys))
    for s in order:
        if coverage[s] == 0 or not len(remaining):
            break
        ok, src = servable(shifts[s, 0], shifts[s, 1], ys[remaining], xs[remaining])
        flat_out[target_flat[remaining[ok]]] = flat_image[src[ok]]
        remaining = remaining[~ok]
    filled = np.ones(len(ys), dtype=bool)
    filled[remaining] = False
    if not filled.all():
        rest = ~filled
        values = _row_median_fill(image, source, ys[rest])
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            values = np.clip(np.rint(values), info.min, info.max)
        out_image[ys[rest], xs[rest]] = values.astype(image.dtype)
    return out_image, out_masks
