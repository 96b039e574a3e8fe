"""Post-processing of network probabilities into final masks (pure functions, numpy + OpenCV only).

The original Keras pipeline turned probabilities into masks with, per class: an image-level "has defect"
gate, a per-class classification gate, a pixel threshold and per-class area limits. ``postprocess`` does
exactly that (vectorised over images and classes); :mod:`steel_defect.tuning` chooses the thresholds on a
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
from steel_defect.plain import to_plain

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
#: What each class's pixel threshold is compared with (see the module docstring).
PIX_MODES: tuple[str, ...] = ("plain", "soft", "scaled")
#: Default min-area grid in reference-shape pixels (the class's ``base`` value is always added).
DEFAULT_MIN_AREA_GRID: tuple[int, ...] = (0, 100, 200, 300, 500, 700, 1000, 1500, 2000, 3000, 4000, 6000)
#: Default max-area grid (used with ``tune_max_area=True``; the base value and None are always added).
DEFAULT_MAX_AREA_GRID: tuple[int, ...] = (5000, 10000, 15500, 20000, 40000, 80000, 127000, 160000)


# ======================================================================================================
# Parameters
# ======================================================================================================
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


#: The largest pixel count an area limit may name (int32: far above any image; null means "no limit").
MAX_AREA_VALUE = 2**31 - 1
#: The largest side of ``reference_shape`` (a Severstal image is [256, 1600]).
MAX_REFERENCE_SIDE = 65536
#: A thresholds file larger than this is refused before it is parsed.
MAX_THRESHOLDS_BYTES = 1 << 20


def _check_area(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    if not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
    if value > MAX_AREA_VALUE:
        raise ValueError(f"{name}={value} is larger than any image ({MAX_AREA_VALUE}); use null for no limit")
    return int(value)


#: The per-class lists of :class:`PostprocessParams` (one value per class).
PER_CLASS_KEYS: tuple[str, ...] = ("t_cls", "t_pix", "pix_mode", "min_area", "max_area", "min_component")


@dataclass
class PostprocessParams:
    """Per-class post-processing thresholds (index c = class c + 1); None disables a gate or limit."""

    #: Image gate: keep any mask only if the image-level probability (see img_source) >= t_img.
    t_img: float | None = None
    #: Image-level probability: "max_cls" = max(class_probs), "image_head" = the net's "any defect" output.
    img_source: str = "max_cls"
    #: Class gate: keep class c only if class_probs[c] >= t_cls[c].
    t_cls: list[float | None] = field(default_factory=lambda: list(NOTEBOOK_T_CLS))
    #: Pixel threshold: mask = score[c] >= t_pix[c], the score given by pix_mode[c].
    t_pix: list[float] = field(default_factory=lambda: list(NOTEBOOK_T_PIX))
    #: "plain" (score = mask probability), "soft" (x class probability) or "scaled" (see PIX_MODES);
    #: None = plain for every class.
    pix_mode: list[str] | None = None
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
        if self.pix_mode is None and _is_seq(self.t_pix):
            self.pix_mode = ["plain"] * len(self.t_pix)
        lists = {}
        for name in PER_CLASS_KEYS:
            value = getattr(self, name)
            if not _is_seq(value):
                raise ValueError(f"{name} must be a list with one value per class, got {value!r}")
            lists[name] = list(value)
        lengths = {name: len(v) for name, v in lists.items()}
        if len(set(lengths.values())) != 1 or lengths["t_pix"] == 0:
            raise ValueError(f"every per-class list must have the same non-zero length, got {lengths}")
        self.t_cls = [_check_prob(f"t_cls[{i}]", v, allow_none=True) for i, v in enumerate(lists["t_cls"])]
        self.t_pix = [_check_prob(f"t_pix[{i}]", v, allow_none=False) for i, v in enumerate(lists["t_pix"])]
        for i, mode in enumerate(lists["pix_mode"]):
            if not isinstance(mode, str) or mode not in PIX_MODES:
                raise ValueError(f"pix_mode[{i}] must be one of {', '.join(PIX_MODES)}, got {mode!r}")
        self.pix_mode = [str(m) for m in lists["pix_mode"]]
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
            if max(ref) > MAX_REFERENCE_SIDE:
                raise ValueError(
                    f"reference_shape={list(ref)}: each side must be at most {MAX_REFERENCE_SIDE} pixels "
                    "(a Severstal image is [256, 1600])"
                )
            self.reference_shape = [int(v) for v in ref]

    @property
    def num_classes(self) -> int:
        return len(self.t_pix)

    def to_dict(self) -> dict[str, Any]:
        """Plain python types only (YAML-safe)."""
        return to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], num_classes: int | None = NUM_CLASSES) -> PostprocessParams:
        """Build from a mapping (e.g. YAML / Hydra config); missing keys take the defaults of
        :meth:`for_classes`. ``num_classes`` None: the length of the mapping's per-class lists."""
        if not isinstance(d, Mapping):
            raise ValueError(f"PostprocessParams.from_dict expects a mapping, got {type(d).__name__}")
        if num_classes is None:
            lengths = {len(v) for k, v in d.items() if k in PER_CLASS_KEYS and _is_seq(v)}
            num_classes = lengths.pop() if len(lengths) == 1 else NUM_CLASSES
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in valid:
                raise ValueError(f"unknown post-processing key {key!r}; valid keys: {', '.join(valid)}")
        kwargs = {k: (list(v) if _is_seq(v) else v) for k, v in d.items()}
        for key, value in kwargs.items():
            if key in PER_CLASS_KEYS:
                if not isinstance(value, list) or len(value) != num_classes:
                    raise ValueError(
                        f"{key} must be a list of {num_classes} values (one per class), got {value!r}"
                    )
        defaults = cls.for_classes(num_classes).to_dict() if num_classes != NUM_CLASSES else {}
        params = cls(**{**defaults, **kwargs})
        if params.num_classes != num_classes:
            raise ValueError(f"expected {num_classes} classes, got {params.num_classes}")
        return params

    @classmethod
    def notebook_defaults(cls) -> PostprocessParams:
        """The original notebook's post-processing (see the constants at the top of this module)."""
        return cls()

    @classmethod
    def for_classes(cls, num_classes: int = NUM_CLASSES, severstal: bool = True) -> PostprocessParams:
        """The starting post-processing for ``num_classes`` classes: the notebook's for Severstal's four
        (``severstal``), else class gates and pixel thresholds at 0.5 with no area limits (the notebook's
        limits are Severstal statistics; tuning finds a data set's own)."""
        if severstal and num_classes == NUM_CLASSES:
            return cls.notebook_defaults()
        return dataclasses.replace(cls.disabled(num_classes), t_cls=[0.5] * num_classes)

    @classmethod
    def disabled(cls, num_classes: int = NUM_CLASSES) -> PostprocessParams:
        """Raw masks: pixel threshold 0.5, every gate and limit off."""
        return cls(
            t_img=None,
            t_cls=[None] * num_classes,
            t_pix=[0.5] * num_classes,
            pix_mode=["plain"] * num_classes,
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
    mask, cls, img, single = _batch_inputs(mask_probs, class_probs, params.num_classes, image_probs)
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
    """Write ``{params, report, meta}`` as YAML, atomically; an existing ``path`` is replaced only when it is
    a thresholds file (:func:`is_thresholds_file`)."""
    from steel_defect.guard import refuse_unless_own

    path = Path(path)
    refuse_unless_own(path, is_thresholds_file, what="thresholds", kind="thresholds file")
    doc: dict[str, Any] = {"params": params.to_dict()}
    if report is not None:
        doc["report"] = to_plain(report)
    if meta is not None:
        doc["meta"] = to_plain(meta)
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases (a thresholds file never needs them; they make alias bombs)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"aliases are not allowed in a thresholds file (line {mark.line + 1})")
        return super().compose_node(parent, index)


