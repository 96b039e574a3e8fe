"""Realism statistics: how much a data set looks like real Severstal steel, label- and pixel-wise.

Pure functions used by ``bench/realism.py`` (synthetic vs real, side by side) and by the derivation of the
synthetic generator's parameters (``python -m steel_defect.synthetic_params``):

* labels: per class the share of images with the class, connected components ("objects") per image, object
  area and bounding-box height/width; defect-free share, 2+ class share and class-pair counts;
* texture: smoothed-gradient anisotropy ``mean|d/dx| / mean|d/dy|`` after a Gaussian blur (real rolling
  texture runs along the image height, so > 1), off-steel black bands, grey mean/std of the steel pixels,
  fine-grain noise, column/row profile variation;
* real-vs-synthetic classifiers: cross-validated accuracy of a logistic regression on those texture
  features, and of a random forest on features the generator was never matched to (power spectra along
  both axes, grey-level percentiles, gradient percentiles): 0.5 = the two cannot be told apart, 1.0 =
  always told apart.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from steel_defect import DEFAULT_SHAPE

__all__ = [
    "BAND_LEVEL",
    "TEXTURE_KEYS",
    "ObjectTable",
    "black_band",
    "class_set_stats",
    "classifier_accuracy",
    "mask_objects",
    "masks_from_csv",
    "object_stats",
    "spectral_features",
    "texture_features",
    "texture_summary",
]

#: A row/column whose mean grey level is below this and whose std is below BAND_STD is "off steel" (real
#: bands read 0-4 with std 0-2; the darkest real steel reads 13-30 with std 5-13).
BAND_LEVEL = 15.0
BAND_STD = 5.0
#: Minimum band thickness as a fraction of the image width (left/right) or height (top/bottom).
BAND_MIN_FRACTION = 0.01
#: Gaussian blur (sigma, pixels at 256x1600) before the anisotropy gradients: removes JPEG/sensor grain.
ANISOTROPY_SIGMA = 2.0
#: Per-image texture features, in the order of :func:`texture_features`'s vector.
TEXTURE_KEYS: tuple[str, ...] = (
    "anisotropy",
    "steel_mean",
    "steel_std",
    "grain_std",
    "column_profile_std",
    "row_profile_std",
    "band_fraction",
)


# ======================================================================================================
# Labels
# ======================================================================================================
def mask_objects(mask: np.ndarray) -> np.ndarray:
    """8-connected components of a (H, W) 0/1 mask as an (k, 3) int array of ``area, bbox_h, bbox_w``."""
    m = np.ascontiguousarray(np.asarray(mask) > 0, dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    if not m.any():
        return np.zeros((0, 3), dtype=np.int64)
    _, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    s = stats[1:]
    return np.stack(
        [s[:, cv2.CC_STAT_AREA], s[:, cv2.CC_STAT_HEIGHT], s[:, cv2.CC_STAT_WIDTH]], axis=1
    ).astype(np.int64)


@dataclass
class ObjectTable:
    """Objects of one class: per object ``area, bbox_h, bbox_w`` and per image (with the class) the count."""

    objects: np.ndarray  # (k, 3) int64
    per_image: np.ndarray  # (n_images_with_class,) int64

    def summary(self) -> dict[str, float]:
        """Objects per image (mean), median object area and bounding-box height/width (NaN when empty)."""
        if len(self.per_image) == 0:
            return {k: float("nan") for k in ("objects_per_image", "area", "bbox_h", "bbox_w")}
        o = self.objects.astype(np.float64)
        return {
            "objects_per_image": float(self.per_image.mean()),
            "area": float(np.median(o[:, 0])),
            "bbox_h": float(np.median(o[:, 1])),
            "bbox_w": float(np.median(o[:, 2])),
        }


def masks_from_csv(
    path: str | os.PathLike, classes: Sequence[int], shape: Sequence[int] = DEFAULT_SHAPE
) -> Iterator[tuple[str, dict[int, np.ndarray]]]:
    """``(image_id, {class: (H, W) uint8 mask})`` for every image of a ground-truth csv (either Kaggle
    format), non-empty classes only; decoded one image at a time."""
    from steel_defect.data.annotations import read_train_csv
    from steel_defect.rle import rle_decode

    for row in read_train_csv(path, tuple(shape)).itertuples(index=False):
        per = {}
        for c in classes:
            rle = getattr(row, f"EncodedPixels_{c}")
            if isinstance(rle, str) and rle.strip():
                per[c] = rle_decode(rle, tuple(shape))
        yield row.ImageId, per


def object_stats(masks: Iterable[Mapping[int, np.ndarray]], classes: Sequence[int]) -> dict[int, ObjectTable]:
    """Per class, the objects of every non-empty mask in ``masks`` (one mapping class -> (H, W) mask per image)."""
    objs: dict[int, list[np.ndarray]] = {c: [] for c in classes}
    counts: dict[int, list[int]] = {c: [] for c in classes}
    for per_class in masks:
        for c, mask in per_class.items():
            if c not in objs:
                raise ValueError(f"class {c!r} is not one of {list(classes)}")
            o = mask_objects(mask)
            if len(o):
                objs[c].append(o)
                counts[c].append(len(o))
    return {
        c: ObjectTable(
            np.concatenate(objs[c]) if objs[c] else np.zeros((0, 3), np.int64),
            np.asarray(counts[c], dtype=np.int64),
        )
        for c in classes
    }


def class_set_stats(class_sets: Sequence[Iterable[int]], classes: Sequence[int]) -> dict:
    """Image-level label statistics from one set of classes per image (empty set = defect-free).

    Returns ``n_images``, ``defect_free`` (share), ``multi`` (share of all images with 2+ classes),
    ``class_share {c: share of all images with c}`` and ``pairs {(a, b): images with both}``.
    """
    sets = [frozenset(int(c) for c in s) for s in class_sets]
    n = len(sets)
    if n == 0:
        raise ValueError("class_set_stats needs at least one image")
    pairs: Counter = Counter()
    for s in sets:
        ordered = sorted(s)
        for i, a in enumerate(ordered):
            for b in ordered[i + 1 :]:
                pairs[(a, b)] += 1
    return {
        "n_images": n,
        "defect_free": sum(not s for s in sets) / n,
        "multi": sum(len(s) >= 2 for s in sets) / n,
        "class_share": {c: sum(c in s for s in sets) / n for c in classes},
        "pairs": dict(sorted(pairs.items())),
    }


# ======================================================================================================
# Texture
# ======================================================================================================
def _grey(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., 0] if img.shape[-1] in (1, 3, 4) else img
    if img.ndim != 2:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {np.shape(image)}")
    return img.astype(np.float32)


def _edge_run(dark: np.ndarray) -> int:
    """Length of the run of True at the start of a 1-D bool array."""
    off = np.flatnonzero(~dark)
    return int(len(dark) if off.size == 0 else off[0])


def black_band(image: np.ndarray, level: float = BAND_LEVEL) -> np.ndarray:
    """Bool (H, W) mask of the off-steel black band(s) touching an image edge (all False when none).

    A band is a run of whole columns (left/right) or rows (top/bottom), starting at the edge, whose mean grey
    level is below ``level`` and std below :data:`BAND_STD` (flat black), at least 1% of the image across.
    """
    g = _grey(image)
    h, w = g.shape
    band = np.zeros((h, w), dtype=bool)
    cols = (g.mean(axis=0) < level) & (g.std(axis=0) < BAND_STD)
    rows = (g.mean(axis=1) < level) & (g.std(axis=1) < BAND_STD)
    min_c, min_r = max(2, round(BAND_MIN_FRACTION * w)), max(2, round(BAND_MIN_FRACTION * h))
    left, right = _edge_run(cols), _edge_run(cols[::-1])
    top, bottom = _edge_run(rows), _edge_run(rows[::-1])
    if left >= min_c:
        band[:, :left] = True
    if right >= min_c:
        band[:, w - right :] = True
    if top >= min_r:
        band[:top] = True
    if bottom >= min_r:
        band[h - bottom :] = True
    return band


def texture_features(image: np.ndarray) -> dict[str, float]:
    """Per-image texture statistics (keys :data:`TEXTURE_KEYS`), over the steel pixels (band excluded).

    ``anisotropy``: mean |d/dx| / mean |d/dy| after a Gaussian blur (sigma 2 px at 256x1600, scaled);
    ``steel_mean``/``steel_std``: grey level of the steel pixels; ``grain_std``: std of the image minus its
    3x3 blur (fine grain); ``column_profile_std``/``row_profile_std``: std of the column/row means (vertical
    resp. horizontal streaks); ``band_fraction``: share of the image that is off-steel black band.
    """
    g = _grey(image)
    h, w = g.shape
    band = black_band(g)
    steel = ~band
    if steel.sum() < 0.05 * h * w:  # (almost) all band: no steel to measure
        nan = float("nan")
        return {**{k: nan for k in TEXTURE_KEYS}, "band_fraction": float(band.mean())}
    # Erode the steel region so band edges do not count as texture.
    inner = cv2.erode(steel.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    if inner.sum() < 0.02 * h * w:
        inner = steel
    sigma = ANISOTROPY_SIGMA * np.sqrt(h * w / (256 * 1600))
    blur = cv2.GaussianBlur(g, (0, 0), max(0.5, sigma))
    gx = np.abs(cv2.Sobel(blur, cv2.CV_32F, 1, 0, ksize=3))
    gy = np.abs(cv2.Sobel(blur, cv2.CV_32F, 0, 1, ksize=3))
    grain = g - cv2.blur(g, (3, 3))
    vals = g[steel]
    cols_with_steel = steel.any(axis=0)
    rows_with_steel = steel.any(axis=1)
    masked = np.where(steel, g, np.nan)
    with np.errstate(invalid="ignore"):
        col_means = np.nanmean(masked[:, cols_with_steel], axis=0)
        row_means = np.nanmean(masked[rows_with_steel], axis=1)
    return {
        "anisotropy": float(gx[inner].mean() / max(gy[inner].mean(), 1e-6)),
        "steel_mean": float(vals.mean()),
        "steel_std": float(vals.std()),
        "grain_std": float(grain[inner].std()),
        "column_profile_std": float(np.std(col_means)),
        "row_profile_std": float(np.std(row_means)),
        "band_fraction": float(band.mean()),
    }


def spectral_features(image: np.ndarray, bands: int = 8) -> np.ndarray:
    """Features the generator is not matched to: log power in ``bands`` octave bands of the mean 1-D power
    spectrum along x and along y, grey-level percentiles (5, 25, 50, 75, 95) and |gradient| percentiles
    (50, 90, 99) of the steel pixels. A (2 * bands + 8,) float64 vector (NaN where there is no steel)."""
    g = _grey(image)
    steel = ~black_band(g)
    out = np.full(2 * bands + 8, np.nan)
    rows_ok, cols_ok = steel.all(axis=1), steel.all(axis=0)
    if rows_ok.sum() < 8 or cols_ok.sum() < 8:
        return out
    sub = g[np.ix_(rows_ok, cols_ok)]
    sub = sub - sub.mean()
    for k, axis in enumerate((1, 0)):
        power = (np.abs(np.fft.rfft(sub, axis=axis)) ** 2).mean(axis=1 - axis)[1:]
        edges = np.geomspace(1, len(power) + 1, bands + 1).astype(int) - 1  # octave-like, never empty
        vals = [np.log1p(power[a : max(b, a + 1)].mean()) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        out[k * bands : (k + 1) * bands] = vals
    vals = g[steel]
    out[2 * bands : 2 * bands + 5] = np.percentile(vals, [5, 25, 50, 75, 95])
    grad = np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))[steel]
    out[2 * bands + 5 :] = np.percentile(grad, [50, 90, 99])
    return out


def texture_summary(features: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Medians of the per-image features (NaNs skipped) plus ``band_share``: images with a black band."""
    if not features:
        raise ValueError("texture_summary needs at least one image")
    out: dict[str, float] = {}
    for k in TEXTURE_KEYS:
        if k == "band_fraction":
            continue
        v = np.asarray([f[k] for f in features], dtype=np.float64)
        out[k] = float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")
    out["band_share"] = float(np.mean([f["band_fraction"] > 0 for f in features]))
    return out


