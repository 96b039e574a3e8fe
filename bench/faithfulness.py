"""Faithfulness and speed of every inference path of one trained checkpoint, against eager fp32.

    .venv/bin/python bench/faithfulness.py [--ckpt logs/demo/run/checkpoints/best.ckpt]
        [--real ../shared/data/severstal-real] [--synthetic data/synthetic] [--calib-crops 200] [--rounds 2]

For each path the Kaggle Dice (the checkpoint's own thresholds: its tuned thresholds.yaml when there is one,
carried into the ONNX metadata by the export) on the real labelled images (``REAL/train_images`` +
``train.csv``, never trained or tuned on) and on the synthetic test split (``SYN/test_images`` +
``test_labels.csv``), its change from eager fp32, and seconds per image in this process (batch 4 through
``predict_images``: decode, network, post-processing, RLE). Paths: eager fp32 (``runtime=torch``, the
reference), channels_last (``runtime=auto``, the default), ONNX Runtime fp32 (``task=export``), ONNX Runtime
int8 (``task=quantize``, calibrated on ``--calib-crops`` crops of ``SYN/train_images``: the images the
model trained on) and bf16 autocast (channels_last). Timings alternate the paths over ``--rounds`` rounds and
report each path's best, with the ratio to eager fp32 timed in the same round (the 2 cores are shared).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from steel_defect.inference.folder import predict_images  # noqa: E402
from steel_defect.inference.predictor import Predictor  # noqa: E402


class Bf16(torch.nn.Module):
    """A net run under CPU bf16 autocast, logits returned as float32."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.output_stride = getattr(net, "output_stride", 32)

    def forward(self, x: torch.Tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return tuple(o.float() for o in self.net(x))


def build_paths(ckpt: Path, calib: Path, crops: int, tmp: Path, console: Console) -> dict[str, Predictor]:
    from steel_defect.deploy.quantize import quantize_onnx
    from steel_defect.io import list_images
    from steel_defect.tasks.dispatch import run

    onnx = tmp / "model.onnx"
    run({"task": "export", "ckpt": str(ckpt), "export": {"out": str(onnx), "dynamic_width": True}})
    t0 = time.perf_counter()
    int8 = quantize_onnx(onnx, tmp / "model.int8.onnx", list_images(calib), crops=crops)
    console.print(f"quantised in {time.perf_counter() - t0:.0f} s ({crops} crops of {calib})")
    eager = Predictor.load(ckpt, runtime="torch", device="cpu")
    bf16 = Predictor.load(ckpt, runtime="auto", device="cpu")
    bf16.nets = [Bf16(n) for n in bf16.nets]
    return {
        "eager fp32 (runtime=torch, the reference)": eager,
        "channels_last fp32 (runtime=auto, the default)": Predictor.load(ckpt, runtime="auto", device="cpu"),
        "ONNX Runtime fp32 (runtime=onnx)": Predictor.load(onnx, runtime="onnx", device="cpu"),
        f"ONNX Runtime int8 (runtime=int8, {crops} calibration crops)": Predictor.load(
            int8, runtime="int8", device="cpu"
        ),
        "bf16 autocast + channels_last": bf16,
    }


def evaluate(predictor: Predictor, images: Path, labels: Path, out: Path) -> tuple[float, list[float], float]:
    """(mean Kaggle Dice, per class, seconds per image) of ``predictor`` on a labelled folder."""
    t0 = time.perf_counter()
    summary = predict_images(predictor, images, out, labels=labels, batch_size=4, console=Console(quiet=True))
    seconds = (time.perf_counter() - t0) / summary["images"]
    dice = summary["evaluation"]["dice"]
    return float(dice["mean"]), [float(v) for v in dice["per_class"]], seconds


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, default=REPO / "logs/demo/run/checkpoints/best.ckpt")
    parser.add_argument("--real", type=Path, default=REPO.parent / "shared/data/severstal-real")
    parser.add_argument("--synthetic", type=Path, default=REPO / "data/synthetic")
    parser.add_argument("--calib-crops", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    console = Console(width=200)
    sets = {
        "real": (args.real / "train_images", args.real / "train.csv"),
        "synthetic test": (args.synthetic / "test_images", args.synthetic / "test_labels.csv"),
    }
    for name, (images, labels) in sets.items():
        if not images.is_dir() or not labels.is_file():
            parser.error(f"{name} set not found: {images} + {labels}")
    torch.manual_seed(0)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="steel-faithful-") as tmp:
        paths = build_paths(args.ckpt, args.synthetic / "train_images", args.calib_crops, Path(tmp), console)
        for name, predictor in paths.items():
            row = results.setdefault(name, {"ratio": []})
            for set_name, (images, labels) in sets.items():
                mean, per_class, _ = evaluate(predictor, images, labels, Path(tmp) / "sub.csv")
                row[set_name] = mean
                row[f"{set_name} per class"] = per_class
        real_images, real_labels = sets["real"]
        for _ in range(args.rounds):  # alternate the paths: each ratio is against eager in the same round
            reference = None
            for name, predictor in paths.items():
                seconds = evaluate(predictor, real_images, real_labels, Path(tmp) / "sub.csv")[2]
                reference = seconds if reference is None else reference
                row = results[name]
                row["seconds"] = min(row.get("seconds", float("inf")), seconds)
                row["ratio"].append(reference / seconds)
    base = results[next(iter(results))]
    table = Table(
        title=f"Faithfulness of the inference paths: {args.ckpt} (Kaggle Dice; change from eager fp32)"
    )
    for col in ("path", "real", "synthetic test", "s/image (real, best)", "speed vs eager (same round)"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name, row in results.items():
        cells = []
        for set_name in sets:
            delta = row[set_name] - base[set_name]
            cells.append(f"{row[set_name]:.5f}" + ("" if row is base else f" ({delta:+.4f})"))
        ratios = ", ".join(f"{r:.2f}x" for r in row["ratio"])
        table.add_row(name, *cells, f"{row['seconds']:.3f}", ratios)
    console.print(table)
    return results


if __name__ == "__main__":
    main()
