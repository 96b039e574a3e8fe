"""The tasks of ``predict.py`` (``run(cfg)`` dispatches on ``cfg["task"]``), on top of the inference core
(:mod:`steel_defect.predictor`):

* ``predict``: a folder of images -> ``submission.csv`` (streamed: probabilities live one batch at a time);
* ``evaluate``: the same on a labelled folder, plus the notebook's report (``evaluation.json``);
* ``tune``: threshold search on the run's validation split -> ``thresholds.yaml`` beside the checkpoint;
* ``tune_oof`` (:mod:`steel_defect.folds`), ``pseudo`` (:mod:`steel_defect.pseudo`);
* ``export``: a checkpoint -> ONNX (``steel_defect.export``).
* ``quantize``: an exported ONNX model -> its int8 version (``steel_defect.quantize``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steel_defect import NUM_CLASSES
from steel_defect.guard import refuse_unless_own
from steel_defect.io import atomic_write
from steel_defect.predict_config import PredictConfig, parse_config
from steel_defect.predictor import Predictor, collect_tuning_stats, load_nets
from steel_defect.submission import format_summary, run_summary, write_submission
from steel_defect.task_outputs import check_task_outputs, is_evaluation_file
from steel_defect.thresholds import (
    THRESHOLDS_FILE,
    check_thresholds_binding,
    resolve_thresholds,
    thresholds_binding,
)

log = logging.getLogger(__name__)

Tensor = torch.Tensor


def _progress(console: Any):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _image_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] -> (H, W, 3) uint8 (exact for images that were uint8 / 255)."""
    return image.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def read_labels(
    path: str | os.PathLike, image_ids: Sequence[str], num_classes: int = NUM_CLASSES
) -> dict[str, list[str]]:
    """Ground truth for ``image_ids`` from a csv in either Kaggle format: image_id -> C RLE strings.

    Images without rows are defect-free; a csv row naming an image that is not among ``image_ids`` raises.
    RLEs are decoded later, at each image's own size.
    """
    from steel_defect.data.annotations import read_train_csv, rle_columns

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.labels: label csv not found: {path}")
    frame = read_train_csv(path, validate_rle=False, num_classes=num_classes)
    columns = rle_columns(num_classes)
    rles = dict(zip(frame["ImageId"], frame[columns].fillna("").astype(str).to_numpy().tolist(), strict=True))
    missing = sorted(set(rles) - set(image_ids))
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} labelled images are not in the image folder, e.g. {missing[:3]} "
            "(point data.images at the folder these labels describe)"
        )
    return {i: rles.get(i, [""] * num_classes) for i in image_ids}


@dataclass
class _Evaluation:
    """Per-image accumulators of task=evaluate: pair Dice and "defect present" flags, (N, C) each."""

    dice: list[np.ndarray] = field(default_factory=list)
    pred: list[np.ndarray] = field(default_factory=list)
    true: list[np.ndarray] = field(default_factory=list)

    def add(
        self,
        image_id: str,
        pred_masks: np.ndarray | None,
        true_rles: Sequence[str],
        shape: tuple[int, int] | None,
    ) -> np.ndarray | None:
        """Score one image; returns its true masks (None for an unreadable image, scored as empty)."""
        from steel_defect.metrics import dice_per_pair
        from steel_defect.rle import rles_to_masks

        true_flags = np.asarray([bool(r.strip()) for r in true_rles])
        if pred_masks is None:
            self.dice.append((~true_flags).astype(np.float64))
            self.pred.append(np.zeros_like(true_flags))
            self.true.append(true_flags)
            return None
        try:
            true_masks = rles_to_masks(true_rles, shape).astype(bool)
        except ValueError as err:
            raise ValueError(
                f"labels of image {image_id!r} do not fit its {shape[0]}x{shape[1]} size: {err}"
            ) from err
        self.dice.append(dice_per_pair(pred_masks[None], true_masks[None])[0])
        self.pred.append(pred_masks.reshape(len(pred_masks), -1).any(axis=1))
        self.true.append(true_flags)
        return true_masks


