"""The ``steel_defect`` metadata of an exported ONNX model: names and parsing, with no torch import (shared by
:mod:`steel_defect.deploy.onnx_export` and the torch-free :mod:`steel_defect.inference.ort_predictor`), plus
:class:`OrtModel` (one ONNX Runtime session) and :func:`require_onnx` / :func:`require_ort` (the optional
extra's imports, with the install hint)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steel_defect import NUM_CLASSES, __version__

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
            f"{path}: no {METADATA_KEY!r} metadata: not exported by steel_defect.deploy.onnx_export.export_onnx "
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


class OrtModel:
    """One exported model: an ONNX Runtime session plus its ``steel_defect`` metadata."""

    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, providers: Sequence[str] | None = None
    ):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError(
                'ONNX-only inference needs onnxruntime: pip install "steel-defect[onnx]"'
            ) from err
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"ONNX model not found: {self.path} (write one with predict.py task=export)"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        # One read: the session runs, and the fingerprint hashes, the very same bytes.
        data = self.path.read_bytes()
        try:
            self.session = ort.InferenceSession(
                data, sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as err:  # noqa: BLE001 (InvalidProtobuf, Fail, InvalidGraph, RecursionError, ...)
            raise ValueError(
                f"{self.path}: not a valid ONNX model ({type(err).__name__}: {str(err)[:300]}); "
                "export one with python predict.py task=export ckpt=..."
            ) from err
        self.meta = parse_metadata(self.path, self.session.get_modelmeta().custom_metadata_map)
        #: the hash of the weights this session runs (None without the onnx package); the metadata's
        #: ``fingerprint`` is only what the export claimed for its source checkpoint
        self.weights_fingerprint = weights_fingerprint(data, self.path)
        names = [o.name for o in self.session.get_outputs()]
        if names not in (list(OUTPUT_NAMES), [*OUTPUT_NAMES, IMAGE_OUTPUT_NAME]):
            raise ValueError(f"{self.path}: unexpected outputs {names}")
        self.output_names = names
        self.image_head = len(names) == 3
        self.height = int(self.meta["height"])
        self.width = None if self.meta["dynamic_width"] else int(self.meta["width"])
        self.output_stride = int(self.meta.get("output_stride", 32))
        #: The exported checkpoint's meta, with the class names filled in as ``load_nets`` does.
        self.inner = dict(self.meta.get("meta") or {})
        self.inner.setdefault(
            "classes", [str(c + 1) for c in range(int(self.meta.get("classes") or NUM_CLASSES))]
        )

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.inner["classes"]]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """float32 (B, 3, H, W) in [0, 1] -> the logits (mask, class[, image])."""
        if x.shape[2] != self.height:
            raise ValueError(
                f"{self.path} was exported for height {self.height}, got images {x.shape[2]} high (after padding "
                f"to the stride); re-export it with export.height={x.shape[2]}"
            )
        if self.width is not None and x.shape[3] != self.width:
            raise ValueError(
                f"{self.path} takes only width {self.width} (re-export with export.dynamic_width=true), got {x.shape[3]}"
            )
        return self.session.run(self.output_names, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})


EXTRA_HINT = 'pip install "steel-defect[onnx]"'


def require_onnx():
    try:
        import onnx
    except ImportError as err:
        raise ImportError(f"ONNX export needs the onnx package (optional extra): {EXTRA_HINT}") from err
    return onnx


def require_ort():
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            f"runtime=onnx needs the onnxruntime package (optional extra): {EXTRA_HINT}"
        ) from err
    return onnxruntime
