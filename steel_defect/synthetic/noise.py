"""Smooth random fields, the generator's one noise primitive (render.py and clutter.py both draw with it)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["field"]


def field(rng: np.random.Generator, h: int, w: int, gh: int, gw: int, cubic: bool = True) -> np.ndarray:
    """Smooth zero-mean, unit-std-ish random field: a (gh, gw) normal grid resized to (h, w)."""
    grid = rng.standard_normal((max(2, gh), max(2, gw)), dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR)