def predict_images(
    predictor: Predictor,
    source: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    fmt: str = "current",
    batch_size: int = 4,
    num_workers: int = 0,
    labels: str | os.PathLike | None = None,
    overlays: int = 0,
    overlays_dir: str | os.PathLike = "overlays",
    console: Any = None,
) -> dict[str, Any]:
    """Predict every image of ``source`` (a folder, sorted by name, or a list of files) into a submission.

    Streams: each batch is post-processed and RLE-encoded at once, so memory does not grow with the number
    of images. Unreadable images get empty masks, a warning and a count. Every image is predicted at its
    own size (padded to the stride). With ``labels`` (a csv), also scores every image (``evaluation`` in the
    returned summary). The first ``overlays`` readable images are drawn to ``overlays_dir`` as PNG.
    """
    from steel_defect.report import evaluation_report, render_overlay, save_overlay

    loader = predictor.loader(source, batch_size, num_workers)
    dataset = loader.dataset
    truth = None if labels is None else read_labels(labels, dataset.image_ids, predictor.num_classes)
    console = console if console is not None else _stderr_console()
    evaluation = _Evaluation() if truth is not None else None
    unreadable: list[str] = []
    nonempty = np.zeros(predictor.num_classes, dtype=np.int64)
    written: list[Path] = []
    start = time.perf_counter()

    with _progress(console) as progress:
        task = progress.add_task("predict" if truth is None else "evaluate", total=len(dataset), rate="")

        def rows() -> Iterator[tuple[str, list[str]]]:
            done = 0
            for pred in predictor.iter_loader(loader):
                if not pred.ok:
                    unreadable.append(pred.image_id)
                    log.warning("unreadable image %s: written with empty masks", pred.image_id)
                else:
                    nonempty[:] += pred.masks.reshape(len(pred.masks), -1).any(axis=1)
                true_masks = None
                if evaluation is not None:
                    shape = None if pred.masks is None else pred.masks.shape[-2:]
                    true_masks = evaluation.add(pred.image_id, pred.masks, truth[pred.image_id], shape)
                if pred.ok and len(written) < overlays:
                    picture = render_overlay(
                        _image_uint8(pred.image),
                        pred.masks,
                        pred.class_probs,
                        pred.image_id,
                        true_masks=true_masks,
                        class_names=predictor.classes,
                    )
                    written.append(
                        save_overlay(Path(overlays_dir) / f"{Path(pred.image_id).stem}.png", picture)
                    )
                yield pred.image_id, pred.rles
                done += 1
                elapsed = time.perf_counter() - start
                progress.update(task, advance=1, rate=f"{done / elapsed:.2f} img/s" if elapsed > 0 else "")

        count = write_submission(rows(), out, fmt, num_classes=predictor.num_classes)
    seconds = time.perf_counter() - start
    summary = run_summary(out, fmt, count, seconds, predictor.classes, nonempty, unreadable, written)
    if evaluation is not None:
        summary["evaluation"] = evaluation_report(
            np.stack(evaluation.dice),
            np.stack(evaluation.pred),
            np.stack(evaluation.true),
            len(unreadable),
            class_names=predictor.classes,
        )
    return summary


# ======================================================================================================
# Tasks
# ======================================================================================================
def _images_dir(c: PredictConfig, default: str) -> Path:
    if c.images is not None:
        return c.images
    if c.root is None:
        raise ValueError(
            f"data.root (or data.images) is required for task={c.task}: the folder holding {default}/"
        )
    return c.root / default


def _setup(c: PredictConfig) -> Predictor:
    """The run's :class:`Predictor` (thresholds checked against the weights, except when tuning them)."""
    return Predictor.load(
        c.ckpt,
        thresholds=c.thresholds,
        device=c.device,
        runtime=c.runtime,
        tta=c.tta,
        amp=c.amp,
        check_thresholds=c.check_thresholds and c.task not in ("tune", "tune_oof"),
    )


