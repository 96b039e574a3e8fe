"""Torch datasets: labelled steel images (``SteelDataset``) and unlabelled ones for prediction.

Items are dicts of tensors so that the LightningModule reads them by name (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler, get_worker_info

from steel_defect import DEFAULT_SHAPE
from steel_defect.data.annotations import AnnotationError, frame_classes, rle_columns
from steel_defect.data.blackout import blackout_defect
from steel_defect.data.copy_paste import (
    choose_class,
    choose_donor,
    class_presence,
    class_weights,
    copy_paste_config,
    donor_pools,
    paste_defect,
)
from steel_defect.data.defect_crop import crop_to_defect
from steel_defect.data.transforms import build_transforms
from steel_defect.io import IMAGE_SUFFIXES, ImageReadError, list_images, read_image
from steel_defect.rle import rle_decode

__all__ = [
    "ImageReadError",
    "read_image",
    "SteelDataset",
    "SizeBatchSampler",
    "PredictDataset",
    "predict_collate",
]

log = logging.getLogger(__name__)

Transform = Callable[..., dict[str, Any]]


def _to_tensors(out: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Image as float32 (3, H, W) in [0, 1] and mask (if any) as float32 (K, H, W) from a transform output.

    Pipelines from :func:`build_transforms` already return tensors; plain numpy outputs (custom
    transforms) are converted the same way.
    """
    image = out["image"]
    if isinstance(image, np.ndarray):
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / scale
    image = image.float()
    mask = out.get("mask")
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1)))
    return image, None if mask is None else mask.float()


