"""Synthetic Severstal-like data: plausible steel strips with four defect classes, in Kaggle's layout.

``python -m steel_defect.synthetic --out DIR --n-train N --n-test M --seed S`` writes::

    DIR/train_images/<9 hex>.jpg   DIR/train.csv            (ImageId,ClassId,EncodedPixels)
    DIR/test_images/<9 hex>.jpg    DIR/sample_submission.csv (ImageId,EncodedPixels,ClassId)
                                   DIR/test_labels.csv       (like train.csv; for evaluation only)

Every image is rendered from its own RNG, derived from ``(seed, split, index)`` with
:class:`numpy.random.SeedSequence`, so the bytes do not depend on ``workers`` or on the other split's size.
Defect shapes (sizes given at 256x1600 and scaled with the image):

1. clusters of small dark or bright pits;
2. a few short, thin vertical marks (20-80 px tall);
3. long thin scratches (mostly along the rolling direction, some diagonal) or large rough patches;
4. large, smooth, dark blotches.

Masks are the defect region, slightly dilated like the coarse real annotations; classes never overlap.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from steel_defect import DEFAULT_SHAPE, NUM_CLASSES
from steel_defect.io import atomic_save, atomic_write
from steel_defect.rle import rle_encode

__all__ = [
    "CLASS_WEIGHTS",
    "DEFECT_FREE_PROB",
    "format_summary",
    "generate_dataset",
    "image_ids",
    "render_sample",
    "main",
]

#: Reference geometry: every size below is in pixels of a 256x1600 image and scaled to the requested shape.
_REF_H, _REF_W = 256, 1600
#: Probability that an image has no defect (Kaggle train: about 47%).
DEFECT_FREE_PROB = 0.5
#: Relative frequency of each class among defect labels (Kaggle train: 897, 247, 5150, 801 images).
CLASS_WEIGHTS: dict[int, float] = {1: 0.125, 2: 0.035, 3: 0.72, 4: 0.12}
#: Probability that a defect image carries a second class.
TWO_CLASS_PROB = 0.05
#: Target mask area at 256x1600: (median, log-sigma, low, high); lognormal truncated to the real
#: 2nd-98th percentile range of the Kaggle annotations.
_AREA = {
    1: (3200.0, 0.85, 500.0, 15000.0),
    2: (2800.0, 0.65, 700.0, 10000.0),
    3: (12000.0, 1.2, 1100.0, 160000.0),
    4: (25000.0, 0.9, 2800.0, 127000.0),
}
_SPLITS = {"train": 0, "test": 1}
_JPEG_QUALITY = 90
_MIN_SHAPE = (32, 64)
_CSV_NAMES = ("train.csv", "test_labels.csv", "sample_submission.csv")


@dataclass(frozen=True)
class _Geom:
    """Image shape and the scale factors from the 256x1600 reference."""

    h: int
    w: int

    @property
    def sy(self) -> float:
        return self.h / _REF_H

    @property
    def sx(self) -> float:
        return self.w / _REF_W

    @property
    def s(self) -> float:
        """Linear scale for isotropic sizes (pit radius, line thickness)."""
        return math.sqrt(self.sx * self.sy)


@dataclass
class _Piece:
    """One defect component: an intensity change and its mask over the same (h, w) box."""

    delta: np.ndarray  # float32 (h, w), added to the image
    mask: np.ndarray  # bool (h, w)


# --------------------------------------------------------------------------------------------- helpers


def _as_rng(rng_or_seed: int | np.random.Generator | np.random.SeedSequence) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"shape must be (height, width), got {shape!r}")
    h, w = (int(v) for v in shape)
    if h < _MIN_SHAPE[0] or w < _MIN_SHAPE[1]:
        raise ValueError(f"shape {shape!r} is too small; need at least {_MIN_SHAPE[0]}x{_MIN_SHAPE[1]}")
    return h, w


def _target_area(rng: np.random.Generator, cls: int) -> float:
    """Mask area in reference pixels, lognormal truncated to the class range (rejection sampling)."""
    median, sigma, lo, hi = _AREA[cls]
    for _ in range(64):
        a = median * math.exp(sigma * rng.standard_normal())
        if lo <= a <= hi:
            return a
    return float(np.clip(a, lo, hi))


def _smooth_field(rng: np.random.Generator, h: int, w: int, gh: int, gw: int) -> np.ndarray:
    """Smooth random field in about [0, 1]: a (gh, gw) uniform grid upsampled bicubically to (h, w)."""
    grid = rng.random((gh, gw), dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _ellipse_kernel(rx: float, ry: float) -> np.ndarray:
    kx, ky = max(1, round(rx)), max(1, round(ry))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * kx + 1, 2 * ky + 1))


def _blob(rng: np.random.Generator, h: int, w: int, roughness: float) -> np.ndarray:
    """Irregular, roughly elliptical bool region filling about 70% of an (h, w) box."""
    gh = 4
    gw = int(np.clip(round(4 * w / max(h, 1)), 4, 12))
    field = _smooth_field(rng, h, w, gh, gw) - 0.5
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    value = 1.0 - (yy * yy + xx * xx) + 2.0 * roughness * field
    region = value > 0.2
    if not region.any():  # a tiny box can come out empty: keep its centre
        region[h // 2, w // 2] = True
    return region


def _soft(region: np.ndarray, sigma: float) -> np.ndarray:
    """Region as float32 with blurred edges (peak 1)."""
    f = region.astype(np.float32)
    if sigma <= 0.3:
        return f
    return cv2.GaussianBlur(f, (0, 0), sigma)


def _pad(arr: np.ndarray, py: int, px: int) -> np.ndarray:
    return np.pad(arr, ((py, py), (px, px)))


# ------------------------------------------------------------------------------------------- background


def _background(rng: np.random.Generator, g: _Geom) -> np.ndarray:
    """Plain steel: base level, illumination gradient, horizontal rolling streaks, fine noise, vignetting."""
    h, w = g.h, g.w
    base = rng.uniform(55.0, 150.0)
    img = _smooth_field(rng, h, w, 3, 8)
    img *= np.float32(2.0 * rng.uniform(5.0, 25.0))
    img += np.float32(base - rng.uniform(5.0, 25.0))
    # Horizontal streaks: per-row values that drift slowly along the width (long axis = rolling direction).
    nx = max(2, w // 160)
    streak_grid = rng.standard_normal((h, nx)).astype(np.float32)
    streak_grid = cv2.GaussianBlur(streak_grid, (1, 0), sigmaX=0.1, sigmaY=max(0.5, 0.8 * g.sy))
    streaks = cv2.resize(streak_grid, (w, h), interpolation=cv2.INTER_LINEAR)
    img += streaks * np.float32(rng.uniform(2.0, 8.0))
    rows = cv2.GaussianBlur(rng.standard_normal((h, 1)).astype(np.float32), (1, 0), sigmaX=0.1, sigmaY=1.5)
    img += rows * np.float32(rng.uniform(1.0, 6.0))
    noise = rng.random((h, w), dtype=np.float32)
    noise -= np.float32(0.5)
    img += noise * np.float32(rng.uniform(6.0, 20.0))  # uniform noise, std 1.7-5.8 grey levels
    if rng.random() < 0.4:  # vignetting: darker towards the left/right (and a little top/bottom) edges
        x = np.linspace(-1.0, 1.0, w, dtype=np.float32)
        y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
        img *= 1.0 - np.float32(rng.uniform(0.1, 0.35)) * x**4
        img *= 1.0 - np.float32(rng.uniform(0.0, 0.1)) * y**2
    # Distractors: a few faint specks that are not defects, so that faint pits are not trivially spotted.
    n_specks = int(rng.integers(0, 30))
    xs, ys = rng.integers(0, w, n_specks).tolist(), rng.integers(0, h, n_specks).tolist()
    values = (rng.uniform(-12.0, 12.0, n_specks) + img[ys, xs]).tolist()
    for x, y, v in zip(xs, ys, values, strict=True):
        cv2.circle(img, (x, y), max(0, round(rng.uniform(0.0, 2.0) * g.s)), v, -1)
    return img


def _imaged_columns(rng: np.random.Generator, g: _Geom) -> tuple[int, int]:
    """Columns [a, b) that show steel; about 12% of images have an un-imaged black band on one side."""
    if rng.random() >= 0.12:
        return 0, g.w
    black = int(g.w * rng.uniform(0.05, 0.6))
    return (black, g.w) if rng.random() < 0.5 else (0, g.w - black)


def _black_out(rng: np.random.Generator, img: np.ndarray, cols: tuple[int, int]) -> None:
    """Replace the columns outside ``cols`` by a near-black, slightly noisy un-imaged region (in place)."""
    a, b = cols
    w = img.shape[1]
    if a == 0 and b == w:
        return
    x = np.arange(w, dtype=np.float32)
    ramp = np.float32(rng.uniform(1.0, 4.0))
    alpha = np.clip((x - a + 1) / ramp, 0, 1) * np.clip((b - x) / ramp, 0, 1)
    dark = np.float32(rng.uniform(1.0, 10.0))
    img *= alpha
    img += (1.0 - alpha) * dark


# ---------------------------------------------------------------------------------------------- defects


def _class1_pits(rng: np.random.Generator, g: _Geom, area: float) -> list[_Piece]:
    """One to three clusters of small dark or bright dots; the mask covers each cluster."""
    n_clusters = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    pieces = []
    for _ in range(n_clusters):
        a_c = area / n_clusters  # reference px
        aspect = rng.uniform(0.7, 2.5)
        ry_ref = min(math.sqrt(a_c / (math.pi * aspect)), 0.4 * _REF_H)
        rx_ref = a_c / (math.pi * ry_ref)
        n = int(np.clip(a_c / rng.uniform(60.0, 200.0), 5, 150))
        spacing_ref = math.sqrt(a_c / n)
        rx, ry = rx_ref * g.sx, ry_ref * g.sy
        d = max(1.0, 0.55 * spacing_ref * g.s)  # mask radius around each pit
        pit_r = rng.uniform(0.6, 3.0, n) * g.s
        pad = math.ceil(d + pit_r.max()) + 2
        ph, pw = int(2 * ry) + 2 * pad + 1, int(2 * rx) + 2 * pad + 1
        t = rng.uniform(0.0, 2.0 * math.pi, n)
        r = np.sqrt(rng.uniform(0.0, 1.0, n))
        cx = np.round(pw / 2 + rx * r * np.cos(t)).astype(int)
        cy = np.round(ph / 2 + ry * r * np.sin(t)).astype(int)
        polarity = 1.0 if rng.random() < 0.35 else -1.0
        level = polarity * rng.uniform(20.0, 60.0) * rng.uniform(0.6, 1.4, n)
        delta = np.zeros((ph, pw), np.float32)
        mask = np.zeros((ph, pw), np.uint8)
        for x, y, pr, v in zip(cx.tolist(), cy.tolist(), pit_r.tolist(), level.tolist(), strict=True):
            cv2.circle(delta, (x, y), round(pr), v, -1, cv2.LINE_AA)
            cv2.circle(mask, (x, y), round(pr + d), 1, -1)
        delta = cv2.GaussianBlur(delta, (0, 0), max(0.5, 0.6 * g.s))
        pieces.append(_Piece(delta, mask.astype(bool)))
    return pieces


def _class2_marks(rng: np.random.Generator, g: _Geom, area: float) -> list[_Piece]:
    """A few short, narrow vertical marks side by side, each with its own (taller than wide) mask."""
    hm_ref = rng.uniform(20.0, 80.0, 8)
    wm_ref = rng.uniform(2.0, 6.0, 8)
    my_ref, mx_ref = rng.uniform(4.0, 9.0), rng.uniform(3.0, 6.0)
    per = (hm_ref + 2 * my_ref) * (wm_ref + 2 * mx_ref)
    k = int(np.clip(np.searchsorted(np.cumsum(per), area) + 1, 1, 6))
    hm = np.maximum(3, np.round(hm_ref[:k] * g.sy)).astype(int)
    wm = np.maximum(1, np.round(wm_ref[:k] * g.sx)).astype(int)
    my, mx = max(1, round(my_ref * g.sy)), max(1, round(mx_ref * g.sx))
    gaps = np.maximum(2, np.round(rng.uniform(6.0, 60.0, k) * g.sx)).astype(int)
    cell_w = wm + 2 * mx + gaps  # each mark's mask plus a gap, so masks stay separate components
    ph = int(hm.max()) + 2 * my + int(rng.integers(0, max(1, round(30 * g.sy)) + 1))
    pw = int(cell_w.sum())
    delta = np.zeros((ph, pw), np.float32)
    mask = np.zeros((ph, pw), bool)
    polarity = 1.0 if rng.random() < 0.25 else -1.0
    x0 = 0
    for i in range(k):
        y0 = int(rng.integers(0, ph - hm[i] - 2 * my + 1))
        yy = np.linspace(0.0, math.pi, hm[i], dtype=np.float32)[:, None]
        xx = np.linspace(-1.0, 1.0, wm[i], dtype=np.float32)[None, :] if wm[i] > 1 else np.zeros((1, 1))
        profile = np.sqrt(np.sin(yy) + 0.05) * np.exp(-1.5 * xx * xx).astype(np.float32)
        amp = polarity * rng.uniform(25.0, 65.0)
        ys, xs = slice(y0 + my, y0 + my + hm[i]), slice(x0 + mx, x0 + mx + wm[i])
        delta[ys, xs] += amp * profile
        mask[y0 : y0 + hm[i] + 2 * my, x0 : x0 + wm[i] + 2 * mx] = True
        x0 += int(cell_w[i])
    return [_Piece(cv2.GaussianBlur(delta, (0, 0), 0.6), mask)]


def _polyline(rng: np.random.Generator, length: float, angle: float, n_seg: int) -> np.ndarray:
    """Slightly wavy polyline of ``length`` reference px starting at the origin: (n_seg + 1, 2) as x, y."""
    seg = length / n_seg
    angles = angle + np.cumsum(rng.normal(0.0, 0.04, n_seg))
    steps = np.stack([np.cos(angles), np.sin(angles)], axis=1) * seg
    return np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])


def _class3_scratches(rng: np.random.Generator, g: _Geom, area: float, max_w_ref: float) -> list[_Piece]:
    """One to three long thin scratches; masks are the lines widened by a margin."""
    n = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    pieces = []
    for _ in range(n):
        thick_ref = rng.uniform(1.5, 4.0)
        margin_ref = rng.uniform(5.0, 12.0)
        length = np.clip(area / n / (thick_ref + 2 * margin_ref), 80.0, 0.95 * max_w_ref)
        if rng.random() < 0.75:
            angle = rng.normal(0.0, 0.03)
        else:
            angle = rng.uniform(0.15, 0.7) * rng.choice([-1.0, 1.0])
            length = min(length, (0.9 * _REF_H - 2 * margin_ref) / math.sin(abs(angle)))
        pts = _polyline(rng, length, angle, int(rng.integers(3, 7)))
        pts = pts * np.array([g.sx, g.sy])
        thick = max(1, round(thick_ref * g.s))
        margin = max(1.0, margin_ref * g.s)
        pad = math.ceil(margin + thick) + 1
        pts -= pts.min(axis=0)
        pts += pad
        ph = int(pts[:, 1].max()) + pad + 1
        pw = int(pts[:, 0].max()) + pad + 1
        ipts = [np.round(pts).astype(np.int32)]
        delta = np.zeros((ph, pw), np.float32)
        amp = (1.0 if rng.random() < 0.5 else -1.0) * rng.uniform(25.0, 60.0)
        cv2.polylines(delta, ipts, False, amp, thick, cv2.LINE_AA)
        fade = 0.4 + 0.6 * _smooth_field(rng, ph, pw, 2, 6)  # the scratch fades in and out along its length
        delta = cv2.GaussianBlur(delta * fade, (0, 0), 0.6)
        mask = np.zeros((ph, pw), np.uint8)
        cv2.polylines(mask, ipts, False, 1, thick + 2 * round(margin))
        pieces.append(_Piece(delta, mask.astype(bool)))
    return pieces


def _blob_piece(
    rng: np.random.Generator,
    g: _Geom,
    area: float,
    aspect: float,
    max_w_ref: float,
    roughness: float,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Irregular region (bool), its dilated mask (bool) and the margin (my, mx), sized for ``area``."""
    margin_ref = rng.uniform(3.0, 8.0)
    core = area * 0.8  # the dilation adds the rest
    h_ref = min(math.sqrt(core / (0.7 * aspect)), _REF_H - 2 * margin_ref - 4)
    w_ref = min(core / (0.7 * h_ref), max_w_ref - 2 * margin_ref - 4)
    h, w = max(3, round(h_ref * g.sy)), max(3, round(w_ref * g.sx))
    my, mx = max(1, round(margin_ref * g.sy)), max(1, round(margin_ref * g.sx))
    region = _pad(_blob(rng, h, w, roughness), my + 1, mx + 1)
    mask = cv2.dilate(region.astype(np.uint8), _ellipse_kernel(mx, my)).astype(bool)
    return region, mask, (my, mx)


