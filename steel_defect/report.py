"""Evaluation report (the original notebook's) and overlay images a person can look at.

* :func:`evaluation_report` turns per-image results - pair Dice (N, C), predicted and true "defect present"
  flags (N, C) - into per-class Dice, the Kaggle Dice, the all-empty baseline, a per-label
  precision/recall/F1 table (labels 1..C plus ``NoDefect``, like sklearn's ``classification_report`` on a
  multi-label indicator matrix) and a (C+1) x (C+1) confusion matrix. :func:`print_evaluation_report`
  prints it with rich.
* :func:`render_overlay` draws the masks of one image, colour-coded per class (translucent fill +
  contour), under a legend strip with the class probabilities and areas; with ``true_masks`` a second
  panel shows the ground truth. OpenCV only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from steel_defect.io import atomic_save

NO_DEFECT = "NoDefect"
#: RGB colour of class c at index c - 1 (amber, sky blue, red, green): distinct on grey steel.
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 200, 0),
    (0, 180, 255),
    (255, 60, 60),
    (60, 220, 60),
    (200, 90, 255),
    (255, 130, 200),
    (0, 220, 200),
    (255, 255, 255),
)


# ======================================================================================================
# Evaluation report
# ======================================================================================================
def _flags(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (N, C) flags, got shape {arr.shape}")
    return arr.astype(bool)


def label_indicators(flags: Any) -> np.ndarray:
    """(N, C) "class present" flags -> (N, C + 1) indicators with a last ``NoDefect`` column."""
    flags = _flags(flags, "flags")
    return np.concatenate([flags, ~flags.any(axis=1, keepdims=True)], axis=1)


def confusion_matrix(pred_flags: Any, true_flags: Any) -> np.ndarray:
    """(C+1, C+1) int matrix, rows = true label, cols = predicted label (1..C, then NoDefect).

    An image adds 1 to every (true label, predicted label) pair of its label sets, so a multi-label
    image counts for each of its labels (an image with true {1, 3} predicted {3} adds to (1,3) and (3,3)).
    """
    p, t = label_indicators(pred_flags), label_indicators(true_flags)
    if p.shape != t.shape:
        raise ValueError(f"pred_flags {p.shape} and true_flags {t.shape} differ in shape")
    return t.T.astype(np.int64) @ p.astype(np.int64)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast_shapes(num.shape, den.shape)), where=den > 0)


def classification_table(pred_flags: Any, true_flags: Any, labels: Sequence[str] | None = None) -> list[dict]:
    """Precision/recall/F1/support of "label present" per label (1..C, NoDefect) + micro/macro/weighted avg.

    Same numbers as ``sklearn.metrics.classification_report(true, pred, zero_division=0)`` on the
    (N, C+1) indicator matrices.
    """
    p, t = label_indicators(pred_flags), label_indicators(true_flags)
    if p.shape != t.shape:
        raise ValueError(f"pred_flags {p.shape} and true_flags {t.shape} differ in shape")
    labels = list(labels) if labels is not None else [str(c + 1) for c in range(p.shape[1] - 1)] + [NO_DEFECT]
    tp = np.count_nonzero(p & t, axis=0)
    n_pred, support = np.count_nonzero(p, axis=0), np.count_nonzero(t, axis=0)
    precision, recall = _safe_div(tp, n_pred), _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    rows = [
        {"label": lab, "precision": float(pr), "recall": float(rc), "f1": float(f), "support": int(s)}
        for lab, pr, rc, f, s in zip(labels, precision, recall, f1, support, strict=True)
    ]
    micro_p, micro_r = float(_safe_div(tp.sum(), n_pred.sum())), float(_safe_div(tp.sum(), support.sum()))
    micro_f = float(_safe_div(2 * micro_p * micro_r, micro_p + micro_r))
    total = int(support.sum())
    rows.append(
        {"label": "micro avg", "precision": micro_p, "recall": micro_r, "f1": micro_f, "support": total}
    )
    rows.append(
        {
            "label": "macro avg",
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
            "support": total,
        }
    )
    weights = support / total if total else np.zeros_like(precision)
    rows.append(
        {
            "label": "weighted avg",
            "precision": float(precision @ weights),
            "recall": float(recall @ weights),
            "f1": float(f1 @ weights),
            "support": total,
        }
    )
    return rows


def class_label(name: str) -> str:
    """How a class is titled in tables and overlays: ``class 3`` for Severstal's numbered classes, else its name."""
    return f"class {name}" if str(name).isdigit() else str(name)


