"""``task=tune`` (threshold search on the run's validation split -> ``thresholds.yaml`` beside the
checkpoint) and ``task=tune_oof``, k-fold end to end: one threshold search on the pooled out-of-fold predictions of every fold.

``python train.py -m data/split=kfold data.split.fold=0,1,2,3,4`` trains one checkpoint per fold, each
writing ``<run>/split.json``. ``python predict.py task=tune_oof ckpt=[f0.ckpt,...,f4.ckpt] data.root=DIR``
then predicts each fold's validation part with that fold's checkpoint only (so every prediction is
out-of-fold), pools all of them into one :class:`~steel_defect.postprocess.tuning.TuningStats` and tunes one
``thresholds.yaml`` for the ensemble of the fold checkpoints (``predict.py ckpt=[...] thresholds=FILE``).
The pooled set is the whole training set, so the thresholds rest on 5x the images a single fold has.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from steel_defect.data.splits import load_split
from steel_defect.inference.calibrate import (
    TuneOptions,
    base_params,
    collect_tuning_stats,
    new_tuning_stats,
    tune_and_save,
)
from steel_defect.inference.folder import progress_bar, stderr_console
from steel_defect.postprocess.thresholds import THRESHOLDS_FILE
from steel_defect.postprocess.tuning import format_tuning_report
from steel_defect.tasks.common import labelled_loader, load_predictor, tuning_sources
from steel_defect.tasks.config import PredictConfig

__all__ = ["check_folds", "oof_output_path", "run_tune_oof"]


def check_folds(splits: Sequence[dict[str, Any]], paths: Sequence[Path]) -> None:
    """Refuse fold splits that are not the folds of one k-fold split: every split kind kfold, the same
    n_splits and seed, distinct folds, disjoint validation parts (each error names the split files)."""
    cfgs = [dict(s.get("cfg") or {}) for s in splits]
    for cfg, path in zip(cfgs, paths, strict=True):
        if cfg.get("kind") != "kfold":
            raise ValueError(
                f"{path}: task=tune_oof needs k-fold runs (data/split=kfold), this split is {cfg.get('kind')!r}"
            )
    same = {(c.get("n_splits"), c.get("seed")) for c in cfgs}
    if len(same) != 1:
        detail = ", ".join(
            f"{p}: n_splits={c.get('n_splits')} seed={c.get('seed')}"
            for c, p in zip(cfgs, paths, strict=True)
        )
        raise ValueError(f"the checkpoints come from different k-fold splits ({detail})")
    folds = [c.get("fold") for c in cfgs]
    if len(set(folds)) != len(folds):
        raise ValueError(
            f"two checkpoints are of the same fold: folds {folds} from {[str(p) for p in paths]}"
        )
    n_splits = int(cfgs[0].get("n_splits") or 0)
    if sorted(folds) != list(range(n_splits)):
        raise ValueError(
            f"task=tune_oof needs the checkpoint of every fold 0..{n_splits - 1} (the pooled set is then the "
            f"whole training set); got folds {sorted(folds)} from {[str(p) for p in paths]}"
        )
    seen: dict[str, Path] = {}
    for split, path in zip(splits, paths, strict=True):
        for image_id in split["val"]:
            if image_id in seen:
                raise ValueError(
                    f"validation image {image_id!r} is in both {seen[image_id]} and {path}: not one k-fold split"
                )
            seen[image_id] = path


def oof_output_path(out: Path, ckpts: Sequence[Path]) -> Path:
    """Where tune_oof writes: ``out`` when it is a .yaml path, else ``thresholds.yaml`` in the folder that
    holds every fold's run (the multirun folder)."""
    if out.suffix.lower() in (".yaml", ".yml"):
        return out
    runs = [str(p.resolve().parent.parent) for p in ckpts]
    return Path(os.path.commonpath(runs)) / "thresholds.yaml"


