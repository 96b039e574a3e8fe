"""ONE predictor interface and ONE factory, torch-free (what the Kaggle kernel's ONNX-only mode imports).

:class:`Inferencer` is what every engine implements: the torch :class:`~steel_defect.inference.predictor.Predictor`
(checkpoints, or ONNX models behind :class:`~steel_defect.inference.onnx_net.OnnxNet`) and the torch-free
:class:`~steel_defect.inference.ort_predictor.OrtPredictor` (ONNX Runtime, numpy and OpenCV). Callers (predict.py's
predict/evaluate task, the Kaggle kernel, the service) get one from :func:`load_predictor` and never branch on
the engine; the folder -> submission loop is :func:`steel_defect.inference.folder.predict_images`, for any engine.

    from steel_defect.inference.engine import load_predictor
    predictor = load_predictor(["model.onnx"], engine="onnxruntime")
    predictions = predictor.predict([image])            # list[ImagePrediction]
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from steel_defect import NUM_CLASSES

__all__ = ["ENGINES", "ImagePrediction", "Inferencer", "load_predictor", "resolve_engine"]

#: engine name -> "module:class" of its :class:`Inferencer` (imported only when chosen, so that the
#: torch-free engine never imports torch). A new engine (OpenVINO) adds a line here.
ENGINES: dict[str, str] = {
    "torch": "steel_defect.inference.predictor:Predictor",
    "onnxruntime": "steel_defect.inference.ort_predictor:OrtPredictor",
}


@dataclass
class ImagePrediction:
    """The result for one image. ``masks`` (C, H, W) bool and ``class_probs`` (C,) are None for an
    unreadable image (``ok=False``); ``image`` is the image as the engine held it, (3, H, W) float in
    [0, 1] (a CPU tensor from the torch engine, a numpy array from the others; None when not kept);
    ``image_prob`` is the image head's "any defect" probability (None without an image head)."""

    image_id: str
    ok: bool
    masks: np.ndarray | None
    class_probs: np.ndarray | None
    image: Any
    image_prob: float | None = None
    num_classes: int = NUM_CLASSES

    @property
    def rles(self) -> list[str]:
        """One Kaggle RLE per class ("" for an empty mask or an unreadable image)."""
        from steel_defect.rle import masks_to_rles

        return [""] * self.num_classes if self.masks is None else masks_to_rles(self.masks)


@runtime_checkable
class Inferencer(Protocol):
    """Loaded model(s) + their checked thresholds + TTA, whatever runs them.

    * ``engine``: its name in :data:`ENGINES`; ``classes`` / ``num_classes``; ``params`` (the post-processing
      thresholds) and ``source`` (where they came from); ``tta``; ``ckpts`` (the model files); ``device``;
      ``stride`` (the padding multiple);
    * :meth:`predict`: in-memory images (uint8 or float in [0, 1], any sizes) -> one :class:`ImagePrediction`
      each, in order;
    * :meth:`predict_source`: a folder (sorted by name), a file or a list of files -> its image ids and a lazy
      stream of predictions in that order (unreadable images: ``ok=False``), memory bounded;
    * :meth:`fingerprints` (the source checkpoints' fingerprints, what thresholds are bound to) and
      :meth:`weights_fingerprints` (a hash of the weights really loaded; None where it cannot be computed).
    """

    engine: str
    classes: list[str]
    params: Any
    source: str
    tta: tuple[str, ...]
    ckpts: tuple[Path, ...]
    stride: int

    @property
    def num_classes(self) -> int: ...

    @property
    def device(self) -> Any: ...

    def predict(
        self, images: Sequence[np.ndarray], image_ids: Sequence[str] | None = None
    ) -> list[ImagePrediction]: ...

    def predict_source(
        self, source: Any, batch_size: int = 4, num_workers: int = 0
    ) -> tuple[list[str], Iterator[ImagePrediction]]: ...

    def fingerprints(self) -> list[str | None]: ...

    def weights_fingerprints(self) -> list[str | None]: ...


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def resolve_engine(engine: str, runtime: str = "auto") -> str:
    """``engine`` (a name in :data:`ENGINES`, or ``auto``: torch where it is installed, else ONNX Runtime),
    checked against ``runtime`` (the ONNX Runtime engine runs only ONNX models)."""
    from steel_defect.config import choice

    choice("engine", engine, ("auto", *ENGINES))
    if engine == "auto":
        engine = "torch" if _torch_available() else "onnxruntime"
    if engine != "torch" and runtime == "torch":
        raise ValueError(f"engine={engine} runs exported ONNX models; runtime=torch needs engine=torch")
    return engine


def load_predictor(
    ckpt: str | os.PathLike | Sequence[str | os.PathLike],
    runtime: str = "auto",
    thresholds: str = "auto",
    device: Any = "auto",
    tta: Sequence[str] = (),
    amp: bool = True,
    check_thresholds: bool = True,
    engine: str = "auto",
    threads: int | None = None,
) -> Inferencer:
    """THE way to load a predictor: checkpoint(s) or exported ONNX model(s) (an ensemble when several),
    their thresholds (``auto``: the tuned ones beside / inside the first model; a path; ``defaults``;
    ``raw``) checked against the weights and ``tta`` unless ``check_thresholds`` is false, run by
    ``engine`` (:func:`resolve_engine`). ``runtime`` (auto, torch, onnx, int8), ``device``, ``amp`` and
    ``threads`` (ONNX Runtime's intra-op threads) mean what they mean in ``predict.py``."""
    module, _, name = ENGINES[resolve_engine(engine, runtime)].partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls.load(
        ckpt,
        thresholds=thresholds,
        device=device,
        runtime=runtime,
        tta=tta,
        amp=amp,
        check_thresholds=check_thresholds,
        threads=threads,
    )


def image_array(image: np.ndarray) -> np.ndarray:
    """An image as read by OpenCV/PIL -> float32 (3, H, W) in [0, 1], what every engine feeds its nets.

    Accepts (H, W) grey, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA arrays, uint8 (divided by 255) or float
    in [0, 1]; anything else raises a ValueError saying what it got.
    """
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"an image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)
    if np.issubdtype(a.dtype, np.floating):
        if a.size and (float(a.min()) < 0.0 or float(a.max()) > 1.0):
            raise ValueError("a float image must lie in [0, 1]")
        return np.ascontiguousarray(a.transpose(2, 0, 1)).astype(np.float32)
    raise ValueError(f"an image must be uint8 or float in [0, 1], got dtype {a.dtype}")


def size_groups(shapes: Sequence[tuple[int, ...]]) -> list[list[int]]:
    """Indices of ``shapes`` grouped by their last two dimensions (H, W), in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape[-2:]), []).append(i)
    return list(groups.values())
