"""Kaggle run-length encoding (RLE) of binary masks, vectorised and strictly validated.

Format: ``"start length start length ..."``, 1-indexed pixel numbers counted top to bottom, then left to right
(column-major: pixel 1 is (row 0, col 0), pixel 2 is (row 1, col 0)), runs sorted and not overlapping.
:func:`rle_encode` writes the canonical form (maximal runs); :func:`rle_decode` also accepts touching runs.
Missing values (``None``, NaN, ``pd.NA``, ``""``) mean an empty mask.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np

from steel_defect import DEFAULT_SHAPE

__all__ = ["masks_to_rles", "rle_area", "rle_decode", "rle_encode", "rles_to_masks"]

# Bytes allowed in an RLE string; anything else sends the parser to the slow path that names the bad token.
_RLE_CHARS = b"0123456789 \t\n\r\x0b\x0c"
_EMPTY = np.zeros(0, dtype=np.int64)
_TOO_LARGE = 10**18  # no image has this many pixels; keeps all arithmetic far from int64 overflow


def _snippet(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _is_missing(rle: object) -> bool:
    """True for None, float/NumPy NaN and pandas' NA (without importing pandas)."""
    if rle is None:
        return True
    if isinstance(rle, float | np.floating):
        return math.isnan(rle)
    pandas = sys.modules.get("pandas")
    return pandas is not None and rle is pandas.NA


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(d) != d or d <= 0 for d in shape):
        raise ValueError(f"shape must be two positive integers (height, width), got {shape!r}")
    return int(shape[0]), int(shape[1])


def _bad_token_error(rle: str) -> ValueError:
    """Slow path, only to build the message: find the first token that is not a positive integer."""
    for i, token in enumerate(rle.split()):
        if not (token.isascii() and token.isdigit()):
            return ValueError(f"RLE token {i} {token!r} is not a positive integer in {_snippet(rle)}")
    return ValueError(f"RLE string {_snippet(rle)} contains characters that are not digits or spaces")


def _too_large_error(rle: str) -> ValueError:
    """Slow path, only to build the message: find the first absurdly large token."""
    i, token = next((i, t) for i, t in enumerate(rle.split()) if int(t) >= _TOO_LARGE)
    return ValueError(f"RLE token {i} {token!r} is too large, in {_snippet(rle)}")