def run_predict(c: PredictConfig, console: Any = None) -> dict[str, Any]:
    """task=predict / task=evaluate."""
    from rich.console import Console

    from steel_defect.report import print_evaluation_report

    console = console if console is not None else Console()
    images = _images_dir(c, "test_images")
    labels = None
    if c.task == "evaluate":
        labels = c.labels
        if labels is None:
            default = c.root / "test_labels.csv" if c.root is not None else None
            if default is None or not default.is_file():
                raise ValueError(
                    f"task=evaluate needs labels: set data.labels=CSV (no {default or 'data.root/test_labels.csv'})"
                )
            labels = default
    predictor = _setup(c)
    source, params = predictor.source, predictor.params
    log.info(
        "%s %s with %d checkpoint(s) on %s%s%s; thresholds: %s",
        c.task,
        images,
        len(predictor.nets),
        predictor.device,
        f", tta {list(c.tta)}" if c.tta else "",
        ", amp" if predictor.amp else "",
        source,
    )
    summary = predict_images(
        predictor,
        images,
        c.out,
        fmt=c.format,
        batch_size=c.batch_size,
        num_workers=c.num_workers,
        labels=labels,
        overlays=c.overlays,
        overlays_dir=c.overlays_dir,
    )
    summary["thresholds"] = source
    console.print(format_summary(summary), highlight=False, soft_wrap=True)
    if "evaluation" in summary:
        print_evaluation_report(summary["evaluation"], console)
        path = c.out.with_name("evaluation.json")
        doc = {
            "images": str(images),
            "labels": str(labels),
            "checkpoints": [str(p) for p in c.ckpt],
            "tta": list(c.tta),
            "thresholds": source,
            "params": params.to_dict(),
            **summary["evaluation"],
        }
        refuse_unless_own(path, is_evaluation_file, what="out", kind="task=evaluate report (evaluation.json)")
        with atomic_write(path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")
        summary["evaluation_json"] = str(path)
        console.print(f"evaluation written to {path}", highlight=False, soft_wrap=True)
    return summary


def _tuning_sources(c: PredictConfig) -> tuple[Path, Path]:
    """The labelled images folder and label csv of task=tune / tune_oof (defaults under data.root)."""
    images = _images_dir(c, "train_images")
    labels = c.labels
    if labels is None:
        if c.root is None:
            raise ValueError(f"task={c.task} needs data.root (for train.csv) or data.labels=CSV")
        labels = c.root / "train.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"data.labels: label csv not found: {labels}")
    return images, labels


def labelled_loader(
    ids: Sequence[str],
    images: Path,
    labels: Path,
    split_path: Path,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    num_classes: int = NUM_CLASSES,
) -> Any:
    """A loader over the labelled images ``ids`` (from ``split_path``) at full size, no augmentation; images
    of several sizes are batched one size per batch."""
    import pandas as pd
    from torch.utils.data import DataLoader, SequentialSampler

    from steel_defect.data.annotations import read_train_csv, rle_columns
    from steel_defect.data.convert import image_size
    from steel_defect.data.dataset import SizeBatchSampler, SteelDataset
    from steel_defect.data.transforms import build_transforms

    missing = [i for i in ids if not (images / i).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{split_path}: {len(missing)} validation images are not in {images}, e.g. {missing[:3]}"
        )
    frame = pd.DataFrame({"ImageId": list(ids)}).merge(
        read_train_csv(labels, validate_rle=False, num_classes=num_classes), on="ImageId", how="left"
    )
    frame[rle_columns(num_classes)] = frame[rle_columns(num_classes)].fillna("")
    dataset = SteelDataset(frame, images, build_transforms("val"))
    sizes = [image_size(images / i) for i in ids]
    return DataLoader(
        dataset,
        batch_sampler=SizeBatchSampler(SequentialSampler(dataset), batch_size, False, sizes=sizes),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )


def run_tune(c: PredictConfig, console: Any = None) -> dict[str, Any]:
    """task=tune: search t_pix, t_cls, min_area per class on the validation split; write thresholds.yaml."""
    from rich.console import Console

    from steel_defect.data.splits import load_split
    from steel_defect.postprocess import PostprocessParams, save_thresholds
    from steel_defect.tuning import format_tuning_report, stats_for, tune_thresholds

    console = console if console is not None else Console()
    split_path = c.split if c.split is not None else c.ckpt[0].resolve().parent.parent / "split.json"
    if not split_path.is_file():
        raise FileNotFoundError(
            f"data.split: split file not found: {split_path} (training writes <run>/split.json; pass data.split=PATH)"
        )
    ids = list(load_split(split_path)["val"])
    if not ids:
        raise ValueError(f"{split_path}: the validation split is empty")
    images, labels = _tuning_sources(c)
    predictor = _setup(c)
    nets, metas, device = predictor.nets, predictor.metas, predictor.device
    k = len(metas[0].get("classes") or []) or NUM_CLASSES
    loader = labelled_loader(ids, images, labels, split_path, c.batch_size, c.num_workers, device, k)
    base = PostprocessParams.from_dict(metas[0]["postprocess"], k) if metas[0].get("postprocess") else None
    kwargs = stats_for(base, c.pix_modes, k)
    with _progress(_stderr_console()) as progress:
        task = progress.add_task("tune", total=len(ids), rate="")

        def tracked() -> Iterator[dict]:
            for batch in loader:
                yield batch
                progress.update(task, advance=len(batch["image_id"]))

        stats = collect_tuning_stats(nets, tracked(), device=device, tta=c.tta, amp=predictor.amp, **kwargs)
    params, report = tune_thresholds(stats, base=base) if base is not None else tune_thresholds(stats)
    path = c.ckpt[0].parent / THRESHOLDS_FILE
    save_thresholds(
        params,
        path,
        report=report,
        meta={
            "checkpoint": c.ckpt[0].name,
            "checkpoints": [str(p) for p in c.ckpt],
            "fingerprints": predictor.fingerprints(),
            "tta": list(c.tta),
            "pix_modes": list(c.pix_modes),
            "split": str(split_path),
            "labels": str(labels),
        },
    )
    console.print(format_tuning_report(report), highlight=False, soft_wrap=True)
    console.print(f"tuned thresholds written to {path}", highlight=False, soft_wrap=True)
    return {"thresholds": str(path), "params": params.to_dict(), "report": report}


def run_export(c: PredictConfig, console: Any = None) -> dict[str, Any]:
    """task=export: one checkpoint -> an ONNX model (default: beside it, ``.onnx``)."""
    from rich.console import Console

    from steel_defect.export import export_onnx
    from steel_defect.fingerprint import net_fingerprint

    console = console if console is not None else Console()
    if len(c.ckpt) != 1:
        raise ValueError(f"task=export takes one checkpoint, got ckpt={[str(p) for p in c.ckpt]}")
    if c.runtime == "onnx":
        raise ValueError("task=export reads a training checkpoint: use runtime=torch (or auto)")
    nets, metas = load_nets(c.ckpt, "cpu", "torch")
    out = c.export["out"] or c.ckpt[0].with_suffix(".onnx")
    meta = {**metas[0], "fingerprint": net_fingerprint(nets[0])}
    params, source = resolve_thresholds(c.thresholds, c.ckpt[0], metas[0])
    binding = thresholds_binding(source, metas[0])
    if binding is not None:  # tuned thresholds travel inside the model
        if c.check_thresholds:
            check_thresholds_binding(source, metas[0], nets, binding["tta"], c.ckpt)
        meta["tuned_thresholds"] = {"params": params.to_dict(), "source": source, **binding}
    path = export_onnx(
        nets[0],
        out,
        height=c.export["height"],
        width=c.export["width"],
        opset=c.export["opset"],
        dynamic_width=c.export["dynamic_width"],
        meta=meta,
    )
    stored = f"; tuned thresholds from {source} stored in its metadata" if binding is not None else ""
    console.print(f"exported {c.ckpt[0]} to {path}{stored}", highlight=False, soft_wrap=True)
    return {"onnx": str(path), "thresholds": source if binding is not None else None}


def run_quantize(c: PredictConfig, console: Any = None) -> dict[str, Any]:
    """task=quantize: one exported ONNX model -> int8 (default: beside it, ``.int8.onnx``), calibrated on
    crops of the labelled images (``data.images``, default ``data.root/train_images``)."""
    from rich.console import Console

    from steel_defect.io import list_images
    from steel_defect.quantize import quantize_onnx

    console = console if console is not None else Console()
    if len(c.ckpt) != 1:
        raise ValueError(f"task=quantize takes one exported model, got ckpt={[str(p) for p in c.ckpt]}")
    src = c.ckpt[0]
    if not src.is_file():
        raise FileNotFoundError(f"ckpt: model not found: {src}")
    folder = _images_dir(c, "train_images")
    images = list_images(folder)
    if not images:
        raise FileNotFoundError(
            f"task=quantize: no calibration images in {folder} (data.images or data.root/train_images)"
        )
    out = c.quantize["out"] or src.with_name(src.stem + ".int8.onnx")
    opts = {k: v for k, v in c.quantize.items() if k != "out"}
    path = quantize_onnx(src, out, images, **opts)
    console.print(
        f"quantised {src} to {path} ({opts['crops']} calibration crops of width {opts['crop_width']} "
        f"from {len(images)} images); run it with runtime=int8",
        highlight=False,
        soft_wrap=True,
    )
    return {"onnx": str(path)}


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Entry point of ``predict.py``: validate the plain config, then run its ``task``; with a ``trainer``
    config (``trainer=ddp``), predict with Lightning's Trainer.predict in several processes."""
    cfg = dict(cfg)
    trainer_cfg = cfg.pop("trainer", None)
    c = parse_config(cfg)
    check_task_outputs(c)  # before anything runs: no output onto an input, none replacing another kind
    if trainer_cfg is not None:
        if not isinstance(trainer_cfg, Mapping):
            raise ValueError(
                f"trainer must be a trainer config (trainer=ddp, trainer=ddp_cpu), got {trainer_cfg!r}"
            )
        from steel_defect.distributed import run_distributed

        return run_distributed(c, trainer_cfg)
    if c.task in ("predict", "evaluate"):
        return run_predict(c)
    if c.task == "tune":
        return run_tune(c)
    if c.task == "tune_oof":
        from steel_defect.folds import run_tune_oof

        return run_tune_oof(c)
    if c.task == "pseudo":
        from steel_defect.pseudo import run_pseudo

        return run_pseudo(c)
    if c.task == "quantize":
        return run_quantize(c)
    return run_export(c)