class SteelDataset(Dataset):
    """Labelled images from a wide annotation frame (``ImageId``, ``EncodedPixels_1..K``, K classes).

    Each item: ``image`` float32 (3, H, W) in [0, 1], ``mask`` float32 (K, H, W) 0/1, ``labels`` float32 (K,)
    (1 where the mask channel is non-empty *after* augmentation: a crop can remove a defect) and
    ``image_id`` str. Masks are decoded at each image's own size; when ``shape`` is given, images of another
    size raise an error naming the file. With probability ``blackout_p`` one present class is erased with
    :func:`blackout_defect` before ``transform`` (default: ``build_transforms("val")``). ``copy_paste``
    (``{"p", "power"}``, see :func:`~steel_defect.data.copy_paste.copy_paste_config`; the DataModule sets it
    on the training dataset only): with probability ``p``, after the blackout and before ``transform``, one
    defect of another image of this dataset is pasted in with
    :func:`~steel_defect.data.copy_paste.paste_defect`, its class drawn with weight
    ``(1 / class frequency in this dataset) ** power``; a donor of another size than the image is skipped.
    With probability ``defect_crop_p`` (training; after copy-paste, before ``transform``) the item is cut to a
    ``crop`` = ``(height, width)`` window (None: that axis whole) holding a defect of a class drawn uniformly
    among the image's (:func:`~steel_defect.data.defect_crop.crop_to_defect`): the transform's random crop
    of the same size then keeps it whole.

    Randomness (blackout, copy-paste and the transform's own ``set_random_seed``) is re-derived from ``seed``
    and torch's seed in each process: every DataLoader worker (each epoch, without persistent workers) gets
    its own stream, so forked workers never repeat each other's augmentations, and runs seeded with
    ``L.seed_everything`` are reproducible with any number of workers.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        image_dir: str | os.PathLike,
        transform: Transform | None = None,
        shape: tuple[int, int] | None = None,
        blackout_p: float = 0.0,
        seed: int = 0,
        copy_paste: Mapping[str, Any] | None = None,
        defect_crop_p: float = 0.0,
        crop: tuple[int | None, int | None] = (None, None),
    ) -> None:
        if "ImageId" not in df.columns:
            raise KeyError(f"SteelDataset needs an ImageId column; got {list(df.columns)}")
        self.num_classes = frame_classes(df)
        if not 0.0 <= float(blackout_p) <= 1.0:
            raise ValueError(f"blackout_p must be a probability in [0, 1], got {blackout_p!r}")
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        self.image_ids: list[str] = df["ImageId"].astype(str).tolist()
        columns = rle_columns(self.num_classes)
        self.rles: list[list[str]] = df[columns].fillna("").astype(str).to_numpy().tolist()
        self.shape = None if shape is None else (int(shape[0]), int(shape[1]))
        self.transform = transform if transform is not None else build_transforms("val", shape=self.shape)
        self.blackout_p = float(blackout_p)
        if not 0.0 <= float(defect_crop_p) <= 1.0:
            raise ValueError(f"defect_crop_p must be a probability in [0, 1], got {defect_crop_p!r}")
        self.defect_crop_p = float(defect_crop_p)
        self.crop = (crop[0], crop[1])
        self.seed = int(seed)
        self.copy_paste = copy_paste_config(copy_paste)
        self._paste_weights: np.ndarray | None = None
        self._paste_pools: list[np.ndarray] = []
        if self.copy_paste is not None and self.copy_paste["p"] > 0.0:
            present = class_presence(self.rles, self.num_classes)
            weights = class_weights(present, self.copy_paste["power"])
            if weights.sum() > 0:
                self._paste_weights, self._paste_pools = weights, donor_pools(present)
            else:
                log.warning("copy_paste is on but no image of this dataset has a defect: nothing to paste")

    def __len__(self) -> int:
        return len(self.image_ids)

    def _random_state(self) -> np.random.Generator:
        """This process's generator; (re)seeds it and the transform when the process/worker changes."""
        info = get_worker_info()
        key = (0, torch.initial_seed()) if info is None else (1, info.seed)
        if getattr(self, "_rng_key", None) != key:
            self._rng_key = key
            self._rng = np.random.default_rng([self.seed, *key])
            if hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(int(self._rng.integers(2**31)))
        return self._rng

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw RGB uint8 image (H, W, 3) and mask stack uint8 (K, H, W) of item ``index``."""
        image_id = self.image_ids[index]
        path = self.image_dir / image_id
        image = read_image(path)
        if self.shape is not None and image.shape[:2] != self.shape:
            raise ValueError(
                f"image {path} is {image.shape[0]}x{image.shape[1]} but the data shape is "
                f"{self.shape[0]}x{self.shape[1]} (set data.shape to the image size)"
            )
        masks = np.zeros((self.num_classes, *image.shape[:2]), dtype=np.uint8)
        for k, rle in enumerate(self.rles[index]):
            if rle:
                try:
                    masks[k] = rle_decode(rle, image.shape[:2])
                except ValueError as err:
                    raise AnnotationError(
                        f"EncodedPixels of image {image_id!r} class {k + 1} does not fit its "
                        f"{image.shape[0]}x{image.shape[1]} image: {err}"
                    ) from err
        return image, masks

    def _seeded_state(self, item_seed: int) -> np.random.Generator:
        """A generator (and transform seed) that depend only on ``(seed, item_seed)``."""
        rng = np.random.default_rng([self.seed, int(item_seed)])
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(int(rng.integers(2**31)))
        self._rng_key = None  # the next plain-index item re-derives the per-process stream
        return rng

    def _paste(
        self, index: int, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Copy-paste: a class drawn by weight, a donor image with it (not ``index`` unless the only one),
        one of its defects pasted in. A donor of another size leaves the item unchanged."""
        cls = choose_class(self._paste_weights, rng)
        donor_image, donor_masks = self.load(choose_donor(self._paste_pools[cls], rng, exclude=index))
        if donor_image.shape != image.shape:
            return image, masks
        image, masks, _ = paste_defect(image, masks, donor_image, donor_masks, cls, rng)
        return image, masks

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """``index`` or ``(index, item_seed)``: the second form (from :class:`EpochSampler`) makes the item's
        augmentation a pure function of the seeds, independent of worker count and of RNG history, which is
        what makes a resumed run draw exactly what a straight run draws."""
        if isinstance(index, tuple | list):
            index, item_seed = int(index[0]), int(index[1])
            rng = self._seeded_state(item_seed)
        else:
            rng = self._random_state()
        image, masks = self.load(index)
        if self.blackout_p > 0.0:
            present = np.flatnonzero(masks.reshape(self.num_classes, -1).any(axis=1))
            if len(present) and rng.random() < self.blackout_p:
                image, masks = blackout_defect(image, masks, int(rng.choice(present)), rng)
        if self._paste_weights is not None and rng.random() < self.copy_paste["p"]:
            image, masks = self._paste(index, image, masks, rng)
        if self.defect_crop_p > 0.0 and rng.random() < self.defect_crop_p:
            image, masks = crop_to_defect(image, masks, self.crop, rng)
        out = self.transform(image=image, mask=np.ascontiguousarray(masks.transpose(1, 2, 0)))
        image_t, mask_t = _to_tensors(out)
        labels = mask_t.flatten(1).amax(dim=1).gt(0).float()
        return {"image": image_t, "mask": mask_t, "labels": labels, "image_id": self.image_ids[index]}