def _class3_patch(rng: np.random.Generator, g: _Geom, area: float, max_w_ref: float) -> list[_Piece]:
    """A large, rough, mottled patch (bright or dark)."""
    region, mask, _ = _blob_piece(rng, g, area, rng.uniform(1.0, 5.0), max_w_ref, rng.uniform(0.3, 0.6))
    ph, pw = region.shape
    soft = _soft(region, max(0.5, 1.5 * g.s))
    mottle = _smooth_field(rng, ph, pw, max(2, ph // 12), max(2, pw // 12)) - 0.3
    rough = rng.standard_normal((ph, pw)).astype(np.float32)
    amp = (1.0 if rng.random() < 0.5 else -1.0) * rng.uniform(20.0, 50.0)
    delta = soft * (amp * mottle + rng.uniform(6.0, 18.0) * rough)
    return [_Piece(cv2.GaussianBlur(delta, (0, 0), 0.7), mask)]


def _class4_blotch(rng: np.random.Generator, g: _Geom, area: float, max_w_ref: float) -> list[_Piece]:
    """A large, smooth, irregular dark region."""
    region, mask, (my, mx) = _blob_piece(
        rng, g, area, rng.uniform(1.0, 4.0), max_w_ref, rng.uniform(0.4, 0.8)
    )
    ph, pw = region.shape
    soft = _soft(region, max(0.8, 0.5 * min(my, mx)))
    shade = 0.7 + 0.3 * _smooth_field(rng, ph, pw, 3, max(3, pw // 40))
    delta = soft * shade * np.float32(-rng.uniform(25.0, 65.0))
    return [_Piece(delta, mask)]


def _render_class(rng: np.random.Generator, g: _Geom, cls: int, max_w_ref: float) -> list[_Piece]:
    area = min(_target_area(rng, cls), 0.6 * _REF_H * max_w_ref)
    if cls == 1:
        return _class1_pits(rng, g, area)
    if cls == 2:
        return _class2_marks(rng, g, area)
    if cls == 3:
        if area < 40000 and rng.random() < 0.6:
            return _class3_scratches(rng, g, area, max_w_ref)
        return _class3_patch(rng, g, area, max_w_ref)
    if cls == 4:
        return _class4_blotch(rng, g, area, max_w_ref)
    raise ValueError(f"defect class must be 1..{NUM_CLASSES}, got {cls!r}")


def _paste(
    rng: np.random.Generator, piece: _Piece, img: np.ndarray, mask: np.ndarray, cols: tuple[int, int]
) -> None:
    """Add ``piece`` at a random position inside rows [0, H) and columns ``cols`` (cropped if larger)."""
    h = img.shape[0]
    a, b = cols
    ph, pw = piece.mask.shape
    # Crop a piece that does not fit (centre crop) rather than let it spill outside its region.
    cy, cx = max(0, (ph - h) // 2), max(0, (pw - (b - a)) // 2)
    delta = piece.delta[cy : cy + h, cx : cx + (b - a)]
    pmask = piece.mask[cy : cy + h, cx : cx + (b - a)]
    ph, pw = pmask.shape
    y0 = int(rng.integers(0, h - ph + 1))
    x0 = a + int(rng.integers(0, b - a - pw + 1))
    img[y0 : y0 + ph, x0 : x0 + pw] += delta
    mask[y0 : y0 + ph, x0 : x0 + pw] |= pmask


def _choose_classes(rng: np.random.Generator) -> list[int]:
    """Defect classes for one image: none (about half), one, or rarely two distinct classes."""
    if rng.random() < DEFECT_FREE_PROB:
        return []
    classes = np.array(list(CLASS_WEIGHTS))
    p = np.array(list(CLASS_WEIGHTS.values()))
    first = int(rng.choice(classes, p=p / p.sum()))
    if rng.random() >= TWO_CLASS_PROB:
        return [first]
    keep = classes != first
    second = int(rng.choice(classes[keep], p=p[keep] / p[keep].sum()))
    return [first, second]


def render_sample(
    rng_or_seed: int | np.random.Generator | np.random.SeedSequence,
    shape: Sequence[int] = DEFAULT_SHAPE,
    classes: Iterable[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic steel image and its masks.

    ``classes`` forces the defect classes (``()`` for a defect-free image); by default about half the
    images are defect-free and the rest draw their classes with Kaggle-like frequencies.
    Returns ``(image uint8 (H, W, 3) grey in all three channels, masks uint8 0/1 (4, H, W))``; the masks
    of different classes never overlap.
    """
    rng = _as_rng(rng_or_seed)
    g = _Geom(*_check_shape(shape))
    chosen = _choose_classes(rng) if classes is None else [int(c) for c in classes]
    if len(set(chosen)) != len(chosen) or any(not 1 <= c <= NUM_CLASSES for c in chosen):
        raise ValueError(f"classes must be distinct values in 1..{NUM_CLASSES}, got {chosen!r}")
    img = _background(rng, g)
    a, b = _imaged_columns(rng, g)
    masks = np.zeros((NUM_CLASSES, g.h, g.w), dtype=bool)
    # Several classes get disjoint column ranges of the imaged part, so their masks cannot overlap.
    n = max(1, len(chosen))
    cuts = [a + (b - a) * i // n for i in range(n + 1)]
    for i, cls in enumerate(chosen):
        region = (cuts[i], cuts[i + 1])
        max_w_ref = (region[1] - region[0]) / g.sx
        for piece in _render_class(rng, g, cls, max_w_ref):
            _paste(rng, piece, img, masks[cls - 1], region)
    _black_out(rng, img, (a, b))
    img += np.float32(0.5)
    np.clip(img, 0.0, 255.0, out=img)
    grey = img.astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), masks.view(np.uint8)


# ---------------------------------------------------------------------------------------------- dataset


def image_ids(seed: int, n_train: int, n_test: int) -> tuple[list[str], list[str]]:
    """Kaggle-like ids (9 lowercase hex chars + ".jpg"), deterministic in ``seed``, unique across both splits.

    Id ``i`` of a split depends only on ``(seed, split, i)`` (plus, on a 36-bit collision, on the ids
    before it), so a larger set extends a smaller one with the same seed.
    """
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        ids = []
        for i in range(n):
            attempt = 0
            while True:
                ss = np.random.SeedSequence(seed, spawn_key=(_SPLITS[split], i, 1, attempt))
                name = f"{int(ss.generate_state(1, np.uint64)[0]) >> 28:09x}.jpg"
                if name not in seen:
                    break
                attempt += 1
            seen.add(name)
            ids.append(name)
        out[split] = ids
    return out["train"], out["test"]


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLITS[split], index, 0)))


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    def writer(tmp: str) -> None:
        if not cv2.imwrite(tmp, image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
            raise OSError(f"cv2.imwrite could not write {path}")

    atomic_save(path, writer)


def _render_chunk(
    args: tuple[str, int, str, list[tuple[int, str]], tuple[int, int]],
) -> list[tuple[str, list[tuple[int, str]]]]:
    """Render and write the images of one chunk; return ``(image_id, [(class, rle), ...])`` per image."""
    out, seed, split, items, shape = args
    folder = Path(out) / f"{split}_images"
    rows = []
    for index, image_id in items:
        image, masks = render_sample(_sample_rng(seed, split, index), shape)
        _write_jpeg(folder / image_id, image)  # grey in all channels, so RGB/BGR order does not matter
        labels = [(c + 1, rle_encode(masks[c])) for c in range(NUM_CLASSES) if masks[c].any()]
        rows.append((image_id, labels))
    return rows


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``; then remove the previous outputs (CSVs first)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output directory {out} is not empty; pass --overwrite (overwrite=True)")
        for name in _CSV_NAMES:  # CSVs go first: no csv may ever name an image that is gone
            (out / name).unlink(missing_ok=True)
        for split in _SPLITS:
            folder = out / f"{split}_images"
            if folder.is_dir():
                for f in folder.glob("*.jpg"):
                    f.unlink()
                left = sorted(p.name for p in folder.iterdir())
                if left:  # another image there would pass for a defect-free one: refuse rather than delete it
                    raise FileExistsError(
                        f"{folder} still holds files that are not generated images after --overwrite: "
                        f"{left[:5]}; move them away"
                    )
    out.mkdir(parents=True, exist_ok=True)
    for split in _SPLITS:
        (out / f"{split}_images").mkdir(exist_ok=True)


def _write_labels(path: Path, rows: list[tuple[str, list[tuple[int, str]]]]) -> None:
    lines = ["ImageId,ClassId,EncodedPixels\n"]
    for image_id, labels in sorted(rows):
        lines.extend(f"{image_id},{c},{rle}\n" for c, rle in sorted(labels))
    with atomic_write(path, newline="") as fh:
        fh.writelines(lines)


def _split_summary(rows: list[tuple[str, list[tuple[int, str]]]]) -> dict:
    n_labels = [len(labels) for _, labels in rows]
    per_class = {
        c: sum(any(lc == c for lc, _ in labels) for _, labels in rows) for c in range(1, NUM_CLASSES + 1)
    }
    return {
        "images": len(rows),
        "defect_free": sum(k == 0 for k in n_labels),
        "multi_label": sum(k >= 2 for k in n_labels),
        "class_images": per_class,
    }


def generate_dataset(
    out: str | Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    workers: int = 1,
    overwrite: bool = False,
    chunk_size: int = 16,
) -> dict:
    """Write a synthetic data set in Kaggle's layout under ``out`` and return a summary dict.

    The summary has ``out, shape, seed, seconds, images_per_s`` and, per split (``train``, ``test``),
    ``images, defect_free, multi_label, class_images {1..4: images with that class}``.
    The bytes written depend only on ``(seed, n_train, n_test, shape)``, not on ``workers``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    h, w = _check_shape(shape)
    for name, value in (("n_train", n_train), ("n_test", n_test), ("seed", seed), ("workers", workers)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if workers < 1 or chunk_size < 1:
        raise ValueError(f"workers and chunk_size must be >= 1, got {workers} and {chunk_size}")
    _prepare_out(out, overwrite)
    train_ids, test_ids = image_ids(seed, n_train, n_test)
    tasks = []
    for split, ids in (("train", train_ids), ("test", test_ids)):
        items = list(enumerate(ids))
        for i in range(0, len(items), chunk_size):
            tasks.append((str(out), seed, split, items[i : i + chunk_size], (h, w)))
    if workers == 1 or len(tasks) <= 1:
        results = [_render_chunk(t) for t in tasks]
    else:
        ctx = get_context("spawn")  # no fork of a possibly multi-threaded parent (OpenCV, torch)
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx, initializer=_worker_init) as ex:
            results = list(ex.map(_render_chunk, tasks))
    rows: dict[str, list] = {"train": [], "test": []}
    for task, res in zip(tasks, results, strict=True):
        rows[task[2]].extend(res)
    # CSVs last: every image they name is already on disk.
    _write_labels(out / "test_labels.csv", rows["test"])
    with atomic_write(out / "sample_submission.csv", newline="") as fh:
        fh.write("ImageId,EncodedPixels,ClassId\n")
        fh.writelines(f"{i},1 {h * w},0\n" for i in sorted(test_ids))
    _write_labels(out / "train.csv", rows["train"])
    seconds = time.perf_counter() - t0
    n = n_train + n_test
    return {
        "out": str(out),
        "shape": [h, w],
        "seed": int(seed),
        "train": _split_summary(rows["train"]),
        "test": _split_summary(rows["test"]),
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else float("inf"),
    }


def format_summary(summary: dict) -> str:
    """Short human-readable summary of :func:`generate_dataset`'s result."""
    h, w = summary["shape"]
    tr, te = summary["train"], summary["test"]
    lines = [
        f"Wrote {tr['images']} train + {te['images']} test images ({h}x{w}) to {summary['out']} "
        f"in {summary['seconds']:.1f} s ({summary['images_per_s']:.1f} images/s)"
    ]
    for name, s in (("train", tr), ("test", te)):
        n = s["images"]
        share = s["defect_free"] / n if n else 0.0
        per_class = ", ".join(f"class {c}: {k}" for c, k in s["class_images"].items())
        lines.append(
            f"  {name:5s}: defect-free {s['defect_free']}/{n} ({share:.1%}); images with {per_class}; "
            f"two or more classes: {s['multi_label']}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m steel_defect.synthetic",
        description="Write a synthetic Severstal-like data set (train/test images, train.csv, "
        "sample_submission.csv, test_labels.csv) in Kaggle's layout.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (must be empty or new)")
    parser.add_argument("--n-train", type=int, required=True, help="number of train images")
    parser.add_argument("--n-test", type=int, default=0, help="number of test images (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")
    parser.add_argument("--height", type=int, default=DEFAULT_SHAPE[0], help="image height (default 256)")
    parser.add_argument("--width", type=int, default=DEFAULT_SHAPE[1], help="image width (default 1600)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the outputs of a previous run in OUT"
    )
    args = parser.parse_args(argv)
    try:
        summary = generate_dataset(
            args.out,
            args.n_train,
            args.n_test,
            seed=args.seed,
            shape=(args.height, args.width),
            workers=args.workers,
            overwrite=args.overwrite,
        )
    except (FileExistsError, NotADirectoryError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(format_summary(summary))
    return summary


if __name__ == "__main__":
    main()
