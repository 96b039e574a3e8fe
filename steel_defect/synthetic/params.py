"""The generator's parameters, derived from real Severstal statistics (never from copied images or masks).

``params.json`` beside this file is what the generator uses; it is written by::

    python -m steel_defect.synthetic.params --real ../shared/data/severstal-real [--out FILE]

from three real sources (``--real`` is the folder described in its README):

* ``corpus/train_index.csv`` (all 12,568 training images): the probability of every combination of classes
  per image (defect-free, one class, class pairs), i.e. class frequencies and co-occurrence;
* ``corpus/train_masks.csv`` (real masks of ~4,100 images, as RLE): per class the histogram of objects
  (8-connected components) per image and quantiles of object bounding-box height, width and fill ratio
  (area / box area), plus the rank correlation of height and width;
* the real images (``train_images/`` + ``test_images/``): quantiles of the per-image texture statistics of
  :mod:`steel_defect.synthetic.realism` (steel grey mean/std, grain, column/row profiles, anisotropy) and the
  black off-steel band (share of images, width quantiles, side).

Only summary numbers (probabilities, quantiles, a correlation) are stored: a few hundred floats.

``--out`` may not lie inside ``--real``, and an existing ``--out`` is replaced only when it is a parameters
file (a JSON object with the keys :func:`derive_params` writes); both are checked before the derivation.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steel_defect.guard import UnsafeWriteError, refuse_onto_inputs, refuse_unless_own
from steel_defect.io import atomic_write

__all__ = [
    "PARAMS_PATH",
    "QUANTILES",
    "check_out",
    "derive_params",
    "is_params_file",
    "load_params",
    "main",
    "sample_quantiles",
]

PARAMS_PATH = Path(__file__).with_name("params.json")
#: Quantile levels stored for every distribution (0, 5, ..., 100 %).
QUANTILES: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
#: Objects-per-image histograms are capped here (the last bin holds "this many or more").
MAX_OBJECTS = 12
REFERENCE_SHAPE = (256, 1600)
#: The keys of a parameters file: those :func:`load_params` needs, and all that :func:`derive_params` writes.
REQUIRED_KEYS = frozenset({"class_sets", "objects", "texture", "band"})
PARAM_KEYS = REQUIRED_KEYS | {"reference_shape", "quantile_levels", "sources"}
#: A parameters file is a few KB; a larger JSON file is not one.
MAX_PARAMS_BYTES = 16_000_000


def sample_quantiles(rng: np.random.Generator, q: Sequence[float], u: float | None = None) -> float:
    """Inverse-CDF sample from stored quantiles (piecewise linear between the :data:`QUANTILES` levels)."""
    u = rng.random() if u is None else u
    return float(np.interp(u, QUANTILES, q))


@functools.cache
def load_params(path: str | None = None) -> dict[str, Any]:
    """The committed parameters (``params.json``), or another file written by :func:`derive_params`."""
    p = PARAMS_PATH if path is None else Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read synthetic-generator parameters {p}: {err}") from err
    missing = REQUIRED_KEYS - set(doc)
    if missing:
        raise ValueError(f"{p}: missing keys {sorted(missing)}")
    return doc


def _q(values: Sequence[float] | np.ndarray) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no finite values to take quantiles of")
    return [round(float(x), 4) for x in np.quantile(v, QUANTILES)]


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (independent of the sort algorithm)."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse.ravel()]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def _class_sets(index_csv: Path) -> dict[str, float]:
    import pandas as pd

    idx = pd.read_csv(index_csv, dtype={"class_ids": str}, keep_default_na=False)
    if "class_ids" not in idx.columns:
        raise ValueError(f"{index_csv}: no class_ids column (columns: {list(idx.columns)})")
    counts = Counter("|".join(sorted(s.split("|"))) if s else "" for s in idx["class_ids"])
    n = sum(counts.values())
    return {k: round(v / n, 6) for k, v in sorted(counts.items())}


def _objects(masks_csv: Path, classes: Sequence[int]) -> dict[str, Any]:
    from steel_defect.synthetic.realism import masks_from_csv, object_stats

    tables = object_stats((m for _, m in masks_from_csv(masks_csv, classes, REFERENCE_SHAPE)), classes)
    out: dict[str, Any] = {}
    for c, t in tables.items():
        o = t.objects.astype(np.float64)
        hist = np.bincount(np.minimum(t.per_image, MAX_OBJECTS), minlength=MAX_OBJECTS + 1)[1:]
        out[str(c)] = {
            "images": int(len(t.per_image)),
            "count_probs": [round(float(v), 6) for v in hist / hist.sum()],
            "height_q": _q(o[:, 1]),
            "width_q": _q(o[:, 2]),
            "fill_q": _q(o[:, 0] / (o[:, 1] * o[:, 2])),
            "rho_hw": round(_spearman(o[:, 1], o[:, 2]), 4),
        }
    return out


def _texture(image_paths: Sequence[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    import cv2

    from steel_defect.synthetic.realism import TEXTURE_KEYS, black_band, texture_features

    feats, widths, sides = [], [], Counter()
    for p in image_paths:
        g = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if g is None:
            raise ValueError(f"cannot read image {p}")
        feats.append(texture_features(g))
        band = black_band(g)
        if band.any():
            h, w = band.shape
            if band[:, 0].all() or band[:, -1].all():
                side = "left" if band[:, 0].all() else "right"
                widths.append(band[h // 2].mean())
            else:
                side = "top" if band[0].all() else "bottom"
                widths.append(band[:, w // 2].mean())
            sides[side] += 1
    texture = {f"{k}_q": _q([f[k] for f in feats]) for k in TEXTURE_KEYS if k != "band_fraction"}
    n_band = sum(sides.values())
    band = {
        "share": round(n_band / len(feats), 4),
        "fraction_q": _q(widths) if widths else [0.0] * len(QUANTILES),
        "sides": {s: round(sides[s] / max(1, n_band), 4) for s in ("left", "right", "top", "bottom")},
        "images": len(feats),
    }
    return texture, band


def derive_params(real: str | Path, classes: Sequence[int] = (1, 2, 3, 4)) -> dict[str, Any]:
    """Derive the generator's parameters from a real-data folder (layout: see the module docstring)."""
    real = Path(real)
    index, masks = real / "corpus" / "train_index.csv", real / "corpus" / "train_masks.csv"
    images = sorted({*real.glob("train_images/*.jpg"), *real.glob("test_images/*.jpg")})
    for need in (index, masks):
        if not need.is_file():
            raise FileNotFoundError(f"real statistics need {need}")
    if not images:
        raise FileNotFoundError(f"no real images under {real}/train_images or {real}/test_images")
    texture, band = _texture(images)
    return {
        "reference_shape": list(REFERENCE_SHAPE),
        "quantile_levels": list(QUANTILES),
        "class_sets": _class_sets(index),
        "objects": _objects(masks, classes),
        "texture": texture,
        "band": band,
        "sources": {
            "class_sets": "corpus/train_index.csv: share of the images with each set of classes "
            "('' = defect-free, '3|4' = classes 3 and 4)",
            "objects": "corpus/train_masks.csv: per class, 8-connected components of the real masks at "
            "256x1600: objects-per-image histogram (count_probs[k-1] = P(k objects), last bin k>=12), "
            "quantiles of bbox height/width and fill = area/(height*width), Spearman rho of height and width",
            "texture": f"{len(images)} real images (train_images + test_images): quantiles of the per-image "
            "steel_defect.synthetic.realism.texture_features",
            "band": "the same images: share with an off-steel black band (realism.black_band), quantiles "
            "of its thickness as a fraction of the image across, and which side it is on",
        },
    }


