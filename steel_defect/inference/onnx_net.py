""":class:`OnnxNet`: an exported ONNX model run by onnxruntime behind a ``torch.nn.Module`` (a thin torch adapter used at
prediction time; the export itself is :mod:`steel_defect.deploy.onnx_export`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from steel_defect.inference.onnx_model import (
    IMAGE_OUTPUT_NAME,
    INPUT_NAME,
    OUTPUT_NAMES,
    require_ort,
)
from steel_defect.inference.onnx_model import parse_metadata as _parse_metadata


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
        ort = require_ort()
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
