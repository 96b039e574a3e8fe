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


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The exported checkpoint's meta (``tuned_thresholds`` included) of an ONNX model, read with the onnx
    package and without a session or the weights' external data (``tta: null`` needs only this)."""
    onnx = require_onnx()
    model = onnx.load(str(path), load_external_data=False)
    meta = parse_metadata(Path(path), {p.key: p.value for p in model.metadata_props})
    return dict(meta.get("meta") or {})


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
    """One exported model: THE ONNX Runtime session of this project (the torch-free engine runs it directly,
    :class:`~steel_defect.inference.onnx_net.OnnxNet` adapts it to torch) plus its ``steel_defect`` metadata.

    ``threads`` sets ONNX Runtime's intra-op thread pool (None: its default); ``providers`` defaults to
    ``["CPUExecutionProvider"]``, with CUDA first when onnxruntime has it and ``device`` is a cuda device.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        device: str = "cpu",
    ):
        ort = require_ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"ONNX model not found: {self.path} (write one with: python predict.py task=export ckpt=...)"
            )
        # One read: the session runs, and the fingerprint hashes, the very same bytes.
        data = self.path.read_bytes()
        self.session = _session(
            ort, self.path, data, _options(ort, threads), _providers(ort, providers, device)
        )
        self.meta = parse_metadata(self.path, self.session.get_modelmeta().custom_metadata_map)
        #: the hash of the weights this session runs (None without the onnx package); the metadata's
        #: ``fingerprint`` is only what the export claimed for its source checkpoint
        self.weights_fingerprint = weights_fingerprint(data, self.path)
        self.output_names = _check_io(self.path, self.session)
        self.image_head = len(self.output_names) == 3
        self.height = int(self.meta["height"])
        self.width = None if self.meta["dynamic_width"] else int(self.meta["width"])
        self.in_channels = int(self.meta.get("in_channels", 3))
        self.output_stride = int(self.meta.get("output_stride", 32))
        #: The exported checkpoint's meta, with the class names filled in as ``load_nets`` does.
        self.inner = dict(self.meta.get("meta") or {})
        self.inner.setdefault(
            "classes", [str(c + 1) for c in range(int(self.meta.get("classes") or NUM_CLASSES))]
        )

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.inner["classes"]]

    @property
    def source_fingerprint(self) -> str | None:
        """Fingerprint of the checkpoint this model was exported from (see :mod:`steel_defect.fingerprint`)."""
        return self.inner.get("fingerprint")

    def check_size(self, h: int, w: int) -> None:
        """ValueError unless an (h, w) input fits the exported height, fixed width and output stride."""
        if h != self.height:
            raise ValueError(
                f"{self.path} was exported for height {self.height}, got images {h} high (input height {h}, "
                f"after padding to the stride); re-export it with export.height={h}"
            )
        if self.width is not None and w != self.width:
            raise ValueError(
                f"{self.path} was exported for the fixed width {self.width}, got input width {w}; re-export "
                f"with export.width={w} or export.dynamic_width=true"
            )
        if w % self.output_stride:
            raise ValueError(f"input width {w} is not a multiple of the output stride {self.output_stride}")

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """float32 (B, 3, H, W) in [0, 1] -> the logits (mask, class[, image])."""
        self.check_size(int(x.shape[2]), int(x.shape[3]))
        return self.session.run(self.output_names, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})


def _options(ort: Any, threads: int | None) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: graph clean-up notices are not the user's business
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ValueError(f"intra_op_threads must be a non-negative integer or None, got {threads!r}")
        options.intra_op_num_threads = threads
    return options


def _providers(ort: Any, providers: Sequence[str] | None, device: str) -> list[str]:
    if providers is not None:
        return list(providers)
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(ort: Any, path: Path, data: bytes, options: Any, providers: list[str]) -> Any:
    try:
        return ort.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as err:  # noqa: BLE001 (InvalidProtobuf, Fail, InvalidGraph, RecursionError, ...)
        raise ValueError(
            f"{path}: not a valid ONNX model ({type(err).__name__}: {str(err)[:300]}); "
            "export one with python predict.py task=export ckpt=..."
        ) from err


def _check_io(path: Path, session: Any) -> list[str]:
    """The output names of an exported model, after checking its input and output names."""
    names_in = [i.name for i in session.get_inputs()]
    names_out = [o.name for o in session.get_outputs()]
    valid_out = (list(OUTPUT_NAMES), [*OUTPUT_NAMES, IMAGE_OUTPUT_NAME])
    if names_in != [INPUT_NAME] or names_out not in valid_out:
        raise ValueError(
            f"{path}: expected input {[INPUT_NAME]} and outputs {valid_out[0]} or {valid_out[1]}, "
            f"got {names_in} and {names_out}"
        )
    return names_out


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