def evaluation_report(
    dice: Any,
    pred_flags: Any,
    true_flags: Any,
    unreadable: int = 0,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The notebook's report from per-image results: ``dice`` (N, C) pair Dice, flags (N, C) bool.

    Keys: ``num_images``, ``unreadable``, ``classes`` (``class_names``, default "1".."C"), ``dice`` {per_class, mean}, ``baseline_empty`` {per_class, mean}
    (the score of predicting nothing: the share of images without that class), ``classification`` (rows of
    :func:`classification_table`) and ``confusion_matrix`` {labels, matrix} (rows true, cols predicted).
    """
    dice = np.asarray(dice, dtype=np.float64)
    pred, true = _flags(pred_flags, "pred_flags"), _flags(true_flags, "true_flags")
    if dice.ndim != 2 or dice.shape != pred.shape or dice.shape != true.shape:
        raise ValueError(
            f"dice {dice.shape}, pred_flags {pred.shape} and true_flags {true.shape} must be equal (N, C)"
        )
    if dice.shape[0] == 0:
        raise ValueError("cannot evaluate zero images")
    baseline = (~true).astype(np.float64)  # Dice of an empty prediction: 1 if the truth is empty, else 0
    names = (
        [str(c + 1) for c in range(dice.shape[1])] if class_names is None else [str(n) for n in class_names]
    )
    if len(names) != dice.shape[1]:
        raise ValueError(f"{len(names)} class names for {dice.shape[1]} classes")
    labels = [*names, NO_DEFECT]
    return {
        "num_images": int(dice.shape[0]),
        "unreadable": int(unreadable),
        "classes": names,
        "dice": {"per_class": dice.mean(axis=0).tolist(), "mean": float(dice.mean())},
        "baseline_empty": {"per_class": baseline.mean(axis=0).tolist(), "mean": float(baseline.mean())},
        "classification": classification_table(pred, true, labels),
        "confusion_matrix": {"labels": labels, "matrix": confusion_matrix(pred, true).tolist()},
    }


def print_evaluation_report(report: Mapping[str, Any], console: Any = None) -> None:
    """Print :func:`evaluation_report`'s dict as three rich tables (Dice, classification, confusion)."""
    from rich.console import Console
    from rich.table import Table

    console = console if console is not None else Console()
    dice, base = report["dice"], report["baseline_empty"]
    n_cls = len(dice["per_class"])
    title = f"Kaggle Dice on {report['num_images']} images"
    if report.get("unreadable"):
        title += f" ({report['unreadable']} unreadable, scored as empty predictions)"
    table = Table(title=title)
    table.add_column("")
    for name in report.get("classes") or [str(c + 1) for c in range(n_cls)]:
        table.add_column(class_label(name), justify="right")
    table.add_column("mean (Kaggle)", justify="right", style="bold")
    table.add_row("model", *(f"{v:.4f}" for v in dice["per_class"]), f"{dice['mean']:.4f}")
    table.add_row("all-empty baseline", *(f"{v:.4f}" for v in base["per_class"]), f"{base['mean']:.4f}")
    table.add_row(
        "margin",
        *(f"{a - b:+.4f}" for a, b in zip(dice["per_class"], base["per_class"], strict=True)),
        f"{dice['mean'] - base['mean']:+.4f}",
    )
    console.print(table)

    table = Table(title='"Defect present" per label (image level)')
    for name in ("label", "precision", "recall", "f1-score", "support"):
        table.add_column(name, justify="left" if name == "label" else "right")
    for i, row in enumerate(report["classification"]):
        table.add_row(
            row["label"],
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            str(row["support"]),
            end_section=i == n_cls,
        )
    console.print(table)

    cm = report["confusion_matrix"]
    table = Table(
        title="Confusion matrix (rows: true, columns: predicted)",
        caption="an image counts once per (true label, predicted label) pair",
    )
    table.add_column("true \\ pred")
    for lab in cm["labels"]:
        table.add_column(lab, justify="right")
    for lab, row in zip(cm["labels"], cm["matrix"], strict=True):
        table.add_row(lab, *(str(v) for v in row))
    console.print(table)


# ======================================================================================================
# Overlays
# ======================================================================================================
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.5
_TEXT_COLOR = (235, 235, 235)
_BG_COLOR = (30, 30, 30)
_ROW_H = 24


def _as_rgb(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB or (H, W) grey, got shape {image.shape}")
    if image.dtype != np.uint8:
        if image.dtype.kind == "f" and image.size and image.max() <= 1.0:
            image = image * 255.0
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image


def _check_masks(masks: Any, hw: tuple[int, int], n_cls: int, name: str) -> np.ndarray:
    masks = np.asarray(masks).astype(bool)
    if masks.shape != (n_cls, *hw):
        raise ValueError(f"{name} must be ({n_cls}, {hw[0]}, {hw[1]}) to match the image, got {masks.shape}")
    return masks


def _text(img: np.ndarray, text: str, x: int, y: int, color=_TEXT_COLOR) -> int:
    """Draw ``text`` with its baseline at ``y``; return the x after it."""
    cv2.putText(img, text, (x, y), _FONT, _FONT_SCALE, color, 1, cv2.LINE_AA)
    return x + cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)[0][0]


def _text_width(text: str) -> int:
    return cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)[0][0]


