"""ONNX export of a :class:`~steel_defect.models.factory.SteelNet` and an onnxruntime drop-in for it.

The graph takes ``image`` float32 (B, 3, H, W) in [0, 1] (the normalisation buffers are inside the net, so
they are in the graph) and returns ``mask_logits`` (B, C, H, W) and ``class_logits`` (B, C), plus
``image_logits`` (B,) for a net with an image head (``model.net.image_head``; metadata ``image_head``). The
batch axis is always dynamic; the width axis is dynamic with ``dynamic_width=True`` (the height is fixed).

Exporter choice: torch 2.15 defaults to the ``torch.export``-based exporter (``dynamo=True``), which needs
the ``onnxscript`` package, not part of the ``onnx`` extra. The TorchScript exporter (``dynamo=False``) needs
only ``onnx``, handles smp/timm U-Nets (resnet, EfficientNet, TF-"same"-padded Lite) with a dynamic width,
and the result is verified against torch after every export, so it is used here.

:class:`OnnxNet` is a ``torch.nn.Module`` taking and returning torch tensors, so
:func:`steel_defect.inference.predictor.predict_batch` (padding, TTA, averaging) and all post-processing stay identical
whichever runtime produced the logits. onnx/onnxruntime are an optional extra: ``pip install
"steel-defect[onnx]"``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from steel_defect import DEFAULT_SHAPE, __version__
from steel_defect.inference.onnx_model import (
    FORMAT_VERSION,
    IMAGE_OUTPUT_NAME,
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAMES,
    require_onnx,
)
from steel_defect.inference.onnx_model import parse_metadata as _parse_metadata
from steel_defect.inference.onnx_net import OnnxNet
from steel_defect.io import atomic_save
from steel_defect.models.factory import split_outputs

__all__ = [
    "FORMAT_VERSION",
    "IMAGE_OUTPUT_NAME",
    "INPUT_NAME",
    "METADATA_KEY",
    "OUTPUT_NAMES",
    "OnnxNet",
    "compare_with_torch",
    "export_onnx",
    "read_onnx_metadata",
]

#: Largest torch-vs-ONNX probability difference accepted by the check after export.
PROB_TOLERANCE = 1e-4


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON (tuples -> lists, paths -> str) so the metadata is plain and comparable."""
    return json.loads(json.dumps(value, default=str))


def _output_stride(net: nn.Module) -> int:
    stride = getattr(net, "output_stride", None)
    return int(stride) if stride is not None else 32


