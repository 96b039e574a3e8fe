"""Throughput of the synthetic data generator: images/s at 256x1600 for workers=1 (pinned to one core) and 2.

    .venv/bin/python bench/synthetic.py [--n 100] [--repeats 3] [--height 256 --width 1600]

Each run writes ``n`` train images (plus CSVs) into a fresh temporary folder; the table shows the median
over ``repeats`` runs, and a per-stage breakdown (render, JPEG write, RLE) of the single-core path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from steel_defect import DEFAULT_SHAPE, NUM_CLASSES  # noqa: E402
from steel_defect.rle import rle_encode  # noqa: E402
from steel_defect.synthetic import generate_dataset, render_sample  # noqa: E402


def _run(n: int, shape: tuple[int, int], workers: int, seed: int) -> float:
    """Seconds to generate ``n`` train images with ``workers`` processes into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="synthetic-bench-") as tmp:
        t0 = time.perf_counter()
        generate_dataset(Path(tmp) / "data", n_train=n, n_test=0, seed=seed, shape=shape, workers=workers)
        return time.perf_counter() - t0


def _stages(n: int, shape: tuple[int, int]) -> dict[str, float]:
    """Milliseconds per image for each stage of the single-process path."""
    times = {"render": 0.0, "jpeg write": 0.0, "rle encode": 0.0}
    with tempfile.TemporaryDirectory(prefix="synthetic-bench-") as tmp:
        for i in range(n):
            t0 = time.perf_counter()
            image, masks = render_sample(i, shape)
            t1 = time.perf_counter()
            if not cv2.imwrite(os.path.join(tmp, f"{i}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90]):
                raise OSError(f"cv2.imwrite failed in {tmp}")
            t2 = time.perf_counter()
            for c in range(NUM_CLASSES):
                if masks[c].any():
                    rle_encode(masks[c])
            t3 = time.perf_counter()
            times["render"] += t1 - t0
            times["jpeg write"] += t2 - t1
            times["rle encode"] += t3 - t2
    return {k: 1000.0 * v / n for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="images per run (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the median is shown")
    parser.add_argument("--height", type=int, default=DEFAULT_SHAPE[0])
    parser.add_argument("--width", type=int, default=DEFAULT_SHAPE[1])
    args = parser.parse_args()
    shape = (args.height, args.width)
    console = Console()

    table = Table(
        title=f"steel_defect.synthetic: {args.n} images at {shape[0]}x{shape[1]} (JPEG + CSV included)"
    )
    for col in ("workers", "cores", "median s", "images/s", "runs (s)"):
        table.add_column(col, justify="right")
    cpus = sorted(os.sched_getaffinity(0))
    threads = cv2.getNumThreads()
    settings = [(1, cpus[:1]), (2, cpus)]
    for workers, cores in settings:
        # workers=1 runs in this process, pinned to one core with OpenCV single-threaded: a true one-core figure.
        os.sched_setaffinity(0, cores)
        cv2.setNumThreads(1 if workers == 1 else threads)
        try:
            _run(min(args.n, 8), shape, workers, seed=999)  # warm-up (imports, page cache)
            runs = [_run(args.n, shape, workers, seed=r) for r in range(args.repeats)]
        finally:
            os.sched_setaffinity(0, cpus)
            cv2.setNumThreads(threads)
        med = statistics.median(runs)
        table.add_row(
            str(workers),
            str(len(cores)),
            f"{med:.2f}",
            f"{args.n / med:.1f}",
            ", ".join(f"{r:.2f}" for r in runs),
        )
    console.print(table)

    os.sched_setaffinity(0, cpus[:1])
    cv2.setNumThreads(1)
    try:
        stages = _stages(args.n, shape)
    finally:
        os.sched_setaffinity(0, cpus)
        cv2.setNumThreads(threads)
    breakdown = Table(title="single core, per image")
    breakdown.add_column("stage")
    breakdown.add_column("ms", justify="right")
    for k, v in stages.items():
        breakdown.add_row(k, f"{v:.2f}")
    breakdown.add_row("total", f"{sum(stages.values()):.2f}")
    console.print(breakdown)
    console.print(f"machine: {os.cpu_count()} CPUs visible, numpy {np.__version__}, OpenCV {cv2.__version__}")


if __name__ == "__main__":
    main()