def _fold_splits(c: PredictConfig) -> tuple[list[dict[str, Any]], list[Path]]:
    """The fold splits of tune_oof's checkpoints (each run's own split.json), checked to be one k-fold."""
    if len(c.ckpt) < 2:
        raise ValueError(
            "task=tune_oof needs the checkpoints of every fold: ckpt=[fold0.ckpt,fold1.ckpt,...]"
        )
    if c.split is not None:
        raise ValueError("task=tune_oof reads each fold's own <run>/split.json; do not set data.split")
    split_paths = [p.resolve().parent.parent / "split.json" for p in c.ckpt]
    for path, ckpt in zip(split_paths, c.ckpt, strict=True):
        if not path.is_file():
            raise FileNotFoundError(f"{ckpt}: its run's split file {path} is missing (train.py writes it)")
    splits = [load_split(p) for p in split_paths]
    check_folds(splits, split_paths)
    return splits, split_paths


def _options(c: PredictConfig) -> TuneOptions:
    return TuneOptions(pix_modes=c.pix_modes, tta=c.tta, min_gain_pairs=c.min_gain_pairs)


def run_tune_oof(c: PredictConfig) -> dict[str, Any]:
    """task=tune_oof (see the module docstring); writes :func:`oof_output_path` and returns the report."""
    from rich.console import Console

    console = Console()
    splits, split_paths = _fold_splits(c)
    images, labels = tuning_sources(c)
    predictor = load_predictor(c)
    nets, device, k = predictor.nets, predictor.device, predictor.num_classes
    base, options = base_params(predictor.metas[0], k), _options(c)
    stats = new_tuning_stats(base, options, k)
    folds = []
    for net, split, path, ckpt in zip(nets, splits, split_paths, c.ckpt, strict=True):
        ids = list(split["val"])
        loader = labelled_loader(ids, images, labels, path, c.batch_size, c.num_workers, device, k)
        collect_tuning_stats(net, loader, device, c.tta, predictor.amp, stats=stats)
        folds.append({"checkpoint": str(ckpt), "fold": split["cfg"]["fold"], "val_images": len(ids)})
        console.print(
            f"fold {split['cfg']['fold']}: {len(ids)} out-of-fold images from {ckpt}", highlight=False
        )
    out = oof_output_path(Path(c.out), c.ckpt)
    params, report = tune_and_save(
        out,
        "tune_oof",
        c.ckpt,
        predictor.fingerprints(),
        stats=stats,
        base=base,
        options=options,
        provenance={"labels": labels, "folds": folds},
    )
    console.print(format_tuning_report(report), highlight=False, soft_wrap=True)
    console.print(
        f"out-of-fold thresholds ({len(stats)} images, {len(nets)} folds) written to {out}; predict with "
        f"ckpt=[{','.join(str(p) for p in c.ckpt)}] thresholds={out}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    return {"thresholds": str(out), "params": params.to_dict(), "report": report, "folds": folds}


def run_tune(c: PredictConfig) -> dict[str, Any]:
    """task=tune: search t_pix, t_cls, min_area per class on the validation split; write thresholds.yaml."""
    from rich.console import Console

    console = Console()
    split_path = c.split if c.split is not None else c.ckpt[0].resolve().parent.parent / "split.json"
    if not split_path.is_file():
        raise FileNotFoundError(
            f"data.split: split file not found: {split_path} (training writes <run>/split.json; pass data.split=PATH)"
        )
    ids = list(load_split(split_path)["val"])
    if not ids:
        raise ValueError(f"{split_path}: the validation split is empty")
    images, labels = tuning_sources(c)
    predictor = load_predictor(c)
    device, k = predictor.device, predictor.num_classes
    loader = labelled_loader(ids, images, labels, split_path, c.batch_size, c.num_workers, device, k)
    path = c.ckpt[0].parent / THRESHOLDS_FILE
    with progress_bar(stderr_console()) as progress:
        task = progress.add_task("tune", total=len(ids), rate="")

        def tracked() -> Iterator[dict]:
            for batch in loader:
                yield batch
                progress.update(task, advance=len(batch["image_id"]))

        params, report = tune_and_save(
            path,
            "tune",
            c.ckpt,
            predictor.fingerprints(),
            nets=predictor.nets,
            loader=tracked(),
            device=device,
            amp=predictor.amp,
            base=base_params(predictor.metas[0], k),
            num_classes=k,
            options=_options(c),
            provenance={"labels": labels, "split": split_path},
        )
    console.print(format_tuning_report(report), highlight=False, soft_wrap=True)
    console.print(f"tuned thresholds written to {path}", highlight=False, soft_wrap=True)
    return {"thresholds": str(path), "params": params.to_dict(), "report": report}
