"""Test-time augmentation views, defined once for the torch and the torch-free predictors.

Each view flips the spatial axes it names and is its own inverse; class logits are invariant to these flips,
so only the mask probabilities are flipped back.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["TTA_FLIPS", "check_tta"]

#: name -> the axes of a (B, C, H, W) array it flips.
TTA_FLIPS: dict[str, tuple[int, ...]] = {"hflip": (-1,), "vflip": (-2,), "hvflip": (-1, -2)}


def check_tta(names: Iterable[str]) -> list[str]:
    """Validate TTA names, listing the valid ones on error."""
    names = list(names or [])
    bad = [n for n in names if n not in TTA_FLIPS]
    if bad:
        raise ValueError(f"unknown tta {bad}; valid: {sorted(TTA_FLIPS)}")
    return names
