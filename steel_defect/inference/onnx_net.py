""":class:`OnnxNet`: an exported ONNX model behind a ``torch.nn.Module`` (a thin torch adapter over the one ONNX
Runtime session wrapper, :class:`~steel_defect.inference.onnx_model.OrtModel`; the export itself is
:mod:`steel_defect.deploy.onnx_export`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from steel_defect.inference.onnx_model import OrtModel


class OnnxNet(nn.Module):
    """An exported model run by onnxruntime, called like a SteelNet: float (B, 3, H, W) in [0, 1] ->
    ``(mask_logits, class_logits[, image_logits])`` torch float32 tensors on the input's device (the third
    for a model exported with an image head: ``image_head`` is True).

    ``providers``, ``intra_op_threads`` and ``device`` go to :class:`OrtModel` (which builds the session).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__()
        self.model = OrtModel(path, threads=intra_op_threads, providers=providers, device=str(device))

    # the model's description, read through (what load_nets, the fingerprints and the export checks use)
    path = property(lambda self: self.model.path)
    session = property(lambda self: self.model.session)
    meta = property(lambda self: self.model.meta)
    output_names = property(lambda self: self.model.output_names)
    image_head = property(lambda self: self.model.image_head)
    height = property(lambda self: self.model.height)
    width = property(lambda self: self.model.width)
    in_channels = property(lambda self: self.model.in_channels)
    output_stride = property(lambda self: self.model.output_stride)
    config = property(lambda self: self.model.meta.get("net"))

    #: fingerprint of the checkpoint this model was exported from (:attr:`OrtModel.source_fingerprint`)
    source_fingerprint = property(lambda self: self.model.source_fingerprint)

    @property
    def weights_fingerprint(self) -> str | None:
        """The hash of the weights the session really runs (:attr:`OrtModel.weights_fingerprint`)."""
        return self.model.weights_fingerprint

    @property
    def tuned_thresholds(self) -> dict[str, Any] | None:
        """The tuned post-processing stored at export (``params``, ``fingerprints``, ``tta``, ``source``)."""
        return (self.meta.get("meta") or {}).get("tuned_thresholds")

    def extra_repr(self) -> str:
        width = "dynamic" if self.width is None else self.width
        return f"path={str(self.path)!r}, height={self.height}, width={width}"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"OnnxNet expects a (B, {self.in_channels}, H, W) tensor, got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"OnnxNet expects a float tensor in [0, 1], got dtype {x.dtype}")
        outputs = self.model(np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy()))
        return tuple(torch.from_numpy(o).to(x.device) for o in outputs)
