"""int8 post-training static quantisation of an exported model (ONNX Runtime, QDQ, calibrated on crops).

    python predict.py task=quantize ckpt=model.onnx data.images=TRAIN_DIR [quantize.out=model.int8.onnx \
        quantize.crops=200 quantize.crop_width=448 quantize.seed=0]
    python predict.py ckpt=model.int8.onnx runtime=int8 data.root=DIR    # or runtime=auto/onnx

The exported fp32 model (``task=export``, which needs ``export.dynamic_width=true`` unless the crops have its
width) is calibrated by ONNX Runtime's MinMax calibrator on ``crops`` random full-height crops of
``crop_width`` columns cut from labelled training images (seeded, two per image at most, so a few hundred
crops cover a hundred-odd images; every crop counts: the calibrator keeps only each tensor's running
min/max, so its memory does not grow with the crops), then written in the QDQ format: weights int8 per channel, activations
uint8 (what x86 VNNI runs fastest). The model keeps its ``steel_defect`` metadata, tuned thresholds and
fingerprint included (the weights are the same model's, rounded), plus a ``quantization`` entry saying how
it was made; ``runtime=int8`` accepts only such a model. The Dice change is measured, not assumed:
``bench/faithfulness.py`` prints it beside eager fp32 on the real and synthetic labelled images.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steel_defect.deploy.onnx_export import read_onnx_metadata, set_metadata
from steel_defect.inference.onnx_model import require_onnx, require_ort
from steel_defect.io import atomic_save

__all__ = ["calibration_crops", "is_quantized", "quantize_onnx"]


def is_quantized(meta: dict[str, Any]) -> bool:
    """Whether an ONNX model's ``steel_defect`` metadata says it was made by :func:`quantize_onnx`."""
    return bool((meta or {}).get("quantization"))


def calibration_crops(
    images: Sequence[str | os.PathLike], n: int, height: int, width: int, seed: int = 0
) -> Iterator[np.ndarray]:
    """``n`` float32 (1, 3, height, width) crops in [0, 1] from ``images``: seeded random images (each
    used at most twice) and random columns; an image narrower than ``width`` is zero-padded on the right.

    Raises ``ValueError`` naming the file for an image whose height is not ``height`` (the model's fixed
    input height) and for unreadable images.
    """
    from steel_defect.io import ImageReadError, read_image

    if not images:
        raise ValueError("quantize: no calibration images")
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(images)), rng.permutation(len(images))])[:n]
    if len(order) < n:
        raise ValueError(
            f"quantize.crops={n} needs at least {-(-n // 2)} calibration images (two crops each), got {len(images)}"
        )
    for index in order:
        path = Path(images[int(index)])
        try:
            image = read_image(path)
        except ImageReadError as err:
            raise ValueError(f"quantize: calibration image {path}: {err}") from err
        h, w = image.shape[:2]
        if h != height:
            raise ValueError(
                f"quantize: calibration image {path} is {h} pixels high; the model takes {height} (its export height)"
            )
        if w < width:
            image = np.pad(image, ((0, 0), (0, width - w), (0, 0)))
            w = width
        x0 = int(rng.integers(0, w - width + 1))
        crop = image[:, x0 : x0 + width].astype(np.float32) / 255.0
        yield np.ascontiguousarray(crop.transpose(2, 0, 1)[None])


def quantize_onnx(
    src: str | os.PathLike,
    out: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    crops: int = 200,
    crop_width: int = 448,
    seed: int = 0,
    per_channel: bool = True,
) -> Path:
    """Write the int8 (QDQ) version of the exported fp32 model ``src`` to ``out`` atomically; returns ``out``.

    Calibrated on :func:`calibration_crops` of ``images``. ``src`` must be one of our exports (not already
    quantised) that accepts ``crop_width``-wide inputs (dynamic width, or exported at that width).
    """
    onnx, ort = require_onnx(), require_ort()
    src, out = Path(src), Path(out)
    meta = _source_metadata(src, crops, crop_width)
    height = int(meta["height"])
    quantization = {
        "method": "ONNX Runtime static QDQ: weights int8"
        + (" per channel" if per_channel else "")
        + ", activations uint8, MinMax calibration",
        "calibration": {
            "crops": crops,
            "crop_width": crop_width,
            "height": height,
            "seed": seed,
            "images": len(images),
        },
        "source": src.name,
    }
    reader = _reader(str(meta.get("input", "image")), list(images), crops, height, crop_width, seed)
    ort.set_default_logger_severity(3)  # the calibration session warns about every unused initializer
    with tempfile.TemporaryDirectory(prefix="steel-quantize-") as tmp:
        quantized = Path(tmp) / "model.int8.onnx"
        try:
            _quantize_static(src, quantized, reader, per_channel)
        finally:
            ort.set_default_logger_severity(2)  # onnxruntime's default (warnings)
        model = onnx.load(str(quantized))
        set_metadata(model, {**meta, "quantization": quantization})
        return atomic_save(out, lambda path: onnx.save(model, path))


def _source_metadata(src: Path, crops: int, crop_width: int) -> dict[str, Any]:
    """The metadata of the model to quantise, after checking it and the calibration settings."""
    if src.suffix != ".onnx":
        raise ValueError(
            f"task=quantize takes an exported ONNX model (python predict.py task=export ckpt=... "
            f"export.dynamic_width=true), got {src}"
        )
    meta = read_onnx_metadata(src)
    if is_quantized(meta):
        raise ValueError(f"{src} is already quantised ({meta['quantization']['method']})")
    stride = int(meta.get("output_stride", 32))
    if (
        isinstance(crop_width, bool)
        or not isinstance(crop_width, int)
        or crop_width <= 0
        or crop_width % stride
    ):
        raise ValueError(f"quantize.crop_width must be a positive multiple of {stride}, got {crop_width!r}")
    if not meta.get("dynamic_width") and int(meta["width"]) != crop_width:
        raise ValueError(
            f"{src} was exported for the fixed width {meta['width']}: re-export it with export.dynamic_width=true "
            f"(or set quantize.crop_width={meta['width']})"
        )
    if isinstance(crops, bool) or not isinstance(crops, int) or crops < 1:
        raise ValueError(f"quantize.crops must be a positive integer, got {crops!r}")
    return meta


def _reader(input_name: str, images: list, crops: int, height: int, crop_width: int, seed: int) -> Any:
    """ONNX Runtime's calibration data reader over :func:`calibration_crops`."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.crops = calibration_crops(images, crops, height, crop_width, seed)

        def get_next(self) -> dict[str, np.ndarray] | None:
            crop = next(self.crops, None)
            return None if crop is None else {input_name: crop}

    return Reader()


def _quantize_static(src: Path, dst: Path, reader: Any, per_channel: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=bool(per_channel),
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