def _panel(image: np.ndarray, masks: np.ndarray, scale: int, tag: str, alpha: float) -> np.ndarray:
    """The image upscaled by ``scale`` with translucent class fills, contours and a tag in the corner."""
    h, w = image.shape[:2]
    big = (
        cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
        if scale > 1
        else image.copy()
    )
    fill = big.astype(np.float32)
    up = [
        (
            cv2.resize(m.astype(np.uint8), (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
            if scale > 1
            else m
        )
        for m in masks.astype(np.uint8)
    ]
    for k, m in enumerate(up):
        on = m.astype(bool)
        fill[on] = (1 - alpha) * fill[on] + alpha * np.asarray(
            CLASS_COLORS[k % len(CLASS_COLORS)], np.float32
        )
    out = np.clip(np.rint(fill), 0, 255).astype(np.uint8)
    for k, m in enumerate(up):
        if m.any():
            contours, _ = cv2.findContours(
                np.ascontiguousarray(m, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
            )
            cv2.drawContours(out, contours, -1, CLASS_COLORS[k % len(CLASS_COLORS)], 2, cv2.LINE_8)
    tw = _text_width(tag)
    cv2.rectangle(out, (0, 0), (tw + 8, 18), _BG_COLOR, -1)
    _text(out, tag, 4, 13)
    return out


def render_overlay(
    image_rgb: Any,
    masks: Any,
    class_probs: Any,
    image_id: str,
    true_masks: Any = None,
    min_width: int = 960,
    alpha: float = 0.4,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """An RGB uint8 picture of one image's prediction (and ground truth) for a person to look at.

    Top: a legend strip with ``image_id`` and, per class, its colour, class probability and predicted area
    in pixels (and true area). Below: the image with each class's predicted mask as a translucent fill
    plus contour; with ``true_masks`` a second panel shows the ground truth the same way. Images narrower
    than ``min_width`` are upscaled by an integer factor (nearest neighbour) so the text fits. Classes are
    titled with :func:`class_label` of ``class_names`` (default "1".."C").
    """
    image = _as_rgb(image_rgb)
    h, w = image.shape[:2]
    probs = np.asarray(class_probs, dtype=np.float64).reshape(-1)
    n_cls = probs.shape[0]
    masks = _check_masks(masks, (h, w), n_cls, "masks")
    truth = None if true_masks is None else _check_masks(true_masks, (h, w), n_cls, "true_masks")
    scale = max(1, math.ceil(min_width / w))

    panels = [_panel(image, masks, scale, "prediction", alpha)]
    if truth is not None:
        panels.append(_panel(image, truth, scale, "ground truth", alpha))

    pred_area = masks.reshape(n_cls, -1).sum(axis=1)
    true_area = None if truth is None else truth.reshape(n_cls, -1).sum(axis=1)
    names = [str(c + 1) for c in range(n_cls)] if class_names is None else [str(n) for n in class_names]
    if len(names) != n_cls:
        raise ValueError(f"{len(names)} class names for {n_cls} classes")
    entries = []
    for k in range(n_cls):
        text = f"{class_label(names[k])}  p={probs[k]:.2f}  {int(pred_area[k]):,} px"
        if true_area is not None:
            text += f" (true {int(true_area[k]):,})"
        entries.append(text)
    swatch, gap = 14, 18
    legend_w = sum(swatch + 6 + _text_width(t) + gap for t in entries) + 8
    header = f"{image_id}   {h}x{w}   fill+contour = mask, p = class probability"
    width = max(w * scale, legend_w, _text_width(header) + 16)

    strip = np.full((2 * _ROW_H, width, 3), _BG_COLOR, dtype=np.uint8)
    _text(strip, header, 8, 17)
    x = 8
    for k, text in enumerate(entries):
        color = CLASS_COLORS[k % len(CLASS_COLORS)]
        cv2.rectangle(strip, (x, _ROW_H + 5), (x + swatch, _ROW_H + 5 + swatch), color, -1)
        x = _text(strip, text, x + swatch + 6, _ROW_H + 17, color if pred_area[k] else _TEXT_COLOR) + gap

    rows = [strip]
    for panel in panels:
        pad = np.full((panel.shape[0], width, 3), _BG_COLOR, dtype=np.uint8)
        pad[:, : panel.shape[1]] = panel
        rows.append(np.full((4, width, 3), _BG_COLOR, dtype=np.uint8))
        rows.append(pad)
    return np.concatenate(rows, axis=0)


#: The PNG text chunk every overlay carries: what lets a later run replace it, and nothing else.
OVERLAY_TAG: tuple[str, str] = ("Software", "steel-defect overlay")


def is_overlay_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an overlay PNG this project wrote (it carries :data:`OVERLAY_TAG`)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get(OVERLAY_TAG[0]) == OVERLAY_TAG[1]
    except (OSError, ValueError):
        return False


def save_overlay(path: str | os.PathLike, overlay_rgb: np.ndarray) -> Path:
    """Write an RGB overlay as PNG (tagged :data:`OVERLAY_TAG`) atomically; an existing file is replaced only
    when it is an overlay."""
    from PIL import Image, PngImagePlugin

    from steel_defect.guard import refuse_unless_own

    refuse_unless_own(path, is_overlay_file, what="overlay", kind="picture this project drew (overlay PNG)")
    info = PngImagePlugin.PngInfo()
    info.add_text(*OVERLAY_TAG)
    image = Image.fromarray(np.ascontiguousarray(overlay_rgb, dtype=np.uint8))
    return atomic_save(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
