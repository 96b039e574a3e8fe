"""The one converter to plain python values (dict / list / str / int / float / bool / None).

Hydra hands the datamodule and the LightningModule OmegaConf containers; tuning reports hold numpy
numbers; YAML, JSON and ``save_hyperparameters`` (loaded back with ``weights_only=True``) want neither.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["to_plain"]


def to_plain(value: Any, key: str = "value", strict: bool = False) -> Any:
    """``value`` with OmegaConf containers (resolved), mappings, tuples, numpy arrays and scalars and paths
    turned into plain python, recursively. Mapping keys stay ints or strings (others become strings).

    Anything else is returned as it is, or with ``strict`` raises ``TypeError`` naming ``key`` (the config
    key, extended with ``.name`` / ``[i]`` on the way down).
    """
    if type(value).__name__ in ("DictConfig", "ListConfig"):
        from omegaconf import OmegaConf

        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {
            (k if isinstance(k, int | str) else str(k)): to_plain(v, f"{key}.{k}", strict)
            for k, v in value.items()
        }
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [to_plain(v, f"{key}[{i}]", strict) for i, v in enumerate(value)]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if strict and not (value is None or isinstance(value, bool | int | float | str)):
        raise TypeError(
            f"{key} must hold plain values (dict/list/str/number/bool/None), got {type(value).__name__}"
        )
    return value
