"""Checkpoint -> network with torch and smp/timm only (no Lightning, Hydra or torchmetrics): what predict.py,
the Kaggle kernel and a service need to rebuild the plain ``nn.Module`` of a training checkpoint.

A training checkpoint carries a ``"steel_defect"`` entry (written by ``SteelDefectModule.on_save_checkpoint``:
resolved net config, post-processing, class names, ``format_version``) beside Lightning's ``state_dict``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from steel_defect import SEVERSTAL_CLASSES
from steel_defect.models.factory import SteelNet

__all__ = ["CLASS_NAMES", "FORMAT_VERSION", "load_net_from_checkpoint"]

#: Version of the ``checkpoint["steel_defect"]`` entry.
FORMAT_VERSION = 1
CLASS_NAMES = list(SEVERSTAL_CLASSES)


def load_net_from_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu"
) -> tuple[SteelNet, dict[str, Any]]:
    """Rebuild the SteelNet of a training checkpoint (eval mode) and return it with ``checkpoint["steel_defect"]``.

    Uses ``torch.load(weights_only=True)`` only: a checkpoint is data, never code (a pickled object in it
    raises ``pickle.UnpicklingError``). No weights are downloaded; the ``net.*`` tensors load strictly.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    meta = ckpt.get("steel_defect") if isinstance(ckpt, Mapping) else None
    if not isinstance(meta, Mapping) or "net" not in meta or "state_dict" not in ckpt:
        raise ValueError(f"not a steel-defect checkpoint: {path}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported steel-defect checkpoint format_version {version!r} (expected 1)"
        )
    net = SteelNet.from_config(meta["net"], weights=False)
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    if not state:
        raise ValueError(f"{path}: the checkpoint holds no 'net.*' weights")
    net.load_state_dict(state, strict=True)
    if isinstance(map_location, str | torch.device):
        net.to(map_location)
    net.eval()
    return net, dict(meta)
