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
:func:`steel_defect.predictor.predict_batch` (padding, TTA, averaging) and all post-processing stay identical
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
from steel_defect.io import atomic_save
from steel_defect.onnx_meta import (
    FORMAT_VERSION,
    IMAGE_OUTPUT_NAME,
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAMES,
)
from steel_defect.onnx_meta import parse_metadata as _parse_metadata

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
_EXTRA_HINT = 'pip install "steel-defect[onnx]"'


def _import_onnx():
    try:
        import onnx
    except ImportError as err:
        raise ImportError(f"ONNX export needs the onnx package (optional extra): {_EXTRA_HINT}") from err
    return onnx


def _import_ort():
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            f"runtime=onnx needs the onnxruntime package (optional extra): {_EXTRA_HINT}"
        ) from err
    return onnxruntime


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
    onnx = _import_onnx()
    if not isinstance(opset, int) or isinstance(opset, bool) or not 13 <= opset <= 21:
        raise ValueError(f"export opset must be an integer in [13, 21], got {opset!r}")
    stride = _output_stride(net)
    height, width = _check_size("height", height, stride), _check_size("width", width, stride)
    config = getattr(net, "config", None)
    image_head = bool(getattr(net, "image_head", False))
    outputs = [*OUTPUT_NAMES, IMAGE_OUTPUT_NAME] if image_head else list(OUTPUT_NAMES)
    classes = int(config["classes"]) if isinstance(config, Mapping) and "classes" in config else None
    channels = int(config["in_channels"]) if isinstance(config, Mapping) and "in_channels" in config else 3
    metadata = _jsonable(
        {
            "format_version": FORMAT_VERSION,
            "net": dict(config) if isinstance(config, Mapping) else None,
            "classes": classes,
            "in_channels": channels,
            "height": height,
            "width": None if dynamic_width else width,
            "traced_width": width,
            "dynamic_width": bool(dynamic_width),
            "output_stride": stride,
            "input": INPUT_NAME,
            "outputs": outputs,
            "image_head": image_head,
            "opset": opset,
            "torch": torch.__version__,
            "steel_defect": __version__,
            "meta": dict(meta) if meta is not None else None,
        }
    )
    axes_in = {0: "batch", 3: "width"} if dynamic_width else {0: "batch"}
    dynamic_axes = {INPUT_NAME: axes_in, OUTPUT_NAMES[0]: dict(axes_in), OUTPUT_NAMES[1]: {0: "batch"}}
    if image_head:
        dynamic_axes[IMAGE_OUTPUT_NAME] = {0: "batch"}
    # Trace with batch 2 so that no batch-1 special case is baked into the graph.
    dummy = torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    device = next(iter(net.parameters()), torch.empty(0)).device
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            cpu_net = net.to("cpu")

            def write(tmp: str) -> None:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
                    warnings.filterwarnings("ignore", message=".*feature will be removed.*")
                    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                    torch.onnx.export(
                        cpu_net,
                        (dummy,),
                        tmp,
                        dynamo=False,
                        input_names=[INPUT_NAME],
                        output_names=outputs,
                        opset_version=opset,
                        dynamic_axes=dynamic_axes,
                        do_constant_folding=True,
                    )
                model = onnx.load(tmp)
                entry = model.metadata_props.add()
                entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
                model.producer_name = "steel-defect"
                model.producer_version = __version__
                onnx.checker.check_model(model, full_check=True)
                onnx.save(model, tmp)

            path = atomic_save(path, write)
            if verify:
                widths = [width, width + 2 * stride] if dynamic_width else [width]
                for w in widths:
                    x = torch.rand(2, channels, height, w, generator=torch.Generator().manual_seed(w))
                    gap = compare_with_torch(cpu_net, OnnxNet(path), x)
                    if max(gap.values()) > PROB_TOLERANCE:
                        path.unlink()
                        raise RuntimeError(
                            f"ONNX export {path} disagrees with torch at width {w}: max probability gaps {gap} "
                            f"> {PROB_TOLERANCE}; the file was removed"
                        )
    finally:
        net.to(device)
        net.train(was_training)
    return path


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``steel_defect`` metadata of an exported model (ValueError if it is not one of ours)."""
    onnx = _import_onnx()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    model = onnx.load(str(path), load_external_data=False)
    return _parse_metadata(path, {p.key: p.value for p in model.metadata_props})


class OnnxNet(nn.Module):
    """An exported model run by onnxruntime, called like a SteelNet: float (B, 3, H, W) in [0, 1] ->
    ``(mask_logits, class_logits[, image_logits])`` torch float32 tensors on the input's device (the third
    for a model exported with an image head: ``image_head`` is True).

    ``providers`` defaults to ``["CPUExecutionProvider"]`` (plus CUDA first when onnxruntime has it and
    ``device="cuda"``); ``intra_op_threads`` sets onnxruntime's thread pool (None: its default).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__()
        ort = _import_ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"ONNX model not found: {self.path} (write one with: python predict.py task=export ckpt=...)"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: graph clean-up notices are not the user's business
        if intra_op_threads is not None:
            if (
                isinstance(intra_op_threads, bool)
                or not isinstance(intra_op_threads, int)
                or intra_op_threads < 0
            ):
                raise ValueError(
                    f"intra_op_threads must be a non-negative integer or None, got {intra_op_threads!r}"
                )
            options.intra_op_num_threads = intra_op_threads
        if providers is None:
            available = ort.get_available_providers()
            providers = ["CPUExecutionProvider"]
            if str(device).startswith("cuda") and "CUDAExecutionProvider" in available:
                providers = ["CUDAExecutionProvider", *providers]
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=list(providers))
        self.meta = _parse_metadata(self.path, self.session.get_modelmeta().custom_metadata_map)
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        valid_out = (list(OUTPUT_NAMES), [*OUTPUT_NAMES, IMAGE_OUTPUT_NAME])
        if names_in != [INPUT_NAME] or names_out not in valid_out:
            raise ValueError(
                f"{self.path}: expected input {[INPUT_NAME]} and outputs {valid_out[0]} or {valid_out[1]}, "
                f"got {names_in} and {names_out}"
            )
        self.output_names = names_out
        self.image_head = len(names_out) == 3
        self.height = int(self.meta["height"])
        self.width = None if self.meta["dynamic_width"] else int(self.meta["width"])
        self.in_channels = int(self.meta.get("in_channels", 3))
        self.output_stride = int(self.meta.get("output_stride", 32))
        self.config = self.meta.get("net")

    @property
    def source_fingerprint(self) -> str | None:
        """Fingerprint of the checkpoint this model was exported from (see :mod:`steel_defect.fingerprint`)."""
        return (self.meta.get("meta") or {}).get("fingerprint")

    @property
    def tuned_thresholds(self) -> dict[str, Any] | None:
        """The tuned post-processing stored at export (``params``, ``fingerprints``, ``tta``, ``source``)."""
        return (self.meta.get("meta") or {}).get("tuned_thresholds")

    def extra_repr(self) -> str:
        width = "dynamic" if self.width is None else self.width
        return f"path={str(self.path)!r}, height={self.height}, width={width}"

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"OnnxNet expects a (B, {self.in_channels}, H, W) tensor, got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"OnnxNet expects a float tensor in [0, 1], got dtype {x.dtype}")
        h, w = int(x.shape[2]), int(x.shape[3])
        if h != self.height:
            raise ValueError(
                f"{self.path} was exported for height {self.height}, got input height {h}; "
                f"re-export with export.height={h}"
            )
        if self.width is not None and w != self.width:
            raise ValueError(
                f"{self.path} was exported for the fixed width {self.width}, got input width {w}; re-export "
                f"with export.width={w} or export.dynamic_width=true"
            )
        if w % self.output_stride:
            raise ValueError(f"input width {w} is not a multiple of the output stride {self.output_stride}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._check_input(x)
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        outputs = self.session.run(self.output_names, {INPUT_NAME: array})
        return tuple(torch.from_numpy(o).to(x.device) for o in outputs)


@torch.no_grad()
def compare_with_torch(net: nn.Module, onnx_net: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Largest absolute differences of the sigmoid probabilities between ``net`` and ``onnx_net``
    (keys ``mask``, ``class`` and, for nets with an image head, ``image``)."""
    from steel_defect.predictor import split_outputs

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
