"""``task=export`` and ``task=quantize``: a checkpoint -> an ONNX model, an ONNX model -> int8."""

from __future__ import annotations

from typing import Any

from steel_defect.inference.predictor import load_nets
from steel_defect.postprocess.thresholds import (
    check_thresholds_binding,
    resolve_thresholds,
    thresholds_binding,
)
from steel_defect.tasks.common import images_dir
from steel_defect.tasks.config import PredictConfig


def run_export(c: PredictConfig) -> dict[str, Any]:
    """task=export: one checkpoint -> an ONNX model (default: beside it, ``.onnx``)."""
    from rich.console import Console

    from steel_defect.deploy.onnx_export import export_onnx
    from steel_defect.fingerprint import net_fingerprint

    console = Console()
    if len(c.ckpt) != 1:
        raise ValueError(f"task=export takes one checkpoint, got ckpt={[str(p) for p in c.ckpt]}")
    if c.runtime == "onnx":
        raise ValueError("task=export reads a training checkpoint: use runtime=torch (or auto)")
    nets, metas = load_nets(c.ckpt, "cpu", "torch")
    out = c.export["out"] or c.ckpt[0].with_suffix(".onnx")
    meta = {**metas[0], "fingerprint": net_fingerprint(nets[0])}
    params, source = resolve_thresholds(c.thresholds, c.ckpt[0], metas[0])
    binding = thresholds_binding(source, metas[0])
    if binding is not None:  # tuned thresholds travel inside the model
        if c.check_thresholds:
            check_thresholds_binding(source, metas[0], nets, binding["tta"], c.ckpt)
        meta["tuned_thresholds"] = {"params": params.to_dict(), "source": source, **binding}
    path = export_onnx(
        nets[0],
        out,
        height=c.export["height"],
        width=c.export["width"],
        opset=c.export["opset"],
        dynamic_width=c.export["dynamic_width"],
        meta=meta,
    )
    stored = f"; tuned thresholds from {source} stored in its metadata" if binding is not None else ""
    console.print(f"exported {c.ckpt[0]} to {path}{stored}", highlight=False, soft_wrap=True)
    return {"onnx": str(path), "thresholds": source if binding is not None else None}


def run_quantize(c: PredictConfig) -> dict[str, Any]:
    """task=quantize: one exported ONNX model -> int8 (default: beside it, ``.int8.onnx``), calibrated on
    crops of the labelled images (``data.images``, default ``data.root/train_images``)."""
    from rich.console import Console

    from steel_defect.deploy.quantize import quantize_onnx
    from steel_defect.io import list_images

    console = Console()
    if len(c.ckpt) != 1:
        raise ValueError(f"task=quantize takes one exported model, got ckpt={[str(p) for p in c.ckpt]}")
    src = c.ckpt[0]
    if not src.is_file():
        raise FileNotFoundError(f"ckpt: model not found: {src}")
    folder = images_dir(c, "train_images")
    images = list_images(folder)
    if not images:
        raise FileNotFoundError(
            f"task=quantize: no calibration images in {folder} (data.images or data.root/train_images)"
        )
    out = c.quantize["out"] or src.with_name(src.stem + ".int8.onnx")
    opts = {k: v for k, v in c.quantize.items() if k != "out"}
    path = quantize_onnx(src, out, images, **opts)
    console.print(
        f"quantised {src} to {path} ({opts['crops']} calibration crops of width {opts['crop_width']} "
        f"from {len(images)} images); run it with runtime=int8",
        highlight=False,
        soft_wrap=True,
    )
    return {"onnx": str(path)}
