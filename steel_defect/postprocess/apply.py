"""Post-processing of network probabilities into final masks (pure functions, numpy + OpenCV only).

The original Keras pipeline turned probabilities into masks with, per class: an image-level "has defect"
gate, a per-class classification gate, a pixel threshold and per-class area limits. ``postprocess`` does
exactly that (vectorised over images and classes); :mod:`steel_defect.postprocess.tuning` chooses the thresholds on a
validation split from per-image counts, with the same helpers, so both take identical decisions.

The image gate's probability comes from ``PostprocessParams.img_source``: ``max_cls`` (the max of the
class head) or ``image_head`` (the network's dedicated "any defect" output, when it has one).

Per class, ``pix_mode`` says what the pixel threshold is compared with (the Kaggle leaders' soft gates):
``plain``: the mask probability (the notebook); ``soft``: mask probability x class probability (4th place's
two-headed network); ``scaled``: the mask probability against a pixel threshold scaled by the class
probability, ``t_pix * (1.5 - p_cls)`` (khornlund's classifier-scaled thresholds: a confident classifier
halves the threshold, a doubtful one raises it by half; at p_cls = 0.5 it is t_pix).

Area limits are pixel counts for ``reference_shape`` (the notebook's 256 x 1600). For an image of
another size every area limit (min/max area and min component size) is scaled by
(H * W) / (refH * refW) and rounded half-to-even (``np.rint``) - one helper, used by both the pixel path
and the count-based tuning, so both take identical decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from steel_defect.postprocess.params import PIX_MODES, PostprocessParams


# ======================================================================================================
# Pure post-processing
# ======================================================================================================
def to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def scale_area(limit: Any, hw: Any, reference_shape: Sequence[int] | None) -> np.ndarray:
    """Area limit(s) in reference-shape pixels -> pixels for images of ``hw = H * W`` pixels.

    None (or NaN) means "no limit" and stays NaN; callers map it to -inf/+inf. Broadcasts.
    """
    limit = np.asarray([np.nan if v is None else v for v in np.ravel(limit)], dtype=np.float64).reshape(
        np.shape(limit)
    )
    if reference_shape is None:
        return np.broadcast_to(limit, np.broadcast_shapes(limit.shape, np.shape(hw))).copy()
    ref = int(reference_shape[0]) * int(reference_shape[1])
    return np.rint(limit * np.asarray(hw, dtype=np.float64) / ref)


def lower_bound(limit: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(limit), -np.inf, limit)


def upper_bound(limit: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(limit), np.inf, limit)


def remove_small_components(binary: np.ndarray, min_size: float) -> np.ndarray:
    """Drop 8-connected components with fewer than ``min_size`` pixels from a (H, W) bool mask."""
    if min_size <= 1 or not binary.any():
        return binary
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(binary, dtype=np.uint8), connectivity=8
    )
    keep = stats[:, cv2.CC_STAT_AREA] >= min_size
    keep[0] = False  # background
    return keep[labels]


def _check_probs(name: str, x: np.ndarray) -> None:
    if x.size and not (x.min() >= 0 and x.max() <= 1):
        raise ValueError(
            f"{name} must be probabilities in [0, 1] (apply sigmoid to logits first), "
            f"got values in [{x.min()}, {x.max()}]"
        )


def batch_inputs(
    mask_probs: Any, class_probs: Any, num_classes: int, image_probs: Any = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, bool]:
    """Validate shapes; return (N, C, H, W) masks, (N, C) class probs and (N,) image probs (or None), and
    whether to squeeze. ``image_probs`` is a scalar for one (C, H, W) image, else (N,)."""
    mask = to_numpy(mask_probs)
    cls = None if class_probs is None else to_numpy(class_probs)
    img = None if image_probs is None else to_numpy(image_probs)
    single = mask.ndim == 3
    if mask.ndim not in (3, 4):
        raise ValueError(f"mask_probs must be (C, H, W) or (N, C, H, W), got shape {mask.shape}")
    if single:
        mask = mask[None]
    if mask.shape[1] != num_classes:
        raise ValueError(
            f"mask_probs shape {mask.shape} has {mask.shape[1]} classes, params have {num_classes}"
        )
    if cls is not None:
        expected = (num_classes,) if single else (mask.shape[0], num_classes)
        if cls.shape != expected:
            raise ValueError(
                f"class_probs shape {cls.shape} does not match mask_probs shape "
                f"{mask.shape[1:] if single else mask.shape}: expected {expected}"
            )
        cls = cls.reshape(mask.shape[0], num_classes)
        _check_probs("class_probs", cls)
    if img is not None:
        expected = () if single else (mask.shape[0],)
        if img.shape != expected and not (single and img.shape == (1,)):
            raise ValueError(
                f"image_probs shape {img.shape} does not match mask_probs shape "
                f"{mask.shape[1:] if single else mask.shape}: expected {expected or 'a scalar'}"
            )
        img = img.reshape(mask.shape[0])
        _check_probs("image_probs", img)
    _check_probs("mask_probs", mask)
    return mask, cls, img, single


def image_gate(
    class_probs: np.ndarray | None, image_probs: np.ndarray | None, params: PostprocessParams, n: int
) -> np.ndarray:
    """(N,) bool: which images pass the image gate (image-level probability >= t_img, in float64).

    The probability is max(class_probs) for ``img_source="max_cls"`` and ``image_probs`` (the network's
    "any defect" output) for ``"image_head"``. t_img None passes every image. Shared by ``postprocess`` and
    the count-based tuning, so both take identical decisions.
    """
    if params.t_img is None:
        return np.ones(n, dtype=bool)
    if params.img_source == "image_head":
        if image_probs is None:
            raise ValueError(
                f"img_source='image_head' (t_img={params.t_img}) needs image_probs, the network's image-head "
                "output; this network has none: use img_source='max_cls' or t_img=None"
            )
        prob = np.asarray(image_probs, dtype=np.float64).reshape(n)
    else:
        if class_probs is None:
            raise ValueError(f"img_source='max_cls' (t_img={params.t_img}) needs class_probs, got None")
        prob = np.asarray(class_probs, dtype=np.float64).reshape(n, -1).max(axis=1)
    return prob >= np.float64(params.t_img)


def pixel_scores(mask: np.ndarray, class_probs: np.ndarray | None, mode: str, k: int) -> np.ndarray:
    """(N, H, W) score of class ``k`` that its pixel threshold is compared with, for ``mode`` (PIX_MODES).

    ``plain`` returns the mask probabilities themselves; ``soft`` (mask x class probability) and ``scaled``
    (mask / (1.5 - class probability), i.e. the threshold scaled by 1.5 - p_cls) are float64.
    """
    m = mask[:, k]
    if mode == "plain":
        return m
    if class_probs is None:
        raise ValueError(f"pix_mode[{k}]={mode!r} needs class_probs, got None")
    p = np.asarray(class_probs, dtype=np.float64)[:, k, None, None]
    if mode == "soft":
        return m * p
    if mode == "scaled":
        return m / (1.5 - p)
    raise ValueError(f"pix_mode[{k}] must be one of {', '.join(PIX_MODES)}, got {mode!r}")


def binarize(
    mask: np.ndarray, class_probs: np.ndarray | None, t_pix: Sequence[float], pix_mode: Sequence[str]
) -> np.ndarray:
    """(N, C, H, W) bool: each class's pixel score (see :func:`pixel_scores`) >= its threshold, in float64."""
    out = np.empty(mask.shape, dtype=bool)
    for k in range(mask.shape[1]):
        np.greater_equal(pixel_scores(mask, class_probs, pix_mode[k], k), np.float64(t_pix[k]), out=out[:, k])
    return out


