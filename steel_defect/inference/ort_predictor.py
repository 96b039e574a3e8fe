"""Torch-free inference: exported ONNX models run by ONNX Runtime, with numpy and OpenCV only.

What the Kaggle kernel's ONNX-only mode (``python -m steel_defect.kaggle bundle ... runtime=onnx``) and any
other machine without torch runs. It does what :class:`steel_defect.inference.predictor.Predictor` does with
``runtime=onnx`` (zero-padding to the stride, TTA views and checkpoint ensembles averaged in the same order,
the same post-processing, RLE and submission code). Its sigmoid is numpy's, not torch's: probabilities
agree to 1e-6 (a float32 ulp), so the submissions are the same bytes except where a probability lies
within an ulp of a threshold (``tests/test_ort_predictor.py``). Nothing here imports torch, Lightning or
Hydra.

    from steel_defect.inference.engine import load_predictor
    from steel_defect.inference.folder import predict_images
    predictor = load_predictor(["model.onnx"], engine="onnxruntime")   # thresholds: the tuned ones stored at export
    summary = predict_images(predictor, "test_images", "submission.csv")
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from steel_defect.inference.engine import ImagePrediction, image_array, size_groups
from steel_defect.inference.onnx_model import OrtModel
from steel_defect.inference.tta import TTA_FLIPS, check_tta
from steel_defect.io import ImageReadError, list_images, read_image

__all__ = ["OrtModel", "OrtPredictor", "probabilities"]


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
    """Exported models + their thresholds + TTA: post-processed masks for images, no torch. The ONNX Runtime
    engine of :class:`steel_defect.inference.engine.Inferencer` (load it with
    :func:`steel_defect.inference.engine.load_predictor`)."""

    engine = "onnxruntime"

    def __init__(
        self,
        models: Sequence[OrtModel],
        params: Any,
        source: str,
        tta: Sequence[str] = (),
        device: str = "cpu",
    ) -> None:
        self.models, self.params, self.source, self.tta = list(models), params, source, tuple(check_tta(tta))
        self.classes = self.models[0].classes
        self.ckpts = tuple(m.path for m in self.models)
        self.device = device
        self.stride = int(np.lcm.reduce([m.output_stride for m in self.models]))
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
        device: str = "cpu",
        runtime: str = "auto",
        amp: bool = False,
    ) -> OrtPredictor:
        """Load exported models (an ensemble when several) and resolve ``thresholds`` as ``predict.py``
        does (auto: a thresholds.yaml beside the first model, else the tuned thresholds stored in it, else
        its stored post-processing); tuned thresholds are checked against the models' source fingerprints
        and the TTA unless ``check_thresholds`` is false. ``device``: cpu, or cuda (when onnxruntime has
        CUDA); ``runtime`` ``int8`` insists on quantised models; ``amp`` has no meaning here."""
        from steel_defect.postprocess.thresholds import (
            check_fingerprints,
            check_image_head_gate,
            resolve_thresholds,
        )

        paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        if not paths:
            raise ValueError("give at least one exported .onnx model")
        device = "cpu" if str(device) == "auto" else str(device)
        models = [_load_model(p, threads, device, runtime) for p in paths]
        if any(m.classes != models[0].classes for m in models):
            raise ValueError(f"the models predict different classes: {[m.classes for m in models]}")
        params, source = resolve_thresholds(thresholds, paths[0], models[0].inner)
        check_image_head_gate(params, [m.image_head for m in models], paths, source)
        if check_thresholds:
            check_fingerprints(
                source, models[0].inner, [m.inner.get("fingerprint") for m in models], list(tta), paths
            )
        return cls(models, params, source, tta, device)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprints(self) -> list[str | None]:
        """The fingerprints of the checkpoints the models were exported from (what thresholds are bound to)."""
        return [m.source_fingerprint for m in self.models]

    def weights_fingerprints(self) -> list[str | None]:
        """The hash of the initializers each session really loaded."""
        return [m.weights_fingerprint for m in self.models]

    def _batch(self, arrays: Sequence[np.ndarray], ids: Sequence[str]) -> list[ImagePrediction]:
        """Predictions for float32 (3, H, W) arrays of one size."""
        from steel_defect.postprocess.apply import postprocess

        x = np.stack(arrays)
        mask, cls, img = probabilities(self.models, x, self.tta)
        final = postprocess(mask, cls, self.params, image_probs=img)
        return [
            ImagePrediction(
                image_id=str(ids[i]),
                ok=True,
                masks=final[i],
                class_probs=cls[i],
                image=x[i],
                image_prob=None if img is None else float(img[i]),
                num_classes=self.num_classes,
            )
            for i in range(len(arrays))
        ]

    def predict(
        self, images: Sequence[np.ndarray], image_ids: Sequence[str] | None = None
    ) -> list[ImagePrediction]:
        """Post-processed predictions for in-memory images (any sizes, see
        :func:`~steel_defect.inference.engine.image_array`), in the order given; a ValueError (e.g. an
        image of a height the model was not exported for) names the images of its batch."""
        ids = [str(i) for i in (image_ids if image_ids is not None else range(len(images)))]
        if len(ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(ids)} image ids")
        arrays = [image_array(im) for im in images]
        out: dict[int, ImagePrediction] = {}
        for members in size_groups([a.shape for a in arrays]):
            try:
                preds = self._batch([arrays[i] for i in members], [ids[i] for i in members])
            except ValueError as err:
                raise ValueError(f"{', '.join(ids[i] for i in members)}: {err}") from err
            out.update(zip(members, preds, strict=True))
        return [out[i] for i in range(len(arrays))]

    def _read(
        self, paths: Sequence[Path], workers: int, ahead: int
    ) -> Iterator[tuple[Path, np.ndarray | None]]:
        """Images in order, decoded by ``workers`` threads (OpenCV releases the GIL) at most ``ahead`` images
        ahead of the consumer, so memory stays bounded on any folder."""

        def read(path: Path) -> np.ndarray | None:
            try:
                return read_image(path)
            except ImageReadError:
                return None  # predict_images warns and counts it

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

    def predict_source(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        batch_size: int = 4,
        num_workers: int = 2,
    ) -> tuple[list[str], Iterator[ImagePrediction]]:
        """The image ids of ``source`` (a folder, sorted by name, a file or a list) and their predictions in
        that order, ``batch_size`` at a time, decoded by ``num_workers`` threads a bounded number ahead;
        unreadable images come back with ``ok=False``."""
        paths = _source_paths(source)

        def stream() -> Iterator[ImagePrediction]:
            pending: list[tuple[Path, np.ndarray]] = []
            ahead = 2 * batch_size + num_workers
            for path, image in self._read(paths, num_workers, ahead=ahead):
                if image is None:
                    yield from self.predict_pending(pending)
                    yield ImagePrediction(path.name, False, None, None, None, num_classes=self.num_classes)
                    continue
                pending.append((path, image))
                if len(pending) == batch_size:
                    yield from self.predict_pending(pending)
            yield from self.predict_pending(pending)

        return [p.name for p in paths], stream()

    def predict_pending(self, pending: list[tuple[Path, np.ndarray]]) -> list[ImagePrediction]:
        """:meth:`predict` for the (path, image) pairs of ``pending``, which it empties."""
        preds = self.predict([im for _, im in pending], [p.name for p, _ in pending])
        pending.clear()
        return preds

    def predict_folder(
        self,
        source: str | os.PathLike,
        out: str | os.PathLike,
        fmt: str = "current",
        batch_size: int = 4,
        workers: int = 2,
    ) -> dict[str, Any]:
        """Every image of the folder ``source`` (sorted by name) into the submission ``out`` (atomically):
        :func:`steel_defect.inference.folder.predict_images` with this predictor."""
        from steel_defect.inference.folder import predict_images

        return predict_images(self, source, out, fmt=fmt, batch_size=batch_size, num_workers=workers)


def _load_model(path: str | os.PathLike, threads: int | None, device: str, runtime: str) -> OrtModel:
    if runtime == "torch":
        raise ValueError("the ONNX Runtime engine runs exported .onnx models, not runtime=torch")
    if Path(path).suffix != ".onnx" and Path(path).is_file():
        raise ValueError(
            f"{path}: the ONNX Runtime engine runs exported .onnx models (python predict.py task=export)"
        )
    model = OrtModel(path, None if threads is None else int(threads), device=device)
    if runtime == "int8" and not model.meta.get("quantization"):
        raise ValueError(
            f"runtime=int8: {path} is an fp32 export; quantise it first: python predict.py "
            f"task=quantize ckpt={path} data.images=TRAIN_IMAGES (or run it with runtime=onnx)"
        )
    return model


def _source_paths(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if not isinstance(source, str | os.PathLike):
        return [Path(p) for p in source]
    source = Path(source)
    if source.is_dir():
        paths = list_images(source)
        if not paths:
            raise FileNotFoundError(f"no images in {source}")
        return paths
    if source.exists():
        return [source]
    raise FileNotFoundError(f"prediction source not found: {source}")
