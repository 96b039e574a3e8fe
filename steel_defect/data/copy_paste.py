"""Copy-paste augmentation: a defect cut from one training image, with its mask, pasted onto another.

Part of the winners' recipe: rare classes are pasted more often, so the network sees more of them. One
8-connected component of the chosen class is cut from a donor image and written into the target image at
the **same rows** (Severstal images have a fixed height and defects extend over rows, so the row is part
of the defect's look) and a random column shift where the component fits. The rule is exact: the pixels
copied are exactly the pasted label's pixels, and the label is exactly the donor component, shifted. The
pasted class's mask gains those pixels and every other class loses them (classes never overlap).

Among a few random shifts the first whose pasted pixels land on no existing defect and no black
(unimaged) pixel of the target is used; failing that, the one with the fewest such pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from steel_defect import NUM_CLASSES

__all__ = [
    "COPY_PASTE_KEYS",
    "copy_paste_config",
    "class_presence",
    "class_weights",
    "donor_pools",
    "choose_class",
    "choose_donor",
    "pick_component",
    "choose_shift",
    "paste_component",
    "paste_defect",
]

#: Keys of ``data.copy_paste``: ``p`` (probability of one paste per training item) and ``power``.
COPY_PASTE_KEYS = ("p", "power")
DEFAULT_POWER = 1.0


def copy_paste_config(cfg: Mapping[str, Any] | None) -> dict[str, float] | None:
    """``data.copy_paste`` checked and completed: ``{"p": float, "power": float}``, or None when unset/empty.

    ``p`` (required) must be a probability in [0, 1]; ``power`` (default 1.0) a finite number. Unknown keys,
    missing ``p`` or bad values raise ``ValueError`` naming ``data.copy_paste.<key>`` and the value.
    """
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping):
        raise ValueError(f"data.copy_paste must be a mapping with keys {list(COPY_PASTE_KEYS)}, got {cfg!r}")
    if not len(cfg):
        return None
    unknown = sorted(set(map(str, cfg)) - set(COPY_PASTE_KEYS))
    if unknown:
        raise ValueError(f"data.copy_paste: unknown keys {unknown}; valid keys: {list(COPY_PASTE_KEYS)}")
    if "p" not in cfg:
        raise ValueError("data.copy_paste.p is required (the probability of a paste per training item)")

    def number(key: str, value: Any) -> float:
        try:
            out = float(value)
        except (TypeError, ValueError):
            out = math.nan
        if isinstance(value, bool) or not math.isfinite(out):
            raise ValueError(f"data.copy_paste.{key} must be a finite number, got {value!r}")
        return out

    p = number("p", cfg["p"])
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"data.copy_paste.p must be a probability in [0, 1], got {cfg['p']!r}")
    return {"p": p, "power": number("power", cfg.get("power", DEFAULT_POWER))}


def class_presence(rles: Sequence[Sequence[str]], num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(N, C) bool: whether image n has a non-empty ``EncodedPixels`` for class c (0-based)."""
    if not len(rles):
        return np.zeros((0, int(num_classes)), dtype=bool)
    return np.array([[bool(r) for r in row] for row in rles], dtype=bool)


def class_weights(present: np.ndarray, power: float = DEFAULT_POWER) -> np.ndarray:
    """Probability of pasting each class: ``(1 / freq_c) ** power`` normalised over the classes present.

    ``present``: (N, C) bool from :func:`class_presence`; ``freq_c`` is the fraction of images with class c.
    Absent classes get 0. ``power=0``: every present class equally often; ``power=-1``: as often as in the
    data; larger powers favour rare classes more. All zeros when no image has a defect.
    """
    present = np.asarray(present, dtype=bool)
    if present.ndim != 2:
        raise ValueError(f"present must be (N, C) bool, got shape {present.shape}")
    freq = present.mean(axis=0) if len(present) else np.zeros(present.shape[1])
    weights = np.zeros(present.shape[1], dtype=np.float64)
    has = freq > 0
    weights[has] = (1.0 / freq[has]) ** float(power)
    total = weights.sum()
    return weights / total if total > 0 else weights


def donor_pools(present: np.ndarray) -> list[np.ndarray]:
    """Per class (0-based), the int64 indices of the images that have it."""
    present = np.asarray(present, dtype=bool)
    return [np.flatnonzero(present[:, c]) for c in range(present.shape[1])]


def choose_class(weights: np.ndarray, rng: np.random.Generator) -> int:
    """A 0-based class drawn with probabilities ``weights`` (from :func:`class_weights`)."""
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum()
    if not total > 0:
        raise ValueError("no class to paste: the class weights are all zero (no image has a defect)")
    return int(rng.choice(len(weights), p=weights / total))


def choose_donor(pool: np.ndarray, rng: np.random.Generator, exclude: int | None = None) -> int:
    """An index drawn uniformly from ``pool``, other than ``exclude`` unless it is the only one."""
    pool = np.asarray(pool, dtype=np.int64)
    if exclude is not None and len(pool) > 1:
        pool = pool[pool != int(exclude)]
    if not len(pool):
        raise ValueError("empty donor pool: no image has this class")
    return int(pool[rng.integers(len(pool))])


