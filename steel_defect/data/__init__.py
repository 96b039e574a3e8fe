"""Data pipeline: annotations, splits, transforms, datasets and the Lightning DataModule.

Names are imported lazily so that ``import steel_defect.data`` (and ``python -m steel_defect.data.stats``)
does not pull in Lightning, torch or albumentations until they are needed.
"""

from __future__ import annotations

from steel_defect._lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "AnnotationError": "annotations",
    "read_train_csv": "annotations",
    "load_annotations": "annotations",
    "stratify_key": "annotations",
    "notebook_split": "splits",
    "kfold_split": "splits",
    "make_split": "splits",
    "save_split": "splits",
    "load_split": "splits",
    "build_transforms": "transforms",
    "ImageReadError": "dataset",
    "read_image": "dataset",
    "SteelDataset": "dataset",
    "PredictDataset": "dataset",
    "predict_collate": "dataset",
    "blackout_defect": "blackout",
    "paste_defect": "copy_paste",
    "SteelDataModule": "datamodule",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
