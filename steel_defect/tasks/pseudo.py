"""Pseudo-labels: confident test-image predictions written as training labels, and read back for training.

The rule is 1st place's (Severstal, private 0.90663 -> 0.90883 over two rounds): an image is kept only
where the classifier is confident for every class (p > ``t_pos`` or p < ``t_neg``, 0.95 / 0.05) and the
segmentation agrees (a mask after post-processing exactly for the confidently present classes). Images
with no confident class present and no mask form the "confidently empty" list.

Files: ``pseudo.csv`` in train.csv's current format (``ImageId,ClassId,EncodedPixels``, non-empty masks
only) and ``pseudo_empty.txt`` beside it (one ImageId per line). :func:`read_pseudo_labels` reads both
back into the wide annotation frame, refusing unknown images, malformed RLE and images that are also in
the validation or test split (naming the file, line and value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from steel_defect.data.pseudo_labels import write_pseudo_labels
from steel_defect.rle import masks_to_rles
from steel_defect.tasks.common import images_dir, load_predictor
from steel_defect.tasks.config import PredictConfig, PseudoRule

__all__ = ["pseudo_decision", "run_pseudo"]

#: Decisions of :func:`pseudo_decision`.
LABELLED, EMPTY = "labelled", "empty"


def pseudo_decision(
    class_probs: np.ndarray,
    masks: np.ndarray,
    rule: PseudoRule = PseudoRule(),  # noqa: B008 (frozen)
) -> str | None:
    """``"labelled"``, ``"empty"`` or None (rejected) for one image's class probabilities (C,) and final
    post-processed masks (C, H, W) bool.

    Kept when every class is confident (p > t_pos or p < t_neg) and a class has a mask exactly when it is
    confidently present; ``"empty"`` when, moreover, no class is present.
    """
    probs = np.asarray(class_probs, dtype=np.float64).reshape(-1)
    present = np.asarray(masks).reshape(len(probs), -1).any(axis=1)
    pos, neg = probs > rule.t_pos, probs < rule.t_neg
    if not (pos | neg).all() or not np.array_equal(pos, present):
        return None
    return EMPTY if not pos.any() else LABELLED


def run_pseudo(c: PredictConfig) -> dict[str, Any]:
    """task=pseudo: predict ``data.images`` (default ``data.root/test_images``) with the checkpoint(s) and
    their thresholds, keep the images that pass :func:`pseudo_decision`, write ``out`` (a csv) and its
    empty list; returns and prints the counts."""
    from rich.console import Console

    console = Console()
    if Path(c.out).suffix.lower() != ".csv" or Path(c.out).name == "submission.csv":
        raise ValueError(
            f"task=pseudo writes pseudo-labels: out={c.out} must be a .csv other than submission.csv "
            "(e.g. out=pseudo.csv)"
        )
    rule = PseudoRule.from_dict(c.pseudo)
    images = images_dir(c, "test_images")
    predictor = load_predictor(c)
    source = predictor.source
    loader = predictor.loader(images, c.batch_size, c.num_workers)
    labelled: list[tuple[str, list[str]]] = []
    empty: list[str] = []
    per_class = np.zeros(0, dtype=np.int64)
    unreadable = 0
    for pred in predictor.iter_loader(loader):
        if not pred.ok:
            unreadable += 1
            continue
        decision = pseudo_decision(pred.class_probs, pred.masks, rule)
        if decision == EMPTY:
            empty.append(pred.image_id)
        elif decision == LABELLED:
            labelled.append((pred.image_id, masks_to_rles(pred.masks)))
            present = pred.masks.reshape(len(pred.masks), -1).any(axis=1).astype(np.int64)
            per_class = present if per_class.size == 0 else per_class + present
    csv_path, empty_path = write_pseudo_labels(c.out, labelled, empty)
    n = len(loader.dataset)
    summary = {
        "images": n,
        "labelled": len(labelled),
        "empty": len(empty),
        "rejected": n - len(labelled) - len(empty) - unreadable,
        "unreadable": unreadable,
        "labelled_per_class": per_class.tolist(),
        "rule": {"t_pos": rule.t_pos, "t_neg": rule.t_neg},
        "thresholds": source,
        "csv": str(csv_path),
        "empty_list": str(empty_path),
    }
    console.print(
        f"pseudo-labels from {n} images in {images} (thresholds: {source}; rule p > {rule.t_pos} or "
        f"< {rule.t_neg} for every class, masks agreeing): {len(labelled)} labelled "
        f"(per class {summary['labelled_per_class'] or [0]}), {len(empty)} confidently empty, "
        f"{summary['rejected']} rejected, {unreadable} unreadable\n"
        f"written to {csv_path} and {empty_path}; train with data.pseudo_labels={csv_path} "
        f"data.pseudo_images={images}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    return summary