def _check_size(name: str, value: Any, stride: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0 or value % stride:
        raise ValueError(
            f"export {name} must be a positive multiple of the net's output stride {stride}, got {value!r}"
        )
    return int(value)


def export_onnx(
    net: nn.Module,
    path: str | os.PathLike,
    height: int = DEFAULT_SHAPE[0],
    width: int = DEFAULT_SHAPE[1],
    opset: int = 17,
    dynamic_width: bool = False,
    meta: Mapping[str, Any] | None = None,
    verify: bool = True,
) -> Path:
    """Export ``net`` (a SteelNet) to ``path`` atomically and return the path.

    ``width`` is the traced width (and the only accepted one unless ``dynamic_width``). ``meta`` (e.g. the
    checkpoint's ``steel_defect`` meta) is stored with the net config in the model's ``metadata_props``.
    With ``verify`` the written model is run with onnxruntime on random images (and a second width when
    dynamic) and must match torch's probabilities within :data:`PROB_TOLERANCE`.
    """
    onnx = require_onnx()
    if not isinstance(opset, int) or isinstance(opset, bool) or not 13 <= opset <= 21:
        raise ValueError(f"export opset must be an integer in [13, 21], got {opset!r}")
    stride = _output_stride(net)
    height, width = _check_size("height", height, stride), _check_size("width", width, stride)
    metadata = export_metadata(net, height, width, opset, dynamic_width, meta)
    outputs, channels = metadata["outputs"], metadata["in_channels"]
    # Trace with batch 2 so that no batch-1 special case is baked into the graph.
    dummy = torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    device = next(iter(net.parameters()), torch.empty(0)).device
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            cpu_net = net.to("cpu")

            def write(tmp: str) -> None:
                _trace(cpu_net, dummy, tmp, outputs, opset, _dynamic_axes(outputs, dynamic_width))
                model = onnx.load(tmp)
                set_metadata(model, metadata)
                model.producer_version = __version__
                onnx.checker.check_model(model, full_check=True)
                onnx.save(model, tmp)

            path = atomic_save(path, write)
            if verify:
                widths = [width, width + 2 * stride] if dynamic_width else [width]
                _verify(cpu_net, path, channels, height, widths)
    finally:
        net.to(device)
        net.train(was_training)
    return path


def export_metadata(
    net: nn.Module,
    height: int,
    width: int,
    opset: int,
    dynamic_width: bool,
    meta: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ``steel_defect`` metadata :func:`export_onnx` stores for ``net`` (plain JSON values)."""
    config = getattr(net, "config", None)
    image_head = bool(getattr(net, "image_head", False))
    classes = int(config["classes"]) if isinstance(config, Mapping) and "classes" in config else None
    channels = int(config["in_channels"]) if isinstance(config, Mapping) and "in_channels" in config else 3
    return _jsonable(
        {
            "format_version": FORMAT_VERSION,
            "net": dict(config) if isinstance(config, Mapping) else None,
            "classes": classes,
            "in_channels": channels,
            "height": height,
            "width": None if dynamic_width else width,
            "traced_width": width,
            "dynamic_width": bool(dynamic_width),
            "output_stride": _output_stride(net),
            "input": INPUT_NAME,
            "outputs": [*OUTPUT_NAMES, IMAGE_OUTPUT_NAME] if image_head else list(OUTPUT_NAMES),
            "image_head": image_head,
            "opset": opset,
            "torch": torch.__version__,
            "steel_defect": __version__,
            "meta": dict(meta) if meta is not None else None,
        }
    )


def set_metadata(model: Any, metadata: Mapping[str, Any]) -> None:
    """Store ``metadata`` as the ONNX ``model``'s ``steel_defect`` entry (replacing any, keeping the other
    ``metadata_props`` in order) and name this project as its producer."""
    props = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for key, value in [*props, (METADATA_KEY, json.dumps(dict(metadata), sort_keys=True))]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "steel-defect"


def _dynamic_axes(outputs: list[str], dynamic_width: bool) -> dict[str, dict[int, str]]:
    axes_in = {0: "batch", 3: "width"} if dynamic_width else {0: "batch"}
    dynamic_axes = {INPUT_NAME: axes_in, OUTPUT_NAMES[0]: dict(axes_in), OUTPUT_NAMES[1]: {0: "batch"}}
    if IMAGE_OUTPUT_NAME in outputs:
        dynamic_axes[IMAGE_OUTPUT_NAME] = {0: "batch"}
    return dynamic_axes


def _trace(
    net: nn.Module, dummy: torch.Tensor, tmp: str, outputs: list[str], opset: int, dynamic_axes: dict
) -> None:
    """torch's (TorchScript) ONNX export of ``net`` to ``tmp``, without its deprecation chatter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            net,
            (dummy,),
            tmp,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=outputs,
            opset_version=opset,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )


def _verify(net: nn.Module, path: Path, channels: int, height: int, widths: Sequence[int]) -> None:
    """Remove ``path`` and raise unless its probabilities match ``net``'s at every width."""
    for w in widths:
        x = torch.rand(2, channels, height, w, generator=torch.Generator().manual_seed(w))
        gap = compare_with_torch(net, OnnxNet(path), x)
        if max(gap.values()) > PROB_TOLERANCE:
            path.unlink()
            raise RuntimeError(
                f"ONNX export {path} disagrees with torch at width {w}: max probability gaps {gap} "
                f"> {PROB_TOLERANCE}; the file was removed"
            )


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``steel_defect`` metadata of an exported model (ValueError if it is not one of ours)."""
    onnx = require_onnx()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    model = onnx.load(str(path), load_external_data=False)
    return _parse_metadata(path, {p.key: p.value for p in model.metadata_props})


@torch.no_grad()
def compare_with_torch(net: nn.Module, onnx_net: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Largest absolute differences of the sigmoid probabilities between ``net`` and ``onnx_net``
    (keys ``mask``, ``class`` and, for nets with an image head, ``image``)."""
    was_training = net.training
    net.eval()
    try:
        t_mask, t_cls, t_img = split_outputs(net(images))
    finally:
        net.train(was_training)
    o_mask, o_cls, o_img = split_outputs(onnx_net(images))
    if (t_img is None) != (o_img is None):
        raise ValueError(
            f"image head mismatch: the torch net {'has' if t_img is not None else 'has no'} image output, "
            f"the ONNX model {'has' if o_img is not None else 'has none'}"
        )
    gap = {
        "mask": float((t_mask.float().sigmoid() - o_mask.float().sigmoid()).abs().max()),
        "class": float((t_cls.float().sigmoid() - o_cls.float().sigmoid()).abs().max()),
    }
    if t_img is not None:
        gap["image"] = float((t_img.float().sigmoid() - o_img.float().sigmoid()).abs().max())
    return gap
