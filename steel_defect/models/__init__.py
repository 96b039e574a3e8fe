"""The network (smp U-Net + class head), its loss, offline pretrained weights and the LightningModule.

Names are imported lazily (PEP 562), so that loading a checkpoint for prediction
(``steel_defect.models.checkpoint``) never imports Lightning.
"""

from __future__ import annotations

from steel_defect._lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "SegClsLoss": "losses",
    "SteelDefectModule": "module",
    "SteelNet": "factory",
    "build_model": "factory",
    "load_net_from_checkpoint": "checkpoint",
    "resolve_config": "factory",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
