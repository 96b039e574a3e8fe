"""One prediction -> the JSON answer of ``POST /predict`` (pure functions, no server needed)."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from steel_defect.inference.predictor import ImagePrediction
from steel_defect.rle import rle_encode


def components(mask: np.ndarray) -> list[dict[str, int]]:
    """8-connected components of a 2-D mask: ``{"x", "y", "width", "height", "area"}`` each (pixels,
    x/y the top-left corner), largest area first."""
    import cv2

    count, _, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(mask, np.uint8), connectivity=8
    )
    boxes = [
        {"x": int(x), "y": int(y), "width": int(w), "height": int(h), "area": int(a)}
        for x, y, w, h, a in stats[1:count]
    ]
    return sorted(boxes, key=lambda b: (-b["area"], b["y"], b["x"]))


def overlay_png(image_rgb: np.ndarray, pred: ImagePrediction, classes: Sequence[str] | None = None) -> str:
    """The report's overlay picture of ``pred`` on its image (classes titled by ``classes``), PNG, base64."""
    import cv2

    from steel_defect.report import render_overlay

    picture = render_overlay(image_rgb, pred.masks, pred.class_probs, pred.image_id, class_names=classes)
    ok, png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV could not encode the overlay as PNG")
    return base64.b64encode(png.tobytes()).decode("ascii")


def prediction_json(
    pred: ImagePrediction,
    classes: Sequence[str],
    model: Mapping[str, Any],
    thresholds: Mapping[str, Any],
    overlay: str | None = None,
) -> dict[str, Any]:
    """The answer for one image: its size, per class the probability, whether a mask was kept, its area,
    RLE (Kaggle: 1-indexed, column-major) and component boxes; the model and thresholds used."""
    if pred.masks is None or pred.class_probs is None:
        raise ValueError(f"image {pred.image_id!r} has no prediction")
    if len(classes) != len(pred.masks):
        raise ValueError(f"{len(classes)} class names for {len(pred.masks)} masks")
    height, width = pred.masks.shape[-2:]
    per_class = []
    for k, name in enumerate(classes):
        mask = pred.masks[k]
        area = int(mask.sum())
        per_class.append(
            {
                "index": k + 1,
                "name": str(name),
                "probability": float(pred.class_probs[k]),
                "kept": area > 0,
                "area": area,
                "rle": rle_encode(mask),
                "boxes": components(mask) if area else [],
            }
        )
    doc: dict[str, Any] = {
        "image": {"name": pred.image_id, "height": int(height), "width": int(width)},
        "classes": per_class,
        "defective": any(c["kept"] for c in per_class),
        "image_probability": None if pred.image_prob is None else float(pred.image_prob),
        "model": dict(model),
        "thresholds": dict(thresholds),
    }
    if overlay is not None:
        doc["overlay_png"] = overlay
    return doc
