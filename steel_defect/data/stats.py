"""Data-set statistics as printed by the original notebook's EDA.

``python -m steel_defect.data.stats --root DIR [--csv train.csv] [--images train_images]`` prints images per
class, images with no / one / two or more labels, per-class mask-area statistics (like pandas ``describe``
of the per-image area) and suggested per-class area limits from the 2nd and 98th percentiles.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from steel_defect import DEFAULT_SHAPE, NUM_CLASSES
from steel_defect.data.annotations import load_annotations
from steel_defect.rle import rle_area

__all__ = ["AREA_STAT_KEYS", "compute_stats", "area_limits", "print_stats", "main"]

#: Keys of each class's area statistics, in pandas ``describe`` order.
AREA_STAT_KEYS: tuple[str, ...] = ("count", "mean", "std", "min", "25%", "50%", "75%", "max")
_CLASSES = tuple(range(1, NUM_CLASSES + 1))


def _rle_columns(df: pd.DataFrame) -> list[str]:
    cols = [f"EncodedPixels_{c}" for c in _CLASSES]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(
            f"compute_stats needs the wide annotation frame (load_annotations); missing columns {missing}, "
            f"got {list(df.columns)}"
        )
    return cols


def _is_empty(rle: object) -> bool:
    return rle is None or (isinstance(rle, float) and math.isnan(rle)) or str(rle).strip() == ""


def area_limits(areas: Sequence[float] | np.ndarray, low: float = 2.0, high: float = 98.0) -> tuple[int, int]:
    """Suggested (min, max) area: the ``low``/``high`` percentiles rounded down/up to the nearest 100."""
    arr = np.asarray(areas, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("area_limits needs at least one area")
    lo, hi = np.percentile(arr, [low, high])
    return int(math.floor(lo / 100.0) * 100), int(math.ceil(hi / 100.0) * 100)


def compute_stats(df: pd.DataFrame, shape: Sequence[int] = DEFAULT_SHAPE) -> dict:
    """Statistics of a wide annotation frame (columns ``ImageId, EncodedPixels_1..4``; ``""`` = no defect).

    Returns a dict with ``n_images``, ``images_per_class {c: n}``, ``no_defect``, ``one_label``,
    ``multi_label`` (two or more classes), ``area {c: {count, mean, std, min, 25%, 50%, 75%, max}}`` (per-image
    mask area in pixels, ``std`` with ddof=1 like pandas; NaN where undefined) and ``area_limits {c: (min,
    max)}`` (2nd/98th percentile rounded to 100; ``None`` for a class without images).
    Areas come from :func:`steel_defect.rle.rle_area` and are validated against ``shape``.
    """
    cols = _rle_columns(df)
    shape = (int(shape[0]), int(shape[1]))
    flags = np.array([[not _is_empty(v) for v in df[col]] for col in cols], dtype=bool).reshape(
        NUM_CLASSES, -1
    )
    n_labels = flags.sum(axis=0)
    area: dict[int, dict[str, float]] = {}
    limits: dict[int, tuple[int, int] | None] = {}
    for c, col in zip(_CLASSES, cols, strict=True):
        rles = df[col].to_numpy()[flags[c - 1]]
        areas = []
        for image_id, rle in zip(df["ImageId"].to_numpy()[flags[c - 1]], rles, strict=True):
            try:
                areas.append(rle_area(str(rle), shape))
            except ValueError as err:
                raise ValueError(f"{col} of image {image_id!r}: {err}") from err
        described = pd.Series(areas, dtype=np.float64).describe()
        area[c] = {k: float(described[k]) if k in described else math.nan for k in AREA_STAT_KEYS}
        limits[c] = area_limits(areas) if areas else None
    return {
        "n_images": len(df),
        "images_per_class": {c: int(flags[c - 1].sum()) for c in _CLASSES},
        "no_defect": int((n_labels == 0).sum()),
        "one_label": int((n_labels == 1).sum()),
        "multi_label": int((n_labels >= 2).sum()),
        "area": area,
        "area_limits": limits,
    }


def _fmt(value: float, digits: int = 1) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.{digits}f}"


def print_stats(
    stats: dict, console: Console | None = None, title: str = "", set_name: str = "train set"
) -> None:
    """Print :func:`compute_stats`'s result as the notebook did, with rich tables."""
    console = console or Console()
    n = stats["n_images"]
    per_class = stats["images_per_class"]
    if title:
        console.rule(title)
    console.print(f"No. of Images in {set_name}: {n}")
    console.print("No. of Images having: " + ", ".join(f"Label {c} = {k}" for c, k in per_class.items()))
    console.print(
        f"No. of Images with no defects: {stats['no_defect']}, with only one label: {stats['one_label']}, "
        f"with two or more labels: {stats['multi_label']}"
    )

    def share(k: int) -> str:
        return f"{k / n:.1%}" if n else "-"

    t = Table(title="Images per class")
    for col in ("class", "images", "share of images"):
        t.add_column(col, justify="right")
    for c, k in per_class.items():
        t.add_row(str(c), str(k), share(k))
    console.print(t)

    t = Table(title="Labels per image")
    for col in ("labels", "images", "share of images"):
        t.add_column(col, justify="right")
    for name, key in (
        ("no defect", "no_defect"),
        ("exactly one", "one_label"),
        ("two or more", "multi_label"),
    ):
        t.add_row(name, str(stats[key]), share(stats[key]))
    console.print(t)

    t = Table(title="Mask area per class (pixels per image)")
    t.add_column("class")
    for k in AREA_STAT_KEYS:
        t.add_column(k, justify="right")
    for c, d in stats["area"].items():
        t.add_row(f"Defect_{c}", *(_fmt(d[k]) for k in AREA_STAT_KEYS))
    console.print(t)

    t = Table(title="Suggested area limits (p2 / p98, to 100)")
    for col in ("class", "min", "max"):
        t.add_column(col, justify="right")
    for c, lim in stats["area_limits"].items():
        t.add_row(f"defect_{c}", *(("-", "-") if lim is None else (str(lim[0]), str(lim[1]))))
    console.print(t)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m steel_defect.data.stats",
        description="Print the EDA statistics of a Severstal-layout data set (images per class, labels per "
        "image, mask areas, suggested area limits).",
    )
    parser.add_argument(
        "--root", type=Path, required=True, help="data folder (holds the csv and image folder)"
    )
    parser.add_argument("--csv", default="train.csv", help="annotation csv inside ROOT (default train.csv)")
    parser.add_argument(
        "--images", default="train_images", help="image folder inside ROOT (default train_images)"
    )
    parser.add_argument("--height", type=int, default=DEFAULT_SHAPE[0], help="image height (default 256)")
    parser.add_argument("--width", type=int, default=DEFAULT_SHAPE[1], help="image width (default 1600)")
    args = parser.parse_args(argv)
    shape = (args.height, args.width)
    df = load_annotations(args.root, csv=args.csv, images=args.images, shape=shape)
    stats = compute_stats(df, shape)
    console = Console()
    if not console.is_terminal:  # piped or captured: wide enough for the area table
        console = Console(width=max(console.width, 120))
    title = f"{args.root / args.csv} ({args.images}, {shape[0]}x{shape[1]})"
    print_stats(stats, console, title=title, set_name=args.images.removesuffix("_images") + " set")
    return stats


if __name__ == "__main__":
    main()
