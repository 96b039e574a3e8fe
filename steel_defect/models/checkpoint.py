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

__all__ = ["CLASS_NAMES", "FORMAT_VERSION", "init_net_from_checkpoint", "load_net_from_checkpoint"]

#: Version of the ``checkpoint["steel_defect"]`` entry.
FORMAT_VERSION = 1
CLASS_NAMES = list(SEVERSTAL_CLASSES)


def _read_checkpoint(path: Path, map_location: Any = "cpu") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``checkpoint["steel_defect"]`` and the ``net.*`` weights (prefix removed) of a training checkpoint,
    read with ``weights_only=True`` (a checkpoint is data, never code)."""
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
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    if not state:
        raise ValueError(f"{path}: the checkpoint holds no 'net.*' weights")
    return dict(meta), state


#: Net-config keys that change the weights' shapes or meaning: a checkpoint must match them to seed a run.
ARCHITECTURE_KEYS = ("arch", "encoder_name", "decoder_channels", "classes", "image_head", "input_scale")


def init_net_from_checkpoint(
    net: torch.nn.Module, net_cfg: Mapping[str, Any], class_names: list[str], path: str | os.PathLike
) -> dict[str, Any]:
    """Copy a training checkpoint's network weights into ``net`` (``model.init_from``): not its optimizer,
    schedule or epoch (that is ``ckpt_path``). Refuses, naming the key, a checkpoint of other classes or
    another architecture; returns its ``steel_defect`` entry."""
    path = Path(path)
    meta, state = _read_checkpoint(path)
    theirs = list(meta.get("classes") or CLASS_NAMES)
    if theirs != list(class_names):
        raise ValueError(
            f"model.init_from={path}: the checkpoint's classes {theirs} differ from this run's {list(class_names)} "
            "(data.classes): its mask and class heads would mean other things"
        )
    other = meta["net"]
    differ = [k for k in ARCHITECTURE_KEYS if other.get(k) != net_cfg.get(k)]
    if differ:
        detail = ", ".join(
            f"model.net.{k}: checkpoint {other.get(k)!r}, this run {net_cfg.get(k)!r}" for k in differ
        )
        raise ValueError(f"model.init_from={path}: another architecture ({detail})")
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"model.init_from={path}: the weights do not fit this network (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    return meta


def load_net_from_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu"
) -> tuple[SteelNet, dict[str, Any]]:
    """Rebuild the SteelNet of a training checkpoint (eval mode) and return it with ``checkpoint["steel_defect"]``.

    Uses ``torch.load(weights_only=True)`` only: a checkpoint is data, never code (a pickled object in it
    raises ``pickle.UnpicklingError``). No weights are downloaded; the ``net.*`` tensors load strictly.
    """
    meta, state = _read_checkpoint(Path(path), map_location)
    net = SteelNet.from_config(meta["net"], weights=False)
    net.load_state_dict(state, strict=True)
    if isinstance(map_location, str | torch.device):
        net.to(map_location)
    net.eval()
    return net, meta
