"""Sim-to-real: train on synthetic images only, score on real Severstal steel.

    .venv/bin/python bench/sim2real.py [--minutes M] [--out logs/sim2real] [--real ../shared/data/severstal-real]
                                       [--skip-train] [-- extra train.py overrides ...]

1. The training run writes the demo's synthetic set with the current generator (1,000 train, 60 test images,
   class-balanced; ``conf/experiment/demo_cpu.yaml``) into ``OUT/data``.
2. Trains the ``make demo`` configuration (``experiment=demo_cpu``: offline-pretrained EfficientNet-Lite1
   U-Net, 256x320 crops) on it for the demo's fixed number of steps (360: about 10 minutes on this project's
   2-core CPU; a step budget, so that the LR schedule runs to its end and every machine trains the same
   model); ``--minutes`` stops it earlier if given. Thresholds are tuned at the end on the synthetic
   validation split, as in every training run.
3. Evaluates the best checkpoint with ``predict.py task=evaluate`` on the real labelled images
   (``REAL/train_images`` + ``REAL/train.csv``: never seen in training, never used for tuning) and on the
   synthetic test images, three ways each: tuned thresholds (from the synthetic validation split), the
   notebook's defaults, raw (0.5, no gates). Kaggle Dice per class and mean, beside the all-empty baseline.

Published anchor: Boikov et al. 2021 (Symmetry 13(7):1176) trained only on procedurally generated steel
defects and reached Dice 0.62 on real Severstal images (their Dice over defect images, not Kaggle's mean over
every (image, class) pair with empty-empty = 1, so the two figures are not directly comparable).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REAL = REPO.parent / "shared" / "data" / "severstal-real"
ANCHOR = "Boikov et al. 2021 (Symmetry 13(7):1176): Dice 0.62 on real Severstal, trained on procedural images"


def _run(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- {log} (tail) ---\n{tail}")


def _evaluate(ckpt: Path, images: Path, labels: Path, out: Path, thresholds: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    _run(
        [
            sys.executable,
            "predict.py",
            "task=evaluate",
            f"ckpt={ckpt}",
            f"data.images={images}",
            f"data.labels={labels}",
            f"thresholds={thresholds}",
            f"out={out / 'submission.csv'}",
            "num_workers=1",
        ],
        out / "predict.log",
    )
    return json.loads((out / "evaluation.json").read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="stop training after this long (default: the demo's steps)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "logs" / "sim2real")
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL)
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed (default 0)")
    parser.add_argument("--skip-train", action="store_true", help="evaluate the checkpoint already in --out")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (after --)")
    args = parser.parse_args(argv)
    real_images, real_labels = args.real / "train_images", args.real / "train.csv"
    if not real_labels.is_file():
        parser.exit(2, f"real labelled images not found: {real_labels}\n")
    data, run = args.out / "data", args.out / "run"
    ckpt = run / "checkpoints" / "best.ckpt"
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not args.skip_train:
        limit = []
        if args.minutes is not None:
            minutes = int(args.minutes)
            seconds = round((args.minutes - minutes) * 60)
            limit = [f"trainer.max_time=00:00:{minutes:02d}:{seconds:02d}"]
        _run(
            [
                sys.executable,
                "train.py",
                "experiment=demo_cpu",
                f"data.root={data}",  # generated there by the datamodule from the demo config
                f"data.synthetic.seed={args.seed}",
                f"hydra.run.dir={run}",
                *limit,
                *args.overrides,
            ],
            args.out / "train.log",
        )
    train_s = time.perf_counter() - t0
    if not ckpt.is_file():
        parser.exit(2, f"no checkpoint at {ckpt}\n")
    n_real = len(list(real_images.glob("*.jpg")))
    n_syn = len(list((data / "test_images").glob("*.jpg")))
    sets = {
        f"real ({n_real})": (real_images, real_labels),
        f"synthetic test ({n_syn})": (data / "test_images", data / "test_labels.csv"),
    }
    results: dict = {"train_seconds": train_s, "minutes_limit": args.minutes, "anchor": ANCHOR, "sets": {}}
    for name, (images, labels) in sets.items():
        tag = "real" if name.startswith("real") else "synthetic"
        results["sets"][name] = {
            mode: _evaluate(ckpt, images, labels, args.out / f"eval_{tag}_{mode}", mode)
            for mode in ("auto", "defaults", "raw")
        }
    console = Console(width=130)
    table = Table(title=f"Sim-to-real: demo config trained {train_s / 60:.1f} min on synthetic images only")
    for col in (
        "data",
        "thresholds",
        "class 1",
        "class 2",
        "class 3",
        "class 4",
        "mean",
        "all-empty",
        "gain",
    ):
        table.add_column(col, justify="left" if col in ("data", "thresholds") else "right")
    label = {"auto": "tuned (syn. val)", "defaults": "notebook", "raw": "raw 0.5"}
    for name, per_mode in results["sets"].items():
        for mode, ev in per_mode.items():
            d, b = ev["dice"], ev["baseline_empty"]
            table.add_row(
                name,
                label[mode],
                *(f"{v:.3f} ({e:.3f})" for v, e in zip(d["per_class"], b["per_class"], strict=True)),
                f"{d['mean']:.4f}",
                f"{b['mean']:.4f}",
                f"{d['mean'] - b['mean']:+.4f}",
            )
    console.print(table)
    console.print(
        "Per class: Dice (all-empty Dice). Real images: never trained or tuned on. Thresholds tuned on the "
        f"synthetic validation split. Training wall time incl. data generation: {train_s / 60:.1f} min.\n"
        f"Published anchor: {ANCHOR} (Dice over defect images, not the Kaggle mean: not directly comparable)."
    )
    (args.out / "sim2real.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