def postprocess(
    mask_probs: Any, class_probs: Any, params: PostprocessParams, image_probs: Any = None
) -> np.ndarray:
    """Final bool masks (C, H, W) or (N, C, H, W) from probabilities.

    Class c is kept only if the image gate passes (image-level probability >= t_img, see
    :func:`image_gate`), the class gate passes (class_probs[c] >= t_cls[c]) and the thresholded mask
    (pixel score >= t_pix[c], the score given by pix_mode[c]: see :func:`pixel_scores`; after removing components smaller than min_component[c]) has
    min_area[c] <= area <= max_area[c]; otherwise it is all False. ``class_probs`` may be None only when no
    gate uses it; ``image_probs`` ((N,), or a scalar for one image) only matters for
    ``img_source="image_head"``.
    """
    mask, cls, img, single = batch_inputs(mask_probs, class_probs, params.num_classes, image_probs)
    n, c, h, w = mask.shape
    needs_cls = (
        any(t is not None for t in params.t_cls)
        or (params.t_img is not None and params.img_source == "max_cls")
        or any(m != "plain" for m in params.pix_mode)
    )
    if cls is None and needs_cls:
        raise ValueError(
            "class_probs is None but the image/class gates or a soft pix_mode need it "
            "(set t_img/t_cls to None and pix_mode to plain)"
        )
    binary = binarize(mask, cls, params.t_pix, params.pix_mode)

    min_comp = scale_area(params.min_component, h * w, params.reference_shape)
    for k in np.flatnonzero(~np.isnan(min_comp)):
        for i in range(n):
            binary[i, k] = remove_small_components(binary[i, k], min_comp[k])

    area = np.count_nonzero(binary, axis=(2, 3))  # (N, C)
    lo = lower_bound(scale_area(params.min_area, h * w, params.reference_shape))
    hi = upper_bound(scale_area(params.max_area, h * w, params.reference_shape))
    keep = (area >= lo) & (area <= hi)
    if cls is not None:
        t_cls = np.asarray([-np.inf if t is None else t for t in params.t_cls], dtype=np.float64)
        keep &= cls >= t_cls
    keep &= image_gate(cls, img, params, n)[:, None]
    binary &= keep[:, :, None, None]
    return binary[0] if single else binary