def pick_component(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 8-connected component of ``mask`` (H, W), drawn uniformly, as a bool (H, W) array.

    Raises ``ValueError`` when the mask is empty.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    n, labels = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
    if n < 2:
        raise ValueError("the donor mask has no defect component of this class")
    return labels == int(rng.integers(1, n))


def choose_shift(
    component: np.ndarray,
    image: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    tries: int = 8,
    dark_threshold: int = 10,
) -> int:
    """Column shift ``dx`` for pasting ``component`` (bool (H, W)) into ``image`` / ``masks``.

    ``tries`` shifts are drawn uniformly among those keeping the component inside the image; the first whose
    pixels land on no defect of ``masks`` and no pixel of ``image`` at most ``dark_threshold`` in every
    channel (black border) wins, else the one with the fewest such pixels (the earliest on ties).
    """
    ys, xs = np.nonzero(component)
    if not len(xs):
        raise ValueError("the component is empty")
    width = component.shape[1]
    lo, hi = -int(xs.min()), width - 1 - int(xs.max())
    shifts = rng.integers(lo, hi + 1, size=max(int(tries), 1))
    occupied = np.asarray(masks).any(axis=0) | (np.asarray(image).max(axis=2) <= dark_threshold)
    bad = occupied[ys[None, :], xs[None, :] + shifts[:, None]].sum(axis=1)
    return int(shifts[int(np.argmin(bad))])  # argmin: the first zero, else the first minimum


def _check_pair(image: np.ndarray, masks: np.ndarray, what: str) -> None:
    if image.ndim != 3:
        raise ValueError(f"{what}image must be (H, W, C), got shape {image.shape}")
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"{what}masks must be (K, H, W) with (H, W) = {image.shape[:2]}, got shape {masks.shape}"
        )


def paste_component(
    image: np.ndarray,
    masks: np.ndarray,
    donor_image: np.ndarray,
    component: np.ndarray,
    cls: int,
    dx: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste the donor pixels under ``component`` (bool (H, W)) into ``image`` shifted ``dx`` columns.

    Returns new ``(image, masks, pasted)`` (inputs are not modified), ``pasted`` bool (H, W) being
    ``component`` shifted: the image takes the donor's pixel on every pasted pixel and is unchanged elsewhere;
    ``masks[cls]`` gains the pasted pixels and every other class loses them.
    """
    image, masks, donor_image = np.asarray(image), np.asarray(masks), np.asarray(donor_image)
    _check_pair(image, masks, "")
    if donor_image.shape != image.shape or component.shape != image.shape[:2]:
        raise ValueError(
            f"donor image {donor_image.shape} and component {component.shape} must match the image "
            f"{image.shape}"
        )
    if isinstance(cls, bool) or not 0 <= int(cls) < masks.shape[0]:
        raise ValueError(f"cls must be in 0..{masks.shape[0] - 1}, got {cls!r}")
    ys, xs = np.nonzero(component)
    tx = xs + int(dx)
    if len(xs) and (tx.min() < 0 or tx.max() >= image.shape[1]):
        raise ValueError(f"shift dx={dx} moves the component out of the {image.shape[1]}-px wide image")
    pasted = np.zeros(image.shape[:2], dtype=bool)
    pasted[ys, tx] = True
    out_image = image.copy()
    out_image[ys, tx] = donor_image[ys, xs]
    out_masks = masks.copy()
    out_masks[:, ys, tx] = 0
    out_masks[int(cls), ys, tx] = 1
    return out_image, out_masks, pasted


def paste_defect(
    image: np.ndarray,
    masks: np.ndarray,
    donor_image: np.ndarray,
    donor_masks: np.ndarray,
    cls: int,
    rng: np.random.Generator,
    tries: int = 8,
    dark_threshold: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste one random component of the donor's class ``cls`` (0-based) into ``image`` / ``masks``.

    ``image`` / ``donor_image``: (H, W, C) uint8 of the same shape; ``masks`` / ``donor_masks``: (K, H, W) 0/1.
    The component keeps its rows and moves by a column shift from :func:`choose_shift`. Returns new
    ``(image, masks, pasted)`` as :func:`paste_component`. A donor without class ``cls`` raises ``ValueError``.
    """
    image, masks = np.asarray(image), np.asarray(masks)
    donor_image, donor_masks = np.asarray(donor_image), np.asarray(donor_masks)
    _check_pair(image, masks, "")
    _check_pair(donor_image, donor_masks, "donor ")
    if donor_image.shape != image.shape or donor_masks.shape != masks.shape:
        raise ValueError(
            f"donor image {donor_image.shape} / masks {donor_masks.shape} must match the image "
            f"{image.shape} / masks {masks.shape}"
        )
    if isinstance(cls, bool) or not 0 <= int(cls) < masks.shape[0]:
        raise ValueError(f"cls must be in 0..{masks.shape[0] - 1}, got {cls!r}")
    if not donor_masks[int(cls)].any():
        raise ValueError(f"the donor has no defect of class {int(cls) + 1} (channel {int(cls)}) to paste")
    component = pick_component(donor_masks[int(cls)], rng)
    dx = choose_shift(component, image, masks, rng, tries=tries, dark_threshold=dark_threshold)
    return paste_component(image, masks, donor_image, component, int(cls), dx)
