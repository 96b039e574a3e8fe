"""Inference-time levers of the few-shot recipe, re-scored on trained runs without training again.

    .venv/bin/python bench/fewshot_rescore.py [--out logs/fewshot] [--variant recipe] [RUN_DIR ...]
        [--tta none hflip,vflip] [--min-gain-pairs 0 2]

``bench/fewshot.py`` trains the recipe once per (seed, outer fold) and keeps each run's folder: the fold
ensemble (``run/``), its training images (``train_data/``) and the held-out fold (``held_out/``). This script
takes those runs (every ``OUT/VARIANT/s*_f*`` by default, or the RUN_DIRs given) and, for each setting of
test-time augmentation (``--tta``) and of the out-of-fold "towards empty" rule (``--min-gain-pairs``: a class
is switched off unless its tuned out-of-fold Dice beats predicting nothing for it by at least that many
image-class pairs), redoes what the recipe does after training:

1. the out-of-fold probabilities: each training image predicted by the fold model that did not train on it;
2. one threshold search on them (``tune_thresholds``, the search ``task=tune_oof`` runs);
3. the held-out fold predicted by the ensemble (mean probabilities) and scored with those thresholds, with the
   notebook's default thresholds, and as an all-empty submission.

The table gives per setting the held-out Kaggle Dice minus all-empty (mean and sd over runs; every run has
the same number of held-out images) and per class, and the paired difference to the first setting (same
models, same images). With 9 held-out images a run's mean moves by 1/36 = 0.028 per image-class pair: call
nothing under about 0.02 a gain.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from steel_defect.data.splits import load_split  # noqa: E402
from steel_defect.inference.calibrate import collect_tuning_stats  # noqa: E402
from steel_defect.inference.predictor import iter_probabilities, load_nets  # noqa: E402
from steel_defect.postprocess.params import PostprocessParams  # noqa: E402
from steel_defect.postprocess.tuning import TuningStats, stats_for, tune_thresholds  # noqa: E402
from steel_defect.run_record import resolve_model  # noqa: E402
from steel_defect.tasks.common import labelled_loader  # noqa: E402


def _loader(ids: list[str], root: Path, split_path: Path, num_classes: int):
    return labelled_loader(
        ids, root / "train_images", root / "train.csv", split_path, 4, 0, torch.device("cpu"), num_classes
    )


def run_stats(work: Path, tta: tuple[str, ...]) -> tuple[TuningStats, TuningStats, PostprocessParams]:
    """(out-of-fold stats, held-out ensemble stats, the nets' base params) of one bench run folder."""
    ckpts, _ = resolve_model(work / "run")
    nets, metas = load_nets(ckpts, "cpu", "torch")
    k = len(metas[0]["classes"])
    post = metas[0].get("postprocess")
    base = PostprocessParams.from_dict(post, k) if post else PostprocessParams.for_classes(k)
    kwargs = stats_for(base, ("plain",), k)
    oof = TuningStats(**kwargs)
    for net, ckpt in zip(nets, ckpts, strict=True):
        split_path = ckpt.resolve().parent.parent / "split.json"
        loader = _loader(list(load_split(split_path)["val"]), work / "train_data", split_path, k)
        for batch, mask_probs, class_probs, image_probs in iter_probabilities(net, loader, "cpu", tta):
            oof.update(
                mask_probs.numpy(),
                class_probs.numpy(),
                batch["mask"].numpy() > 0.5,
                None if image_probs is None else image_probs.numpy(),
            )
    held_ids = sorted(p.name for p in (work / "held_out" / "train_images").iterdir())
    held_csv = work / "held_out" / "train.csv"
    held = collect_tuning_stats(nets, _loader(held_ids, work / "held_out", held_csv, k), "cpu", tta, **kwargs)
    return oof, held, base


def score_run(work: Path, settings: list[tuple[tuple[str, ...], int]]) -> dict[str, dict]:
    """Held-out per-class Dice of every setting (plus notebook defaults and all-empty) for one run."""
    out: dict[str, dict] = {}
    by_tta: dict[tuple[str, ...], tuple] = {}
    for tta, gain in settings:
        if tta not in by_tta:
            by_tta[tta] = run_stats(work, tta)
        oof, held, base = by_tta[tta]
        params, _ = tune_thresholds(oof, base=base, min_gain=gain / len(oof))
        k = base.num_classes
        empty = dataclasses.replace(base, max_area=[0] * k, min_area=[None] * k)  # every class off
        out[label(tta, gain)] = {
            "tuned": held.dice_per_class(params),
            "defaults": held.dice_per_class(base),
            "empty": held.dice_per_class(empty),
            "n_oof": len(oof),
        }
    return out


def label(tta: tuple[str, ...], gain: int) -> str:
    return f"tta={','.join(tta) or 'none'} min_gain_pairs={gain}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="bench run folders (default: OUT/VARIANT/s*_f*)")
    parser.add_argument("--out", type=Path, default=REPO / "logs" / "fewshot")
    parser.add_argument("--variant", default="recipe")
    parser.add_argument("--tta", nargs="+", default=["none", "hflip,vflip"])
    parser.add_argument("--min-gain-pairs", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--json", type=Path, default=None, help="also write the per-run figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    runs = args.runs or sorted(p for p in (args.out / args.variant).glob("s*_f*") if (p / "run").is_dir())
    if not runs:
        raise SystemExit(f"no bench runs under {args.out / args.variant} (run bench/fewshot.py first)")
    settings = [
        (tuple(t for t in tta.split(",") if t and t != "none"), gain)
        for tta in args.tta
        for gain in args.min_gain_pairs
    ]
    per_run = {}
    for work in runs:
        per_run[str(work)] = score_run(work, settings)
        print(f"scored {work}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(per_run, indent=1), encoding="utf-8")
    print_table(per_run, [label(*s) for s in settings], len(runs))


def print_table(per_run: dict[str, dict], labels: list[str], n_runs: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"few-shot inference levers, held-out real images, {n_runs} runs (bench/fewshot.py)")
    for col in ("setting", "thresholds", "Dice - empty (sd)", "per class", "paired vs first row"):
        table.add_column(col)
    first = None
    for name in labels:
        for kind in ("tuned", "defaults"):
            if kind == "defaults" and name != labels[0] and not name.endswith("min_gain_pairs=0"):
                continue
            dice = np.asarray([r[name][kind] for r in per_run.values()])  # (runs, classes)
            empty = np.asarray([r[name]["empty"] for r in per_run.values()])
            delta = dice.mean(1) - empty.mean(1)
            first = delta if first is None else first
            table.add_row(
                name,
                "out-of-fold tuned" if kind == "tuned" else "notebook defaults",
                f"{delta.mean():+.4f} ({delta.std(ddof=1) if len(delta) > 1 else float('nan'):.4f})",
                " ".join(f"{d:+.3f}" for d in (dice - empty).mean(0)),
                f"{(delta - first).mean():+.4f}",
            )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
