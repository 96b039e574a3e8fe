"""The network (smp U-Net + class head), its loss, offline pretrained weights and the LightningModule."""

from steel_defect.models.factory import SteelNet, build_model, resolve_config
from steel_defect.models.losses import SegClsLoss
from steel_defect.models.module import SteelDefectModule, load_net_from_checkpoint

__all__ = [
    "SegClsLoss",
    "SteelDefectModule",
    "SteelNet",
    "build_model",
    "load_net_from_checkpoint",
    "resolve_config",
]
