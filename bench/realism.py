"""How real does the synthetic data look? Label and texture statistics, synthetic vs real Severstal, per row.

    .venv/bin/python bench/realism.py [--n 400 --seed 0 | --synthetic DIR] [--real ../shared/data/severstal-real]
                                      [--json OUT.json]

Synthetic side: ``--n`` images rendered in memory by the current generator (JPEG-encoded at quality 90 and
decoded again, as ``generate_dataset`` writes them), or an existing Kaggle-layout folder (``--synthetic DIR``:
``train.csv`` + ``train_images/``), e.g. one written by an older generator.
Real side (``--real``): image-level label statistics from ``corpus/train_index.csv`` (all 12,568 training
images), object statistics from the real masks in ``corpus/train_masks.csv`` (~4,100 images), texture
statistics from the real images in ``train_images/`` + ``test_images/``.

Each row shows real, synthetic and their ratio; ``ok`` is the goal (within a factor of 1.5, shares within
+-0.1). Last rows: cross-validated accuracy of telling real from synthetic images (0.5 = indistinguishable;
``steel_defect.synthetic.realism.classifier_accuracy``): a logistic regression on the texture rows (which the
generator was matched to) and a random forest on spectral features it was never matched to.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from steel_defect.synthetic.realism import (
    class_set_stats,
    classifier_accuracy,
    masks_from_csv,
    object_stats,
    spectral_features,
    texture_features,
    texture_summary,
)

CLASSES = (1, 2, 3, 4)
SHAPE = (256, 1600)
DEFAULT_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "severstal-real"
#: Pairs shown as a share of the images with 2+ classes (the real ones that occur at least 1% of the time).
PAIRS = ((1, 2), (1, 3), (3, 4), (2, 3))


def real_stats(real: Path) -> dict:
    import pandas as pd

    idx = pd.read_csv(real / "corpus" / "train_index.csv", dtype={"class_ids": str}, keep_default_na=False)
    sets = [{int(c) for c in s.split("|")} if s else set() for s in idx["class_ids"]]
    objects = object_stats(
        (m for _, m in masks_from_csv(real / "corpus" / "train_masks.csv", CLASSES, SHAPE)), CLASSES
    )
    paths = sorted({*real.glob("train_images/*.jpg"), *real.glob("test_images/*.jpg")})
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    feats = [texture_features(g) for g in images]
    return {
        "spectral": np.stack([spectral_features(g) for g in images]),
        "sets": class_set_stats(sets, CLASSES),
        "objects": objects,
        "features": feats,
        "n_images": len(paths),
    }


def synthetic_stats_rendered(n: int, seed: int) -> dict:
    from steel_defect.synthetic import render_sample

    sets, masks, feats, spectral = [], [], [], []
    for i in range(n):
        img, m = render_sample(np.random.SeedSequence(seed, spawn_key=(0, i, 0)), SHAPE)
        ok, buf = cv2.imencode(".jpg", img[..., 0], [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        grey = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        feats.append(texture_features(grey))
        spectral.append(spectral_features(grey))
        per = {c: m[c - 1] for c in CLASSES if m[c - 1].any()}
        masks.append(per)
        sets.append(set(per))
    return {
        "sets": class_set_stats(sets, CLASSES),
        "objects": object_stats(masks, CLASSES),
        "features": feats,
        "spectral": np.stack(spectral),
    }


def synthetic_stats_folder(root: Path) -> dict:
    labelled = dict(masks_from_csv(root / "train.csv", CLASSES, SHAPE))
    names = sorted(p.name for p in (root / "train_images").glob("*.jpg"))
    if not names:
        raise FileNotFoundError(f"no images in {root / 'train_images'}")
    sets = [set(labelled.get(n, {})) for n in names]
    images = [cv2.imread(str(root / "train_images" / n), cv2.IMREAD_GRAYSCALE) for n in names]
    feats = [texture_features(g) for g in images]
    return {
        "spectral": np.stack([spectral_features(g) for g in images]),
        "sets": class_set_stats(sets, CLASSES),
        "objects": object_stats(labelled.values(), CLASSES),
        "features": feats,
    }


def rows(real: dict, syn: dict) -> list[tuple[str, float, float, str]]:
    """(name, real, synthetic, kind) with kind 'share' (goal +-0.1) or 'ratio' (goal within 1.5x)."""
    out = []
    rs, ss = real["sets"], syn["sets"]
    out.append(("defect-free share", rs["defect_free"], ss["defect_free"], "share"))
    out.append(("2+ classes share", rs["multi"], ss["multi"], "share"))
    r_multi, s_multi = rs["multi"] * rs["n_images"], ss["multi"] * ss["n_images"]
    for a, b in PAIRS:
        out.append(
            (
                f"pair {a}+{b} (share of 2+ images)",
                rs["pairs"].get((a, b), 0) / max(r_multi, 1),
                ss["pairs"].get((a, b), 0) / max(s_multi, 1),
                "share",
            )
        )
    for c in CLASSES:
        out.append((f"class {c}: image share", rs["class_share"][c], ss["class_share"][c], "share"))
        r, s = real["objects"][c].summary(), syn["objects"][c].summary()
        for key, label in (
            ("objects_per_image", "objects/image"),
            ("area", "median object area"),
            ("bbox_h", "median bbox height"),
            ("bbox_w", "median bbox width"),
        ):
            out.append((f"class {c}: {label}", r[key], s[key], "ratio"))
    rt, st = texture_summary(real["features"]), texture_summary(syn["features"])
    out.append(("black-band share", rt["band_share"], st["band_share"], "share"))
    for key, label in (
        ("anisotropy", "anisotropy |d/dx|/|d/dy|"),
        ("steel_mean", "steel grey mean"),
        ("steel_std", "steel grey std"),
        ("grain_std", "grain std"),
        ("column_profile_std", "column-profile std"),
        ("row_profile_std", "row-profile std"),
    ):
        out.append((f"texture: {label} (median)", rt[key], st[key], "ratio"))
    return out


def _ok(real: float, syn: float, kind: str) -> bool:
    if not (math.isfinite(real) and math.isfinite(syn)):
        return False
    if kind == "share":
        return abs(real - syn) <= 0.1
    return real > 0 and syn > 0 and max(real / syn, syn / real) <= 1.5


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="synthetic images to render (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--synthetic", type=Path, default=None, help="a Kaggle-layout synthetic folder instead"
    )
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if not (args.real / "corpus" / "train_index.csv").is_file():
        parser.exit(2, f"real data not found under {args.real} (need corpus/ and train_images/)\n")
    real = real_stats(args.real)
    syn = (
        synthetic_stats_folder(args.synthetic)
        if args.synthetic
        else synthetic_stats_rendered(args.n, args.seed)
    )
    table_rows = rows(real, syn)
    acc, acc_std = classifier_accuracy(real["features"], syn["features"])
    acc_rf, acc_rf_std = classifier_accuracy(real["spectral"], syn["spectral"], model="forest")
    source = str(args.synthetic) if args.synthetic else f"{args.n} images rendered now (seed {args.seed})"
    table = Table(title=f"Realism: synthetic ({source}) vs real Severstal")
    for col in ("statistic", "real", "synthetic", "ratio syn/real", "ok"):
        table.add_column(col, justify="left" if col == "statistic" else "right")
    n_ok = 0
    for name, r, s, kind in table_rows:
        ok = _ok(r, s, kind)
        n_ok += ok
        ratio = s / r if r else float("nan")
        table.add_row(name, f"{r:.3g}", f"{s:.3g}", f"{ratio:.2f}", "yes" if ok else "NO")
    table.add_row("classifier accuracy: logistic, texture rows", "-", f"{acc:.3f} +- {acc_std:.3f}", "-", "-")
    table.add_row("classifier accuracy: forest, spectra", "-", f"{acc_rf:.3f} +- {acc_rf_std:.3f}", "-", "-")
    console = Console(width=120)
    console.print(table)
    console.print(
        f"{n_ok}/{len(table_rows)} rows within the goal. Real: labels from corpus/train_index.csv (12,568 images) "
        f"and corpus/train_masks.csv; texture from {real['n_images']} real images. Classifiers (5-fold CV, "
        "balanced): logistic regression on the texture rows above (what the generator was matched to), random "
        "forest on power spectra + grey/gradient percentiles (never matched); 0.5 = cannot tell them apart."
    )
    result = {
        "synthetic": source,
        "rows": [
            {"statistic": n, "real": r, "synthetic": s, "kind": k, "ok": _ok(r, s, k)}
            for n, r, s, k in table_rows
        ],
        "classifier_accuracy": acc,
        "classifier_accuracy_std": acc_std,
        "classifier_accuracy_forest_spectra": acc_rf,
        "classifier_accuracy_forest_spectra_std": acc_rf_std,
        "rows_ok": n_ok,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
