"""Torch-free inference: exported ONNX models run by ONNX Runtime, with numpy and OpenCV only.

What the Kaggle kernel's ONNX-only mode (``python -m steel_defect.kaggle bundle ... runtime=onnx``) and any
other machine without torch runs. It does what :class:`steel_defect.inference.predictor.Predictor` does with
``runtime=onnx`` (zero-padding to the stride, TTA views and checkpoint ensembles averaged in the same order,
the same post-processing, RLE and submission code). Its sigmoid is numpy's, not torch's: probabilities
agree to 1e-6 (a float32 ulp), so the submissions are the same bytes except where a probability lies
within an ulp of a threshold (``tests/test_ort_predictor.py``). Nothing here imports torch, Lightning or
Hydra.

    from steel_defect.inference.ort_predictor import OrtPredictor
    predictor = OrtPredictor.load(["model.onnx"])        # thresholds: the tuned ones stored at export
    summary = predictor.predict_folder("test_images", "submission.csv")
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from steel_defect.inference.onnx_model import OrtModel
from steel_defect.inference.tta import TTA_FLIPS, check_tta
from steel_defect.io import ImageReadError, list_images, read_image

__all__ = ["OrtModel", "OrtPredictor", "probabilities"]

log = logging.getLogger(__name__)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 logistic function (no overflow warning for large negative logits)."""
    x = x.astype(np.float32, copy=False)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def probabilities(
    models: Sequence[OrtModel], images: np.ndarray, tta: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Sigmoid probabilities ``(mask (B,C,H,W), class (B,C), image (B,) or None)`` averaged over the plain
    view, every TTA view and every model, for float32 images in [0, 1]; zero-padded to the stride."""
    stride = int(np.lcm.reduce([m.output_stride for m in models]))
    b, _, h, w = images.shape
    ph, pw = (-h) % stride, (-w) % stride
    x = np.pad(images, ((0, 0), (0, 0), (0, ph), (0, pw))) if ph or pw else images
    views = [()] + [TTA_FLIPS[n] for n in tta]
    mask_sum, cls_sum, img_sum = 0.0, 0.0, 0.0
    every_image_head = all(m.image_head for m in models)
    for model in models:
        for axes in views:
            out = model(np.flip(x, axes) if axes else x)
            mask = _sigmoid(out[0])
            mask_sum = mask_sum + (np.flip(mask, axes) if axes else mask)
            cls_sum = cls_sum + _sigmoid(out[1])
            if every_image_head:
                img_sum = img_sum + _sigmoid(out[2])
    n = np.float32(len(models) * len(views))
    return (mask_sum / n)[..., :h, :w], cls_sum / n, (img_sum / n if every_image_head else None)


class OrtPredictor:
    """Exported models + their thresholds + TTA: post-processed masks for images, no torch."""

    def __init__(self, models: Sequence[OrtModel], params: Any, source: str, tta: Sequence[str] = ()) -> None:
        self.models, self.params, self.source, self.tta = list(models), params, source, tuple(check_tta(tta))
        self.classes = self.models[0].classes
        if len(self.classes) != params.num_classes:
            raise ValueError(
                f"thresholds from {source} are for {params.num_classes} classes, the model has {self.classes}"
            )

    @classmethod
    def load(
        cls,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        thresholds: str = "auto",
        tta: Sequence[str] = (),
        check_thresholds: bool = True,
        threads: int | None = None,
    ) -> OrtPredictor:
        """Load exported models (an ensemble when several) and resolve ``thresholds`` as ``predict.py``
        does (auto: the tuned thresholds stored in the first model, else a thresholds.yaml beside it, else
        its stored post-processing); tuned thresholds are checked against the models' source fingerprints
        and the TTA unless ``check_thresholds`` is false."""
        from steel_defect.postprocess.thresholds import (
            check_fingerprints,
            check_image_head_gate,
            resolve_thresholds,
        )

        paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        if not paths:
            raise ValueError("give at least one exported .onnx model")
        models = [OrtModel(p, threads) for p in paths]
        if any(m.classes != models[0].classes for m in models):
            raise ValueError(f"the models predict different classes: {[m.classes for m in models]}")
        params, source = resolve_thresholds(thresholds, paths[0], models[0].inner)
        check_image_head_gate(params, [m.image_head for m in models], paths, source)
        if check_thresholds:
            check_fingerprints(
                source, models[0].inner, [m.inner.get("fingerprint") for m in models], list(tta), paths
            )
        return cls(models, params, source, tta)

    def predict(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(masks bool (C, H, W), class probabilities (C,)) for RGB uint8 images of one size."""
        from steel_defect.postprocess.apply import postprocess

        x = np.stack([im.transpose(2, 0, 1) for im in images]).astype(np.float32) / np.float32(255.0)
        mask, cls, img = probabilities(self.models, x, self.tta)
        final = postprocess(mask, cls, self.params, image_probs=img)
        return [(final[i], cls[i]) for i in range(len(images))]

    def _read(
        self, paths: Sequence[Path], workers: int, ahead: int
    ) -> Iterator[tuple[Path, np.ndarray | None]]:
        """Images in order, decoded by ``workers`` threads (OpenCV releases the GIL) at most ``ahead`` images
        ahead of the consumer, so memory stays bounded on any folder."""

        def read(path: Path) -> np.ndarray | None:
            try:
                return read_image(path)
            except ImageReadError as err:
                log.warning("%s; writing empty masks for it", err)
                return None

        if workers <= 0:
            yield from ((p, read(p)) for p in paths)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: deque = deque()
            for path in paths:
                pending.append((path, pool.submit(read, path)))
                if len(pending) > ahead:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()

    def predict_folder(
        self,
        source: str | os.PathLike,
        out: str | os.PathLike,
        fmt: str = "current",
        batch_size: int = 4,
        workers: int = 2,
    ) -> dict[str, Any]:
        """Every image of the folder ``source`` (sorted by name) into the submission ``out`` (atomically);
        unreadable images get empty masks and a warning. Returns a summary like ``predict.py``'s."""
        from steel_defect.rle import masks_to_rles
        from steel_defect.submission import run_summary, write_submission

        paths = list_images(source)
        if not paths:
            raise FileNotFoundError(f"no images in {source}")
        start = time.perf_counter()
        unreadable: list[str] = []
        nonempty = np.zeros(len(self.classes), dtype=np.int64)

        def rows() -> Iterator[tuple[str, list[str]]]:
            pending: list[tuple[Path, np.ndarray]] = []

            def flush() -> Iterator[tuple[str, list[str]]]:
                groups: dict[tuple[int, int], list[int]] = {}
                for i, (_, im) in enumerate(pending):
                    groups.setdefault(im.shape[:2], []).append(i)
                done: dict[int, list[str]] = {}
                for members in groups.values():
                    try:
                        results = self.predict([pending[i][1] for i in members])
                    except ValueError as err:
                        raise ValueError(f"{', '.join(pending[i][0].name for i in members)}: {err}") from err
                    for i, (masks, _) in zip(members, results, strict=True):
                        nonempty[:] += masks.reshape(len(masks), -1).any(axis=1)
                        done[i] = masks_to_rles(masks)
                for i, (path, _) in enumerate(pending):
                    yield path.name, done[i]
                pending.clear()

            for path, image in self._read(paths, workers, ahead=2 * batch_size + workers):
                if image is None:
                    yield from flush()
                    unreadable.append(path.name)
                    yield path.name, [""] * len(self.classes)
                    continue
                pending.append((path, image))
                if len(pending) == batch_size:
                    yield from flush()
            yield from flush()

        count = write_submission(rows(), out, fmt, num_classes=len(self.classes))
        seconds = time.perf_counter() - start
        summary = run_summary(out, fmt, count, seconds, self.classes, nonempty, unreadable)
        return {**summary, "thresholds": self.source}

    @property
    def num_classes(self) -> int:
        return len(self.classes)
