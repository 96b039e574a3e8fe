"""The data module's configuration (conf/data/*.yaml) as typed groups, validated once.

Hydra hands :class:`~steel_defect.data.datamodule.SteelDataModule` the flat YAML keys (``data.crop_width``,
``data.augment.hflip_p``, ``data.pseudo_share``, ...); :meth:`DataConfig.from_options` checks them (each error
names ``data.<key>``, through :mod:`steel_defect.config`'s validators) and groups them:

* :class:`LayoutConfig`: where the labelled images are (``layout``, ``train_csv``, ``train_images``,
  ``test_images``, ``images``, ``masks``, ``missing_mask``);
* :class:`CropConfig`: the training crop (``crop_height``, ``crop_width``, ``defect_crop_p``);
* :class:`AugmentConfig`: ``augment.*`` (the albumentations pipeline) and ``blackout_p``;
* :class:`OversampleConfig`: ``oversample.power`` (None: off); ``copy_paste`` stays the checked dict of
  :func:`steel_defect.data.copy_paste.copy_paste_config`;
* :class:`PseudoConfig`: ``pseudo_labels``, ``pseudo_images``, ``pseudo_share``;
* :class:`LoaderConfig`: ``batch_size``, ``val_batch_size``, ``num_workers``, ``pin_memory``,
  ``persistent_workers``;
* :class:`LimitConfig`: ``limit_train``, ``limit_val``.

The defaults live in the constructor's signature (python callers) and conf/data/severstal.yaml (Hydra); the
groups here have none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from steel_defect.config import (
    boolean,
    choice,
    fraction,
    integer,
    keys,
    number,
    optional_integer,
    to_plain,
)

#: ``kaggle``: ``train_csv`` + ``train_images`` (Severstal's layout); ``folder``: ``images`` + ``masks``.
LAYOUTS = ("kaggle", "folder")
MISSING_MASK = ("error", "empty")
AUGMENT_KEYS = (
    "hflip_p",
    "vflip_p",
    "brightness_contrast_p",
    "brightness_limit",
    "contrast_limit",
    "gamma_p",
    "blur_p",
    "noise_p",
    "jpeg_p",
)
OVERSAMPLE_KEYS = ("power",)


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"data.{key} must be a non-empty file or folder name, got {value!r}")
    return value


@dataclass(frozen=True)
class LayoutConfig:
    """Where the labelled images and their labels are, under ``data.root``."""

    layout: str
    train_csv: str
    train_images: str
    test_images: str
    images: str
    masks: str
    missing_mask: str

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> LayoutConfig:
        return cls(
            layout=_layout(o["layout"]),
            train_csv=_name("train_csv", o["train_csv"]),
            train_images=_name("train_images", o["train_images"]),
            test_images=_name("test_images", o["test_images"]),
            images=_name("images", o["images"]),
            masks=_name("masks", o["masks"]),
            missing_mask=choice("data.missing_mask", o["missing_mask"], MISSING_MASK),
        )


def _layout(value: Any) -> str:
    if value not in LAYOUTS:
        raise ValueError(f"data.layout={value!r}; choose one of: {', '.join(LAYOUTS)}")
    return str(value)


@dataclass(frozen=True)
class CropConfig:
    """The random training crop (None along an axis: the full image) and the share placed on a defect."""

    height: int | None
    width: int | None
    defect_p: float

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> CropConfig:
        defect_p = o["defect_crop_p"]
        if isinstance(defect_p, bool) or not isinstance(defect_p, int | float) or not 0.0 <= defect_p <= 1.0:
            raise ValueError(f"data.defect_crop_p must be a probability in [0, 1], got {defect_p!r}")
        return cls(
            height=optional_integer("data.crop_height", o["crop_height"], 1),
            width=optional_integer("data.crop_width", o["crop_width"], 1),
            defect_p=float(defect_p),
        )


@dataclass(frozen=True)
class AugmentConfig:
    """``data.augment``: the keys given (the others keep :func:`~steel_defect.data.transforms.build_transforms`'
    defaults) and ``data.blackout_p``."""

    transforms: Mapping[str, float]
    blackout_p: float

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> AugmentConfig:
        given = keys("data.augment", o["augment"], AUGMENT_KEYS)
        return cls(
            transforms={k: number(f"data.augment.{k}", v, 0.0) for k, v in given.items()},
            blackout_p=number("data.blackout_p", o["blackout_p"], 0.0, 1.0),
        )


@dataclass(frozen=True)
class OversampleConfig:
    """Weighted sampling of images of rare classes: weight ``(1 / class frequency) ** power``."""

    power: float = 0.5

    @classmethod
    def parse(cls, value: Any) -> OversampleConfig | None:
        given = keys("data.oversample", value, OVERSAMPLE_KEYS)
        if not given:
            return None
        return cls(**{k: number(f"data.oversample.{k}", v, float("-inf")) for k, v in given.items()})


@dataclass(frozen=True)
class PseudoConfig:
    """Pseudo-labelled images mixed into every training batch at ``share`` (``labels`` None: off)."""

    labels: str | None
    images: str | None
    share: float

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> PseudoConfig:
        return cls(
            labels=o["pseudo_labels"] or None,
            images=o["pseudo_images"] or None,
            share=fraction("data.pseudo_share", o["pseudo_share"]),
        )


@dataclass(frozen=True)
class LoaderConfig:
    """The DataLoaders' batch sizes and worker settings."""

    batch_size: int
    val_batch_size: int
    num_workers: int
    pin_memory: bool
    persistent_workers: bool

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> LoaderConfig:
        return cls(
            batch_size=integer("data.batch_size", o["batch_size"], 1),
            val_batch_size=integer("data.val_batch_size", o["val_batch_size"], 1),
            num_workers=integer("data.num_workers", o["num_workers"], 0),
            pin_memory=boolean("data.pin_memory", o["pin_memory"]),
            persistent_workers=boolean("data.persistent_workers", o["persistent_workers"]),
        )


@dataclass(frozen=True)
class LimitConfig:
    """Keep the first N images of the train / validation part (None: all)."""

    train: int | None
    val: int | None

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> LimitConfig:
        return cls(
            train=optional_integer("data.limit_train", o["limit_train"], 1),
            val=optional_integer("data.limit_val", o["limit_val"], 1),
        )


@dataclass(frozen=True)
class DataConfig:
    """Every option of the data module but ``root``, ``classes``, ``shape`` and the split, grouped."""

    layout: LayoutConfig
    crop: CropConfig
    augment: AugmentConfig
    oversample: OversampleConfig | None
    pseudo: PseudoConfig
    loader: LoaderConfig
    limits: LimitConfig

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> DataConfig:
        """The flat YAML keys (``crop_width``, ``augment``, ``pseudo_share``, ...) checked and grouped."""
        o = {k: to_plain(v) for k, v in options.items()}
        return cls(
            layout=LayoutConfig.parse(o),
            crop=CropConfig.parse(o),
            augment=AugmentConfig.parse(o),
            oversample=OversampleConfig.parse(o["oversample"]),
            pseudo=PseudoConfig.parse(o),
            loader=LoaderConfig.parse(o),
            limits=LimitConfig.parse(o),
        )

    def asdict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
