"""The ``steel_defect`` metadata of an exported ONNX model: names and parsing, with no torch import (shared by
:mod:`steel_defect.export` and the torch-free :mod:`steel_defect.ort_predictor`)."""

from __future__ import annotations

import hashlib
import json
import os
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
    "weights_fingerprint",
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
    except RecursionError as err:  # hostile: thousands of nested brackets
        raise ValueError(
            f"{path}: {METADATA_KEY!r} metadata is nested too deeply to be ours; re-export the model "
            "(python predict.py task=export ckpt=...)"
        ) from err
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported {METADATA_KEY} metadata format_version={version!r} (this steel_defect "
            f"{__version__} reads <= {FORMAT_VERSION}); re-export with this version"
        )
    return meta


def weights_fingerprint(
    model: bytes | str | os.PathLike, path: str | os.PathLike | None = None
) -> str | None:
    """16 hex digits of SHA-256 over the weights an ONNX model really holds: every initializer, sparse
    initializer and Constant node value of its graphs (name, data type, shape and bytes, in name order),
    read from ``model`` (the file's bytes, as given to ONNX Runtime, or its path). Unlike the
    ``fingerprint`` in the metadata (the source checkpoint's, as claimed at export), it changes with any
    edited weight. None when the ``onnx`` package is not installed; ValueError naming the file when the
    bytes are not an ONNX model."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None
    name = str(path if path is not None else (model if not isinstance(model, bytes) else "the model"))
    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as err:  # noqa: BLE001 (protobuf's DecodeError, RecursionError on hostile nesting)
        raise ValueError(f"{name}: not an ONNX model ({type(err).__name__}: {str(err)[:200]})") from err
    tensors: dict[str, Any] = {}

    def visit(graph: Any, prefix: str) -> None:
        for t in graph.initializer:
            tensors[f"{prefix}{t.name}"] = t
        for s in graph.sparse_initializer:
            tensors[f"{prefix}{s.values.name}|sparse"] = s.values
            tensors[f"{prefix}{s.values.name}|indices"] = s.indices
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type == "Constant" and attr.type == onnx.AttributeProto.TENSOR:
                    tensors[f"{prefix}{node.output[0]}|const"] = attr.t
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g, f"{prefix}{node.name}/{attr.name}/")
                for i, g in enumerate(attr.graphs):
                    visit(g, f"{prefix}{node.name}/{attr.name}/{i}/")

    h = hashlib.sha256()
    try:
        visit(proto.graph, "")
        for key in sorted(tensors):
            t = tensors[key]
            array = numpy_helper.to_array(t)
            h.update(f"{key}|{t.data_type}|{tuple(t.dims)}|".encode())
            h.update(array.tobytes())
    except Exception as err:  # noqa: BLE001 (a malformed tensor, or external data that is not there)
        raise ValueError(
            f"{name}: its weights cannot be read ({type(err).__name__}: {str(err)[:200]})"
        ) from err
    return h.hexdigest()[:16]
