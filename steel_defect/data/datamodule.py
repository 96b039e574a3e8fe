"""``SteelDataModule``: annotations -> reproducible split -> datasets -> loaders, for Lightning and Hydra.

All constructor arguments are plain values (Hydra instantiates the class from ``conf/data/*.yaml``), saved as
hyper-parameters and checked once into typed groups (``self.cfg``: :class:`~steel_defect.data.config.DataConfig`,
with ``layout``, ``crop``, ``augment``, ``oversample``, ``pseudo``, ``loader`` and ``limits``). The split is computed once per run and, when ``split_file`` is set, stored there
(or re-read from there), so a run's split lives next to the run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
from torch.utils.data import DataLoader, SequentialSampler

from steel_defect import DEFAULT_SHAPE, SEVERSTAL_CLASSES
from steel_defect.config import integer, to_plain
from steel_defect.data.annotations import load_annotations, rle_columns
from steel_defect.data.config import LAYOUTS, DataConfig
from steel_defect.data.copy_paste import copy_paste_config
from steel_defect.data.dataset import SizeBatchSampler, SteelDataset
from steel_defect.data.samplers import (
    EpochSampler,
    MixedDataset,
    PseudoMixSampler,
    class_frequencies,
    oversample_weights,
)
from steel_defect.data.splits import (
    DEFAULT_SPLIT,
    load_split,
    make_split,
    normalise_split_cfg,
    save_split,
    split_parts,
)
from steel_defect.data.transforms import build_transforms

__all__ = [
    "LAYOUTS",
    "DataConfig",
    "MixedDataset",
    "PseudoMixSampler",
    "SteelDataModule",
    "class_frequencies",
    "oversample_weights",
]

log = logging.getLogger(__name__)


class SteelDataModule(L.LightningDataModule):
    """Labelled steel images for fit/validate/test (prediction reads its own folders: ``predict.py``).

    ``layout``: ``kaggle`` (Severstal's: ``root/train_csv`` + ``root/train_images``) or ``folder`` (the
    plant's own: ``root/images`` + ``root/masks/<stem>.png``, pixel value = class index; see
    :mod:`steel_defect.data.folder`; ``missing_mask``: ``error`` or ``empty``). ``classes``: the class names
    (default Severstal's ``["1", "2", "3", "4"]``); their number is the network's mask channels.

    ``split``: ``{"kind": "notebook", "test_size", "val_size", "seed"}`` (default) or ``{"kind": "kfold",
    "n_splits", "fold", "seed"}``. ``crop_width``: random training crop width (full height; None = no crop).
    ``augment``: ``hflip_p``, ``vflip_p``, ``brightness_contrast_p`` (+ ``brightness_limit``,
    ``contrast_limit``). ``oversample``: ``{"power": p}`` -> weighted sampling of rare classes.
    ``copy_paste``: ``{"p", "power"}`` -> defects of rare classes pasted into training images (train only; see
    ``steel_defect.data.copy_paste``). ``defect_crop_p``: the share of training crops placed on a defect of a
    class drawn uniformly among the image's (``steel_defect.data.defect_crop``; the rest are random).
    ``limit_train`` / ``limit_val``: keep the first N images of each part (CPU demos; threshold tuning at fit
    end still uses the whole validation part, :meth:`tune_dataloader`). This module only reads ``root``:
    it never generates, writes or deletes anything there (generation is
    :class:`steel_defect.synthetic.datamodule.SyntheticDataModule`'s, ``data=synthetic``).
    ``shape``: image size [H, W] (kaggle default ``DEFAULT_SHAPE``); with the folder layout null means
    images of any size: training crops ``crop_height x crop_width`` (both required; smaller images are
    zero-padded) and evaluation batches hold images of one size (:class:`SizeBatchSampler`).
    ``pseudo_labels``: a pseudo-label csv written by ``predict.py task=pseudo`` (+ its ``_empty.txt``) for
    the images in ``pseudo_images`` (default ``root/test_images``): mixed into training at ``pseudo_share`` of
    every batch (:class:`PseudoMixSampler`), never into validation or test; refused if it names an image of
    the validation or test split.
    """

    def __init__(
        self,
        root: str | None = None,
        *,
        train_csv: str = "train.csv",
        train_images: str = "train_images",
        test_images: str = "test_images",
        split: dict | None = None,
        split_file: str | None = None,
        crop_width: int | None = 400,
        batch_size: int = 8,
        val_batch_size: int = 4,
        num_workers: int = 2,
        pin_memory: bool = False,
        augment: dict | None = None,
        blackout_p: float = 0.0,
        copy_paste: dict | None = None,
        oversample: dict | None = None,
        limit_train: int | None = None,
        limit_val: int | None = None,
        pseudo_labels: str | None = None,
        pseudo_images: str | None = None,
        pseudo_share: float = 0.12,
        persistent_workers: bool = False,
        shape: list[int] | None = None,
        layout: str = "kaggle",
        classes: list[str] | None = None,
        images: str = "images",
        masks: str = "masks",
        missing_mask: str = "error",
        crop_height: int | None = None,
        defect_crop_p: float = 0.0,
    ) -> None:
        super().__init__()
        if root is None or str(root).strip() in ("", "???"):
            raise ValueError(
                "data.root is required: the folder holding train.csv, train_images/, test_images/ "
                "(data=severstal) or images/ + masks/ (data=folder)"
            )
        self.save_hyperparameters(logger=False)
        #: The options, checked and grouped into typed sub-configs (:mod:`steel_defect.data.config`).
        self.cfg: DataConfig = DataConfig.from_options(self.hparams)
        names = list(SEVERSTAL_CLASSES) if classes is None else [str(c) for c in to_plain(classes)]
        if not names or len(set(names)) != len(names) or any(not n.strip() for n in names):
            raise ValueError(f"data.classes must be distinct non-empty class names, got {classes!r}")
        #: The class names, in mask-channel order (class id k + 1 = channel k).
        self.classes: list[str] = names
        self.root = Path(root)
        self.split_cfg: dict[str, Any] = normalise_split_cfg(
            to_plain(split) if split is not None else DEFAULT_SPLIT
        )
        self.copy_paste = copy_paste_config(to_plain(copy_paste))
        #: The image size every image must have; None: any size (folder layout without data.shape).
        self.shape: tuple[int, int] | None = self._shape(shape)
        if self.shape is None:
            build_transforms("train", crop_height=crop_height, crop_width=crop_width, any_size=True)
        self.pseudo_frame: pd.DataFrame | None = None
        self.pseudo_dataset: SteelDataset | None = None
        self.annotations: pd.DataFrame | None = None
        self.split: dict[str, Any] | None = None
        self.train_dataset: SteelDataset | None = None
        self.val_dataset: SteelDataset | None = None
        self.test_dataset: SteelDataset | None = None
        self._sizes: dict[str, tuple[int, int]] = {}

    def _shape(self, shape: Any) -> tuple[int, int] | None:
        """``data.shape`` as ``(height, width)``: the kaggle layout's default ``DEFAULT_SHAPE``; None (any
        size) only with the folder layout."""
        shape = to_plain(shape)
        if shape is None:
            return tuple(DEFAULT_SHAPE) if self.cfg.layout.layout == "kaggle" else None  # type: ignore[return-value]
        if not isinstance(shape, list | tuple) or len(shape) != 2:
            raise ValueError(f"data.shape must be [height, width], got {shape!r}")
        return integer("data.shape height", shape[0], 1), integer("data.shape width", shape[1], 1)

    # ----------------------------------------------------------------------------------------- preparation
    @property
    def num_classes(self) -> int:
        """How many classes (mask channels) the data has: ``len(classes)``."""
        return len(self.classes)

    @property
    def csv_path(self) -> Path:
        return self.root / self.cfg.layout.train_csv

    def _load(self) -> pd.DataFrame:
        """Annotations and split, computed once (split read from / saved to ``split_file`` if set)."""
        if self.annotations is not None:
            return self.annotations
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root {str(self.root)!r} does not exist")
        hp = self.cfg.layout
        if hp.layout == "folder":
            from steel_defect.data.folder import load_folder_annotations

            df = load_folder_annotations(self.root, self.num_classes, hp.images, hp.masks, hp.missing_mask)
            if self.shape is not None:
                other = df[(df["height"] != self.shape[0]) | (df["width"] != self.shape[1])]
                if len(other):
                    row = other.iloc[0]
                    raise ValueError(
                        f"image {self.root / hp.images / row['ImageId']} is {row['height']}x{row['width']} but "
                        f"data.shape is {self.shape[0]}x{self.shape[1]} (data.shape=null accepts any size)"
                    )
        else:
            if not self.csv_path.exists():
                raise FileNotFoundError(
                    f"annotation csv not found: {self.csv_path} (data=synthetic generates a synthetic set)"
                )
            df = load_annotations(
                self.root, hp.train_csv, hp.train_images, shape=self.shape, num_classes=self.num_classes
            )
        split_file = self.hparams.split_file
        if split_file and Path(split_file).exists():
            split = load_split(split_file)
            if split.get("cfg") and split["cfg"] != self.split_cfg:
                log.warning(
                    "split file %s was made with %s, not the configured %s; using the file",
                    split_file,
                    split["cfg"],
                    self.split_cfg,
                )
            unknown = sorted(set().union(*split_parts(split).values()) - set(df["ImageId"]))
            if unknown:
                raise ValueError(
                    f"split file {split_file}: {len(unknown)} ImageIds are not in {self.image_dir}, "
                    f"e.g. {unknown[:3]}"
                )
            log.info("loaded split from %s", split_file)
        else:
            split = make_split(df, self.split_cfg)
            if split_file:
                save_split(split, split_file)
                log.info("saved split to %s", split_file)
        self.split = split
        self.annotations = df
        if "height" in df.columns:
            self._sizes = dict(
                zip(
                    df["ImageId"],
                    zip(df["height"].astype(int), df["width"].astype(int), strict=True),
                    strict=True,
                )
            )
        return df

    def _part(self, name: str, limit: int | None = None) -> pd.DataFrame:
        """Annotation rows of split part ``name`` in split order, the first ``limit`` of them."""
        df = self._load()
        ids = split_parts(self.split)[name]
        if limit is not None:
            ids = ids[: int(limit)]
        return df.set_index("ImageId").loc[ids].reset_index()

    @property
    def _seed(self) -> int:
        """The split's seed: also seeds sampling and augmentation."""
        return int(self.split_cfg.get("seed", 0) or 0)

    def _train_transform(self) -> Any:
        """The training augmentation pipeline (train split and pseudo-labelled images alike)."""
        crop_height, crop_width = self._crop_size()
        crop = {"crop_height": crop_height, "crop_width": crop_width}
        if self.shape is None:
            crop["any_size"] = True
        return build_transforms("train", shape=self.shape, **crop, **self.cfg.augment.transforms)

    @property
    def image_dir(self) -> Path:
        """The folder of the labelled images (``train_images`` or, with the folder layout, ``images``)."""
        hp = self.cfg.layout
        return self.root / (hp.images if hp.layout == "folder" else hp.train_images)

    def _dataset(self, df: pd.DataFrame, stage: str) -> SteelDataset:
        transform = self._train_transform() if stage == "train" else build_transforms("val", shape=self.shape)
        blackout = self.cfg.augment.blackout_p if stage == "train" else 0.0
        copy_paste = self.copy_paste if stage == "train" else None
        return SteelDataset(
            df,
            self.image_dir,
            transform,
            shape=self.shape,
            blackout_p=blackout,
            seed=self._seed,
            copy_paste=copy_paste,
            defect_crop_p=self.cfg.crop.defect_p if stage == "train" else 0.0,
            crop=self._crop_size(),
        )

    def _crop_size(self) -> tuple[int | None, int | None]:
        """The training crop ``(height, width)``: as configured for images of any size; for the fixed image
        shape, None along an axis the crop does not shrink."""
        crop = self.cfg.crop
        if self.shape is None:
            return crop.height, crop.width
        return self._crop(crop.height, 0), self._crop(crop.width, 1)

    def _crop(self, crop: int | None, axis: int) -> int | None:
        """A crop size along ``axis`` of the fixed image shape (None: no crop along it)."""
        return None if crop is None or int(crop) >= self.shape[axis] else int(crop)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets for ``stage`` (fit, validate, test; None = all)."""
        if stage in (None, "fit", "validate", "test"):
            self._load()
        if stage in (None, "fit"):
            self.train_dataset = self._dataset(self._part("train", self.cfg.limits.train), "train")
            self.pseudo_dataset = self._pseudo_dataset()
        if stage in (None, "fit", "validate"):
            self.val_dataset = self._dataset(self._part("val", self.cfg.limits.val), "val")
        if stage in (None, "test"):
            has_test = "test" in split_parts(self.split)
            self.test_dataset = self._dataset(self._part("test"), "test") if has_test else None

    def _pseudo_dataset(self) -> SteelDataset | None:
        """The pseudo-labelled images (``data.pseudo_labels``), augmented like training; never validated on."""
        pseudo = self.cfg.pseudo
        if not pseudo.labels:
            return None
        from steel_defect.data.pseudo_labels import read_pseudo_labels

        if self.shape is None:
            raise ValueError(
                "data.pseudo_labels needs a fixed data.shape (the pseudo-label RLEs are checked against it)"
            )
        images = Path(pseudo.images) if pseudo.images else self.root / self.cfg.layout.test_images
        exclude = {part: set(ids) for part, ids in split_parts(self.split).items() if part != "train"}
        self.pseudo_frame = read_pseudo_labels(
            pseudo.labels, images, self.shape, exclude=exclude, num_classes=self.num_classes
        )
        if self.pseudo_frame.empty:
            raise ValueError(f"data.pseudo_labels: {pseudo.labels} holds no images")
        log.info(
            "pseudo-labels: %d images from %s (%d with masks), %.0f%% of every training batch",
            len(self.pseudo_frame),
            pseudo.labels,
            int((self.pseudo_frame[rle_columns(self.num_classes)] != "").any(axis=1).sum()),
            100 * pseudo.share,
        )
        return SteelDataset(
            self.pseudo_frame, images, self._train_transform(), shape=self.shape, seed=self._seed + 1
        )

    # ---------------------------------------------------------------------------------------------- info
    @property
    def has_test_split(self) -> bool:
        """Whether the split has a held-out test part (the notebook split has; k-fold has not)."""
        self._load()
        return "test" in split_parts(self.split)

    @property
    def val_size(self) -> int:
        """Number of validation images actually used (after ``limit_val``)."""
        return len(self._part("val", self.cfg.limits.val))

    @property
    def class_frequencies(self) -> dict[int, float]:
        """Class frequencies of the training part (0 = defect-free; see :func:`class_frequencies`)."""
        self._load()
        return class_frequencies(self._part("train", self.cfg.limits.train))

    # ------------------------------------------------------------------------------------------- loaders
    def _loader(self, dataset, batch_size: int, shuffle: bool = False, sampler=None, collate_fn=None):
        loader = self.cfg.loader
        workers = loader.num_workers
        batching: dict[str, Any] = {"batch_size": int(batch_size), "shuffle": shuffle, "sampler": sampler}
        if self.shape is None and isinstance(dataset, SteelDataset) and sampler is None:
            # evaluation of images of several sizes: one size per batch
            sizes = [self._sizes[i] for i in dataset.image_ids]
            sampler = SizeBatchSampler(SequentialSampler(dataset), int(batch_size), False, sizes=sizes)
            batching = {"batch_sampler": sampler}
        return DataLoader(
            dataset,
            **batching,
            num_workers=workers,
            pin_memory=loader.pin_memory,
            persistent_workers=loader.persistent_workers and workers > 0,
            collate_fn=collate_fn,
        )

    def _require(self, dataset, stage: str, name: str):
        if dataset is None:
            raise RuntimeError(f"{name} dataset is not set up; call setup({stage!r}) first")
        return dataset

    def train_sampler(self) -> EpochSampler:
        """Shuffling (or, with ``oversample``, weighted) sampler seeded by (split seed, epoch)."""
        train = self._require(self.train_dataset, "fit", "train")
        weights = None
        if self.cfg.oversample is not None:
            df = self._part("train", self.cfg.limits.train)
            weights = oversample_weights(df, self.cfg.oversample.power)
        return EpochSampler(len(train), seed=self._seed, weights=weights)

    def train_dataloader(self) -> DataLoader:
        train = self._require(self.train_dataset, "fit", "train")
        if self.pseudo_dataset is None:
            return self._loader(train, self.cfg.loader.batch_size, sampler=self.train_sampler())
        sampler = PseudoMixSampler(
            self.train_sampler(),
            len(self.pseudo_dataset),
            self.cfg.loader.batch_size,
            self.cfg.pseudo.share,
            seed=self._seed,
            world_size=self.trainer.world_size if self.trainer is not None else 1,
        )
        return self._loader(
            MixedDataset(train, self.pseudo_dataset), self.cfg.loader.batch_size, sampler=sampler
        )

    def val_dataloader(self) -> DataLoader:
        val = self._require(self.val_dataset, "validate", "validation")
        return self._loader(val, self.cfg.loader.val_batch_size)

    def tune_dataloader(self) -> DataLoader:
        """The whole validation part, ``limit_val`` or not: threshold tuning at fit end searches per-class
        gates, pixel thresholds and areas, which a few images per class would only overfit."""
        val = self._require(self.val_dataset, "validate", "validation")
        if self.cfg.limits.val is not None:
            val = self._dataset(self._part("val"), "val")
        return self._loader(val, self.cfg.loader.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        if self.test_dataset is None and self.split is not None and "test" not in split_parts(self.split):
            raise RuntimeError(
                f"the {self.split.get('cfg', {}).get('kind', 'configured')!r} split has no test part; "
                "use data/split=notebook for a held-out test set, or validate on the fold"
            )
        test = self._require(self.test_dataset, "test", "test")
        return self._loader(test, self.cfg.loader.val_batch_size)