def read_thresholds_yaml(path: str | os.PathLike) -> Any:
    """The YAML document of a thresholds file: at most :data:`MAX_THRESHOLDS_BYTES`, no tags (safe
    loader), no aliases; errors name the file."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_THRESHOLDS_BYTES:
        raise ValueError(
            f"{path}: {size} bytes is too large for a thresholds file (at most {MAX_THRESHOLDS_BYTES})"
        )
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc


def is_thresholds_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a thresholds file as :func:`save_thresholds` writes it (a YAML mapping with
    ``params``), so a new one may replace it."""
    try:
        doc = read_thresholds_yaml(path)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, Mapping) and isinstance(doc.get("params"), Mapping)


def load_thresholds(path: str | os.PathLike, num_classes: int | None = NUM_CLASSES) -> PostprocessParams:
    """Read the params written by ``save_thresholds`` (a bare params mapping is accepted too);
    ``num_classes`` None: as many classes as the file has."""
    path = Path(path)
    doc = read_thresholds_yaml(path)
    if not isinstance(doc, Mapping):
        raise ValueError(f"{path}: expected a YAML mapping with a 'params' key, got {type(doc).__name__}")
    params = doc["params"] if "params" in doc else doc
    try:
        return PostprocessParams.from_dict(params, num_classes=num_classes)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: invalid post-processing params: {exc}") from exc
