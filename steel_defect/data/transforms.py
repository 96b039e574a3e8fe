"""Albumentations (2.0.x) pipelines: uint8 RGB image + (H, W, K) mask in, float tensors out.

Every pipeline ends with ``ToFloat(max_value=255)`` and ``ToTensorV2(transpose_mask=True)``: the image
comes out as a float32 (3, H, W) tensor in [0, 1] and the mask as a (K, H, W) tensor. There is no mean/std
normalisation here: the network normalises internally with its encoder's statistics (docs/ARCHITECTURE.md),
so the data pipeline does not depend on the encoder.
"""

from __future__ import annotations

import os

# albumentations checks PyPI for updates on import unless told not to; never touch the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from steel_defect import DEFAULT_SHAPE  # noqa: E402

__all__ = ["STAGES", "build_transforms"]

STAGES: tuple[str, ...] = ("train", "val", "test", "predict")


def _probability(name: str, value: float) -> float:
    """Check that ``value`` is a probability."""
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def build_transforms(
    stage: str,
    crop_height: int | None = None,
    crop_width: int | None = None,
    hflip_p: float = 0.5,
    vflip_p: float = 0.5,
    brightness_contrast_p: float = 0.3,
    brightness_limit: float = 0.2,
    contrast_limit: float = 0.2,
    gamma_p: float = 0.0,
    blur_p: float = 0.0,
    noise_p: float = 0.0,
    jpeg_p: float = 0.0,
    shape: tuple[int, int] | None = None,
    seed: int | None = None,
    any_size: bool = False,
) -> A.Compose:
    """The albumentations pipeline for ``stage`` (``train``, ``val``, ``test`` or ``predict``).

    ``train``: a ``RandomCrop`` of ``(crop_height or image height, crop_width)`` when that is smaller than
    ``shape`` (the image size, default ``DEFAULT_SHAPE``; no crop when ``crop_width`` is None), horizontal
    and vertical flips, ``RandomBrightnessContrast`` and, for sim-to-real domain randomisation (off by
    default), ``RandomGamma`` (``gamma_p``), ``GaussianBlur`` (``blur_p``), grey ``GaussNoise``
    (``noise_p``) and ``ImageCompression`` at JPEG quality 50-95 (``jpeg_p``). Other stages: the full image,
    no augmentation.
    ``any_size``: the images differ in size (the plant's own data): ``train`` needs both crop sizes and
    crops every image to exactly ``crop_height x crop_width``, zero-padding (image and mask) one that is
    smaller, so that any mix of sizes batches; ``shape`` is then ignored.
    All stages end with ``ToFloat(max_value=255)`` and ``ToTensorV2(transpose_mask=True)``.
    ``seed`` seeds the ``Compose``'s own random state (albumentations ignores the global seeds);
    :class:`~steel_defect.data.dataset.SteelDataset` re-seeds it per process from its own ``seed``.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown transform stage {stage!r}; valid stages: {list(STAGES)}")
    height, width = shape if shape is not None else DEFAULT_SHAPE
    steps: list[A.BasicTransform] = []
    if stage == "train" and any_size:
        if crop_height is None or crop_width is None or int(crop_height) < 1 or int(crop_width) < 1:
            raise ValueError(
                f"images of different sizes need a fixed training crop: set data.crop_height and "
                f"data.crop_width (got {crop_height!r} x {crop_width!r})"
            )
        steps.append(A.RandomCrop(height=int(crop_height), width=int(crop_width), pad_if_needed=True, p=1.0))
    elif stage == "train":
        crop_h = height if crop_height is None else int(crop_height)
        crop_w = width if crop_width is None else int(crop_width)
        if not (0 < crop_h <= height and 0 < crop_w <= width):
            raise ValueError(
                f"crop {crop_h}x{crop_w} must be positive and fit in the image size {height}x{width}"
            )
        if (crop_h, crop_w) != (height, width):
            steps.append(A.RandomCrop(height=crop_h, width=crop_w, p=1.0))
    if stage == "train":
        steps += [
            A.HorizontalFlip(p=_probability("hflip_p", hflip_p)),
            A.VerticalFlip(p=_probability("vflip_p", vflip_p)),
            A.RandomBrightnessContrast(
                brightness_limit=brightness_limit,
                contrast_limit=contrast_limit,
                p=_probability("brightness_contrast_p", brightness_contrast_p),
            ),
        ]
        extra = (
            ("gamma_p", gamma_p, lambda p: A.RandomGamma(gamma_limit=(70, 150), p=p)),
            ("blur_p", blur_p, lambda p: A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.2), p=p)),
            ("noise_p", noise_p, lambda p: A.GaussNoise(std_range=(0.01, 0.04), per_channel=False, p=p)),
            ("jpeg_p", jpeg_p, lambda p: A.ImageCompression(quality_range=(50, 95), p=p)),
        )
        steps += [make(_probability(name, p)) for name, p, make in extra if p > 0]
    steps += [A.ToFloat(max_value=255.0), ToTensorV2(transpose_mask=True)]
    return A.Compose(steps, seed=seed)
