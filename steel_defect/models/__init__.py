"""The network (smp U-Net + class head), its loss, offline pretrained weights and the LightningModule.

Names are imported lazily (PEP 562), so that loading a checkpoint for prediction
(``steel_defect.models.checkpoint``) never imports Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "SegClsLoss": "losses",
    "SteelDefectModule": "module",
    "SteelNet": "factory",
    "build_model": "factory",
    "load_net_from_checkpoint": "checkpoint",
    "resolve_config": "factory",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import ``name`` from its submodule on first access."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