def is_params_file(path: Path) -> bool:
    """True when ``path`` is a JSON object whose keys are those of a parameters file (:data:`PARAM_KEYS`,
    at least :data:`REQUIRED_KEYS`): what :func:`main` writes."""
    try:
        if path.stat().st_size > MAX_PARAMS_BYTES:
            return False
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(doc, dict) and REQUIRED_KEYS <= set(doc) <= PARAM_KEYS


def check_out(out: str | os.PathLike, real: str | os.PathLike) -> None:
    """Refuse an ``out`` inside (or above) the ``real`` input folder, or an existing non-parameters file."""
    refuse_onto_inputs(out, what="--out", input_dirs=[real])
    refuse_unless_own(out, is_params_file, what="--out", kind="synthetic-generator parameters JSON")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m steel_defect.synthetic.params",
        description="Derive the synthetic generator's parameters from real Severstal statistics.",
    )
    parser.add_argument("--real", type=Path, required=True, help="the severstal-real folder")
    parser.add_argument("--out", type=Path, default=PARAMS_PATH, help=f"output JSON (default {PARAMS_PATH})")
    args = parser.parse_args(argv)
    try:
        check_out(args.out, args.real)  # before the (long) derivation and the write
    except UnsafeWriteError as err:
        parser.exit(2, f"error: {err}\n")
    params = derive_params(args.real)
    with atomic_write(args.out, "w", encoding="utf-8") as fh:
        json.dump(params, fh, indent=1)
        fh.write("\n")
    print(f"wrote {args.out}")
    return params


if __name__ == "__main__":
    main()
