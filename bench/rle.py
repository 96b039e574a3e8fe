"""Benchmark steel_defect.rle against the original notebook's RLE functions on real Kaggle strings.

Usage: ``.venv/bin/python bench/rle.py [--repeat N]``. Needs the shared folder beside the repository
(``../shared``): the real RLE strings come from ``data/severstal-samples`` and the baseline is imported
from ``reference/notebook_rle.py`` (never copied into the project).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAMPLES = SHARED / "data" / "severstal-samples"
REFERENCE = SHARED / "reference"
SHAPE = (256, 1600)  # the real strings are for Kaggle's 256x1600 images

sys.path.insert(0, str(REPO))  # run as a script: make the project importable without installing it
from steel_defect.rle import rle_decode, rle_encode  # noqa: E402


def load_strings() -> list[str]:
    """All non-empty RLE strings of train.csv and the legacy public-kernel submission."""
    strings: list[str] = []
    for name in ("train.csv", "public-kernel-submission-legacy.csv"):
        path = SAMPLES / name
        if not path.is_file():
            raise SystemExit(f"missing {path}: the benchmark needs the shared Severstal samples")
        column = pd.read_csv(path, dtype=str, keep_default_na=False)["EncodedPixels"]
        strings += [s for s in column if s.strip()]
    return strings


def best_ms(cases: dict[str, tuple[Callable[[object], object], list]], repeat: int) -> dict[str, float]:
    """Best total wall time, in ms, of each ``func`` over its ``items`` (timeit-style: best of ``repeat``).

    Repeats are interleaved across cases so that a burst of load on the machine hits every case alike, and each
    output is dropped at once so that every implementation pays for the same allocations.
    """
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeat):
        for name, (func, items) in cases.items():
            start = time.perf_counter()
            for item in items:
                func(item)
            best[name] = min(best[name], (time.perf_counter() - start) * 1e3)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed repeats; the best is reported")
    args = parser.parse_args(argv)
    if not (REFERENCE / "notebook_rle.py").is_file():
        raise SystemExit(f"missing {REFERENCE / 'notebook_rle.py'}: the baseline to compare against")
    sys.path.insert(0, str(REFERENCE))
    import notebook_rle

    strings = load_strings()
    nb_shape = SHAPE[::-1]  # the notebook takes (width, height)
    ours_masks = [rle_decode(s, SHAPE) for s in strings]
    nb_masks = [notebook_rle.rle2mask(s, shape=nb_shape) for s in strings]
    # The notebook's rle2mask returns a transposed view; encode C-contiguous copies for both (the usual input).
    masks = [np.ascontiguousarray(m) for m in nb_masks]

    ms = best_ms(
        {
            "nb decode": (lambda s: notebook_rle.rle2mask(s, shape=nb_shape), strings),
            # ours is C-contiguous; the notebook returns a transposed view that cv2 outputs or
            # torch .view() would first have to copy
            "nb decode contiguous": (
                lambda s: np.ascontiguousarray(notebook_rle.rle2mask(s, shape=nb_shape)),
                strings,
            ),
            "ours decode": (lambda s: rle_decode(s, SHAPE), strings),
            "nb encode": (notebook_rle.mask2rle, masks),
            "ours encode": (rle_encode, masks),
        },
        args.repeat,
    )
    rows = [
        ("decode", ms["nb decode"], ms["ours decode"]),
        ("decode, C-contiguous result", ms["nb decode contiguous"], ms["ours decode"]),
        ("encode", ms["nb encode"], ms["ours encode"]),
    ]
    same_decode = all(np.array_equal(a, b) for a, b in zip(ours_masks, nb_masks, strict=True))
    same_encode = all(
        rle_encode(m) == notebook_rle.mask2rle(m) == s for m, s in zip(masks, strings, strict=True)
    )

    header = ("operation", "n strings", "notebook ms total", "ours ms total", "speedup (notebook/ours)")
    table = [header] + [
        (op, str(len(strings)), f"{nb:.1f}", f"{ours:.1f}", f"{nb / ours:.2f}x") for op, nb, ours in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print(f"RLE benchmark: {len(strings)} real strings at {SHAPE[0]}x{SHAPE[1]}, best of {args.repeat}")
    for i, row in enumerate(table):
        print(
            "  ".join(
                cell.rjust(w) if j else cell.ljust(w)
                for j, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(
        f"outputs identical: decode {'yes' if same_decode else 'NO'}, "
        f"encode {'yes' if same_encode else 'NO'} (and equal to the original strings)"
    )
    if not (same_decode and same_encode):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
