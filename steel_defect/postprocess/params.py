"""Post-processing parameters: :class:`PostprocessParams`, the notebook defaults and tuning grids, their
validators, and the thresholds YAML (save / load). numpy + PyYAML only.

See :mod:`steel_defect.postprocess.apply` for what each parameter does.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from steel_defect import DEFAULT_SHAPE, NUM_CLASSES
from steel_defect.config import to_plain
from steel_defect.io import atomic_write

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
def is_seq(value: Any) -> bool:
    return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes)


def check_prob(name: str, value: Any, allow_none: bool) -> float | None:
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


def check_area(name: str, value: Any) -> int | None:
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
        self.t_img = check_prob("t_img", self.t_img, allow_none=True)
        if not isinstance(self.img_source, str) or self.img_source not in IMG_SOURCES:
            raise ValueError(f"img_source must be one of {', '.join(IMG_SOURCES)}, got {self.img_source!r}")
        if self.pix_mode is None and is_seq(self.t_pix):
            self.pix_mode = ["plain"] * len(self.t_pix)
        lists = {}
        for name in PER_CLASS_KEYS:
            value = getattr(self, name)
            if not is_seq(value):
                raise ValueError(f"{name} must be a list with one value per class, got {value!r}")
            lists[name] = list(value)
        lengths = {name: len(v) for name, v in lists.items()}
        if len(set(lengths.values())) != 1 or lengths["t_pix"] == 0:
            raise ValueError(f"every per-class list must have the same non-zero length, got {lengths}")
        self.t_cls = [check_prob(f"t_cls[{i}]", v, allow_none=True) for i, v in enumerate(lists["t_cls"])]
        self.t_pix = [check_prob(f"t_pix[{i}]", v, allow_none=False) for i, v in enumerate(lists["t_pix"])]
        for i, mode in enumerate(lists["pix_mode"]):
            if not isinstance(mode, str) or mode not in PIX_MODES:
                raise ValueError(f"pix_mode[{i}] must be one of {', '.join(PIX_MODES)}, got {mode!r}")
        self.pix_mode = [str(m) for m in lists["pix_mode"]]
        self.min_area = [check_area(f"min_area[{i}]", v) for i, v in enumerate(lists["min_area"])]
        self.max_area = [check_area(f"max_area[{i}]", v) for i, v in enumerate(lists["max_area"])]
        self.min_component = [
            check_area(f"min_component[{i}]", v) for i, v in enumerate(lists["min_component"])
        ]
        for i, (lo, hi) in enumerate(zip(self.min_area, self.max_area, strict=True)):
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"min_area[{i}]={lo} is larger than max_area[{i}]={hi}")
        if self.reference_shape is not None:
            ref = self.reference_shape
            if (
                not is_seq(ref)
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
            lengths = {len(v) for k, v in d.items() if k in PER_CLASS_KEYS and is_seq(v)}
            num_classes = lengths.pop() if len(lengths) == 1 else NUM_CLASSES
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in valid:
                raise ValueError(f"unknown post-processing key {key!r}; valid keys: {', '.join(valid)}")
        kwargs = {k: (list(v) if is_seq(v) else v) for k, v in d.items()}
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