class SizeBatchSampler(BatchSampler):
    """Batches of up to ``batch_size`` of the indices ``sampler`` yields whose images share a size (``sizes[i]``
    is item i's (H, W)), sizes in order of first appearance: evaluation of images of several sizes, every
    batch stacks. A ``BatchSampler`` with a ``sampler`` argument, so that Lightning re-creates it around its
    distributed sampler under DDP (each process then groups its own share)."""

    def __init__(
        self,
        sampler: Sampler | list[int],
        batch_size: int,
        drop_last: bool = False,
        sizes: list | None = None,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        if sizes is None:
            raise ValueError("SizeBatchSampler needs the item sizes")
        self.sizes = [tuple(s) for s in sizes]

    def _batches(self) -> list[list[int]]:
        groups: dict[tuple, list[int]] = {}
        for i in self.sampler:
            groups.setdefault(self.sizes[int(i)], []).append(int(i))
        out = []
        for members in groups.values():
            for j in range(0, len(members), self.batch_size):
                batch = members[j : j + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    out.append(batch)
        return out

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self):
        return iter(self._batches())


class PredictDataset(Dataset):
    """Unlabelled images for prediction: a folder (sorted by name), one file, or a list of paths.

    Each item: ``image`` float32 (3, H, W) in [0, 1], ``image_id`` (file name), ``orig_size`` long tensor
    ``[H, W]`` and ``ok`` (bool). An unreadable or corrupt image does not raise: it gives a zero image of
    ``fallback_shape`` (default ``DEFAULT_SHAPE``; also its ``orig_size``) with ``ok=False`` and a logged
    warning naming the file. Batch with :func:`predict_collate` when images may differ in size.
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        transform: Transform | None = None,
        fallback_shape: tuple[int, int] | None = None,
    ) -> None:
        if isinstance(source, str | os.PathLike):
            source = Path(source)
            if source.is_dir():
                self.paths = list_images(source)
                if not self.paths:
                    raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {source}")
            elif source.exists():
                self.paths = [source]
            else:
                raise FileNotFoundError(f"prediction source not found: {source}")
        else:
            self.paths = [Path(p) for p in source]
            if not self.paths:
                raise ValueError("PredictDataset got an empty list of image paths")
        shape = DEFAULT_SHAPE if fallback_shape is None else fallback_shape
        self.fallback_shape = (int(shape[0]), int(shape[1]))
        self.transform = transform if transform is not None else build_transforms("predict")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_ids(self) -> list[str]:
        """File names, in item order."""
        return [p.name for p in self.paths]

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            image = read_image(path)
            ok = True
        except ImageReadError as err:
            log.warning("%s; predicting on a zero image of %dx%d", err, *self.fallback_shape)
            image = np.zeros((*self.fallback_shape, 3), dtype=np.uint8)
            ok = False
        image_t, _ = _to_tensors(self.transform(image=image))
        return {
            "image": image_t,
            "image_id": path.name,
            "orig_size": torch.tensor(image.shape[:2], dtype=torch.long),
            "ok": ok,
        }


def predict_collate(batch: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Collate prediction items into one sub-batch per image size.

    Returns a list of dicts, one per distinct (H, W) after the transform, in order of first appearance;
    each has ``image`` (B, 3, H, W), ``image_id`` list[str], ``orig_size`` (B, 2) long, ``ok`` (B,) bool and
    ``index`` (B,) long, the items' positions in ``batch``. With equal-size images it is a one-element list.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, item in enumerate(batch):
        groups.setdefault(tuple(item["image"].shape[-2:]), []).append(i)
    out = []
    for members in groups.values():
        items = [batch[i] for i in members]
        out.append(
            {
                "image": torch.stack([it["image"] for it in items]),
                "image_id": [it["image_id"] for it in items],
                "orig_size": torch.stack([torch.as_tensor(it["orig_size"]) for it in items]),
                "ok": torch.tensor([bool(it["ok"]) for it in items], dtype=torch.bool),
                "index": torch.tensor(members, dtype=torch.long),
            }
        )
    return out
