"""The ``steel_defect`` metadata of an exported ONNX model: names and parsing, with no torch import (shared by
:mod:`steel_defect.export` and the torch-free :mod:`steel_defect.ort_predictor`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steel_defect import __version__

__all__ = [
    "FORMAT_VERSION",
    "IMAGE_OUTPUT_NAME",
    "INPUT_NAME",
    "METADATA_KEY",
    "OUTPUT_NAMES",
    "parse_metadata",
]

#: Version of the metadata layout stored in the ONNX file (OnnxNet refuses newer ones).
FORMAT_VERSION = 1
#: ``metadata_props`` key holding the JSON metadata.
METADATA_KEY = "steel_defect"
INPUT_NAME = "image"
OUTPUT_NAMES = ("mask_logits", "class_logits")
#: The third output of a net with an image head: the "image has any defect" logits (B,).
IMAGE_OUTPUT_NAME = "image_logits"


def parse_metadata(path: Path, props: Mapping[str, str]) -> dict[str, Any]:
    """The JSON metadata of ``props`` (an ONNX model's metadata_props), checked: ValueError naming ``path``
    when it is missing, not JSON or of a newer format."""
    if METADATA_KEY not in props:
        raise ValueError(
            f"{path}: no {METADATA_KEY!r} metadata: not exported by steel_defect.export.export_onnx "
            "(python predict.py task=export ckpt=...)"
        )
    try:
        meta = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: {METADATA_KEY!r} metadata is not valid JSON: {err}") from err
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported {METADATA_KEY} metadata format_version={version!r} (this steel_defect "
            f"{__version__} reads <= {FORMAT_VERSION}); re-export with this version"
        )
    return meta
