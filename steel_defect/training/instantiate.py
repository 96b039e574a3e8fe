"""Hydra glue: instantiate config groups, validate the composed config early, pick the optimised metric."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _entries(cfg: DictConfig | None, group: str) -> list[tuple[str, DictConfig]]:
    """(name, config) for every entry of a callbacks/logger group that has a ``_target_``.

    Entries set to null (``callbacks.early_stopping=null``) are switched off; an entry that is not a
    mapping is a configuration error.
    """
    if not cfg:
        return []
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"`{group}` must be a mapping of name -> config, got {type(cfg).__name__}")
    out = []
    for name, entry in cfg.items():
        if entry is None:
            continue
        if not isinstance(entry, DictConfig):
            raise TypeError(f"`{group}.{name}` must be a mapping with a _target_, got {entry!r}")
        if "_target_" in entry:
            out.append((str(name), entry))
    return out


def instantiate_group(cfg: DictConfig | None, group: str) -> list[Any]:
    """Instantiate every entry of a config group of named objects (``callbacks``, ``logger``)."""
    objects = []
    for name, entry in _entries(cfg, group):
        log.info("Instantiating %s.%s <%s>", group, name, entry._target_)
        objects.append(hydra.utils.instantiate(entry))
    return objects


def instantiate_plain(cfg: DictConfig) -> Any:
    """Instantiate ``cfg`` with every nested argument converted to plain dicts/lists (no DictConfig leaks
    into ``save_hyperparameters``, so checkpoints stay loadable with ``weights_only=True``)."""
    return hydra.utils.instantiate(cfg, _recursive_=False, _convert_="all")


def validate_config(cfg: DictConfig) -> None:
    """Fail at start, naming the key, for values that would otherwise fail minutes later."""
    missing = sorted(
        full_key  # missing_keys() of a child node returns full keys ("data.root")
        for key in cfg
        if key != "hydra" and isinstance(cfg[key], DictConfig)
        for full_key in OmegaConf.missing_keys(cfg[key])
    )
    if missing:
        raise ValueError(
            f"missing mandatory config value(s): {', '.join(missing)} (set them on the command line)"
        )
    data = cfg.get("data")
    if data is not None and str(data.get("_target_", "")).endswith("SyntheticDataModule"):
        from steel_defect.synthetic.dataset import check_out

        check_out(Path(str(data.root)), overwrite=True)  # refuses, at start, a root holding anyone's data
    elif data is not None:
        if data.get("synthetic") is not None:
            raise ValueError(
                f"data.synthetic is set, but data={'folder' if data.get('layout') == 'folder' else 'severstal'} "
                f"reads real images from data.root={data.get('root')} and never generates anything: drop "
                "data.synthetic (or use data=synthetic with data.root at a new or empty folder)"
            )
        folder = data.get("layout", "kaggle") == "folder"
        needed = ["data.root=DIR"] if data.get("root") is None else []
        if folder and not data.get("classes"):
            needed.append("data.classes=[name,...] (one name per class index 1..K of the mask PNGs)")
        if needed:
            raise ValueError(
                f"data={'folder' if folder else 'severstal'} needs {' and '.join(needed)} (DIR holds "
                f"{'images/ + masks/' if folder else 'train.csv + train_images/'})"
            )
        root = Path(str(data.root))
        if not root.is_dir():
            raise FileNotFoundError(f"data.root={root} is not a directory")
        keys = ("images", "masks") if data.get("layout") == "folder" else ("train_csv", "train_images")
        for key in keys:
            if not (root / str(data[key])).exists():
                raise FileNotFoundError(
                    f"data.{key}: {root / str(data[key])} does not exist (data.root={root})"
                )


def metric_value(metrics: Mapping[str, Any], name: str | None) -> float | None:
    """The value of the optimised metric, for Hydra sweepers; an unknown name lists the logged ones."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(
            f"optimized_metric={name!r} was not logged; logged metrics: {', '.join(sorted(metrics)) or 'none'}"
        )
    value = metrics[name]
    return float(value.item() if hasattr(value, "item") else value)