def _feature_matrix(features: Sequence[Mapping[str, float]]) -> np.ndarray:
    x = np.asarray([[f[k] for k in TEXTURE_KEYS] for f in features], dtype=np.float64)
    x[:, 2:6] = np.log1p(np.maximum(x[:, 2:6], 0))  # scale-like features on a log scale
    return x


def classifier_accuracy(
    real: Sequence[Mapping[str, float]] | np.ndarray,
    synthetic: Sequence[Mapping[str, float]] | np.ndarray,
    folds: int = 5,
    seed: int = 0,
    model: str = "logistic",
) -> tuple[float, float]:
    """Cross-validated accuracy (mean, std over folds) of telling real from synthetic images.

    Inputs: per-image :func:`texture_features` dicts (log-scaled where scale-like), or (n, k) feature
    arrays such as :func:`spectral_features` rows. NaN -> column median. ``model``: ``logistic``
    (standardised, C=1) or ``forest`` (200 trees, ``seed``). Stratified ``folds``-fold CV on balanced
    classes (the larger side is subsampled with ``seed``).
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = min(len(real), len(synthetic))
    if n < folds:
        raise ValueError(f"classifier_accuracy needs at least {folds} images per side, got {n}")
    if model not in ("logistic", "forest"):
        raise ValueError(f"model must be 'logistic' or 'forest', got {model!r}")

    def matrix(side):
        return np.asarray(side, dtype=np.float64) if isinstance(side, np.ndarray) else _feature_matrix(side)

    rng = np.random.default_rng(seed)
    xr, xs = matrix(real), matrix(synthetic)
    xr = xr[np.sort(rng.choice(len(xr), n, replace=False))]
    xs = xs[np.sort(rng.choice(len(xs), n, replace=False))]
    x = np.vstack([xr, xs])
    med = np.nanmedian(x, axis=0)
    x = np.where(np.isnan(x), np.where(np.isnan(med), 0.0, med), x)
    y = np.r_[np.ones(n), np.zeros(n)]
    if model == "logistic":
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    else:
        clf = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(clf, x, y, cv=cv, scoring="accuracy")
    return float(scores.mean()), float(scores.std())