def _parse(rle: object, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Validate an RLE value and return 0-based run starts and lengths (int64, sorted, disjoint)."""
    height, width = _check_shape(shape)
    if _is_missing(rle):
        return _EMPTY, _EMPTY
    if not isinstance(rle, str):
        if isinstance(rle, float | int | np.number):
            raise ValueError(f"RLE must be a string, None or NaN, got the number {rle!r}")
        raise TypeError(f"RLE must be a string, None or NaN, got {type(rle).__name__}: {rle!r}")
    text = rle.strip()
    if not text:
        return _EMPTY, _EMPTY
    if not text.isascii() or text.encode("ascii").translate(None, _RLE_CHARS):
        raise _bad_token_error(rle)
    # Only ASCII digits and whitespace remain, so every token is a non-negative integer. Fast path for the
    # usual single-space separators; its result is used only when it holds one value per token.
    values = np.fromstring(text, dtype=np.int64, sep=" ")
    if values.size != text.count(" ") + 1:
        try:
            values = np.array(text.split(), dtype=np.int64)
        except OverflowError:
            raise _too_large_error(rle) from None
    if values.max() >= _TOO_LARGE:  # fromstring saturates at the int64 maximum instead of failing
        raise _too_large_error(rle)
    if values.size % 2:
        raise ValueError(
            f"RLE has an odd number of tokens ({values.size}): the last token {rle.split()[-1]!r} "
            f"has no length, in {_snippet(rle)}"
        )
    starts, lengths = values[0::2], values[1::2]

    def pair(k: int) -> str:
        return f"pair {k} '{values[2 * k]} {values[2 * k + 1]}'"

    if (bad := np.flatnonzero(starts <= 0)).size:
        k = int(bad[0])
        raise ValueError(
            f"RLE token {2 * k} '{values[2 * k]}' is not a positive integer (starts are 1-indexed), "
            f"in {pair(k)} of {_snippet(rle)}"
        )
    if (bad := np.flatnonzero(lengths <= 0)).size:
        raise ValueError(f"RLE {pair(int(bad[0]))} has a zero length, in {_snippet(rle)}")
    if (bad := np.flatnonzero(starts[1:] <= starts[:-1])).size:
        k = int(bad[0]) + 1
        raise ValueError(
            f"RLE starts are not strictly increasing: {pair(k)} follows {pair(k - 1)}, in {_snippet(rle)}"
        )
    starts = starts - 1
    ends = starts + lengths  # exclusive
    if (bad := np.flatnonzero(starts[1:] < ends[:-1])).size:
        k = int(bad[0]) + 1
        raise ValueError(
            f"RLE {pair(k)} overlaps {pair(k - 1)} (which covers up to pixel {ends[k - 1]}), "
            f"in {_snippet(rle)}"
        )
    if ends[-1] > height * width:
        k = starts.size - 1
        raise ValueError(
            f"RLE {pair(k)} runs past the last pixel of a {height}x{width} image "
            f"({height * width} pixels), in {_snippet(rle)}"
        )
    return starts, lengths


def _fill(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int]) -> None:
    """Set to 1 the pixels of validated column-major runs in ``flat``, a C-order (H*W,) view of the mask."""
    if starts.size == 0:
        return
    height, width = shape
    ends = starts + lengths
    first_col, last_col = starts // height, (ends - 1) // height
    pieces = last_col - first_col + 1
    if (pieces == 1).all():
        col, piece_start, piece_len = first_col, starts, lengths
    else:  # split runs that wrap from the bottom of one column to the top of the next
        run = np.repeat(np.arange(starts.size), pieces)
        col = first_col[run] + np.arange(run.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        piece_start = np.maximum(starts[run], col * height)
        piece_len = np.minimum(ends[run], (col + 1) * height) - piece_start
    # Within one column, consecutive pixels are ``width`` apart in C order.
    first_pixel = (piece_start - col * height) * width + col
    offsets = np.cumsum(piece_len) - piece_len
    index = np.arange(0, int(offsets[-1] + piece_len[-1]) * width, width)
    index += np.repeat(first_pixel - width * offsets, piece_len)
    flat[index] = 1


def rle_decode(rle: str | None | float, shape: tuple[int, int] = DEFAULT_SHAPE) -> np.ndarray:
    """Decode a Kaggle RLE string into a C-contiguous (H, W) uint8 mask of 0/1.

    ``None``, NaN and blank strings give an empty mask; malformed strings raise ``ValueError``.
    """
    starts, lengths = _parse(rle, shape)
    mask = np.zeros(_check_shape(shape), dtype=np.uint8)
    _fill(mask.reshape(-1), starts, lengths, mask.shape)
    return mask


def rle_area(rle: str | None | float, shape: tuple[int, int] = DEFAULT_SHAPE) -> int:
    """Number of mask pixels of an RLE string (validated like :func:`rle_decode`), without decoding it."""
    return int(_parse(rle, shape)[1].sum())


def _binary(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Check that ``mask`` is bool or integer with values in {0, 1}; return it as an ndarray."""
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        return mask
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{name} must be bool or 0/1 integers, got dtype {mask.dtype} (threshold it first)")
    if mask.size and (mask.min() < 0 or mask.max() > 1):
        bad = mask[(mask != 0) & (mask != 1)].flat[0]
        raise ValueError(f"{name} must contain only 0 and 1, found the value {bad}")
    return mask


def rle_encode(mask: np.ndarray) -> str:
    """Encode an (H, W) bool or 0/1 mask as a canonical Kaggle RLE string (``""`` when empty)."""
    mask = _binary(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    height = mask.shape[0]
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return ""
    # Pixels outside the columns that hold the mask are all zero: only that band needs the
    # (costly) column-major copy.
    first, stop = int(cols[0]), int(cols[-1]) + 1
    padded = np.zeros((stop - first) * height + 2, dtype=mask.dtype)
    padded[1:-1].reshape(stop - first, height)[...] = mask[:, first:stop].T
    runs = np.flatnonzero(padded[1:] != padded[:-1]) + (1 + first * height)
    runs[1::2] -= runs[0::2]
    return " ".join(map(str, runs.tolist()))


def masks_to_rles(masks: np.ndarray) -> list[str]:
    """Encode a (C, H, W) stack of masks, one RLE string per channel."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be 3-D (C, H, W), got shape {masks.shape}")
    return [rle_encode(m) for m in masks]


def rles_to_masks(rles: Sequence[str | None | float], shape: tuple[int, int] = DEFAULT_SHAPE) -> np.ndarray:
    """Decode one RLE per channel into a (C, H, W) uint8 stack; errors name the offending index."""
    shape = _check_shape(shape)
    masks = np.zeros((len(rles), *shape), dtype=np.uint8)
    for c, rle in enumerate(rles):
        try:
            starts, lengths = _parse(rle, shape)
        except ValueError as err:
            raise ValueError(f"rles[{c}]: {err}") from err
        _fill(masks[c].reshape(-1), starts, lengths, shape)
    return masks
