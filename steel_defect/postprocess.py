"""Post-processing of network probabilities into final masks, and streaming threshold tuning.

The original Keras pipeline turned probabilities into masks with, per class: an image-level "has defect"
gate, a per-class classification gate, a pixel threshold and per-class area limits. ``postprocess`` does
exactly that (vectorised over images and classes); ``TuningStats`` + ``tune_thresholds`` choose the
thresholds on a validation split from per-image counts only (memory O(N * C * grid)), so a full
2,263 x 4 x 256 x 1600 probability tensor never has to be held.

The image gate's probability comes from ``PostprocessParams.img_source``: ``max_cls`` (the max of the
4-logit class head) or ``image_head`` (the network's dedicated "any defect" output, when it has one).
``tune_thresholds`` tunes t_img and its source jointly with the per-class parameters.

Area limits are pixel counts for ``reference_shape`` (the notebook's 256 x 1600). For an image of
another size every area limit (min/max area and min component size) is scaled by
(H * W) / (refH * refW) and rounded half-to-even (``np.rint``) - one helper, used by both the pixel path
and the count-based tuning, so both take identical decisions.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from steel_defect import DEFAULT_SHAPE, NUM_CLASSES
from steel_defect.io import atomic_write
from steel_defect.metrics import dice_from_counts

# --- Notebook defaults (one number per class 1..4) ----------------------------------------------------
# Pixel and classification thresholds: the notebook binarises sigmoid outputs at a fixed 0.5.
NOTEBOOK_T_PIX: tuple[float, ...] = (0.5, 0.5, 0.5, 0.5)
NOTEBOOK_T_CLS: tuple[float, ...] = (0.5, 0.5, 0.5, 0.5)
# Area limits in pixels at 256 x 1600: the 2nd (min) and 98th (max) percentiles of the per-class defect
# areas of the training masks, from the notebook's EDA section 4.1.
NOTEBOOK_MIN_AREA: tuple[int, ...] = (500, 700, 1100, 2800)
NOTEBOOK_MAX_AREA: tuple[int, ...] = (15500, 10000, 160000, 127000)
# The image size the notebook's area limits were measured at.
NOTEBOOK_REFERENCE_SHAPE: tuple[int, int] = tuple(DEFAULT_SHAPE)

#: Default pixel-threshold grid for tuning: 0.30, 0.35, ..., 0.70 (0.5 is always added).
DEFAULT_T_PIX_GRID: tuple[float, ...] = tuple(round(0.3 + 0.05 * i, 2) for i in range(9))
#: Default classification-threshold grid: 0.00, 0.05, ..., 0.95 (0.0 keeps every image, i.e. "disabled").
DEFAULT_T_CLS_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))
#: Default image-gate grid: None (no gate), 0.05, 0.10, ..., 0.95.
DEFAULT_T_IMG_GRID: tuple[float | None, ...] = (None, *(round(0.05 * i, 2) for i in range(1, 20)))
#: Sources of the image gate's probability: the max of the class head, or the dedicated image head.
IMG_SOURCES: tuple[str, ...] = ("max_cls", "image_head")
#: Default min-area grid in reference-shape pixels (the class's ``base`` value is always added).
DEFAULT_MIN_AREA_GRID: tuple[int, ...] = (0, 100, 200, 300, 500, 700, 1000, 1500, 2000, 3000, 4000, 6000)
#: Default max-area grid (used with ``tune_max_area=True``; the base value and None are always added).
DEFAULT_MAX_AREA_GRID: tuple[int, ...] = (5000, 10000, 15500, 20000, 40000, 80000, 127000, 160000)

#: Two mean Dice values closer than this are a tie (float summation noise is ~1e-13).
_TIE_TOL = 1e-12


# ======================================================================================================
# Parameters
# ======================================================================================================
def _plain(value: Any) -> Any:
    """Recursively convert numpy scalars/arrays, tuples and mappings to plain (YAML-safe) python."""
    if isinstance(value, Mapping):
        return {(k if isinstance(k, int | str) else str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _is_seq(value: Any) -> bool:
    return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes)


def _check_prob(name: str, value: Any, allow_none: bool) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be a number in [0, 1], got None")
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def _check_area(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    if not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
    return int(value)


@dataclass
class PostprocessParams:
    """Per-class post-processing thresholds (index c = class c + 1); None disables a gate or limit."""

    #: Image gate: keep any mask only if the image-level probability (see img_source) >= t_img.
    t_img: float | None = None
    #: Image-level probability: "max_cls" = max(class_probs), "image_head" = the net's "any defect" output.
    img_source: str = "max_cls"
    #: Class gate: keep class c only if class_probs[c] >= t_cls[c].
    t_cls: list[float | None] = field(default_factory=lambda: list(NOTEBOOK_T_CLS))
    #: Pixel threshold: mask = mask_probs[c] >= t_pix[c].
    t_pix: list[float] = field(default_factory=lambda: list(NOTEBOOK_T_PIX))
    #: Keep class c only if min_area[c] <= area <= max_area[c] (pixels at reference_shape).
    min_area: list[int | None] = field(default_factory=lambda: list(NOTEBOOK_MIN_AREA))
    max_area: list[int | None] = field(default_factory=lambda: list(NOTEBOOK_MAX_AREA))
    #: Remove 8-connected components smaller than this (pixels at reference_shape) before the area test.
    min_component: list[int | None] = field(default_factory=lambda: [None] * NUM_CLASSES)
    #: Image size the area limits refer to; None = use the limits as-is for every image size.
    reference_shape: list[int] | None = field(default_factory=lambda: list(NOTEBOOK_REFERENCE_SHAPE))

    def __post_init__(self) -> None:
        self.t_img = _check_prob("t_img", self.t_img, allow_none=True)
        if not isinstance(self.img_source, str) or self.img_source not in IMG_SOURCES:
            raise ValueError(f"img_source must be one of {', '.join(IMG_SOURCES)}, got {self.img_source!r}")
        lists = {}
        for name in ("t_cls", "t_pix", "min_area", "max_area", "min_component"):
            value = getattr(self, name)
            if not _is_seq(value):
                raise ValueError(f"{name} must be a list with one value per class, got {value!r}")
            lists[name] = list(value)
        lengths = {name: len(v) for name, v in lists.items()}
        if len(set(lengths.values())) != 1 or lengths["t_pix"] == 0:
            raise ValueError(f"every per-class list must have the same non-zero length, got {lengths}")
        self.t_cls = [_check_prob(f"t_cls[{i}]", v, allow_none=True) for i, v in enumerate(lists["t_cls"])]
        self.t_pix = [_check_prob(f"t_pix[{i}]", v, allow_none=False) for i, v in enumerate(lists["t_pix"])]
        self.min_area = [_check_area(f"min_area[{i}]", v) for i, v in enumerate(lists["min_area"])]
        self.max_area = [_check_area(f"max_area[{i}]", v) for i, v in enumerate(lists["max_area"])]
        self.min_component = [
            _check_area(f"min_component[{i}]", v) for i, v in enumerate(lists["min_component"])
        ]
        for i, (lo, hi) in enumerate(zip(self.min_area, self.max_area, strict=True)):
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"min_area[{i}]={lo} is larger than max_area[{i}]={hi}")
        if self.reference_shape is not None:
            ref = self.reference_shape
            if (
                not _is_seq(ref)
                or len(ref) != 2
                or any(isinstance(v, bool) or not isinstance(v, int | np.integer) or v <= 0 for v in ref)
            ):
                raise ValueError(
                    f"reference_shape must be [height, width] positive integers or None, got {ref!r}"
                )
            self.reference_shape = [int(v) for v in ref]

    @property
    def num_classes(self) -> int:
        return len(self.t_pix)

    def to_dict(self) -> dict[str, Any]:
        """Plain python types only (YAML-safe)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], num_classes: int = NUM_CLASSES) -> PostprocessParams:
        """Build from a mapping (e.g. YAML / Hydra config); missing keys take the notebook defaults."""
        if not isinstance(d, Mapping):
            raise ValueError(f"PostprocessParams.from_dict expects a mapping, got {type(d).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in valid:
                raise ValueError(f"unknown post-processing key {key!r}; valid keys: {', '.join(valid)}")
        kwargs = {k: (list(v) if _is_seq(v) else v) for k, v in d.items()}
        for key, value in kwargs.items():
            if key in ("t_cls", "t_pix", "min_area", "max_area", "min_component"):
                if not isinstance(value, list) or len(value) != num_classes:
                    raise ValueError(
                        f"{key} must be a list of {num_classes} values (one per class), got {value!r}"
                    )
        params = cls(**kwargs)
        if params.num_classes != num_classes:
            raise ValueError(f"expected {num_classes} classes, got {params.num_classes}")
        return params

    @classmethod
    def notebook_defaults(cls) -> PostprocessParams:
        """The original notebook's post-processing (see the constants at the top of this module)."""
        return cls()

    @classmethod
    def disabled(cls, num_classes: int = NUM_CLASSES) -> PostprocessParams:
        """Raw masks: pixel threshold 0.5, every gate and limit off."""
        return cls(
            t_img=None,
            t_cls=[None] * num_classes,
            t_pix=[0.5] * num_classes,
            min_area=[None] * num_classes,
            max_area=[None] * num_classes,
            min_component=[None] * num_classes,
            reference_shape=None,
        )


# ======================================================================================================
# Pure post-processing
# ======================================================================================================
def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _scale_area(limit: Any, hw: Any, reference_shape: Sequence[int] | None) -> np.ndarray:
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


def _lower(limit: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(limit), -np.inf, limit)


def _upper(limit: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(limit), np.inf, limit)


def _remove_small_components(binary: np.ndarray, min_size: float) -> np.ndarray:
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


def _batch_inputs(
    mask_probs: Any, class_probs: Any, num_classes: int, image_probs: Any = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, bool]:
    """Validate shapes; return (N, C, H, W) masks, (N, C) class probs and (N,) image probs (or None), and
    whether to squeeze. ``image_probs`` is a scalar for one (C, H, W) image, else (N,)."""
    mask = _to_numpy(mask_probs)
    cls = None if class_probs is None else _to_numpy(class_probs)
    img = None if image_probs is None else _to_numpy(image_probs)
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


def _binarize(mask: np.ndarray, t_pix: Sequence[float]) -> np.ndarray:
    """(N, C, H, W) probabilities >= per-class thresholds (compared in float64, as the tuning does)."""
    thr = np.asarray(t_pix, dtype=np.float64).reshape(1, -1, 1, 1)
    return mask >= thr


def postprocess(
    mask_probs: Any, class_probs: Any, params: PostprocessParams, image_probs: Any = None
) -> np.ndarray:
    """Final bool masks (C, H, W) or (N, C, H, W) from probabilities.

    Class c is kept only if the image gate passes (image-level probability >= t_img, see
    :func:`image_gate`), the class gate passes (class_probs[c] >= t_cls[c]) and the thresholded mask
    (mask_probs[c] >= t_pix[c], after removing components smaller than min_component[c]) has
    min_area[c] <= area <= max_area[c]; otherwise it is all False. ``class_probs`` may be None only when no
    gate uses it; ``image_probs`` ((N,), or a scalar for one image) only matters for
    ``img_source="image_head"``.
    """
    mask, cls, img, single = _batch_inputs(mask_probs, class_probs, params.num_classes, image_probs)
    n, c, h, w = mask.shape
    needs_cls = any(t is not None for t in params.t_cls) or (
        params.t_img is not None and params.img_source == "max_cls"
    )
    if cls is None and needs_cls:
        raise ValueError("class_probs is None but the image/class gates need it (set t_img/t_cls to None)")
    binary = _binarize(mask, params.t_pix)

    min_comp = _scale_area(params.min_component, h * w, params.reference_shape)
    for k in np.flatnonzero(~np.isnan(min_comp)):
        for i in range(n):
            binary[i, k] = _remove_small_components(binary[i, k], min_comp[k])

    area = np.count_nonzero(binary, axis=(2, 3))  # (N, C)
    lo = _lower(_scale_area(params.min_area, h * w, params.reference_shape))
    hi = _upper(_scale_area(params.max_area, h * w, params.reference_shape))
    keep = (area >= lo) & (area <= hi)
    if cls is not None:
        t_cls = np.asarray([-np.inf if t is None else t for t in params.t_cls], dtype=np.float64)
        keep &= cls >= t_cls
    keep &= image_gate(cls, img, params, n)[:, None]
    binary &= keep[:, :, None, None]
    return binary[0] if single else binary


# ======================================================================================================
# YAML persistence
# ======================================================================================================
def save_thresholds(
    params: PostprocessParams,
    path: str | os.PathLike,
    report: dict | None = None,
    meta: dict | None = None,
) -> Path:
    """Write ``{params, report, meta}`` as YAML, atomically."""
    path = Path(path)
    doc: dict[str, Any] = {"params": params.to_dict()}
    if report is not None:
        doc["report"] = _plain(report)
    if meta is not None:
        doc["meta"] = _plain(meta)
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def load_thresholds(path: str | os.PathLike, num_classes: int = NUM_CLASSES) -> PostprocessParams:
    """Read the params written by ``save_thresholds`` (a bare params mapping is accepted too)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise ValueError(f"{path}: expected a YAML mapping with a 'params' key, got {type(doc).__name__}")
    params = doc["params"] if "params" in doc else doc
    try:
        return PostprocessParams.from_dict(params, num_classes=num_classes)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: invalid post-processing params: {exc}") from exc


# ======================================================================================================
# Streaming threshold tuning
# ======================================================================================================
def _as_per_class(name: str, value: Any, num_classes: int) -> list[int | None]:
    if value is None or not _is_seq(value):
        return [_check_area(name, value)] * num_classes
    if len(value) != num_classes:
        raise ValueError(f"{name} must be one value or {num_classes} values, got {value!r}")
    return [_check_area(f"{name}[{i}]", v) for i, v in enumerate(value)]


def _grid_index(grid: Sequence[float], value: float, what: str) -> int:
    hits = np.flatnonzero(np.isclose(np.asarray(grid, dtype=np.float64), value, rtol=0, atol=1e-9))
    if hits.size == 0:
        raise ValueError(f"{what}={value} is not in the TuningStats t_pix grid {list(grid)}")
    return int(hits[0])


class TuningStats:
    """Per image, class and pixel threshold: predicted area and intersection with the target.

    Also keeps the target area, class probabilities, image-head probabilities (when the network has an
    image head: given to every ``update`` or to none) and image size. With ``min_component`` set, counts
    are also kept after removing small components (variant 1; variant 0 is without), so both can be
    evaluated. Memory is O(N * C * len(t_pix_grid)).
    """

    def __init__(
        self,
        t_pix_grid: Sequence[float] = DEFAULT_T_PIX_GRID,
        num_classes: int = NUM_CLASSES,
        min_component: int | Sequence[int | None] | None = None,
        reference_shape: Sequence[int] | None = NOTEBOOK_REFERENCE_SHAPE,
    ) -> None:
        grid = {round(float(_check_prob("t_pix_grid value", t, allow_none=False)), 9) for t in t_pix_grid}
        grid.add(0.5)  # the raw / notebook pixel threshold must always be evaluable
        self.t_pix_grid: list[float] = sorted(grid)
        self.num_classes = int(num_classes)
        self.min_component = _as_per_class("min_component", min_component, self.num_classes)
        self.reference_shape = None if reference_shape is None else [int(v) for v in reference_shape]
        self.num_variants = 2 if any(m is not None for m in self.min_component) else 1
        self._pred: list[np.ndarray] = []  # (n, C, G, V) int64
        self._inter: list[np.ndarray] = []  # (n, C, G, V) int64
        self._target: list[np.ndarray] = []  # (n, C) int64
        self._cls: list[np.ndarray] = []  # (n, C) float64
        self._img: list[np.ndarray] = []  # (n,) float64 image-head probabilities (empty: no image head)
        self._hw: list[np.ndarray] = []  # (n,) int64 pixel count per image

    def __len__(self) -> int:
        return int(sum(len(a) for a in self._hw))

    @property
    def has_image_probs(self) -> bool:
        """Whether image-head probabilities were accumulated (so ``img_source="image_head"`` is evaluable)."""
        return bool(self._img)

    def update(self, mask_probs: Any, class_probs: Any, targets: Any, image_probs: Any = None) -> None:
        """Accumulate a batch: mask_probs (N, C, H, W), class_probs (N, C), targets (N, C, H, W) 0/1 and,
        for a network with an image head, image_probs (N,)."""
        mask = _to_numpy(mask_probs)
        if mask.ndim != 4:
            raise ValueError(f"mask_probs must be (N, C, H, W), got shape {mask.shape}")
        mask, cls, img, _ = _batch_inputs(mask, class_probs, self.num_classes, image_probs)
        if cls is None:
            raise ValueError("class_probs is required by TuningStats.update")
        if self._hw and (img is not None) != self.has_image_probs:
            raise ValueError(
                "image_probs must be given to every TuningStats.update or to none: earlier batches had "
                f"{'some' if self.has_image_probs else 'none'}, this one has {'some' if img is not None else 'none'}"
            )
        target = _to_numpy(targets)
        if target.shape != mask.shape:
            raise ValueError(f"targets shape {target.shape} does not match mask_probs shape {mask.shape}")
        target = target > 0.5 if target.dtype.kind == "f" else target.astype(bool, copy=False)
        n, c, h, w = mask.shape
        g_count, v_count = len(self.t_pix_grid), self.num_variants
        pred = np.zeros((n, c, g_count, v_count), dtype=np.int64)
        inter = np.zeros_like(pred)
        min_comp = _scale_area(self.min_component, h * w, self.reference_shape)
        comp_classes = np.flatnonzero(~np.isnan(min_comp))
        binary = np.empty(mask.shape, dtype=bool)
        both = np.empty(mask.shape, dtype=bool)
        for g, t in enumerate(self.t_pix_grid):
            np.greater_equal(mask, _binarize_threshold(t, c), out=binary)
            np.logical_and(binary, target, out=both)
            pred[:, :, g, 0] = np.count_nonzero(binary, axis=(2, 3))
            inter[:, :, g, 0] = np.count_nonzero(both, axis=(2, 3))
            if v_count == 2:
                # Variant 1 = variant 0 except for the classes with a min_component.
                pred[:, :, g, 1] = pred[:, :, g, 0]
                inter[:, :, g, 1] = inter[:, :, g, 0]
                for k in comp_classes:
                    for i in range(n):
                        kept = _remove_small_components(binary[i, k], min_comp[k])
                        pred[i, k, g, 1] = np.count_nonzero(kept)
                        inter[i, k, g, 1] = np.count_nonzero(kept & target[i, k])
        self._pred.append(pred)
        self._inter.append(inter)
        self._target.append(np.count_nonzero(target, axis=(2, 3)).astype(np.int64))
        self._cls.append(cls.astype(np.float64))
        if img is not None:
            self._img.append(img.astype(np.float64))
        self._hw.append(np.full(n, h * w, dtype=np.int64))

    def arrays(self) -> dict[str, np.ndarray]:
        """Concatenated counts: pred/inter (N, C, G, V), target (N, C), class_probs (N, C), hw (N,) and,
        with an image head, image_probs (N,)."""
        if not self._hw:
            raise ValueError("TuningStats is empty: call update() with at least one batch first")
        out = {
            "pred": np.concatenate(self._pred),
            "inter": np.concatenate(self._inter),
            "target": np.concatenate(self._target),
            "class_probs": np.concatenate(self._cls),
            "hw": np.concatenate(self._hw),
        }
        # Keep one chunk so repeated calls stay cheap.
        self._pred, self._inter, self._target = [out["pred"]], [out["inter"]], [out["target"]]
        self._cls, self._hw = [out["class_probs"]], [out["hw"]]
        if self._img:
            out["image_probs"] = np.concatenate(self._img)
            self._img = [out["image_probs"]]
        return out

    def _variant(self, params: PostprocessParams, k: int) -> int:
        want = params.min_component[k]
        if want is None:
            return 0
        if want == self.min_component[k] and self.reference_shape == params.reference_shape:
            return 1
        raise ValueError(
            f"min_component[{k}]={want} (reference_shape {params.reference_shape}) cannot be evaluated: "
            f"TuningStats was built with min_component {self.min_component} "
            f"(reference_shape {self.reference_shape})"
        )

    def dice_per_pair(self, params: PostprocessParams) -> np.ndarray:
        """(N, C) Dice of ``postprocess(..., params)`` against the targets, from the counts alone."""
        if params.num_classes != self.num_classes:
            raise ValueError(f"params have {params.num_classes} classes, TuningStats {self.num_classes}")
        a = self.arrays()
        cls, hw = a["class_probs"], a["hw"]
        out = np.empty(a["target"].shape, dtype=np.float64)
        img_ok = image_gate(cls, a.get("image_probs"), params, len(hw))
        for k in range(self.num_classes):
            g = _grid_index(self.t_pix_grid, params.t_pix[k], f"t_pix[{k}]")
            v = self._variant(params, k)
            p, i = a["pred"][:, k, g, v], a["inter"][:, k, g, v]
            lo = _lower(_scale_area([params.min_area[k]], hw, params.reference_shape))
            hi = _upper(_scale_area([params.max_area[k]], hw, params.reference_shape))
            keep = img_ok & (p >= lo) & (p <= hi)
            if params.t_cls[k] is not None:
                keep &= cls[:, k] >= params.t_cls[k]
            out[:, k] = dice_from_counts(np.where(keep, p, 0), a["target"][:, k], np.where(keep, i, 0))
        return out

    def dice_per_class(self, params: PostprocessParams) -> list[float]:
        """Mean Dice per class of ``postprocess(..., params)`` (exact, from counts)."""
        return [float(v) for v in self.dice_per_pair(params).mean(axis=0)]


def _binarize_threshold(t: float, num_classes: int) -> np.ndarray:
    """The same float64 (1, C, 1, 1) threshold array ``_binarize`` compares against."""
    return np.full((1, num_classes, 1, 1), t, dtype=np.float64)


def _preference(values: Sequence[Any], base: Any, higher_first: bool) -> np.ndarray:
    """Rank of each candidate for tie-breaking: the base value first, then the more conservative."""
    finite = [v for v in values if v is not None]
    order = sorted(set(finite), reverse=higher_first)
    ranks = []
    for v in values:
        if v == base or (v is None and base is None):
            ranks.append(-1)
        elif v is None:
            ranks.append(len(order))
        else:
            ranks.append(order.index(v))
    return np.asarray(ranks)


def _with_base(grid: Sequence[Any], base: Any) -> list[Any]:
    values = list(dict.fromkeys(grid))
    if base not in values:
        values.append(base)
    return values


def _img_sources(stats: TuningStats, img_sources: Sequence[str] | None) -> list[str]:
    """The image-gate sources to tune: default max_cls, plus image_head when ``stats`` has its probabilities."""
    if img_sources is None:
        return ["max_cls", "image_head"] if stats.has_image_probs else ["max_cls"]
    if isinstance(img_sources, str) or not _is_seq(img_sources):
        raise ValueError(
            f"img_sources must be a list drawn from {', '.join(IMG_SOURCES)}, got {img_sources!r}"
        )
    out = list(dict.fromkeys(img_sources))
    bad = [v for v in out if v not in IMG_SOURCES]
    if bad:
        raise ValueError(f"img_sources: unknown {bad}; valid: {', '.join(IMG_SOURCES)}")
    if "image_head" in out and not stats.has_image_probs:
        raise ValueError(
            "img_sources includes 'image_head' but TuningStats has no image-head probabilities "
            "(the network has no image head, or update() was called without image_probs)"
        )
    return out


def _lex_key(*ranks: np.ndarray) -> np.ndarray:
    """Integer key over the outer product of rank vectors: ordering by it is lexicographic in ``ranks``."""
    key = np.zeros((), dtype=np.int64)
    for r in ranks:
        r = np.asarray(r, dtype=np.int64) + 1  # ranks start at -1 (the base value)
        key = key[..., None] * (int(r.max()) + 1) + r
    return key


def tune_thresholds(
    stats: TuningStats,
    t_cls_grid: Sequence[float | None] = DEFAULT_T_CLS_GRID,
    min_area_grid: Sequence[int | None] = DEFAULT_MIN_AREA_GRID,
    base: PostprocessParams | None = None,
    tune_max_area: bool = False,
    max_area_grid: Sequence[int | None] = DEFAULT_MAX_AREA_GRID,
    t_img_grid: Sequence[float | None] = DEFAULT_T_IMG_GRID,
    img_sources: Sequence[str] | None = None,
) -> tuple[PostprocessParams, dict[str, Any]]:
    """Exhaustive search over the image gate and, per class, (t_pix, t_cls, min_area[, max_area][, min_component]).

    Gate candidates: no gate (t_img None) and every t_img of ``t_img_grid`` for every source of
    ``img_sources`` (default: ``max_cls``, plus ``image_head`` when ``stats`` has image-head
    probabilities). For a fixed gate the classes are independent, so the exact per-class search runs once
    per gate and the gate with the best mean Dice is kept: the result is the exact optimum over the grids.
    Area grids are in ``base.reference_shape`` pixels; the base value of every parameter is always a
    candidate. With ``stats.min_component`` set, removing small components is a candidate too. Ties
    (within 1e-12) prefer, per class, the base value, then the more conservative one (higher thresholds,
    lower max area), in the order t_pix, t_cls, min_area, min_component, max_area; between gates, the base
    gate, then no gate, then max_cls before image_head, then the higher t_img.
    Returns (params, report); the report's Dice values come from ``stats.dice_per_class`` and include
    the best tuned result without a gate and with a gate per source.
    """
    base = PostprocessParams.notebook_defaults() if base is None else base
    if base.num_classes != stats.num_classes:
        raise ValueError(f"base has {base.num_classes} classes, TuningStats {stats.num_classes}")
    if stats.num_variants == 2 and stats.reference_shape != base.reference_shape:
        raise ValueError(
            f"TuningStats.reference_shape {stats.reference_shape} (used to scale min_component) differs "
            f"from base.reference_shape {base.reference_shape}"
        )
    for k in range(base.num_classes):
        _grid_index(stats.t_pix_grid, base.t_pix[k], f"base.t_pix[{k}]")
        stats._variant(base, k)
    t_cls_grid = [_check_prob("t_cls_grid value", t, allow_none=True) for t in t_cls_grid]
    min_area_grid = [_check_area("min_area_grid value", a) for a in min_area_grid]
    max_area_grid = [_check_area("max_area_grid value", a) for a in max_area_grid]
    t_img_values = [_check_prob("t_img_grid value", t, allow_none=True) for t in t_img_grid]
    sources = _img_sources(stats, img_sources)

    a = stats.arrays()
    n_img = len(a["hw"])
    hw, cls_probs, img_probs = a["hw"], a["class_probs"], a.get("image_probs")

    # Gate candidates in tie-break order: the base gate, no gate, then per source the higher t_img first.
    gates: list[tuple[float | None, str]] = []
    if base.t_img is not None:
        gates.append((base.t_img, base.img_source))
    gates.append((None, "max_cls"))
    for src in sources:
        gates += [(t, src) for t in sorted({t for t in t_img_values if t is not None}, reverse=True)]
    gates = list(dict.fromkeys(gates))
    gate_ok = np.stack(
        [
            image_gate(cls_probs, img_probs, dataclasses.replace(base, t_img=t, img_source=src), n_img)
            for t, src in gates
        ]
    ).astype(np.float64)  # (J, N)

    t_pix_values = list(stats.t_pix_grid)
    best_score = np.empty((len(gates), stats.num_classes))
    chosen: list[list[dict[str, Any]]] = [[] for _ in gates]  # [gate][class] -> parameter values

    for k in range(stats.num_classes):
        t_cls_values = _with_base(t_cls_grid, base.t_cls[k])
        min_values = _with_base(min_area_grid, base.min_area[k])
        max_values = (
            _with_base([*max_area_grid, None], base.max_area[k]) if tune_max_area else [base.max_area[k]]
        )
        variant_values = [None] if stats.min_component[k] is None else [None, stats.min_component[k]]
        pred = a["pred"][:, k, :, : len(variant_values)].astype(np.float64)  # (N, G, V)
        inter = a["inter"][:, k, :, : len(variant_values)].astype(np.float64)
        target = a["target"][:, k].astype(np.float64)  # (N,)

        # Mean Dice = mean(d_drop) + mean(keep * (d_keep - d_drop)), keep = image gate & class gate & area.
        d_keep = dice_from_counts(pred, target[:, None, None], inter)
        d_drop = dice_from_counts(np.zeros_like(target), target, np.zeros_like(target))
        gain = np.asarray(d_keep, dtype=np.float64) - np.asarray(d_drop, dtype=np.float64)[:, None, None]
        lo = _lower(_scale_area(min_values, hw[:, None], base.reference_shape))  # (N, M)
        hi = _upper(_scale_area(max_values, hw[:, None], base.reference_shape))  # (N, X)
        area_ok = (pred[..., None, None] >= lo[:, None, None, :, None]) & (
            pred[..., None, None] <= hi[:, None, None, None, :]
        )  # (N, G, V, M, X)
        t_cls_arr = np.asarray([-np.inf if t is None else t for t in t_cls_values], dtype=np.float64)
        cls_ok = (cls_probs[:, k, None] >= t_cls_arr[None, :]).astype(np.float64)  # (N, K)
        weighted = (gain[..., None, None] * area_ok).reshape(n_img, -1)  # (N, G*V*M*X)
        keep = (gate_ok[:, None, :] * cls_ok.T[None]).reshape(-1, n_img)  # (J * K, N), contiguous for BLAS
        score = (keep @ weighted) / n_img  # (J * K, G*V*M*X)
        score = score.reshape(len(gates), len(t_cls_values), *area_ok.shape[1:]) + float(np.mean(d_drop))
        # A window with min_area > max_area is not a valid parameter set.
        lo_ref = np.asarray([-np.inf if v is None else v for v in min_values])
        hi_ref = np.asarray([np.inf if v is None else v for v in max_values])
        score[..., lo_ref[:, None] > hi_ref[None, :]] = -np.inf

        # Lexicographic tie-break key over (K, G, V, M, X): t_pix, t_cls, min_area, min_component, max_area.
        key = _lex_key(
            _preference(t_pix_values, base.t_pix[k], higher_first=True),
            _preference(t_cls_values, base.t_cls[k], higher_first=True),
            _preference(min_values, base.min_area[k], higher_first=True),
            _preference(variant_values, base.min_component[k], higher_first=True),
            _preference(max_values, base.max_area[k], higher_first=False),
        ).transpose(1, 0, 3, 2, 4)  # (G, K, M, V, X) -> (K, G, V, M, X)
        for j in range(len(gates)):
            s = score[j]
            best_score[j, k] = s.max()
            tied_key = np.where(s >= best_score[j, k] - _TIE_TOL, key, np.iinfo(np.int64).max)
            ik, ig, iv, im, ix = np.unravel_index(int(np.argmin(tied_key)), s.shape)
            chosen[j].append(
                {
                    "t_pix": t_pix_values[ig],
                    "t_cls": t_cls_values[ik],
                    "min_area": min_values[im],
                    "min_component": variant_values[iv],
                    "max_area": max_values[ix],
                }
            )

    def tuned_for(j: int) -> PostprocessParams:
        t, src = gates[j]
        return dataclasses.replace(
            base,
            t_img=t,
            img_source=src,
            **{name: [c[name] for c in chosen[j]] for name in chosen[j][0]},
        )

    def first_best(candidates: list[int]) -> int:
        means = best_score[candidates].mean(axis=1)
        return candidates[int(np.flatnonzero(means >= means.max() - _TIE_TOL)[0])]

    j_best = first_best(list(range(len(gates))))
    j_none = gates.index((None, "max_cls"))
    tuned, tuned_no_gate = tuned_for(j_best), tuned_for(j_none)
    raw = PostprocessParams.disabled(stats.num_classes)
    dice_raw = stats.dice_per_class(raw)
    dice_default = stats.dice_per_class(base)
    dice_tuned = stats.dice_per_class(tuned)
    dice_no_gate = stats.dice_per_class(tuned_no_gate)
    per_source: dict[str, Any] = {}
    for src in sources:
        js = [j for j, (t, s) in enumerate(gates) if s == src and t is not None]
        if js:
            j = first_best(js)
            dice = stats.dice_per_class(tuned_for(j))
            per_source[src] = {"t_img": gates[j][0], "dice": float(np.mean(dice)), "dice_per_class": dice}
    report: dict[str, Any] = {
        "num_images": n_img,
        "classes": [
            {
                "class": k + 1,
                "dice_raw": dice_raw[k],
                "dice_default": dice_default[k],
                "dice_tuned_no_gate": dice_no_gate[k],
                "dice_tuned": dice_tuned[k],
                "t_pix": tuned.t_pix[k],
                "t_cls": tuned.t_cls[k],
                "min_area": tuned.min_area[k],
                "max_area": tuned.max_area[k],
                "min_component": tuned.min_component[k],
            }
            for k in range(stats.num_classes)
        ],
        "mean": {
            "dice_raw": float(np.mean(dice_raw)),
            "dice_default": float(np.mean(dice_default)),
            "dice_tuned_no_gate": float(np.mean(dice_no_gate)),
            "dice_tuned": float(np.mean(dice_tuned)),
        },
        "image_gate": {
            "t_img": tuned.t_img,
            "img_source": tuned.img_source if tuned.t_img is not None else None,
            "sources": per_source,
        },
    }
    return tuned, report


def format_tuning_report(report: Mapping[str, Any]) -> str:
    """A small fixed-width table: per class Dice raw / notebook defaults / tuned and chosen thresholds, then
    the image gate: mean Dice tuned without a gate and with the best gate of each source."""

    def fmt(v: Any, spec: str) -> str:
        if v is None:
            return "-"
        return format(v, spec)

    head = (
        f"{'class':>5} {'raw':>7} {'default':>7} {'tuned':>7} "
        f"{'t_pix':>5} {'t_cls':>5} {'min_area':>8} {'max_area':>8} {'min_comp':>8}"
    )
    lines = [head, "-" * len(head)]
    for row in report["classes"]:
        lines.append(
            f"{row['class']:>5} {row['dice_raw']:>7.4f} {row['dice_default']:>7.4f} {row['dice_tuned']:>7.4f} "
            f"{fmt(row['t_pix'], '.2f'):>5} {fmt(row['t_cls'], '.2f'):>5} {fmt(row['min_area'], 'd'):>8} "
            f"{fmt(row['max_area'], 'd'):>8} {fmt(row.get('min_component'), 'd'):>8}"
        )
    mean = report["mean"]
    lines.append("-" * len(head))
    lines.append(
        f"{'mean':>5} {mean['dice_raw']:>7.4f} {mean['dice_default']:>7.4f} {mean['dice_tuned']:>7.4f}"
        + (f"   ({report['num_images']} images)" if "num_images" in report else "")
    )
    gate = report.get("image_gate")
    if gate is not None:
        chosen = gate.get("img_source") if gate.get("t_img") is not None else "none"
        lines.append("image gate (keep an image's masks only if p_img >= t_img), tuned with the rest:")
        lines.append(f"  {'p_img source':<12} {'t_img':>5} {'mean':>7}")
        rows = [("none", None, mean.get("dice_tuned_no_gate"))]
        rows += [(src, v["t_img"], v["dice"]) for src, v in gate.get("sources", {}).items()]
        for name, t, dice in rows:
            mark = "  <- chosen" if name == chosen else ""
            lines.append(f"  {name:<12} {fmt(t, '.2f'):>5} {fmt(dice, '.4f'):>7}{mark}")
    return "\n".join(lines)
