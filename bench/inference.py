"""Inference speed of the one-network model vs the original notebook's six networks, per 256x1600 image.

    .venv/bin/python bench/inference.py [--batch 1 8] [--images 4] [--device cpu|cuda] [--model unet_effb1]
        [--runtimes eager channels_last compile onnx bf16] [--six-batch 1] [--six-calls 3] [--no-six] [--json out.json]

Rows: runtime x batch x {no TTA, hflip TTA}: seconds per image, images/s and the projected minutes for the
5,506 Kaggle test images. Every timing goes through :func:`steel_defect.inference.predictor.predict_batch` (sigmoid,
TTA de-augmentation and averaging included), so it is the network cost of ``predict.py``. Then the per-image
cost of the rest of ``predict.py``: JPEG decode + tensor, post-processing (the notebook's gates and area
limits) and RLE encoding, on realistic synthetic masks, and their share of the time. Finally the original
notebook's pipeline rebuilt in PyTorch with random weights (2 Xception classifiers at 256x512, 4 single-class
U-Net EfficientNet-B1 at 256x1600), and the speed-up of ours over it.

Each row reports the best of at least two timed calls (and their median): the 2 cores are shared, see
:func:`time_predict`. Weights are random (``encoder_weights: null``): speed does not depend on them. One warm-up call per runtime
and batch size (for torch.compile that call is the compilation, reported separately); the ONNX export time
is reported the same way. On CUDA the rows are fp32, fp16 autocast, bf16 weights, channels_last fp16,
torch.compile fp16 and ONNX Runtime (when its CUDA provider is installed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from rich.console import Console
from rich.table import Table
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from steel_defect import DEFAULT_SHAPE, NUM_CLASSES  # noqa: E402
from steel_defect.inference.predictor import predict_batch  # noqa: E402

KAGGLE_TEST_IMAGES = 5506
#: The competition's kernel limit and this project's goal, in minutes.
KAGGLE_LIMIT_MIN, GOAL_MIN, GOAL_RATIO = 60.0, 30.0, 4.0
#: Timed calls per row at least (the best one is reported, see time_predict).
MIN_CALLS = 2


# ======================================================================================================
# Models
# ======================================================================================================
def net_config(model: str) -> dict[str, Any]:
    """``net`` of conf/model/<model>.yaml (following its ``defaults``), with random encoder weights."""
    path = REPO / "conf" / "model" / f"{model}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
        raise SystemExit(f"--model {model!r}: no {path}; choose one of: {', '.join(choices)}")
    doc = yaml.safe_load(path.read_text()) or {}
    net: dict[str, Any] = {}
    for entry in doc.get("defaults", []):
        if entry == "_self_":
            net.update(doc.get("net", {}))
        elif isinstance(entry, str):
            net.update(net_config(entry))
    if "_self_" not in doc.get("defaults", []):
        net.update(doc.get("net", {}))
    net["encoder_weights"] = None
    return net


class ChannelsLast(nn.Module):
    """Runs ``net`` with channels_last weights and inputs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor):
        return self.net(x.contiguous(memory_format=torch.channels_last))


class Cast(nn.Module):
    """Runs ``net`` with its weights and inputs in ``dtype`` (bf16 inference without autocast)."""

    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.net, self.dtype = net.to(dtype), dtype

    def forward(self, x: torch.Tensor):
        return self.net(x.to(self.dtype))


class SixNetworks(nn.Module):
    """The original notebook in PyTorch: a defect/no-defect and a 4-label Xception classifier on the image
    resized to 256x512, and four single-class U-Net EfficientNet-B1 at full size. Returns the same
    ``(mask_logits (B,4,H,W), class_logits (B,4))`` as ours (the binary classifier gates the image)."""

    def __init__(self) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp
        import timm

        # timm's legacy_xception is the Keras Xception architecture (ported weights layout).
        self.cls_any = timm.create_model("legacy_xception", pretrained=False, num_classes=1)
        self.cls_4 = timm.create_model("legacy_xception", pretrained=False, num_classes=4)
        self.segs = nn.ModuleList(
            smp.Unet("efficientnet-b1", encoder_weights=None, classes=1) for _ in range(4)
        )

    def forward(self, x: torch.Tensor):
        width = max(32, round(x.shape[-1] * 512 / 1600))  # 1600 -> 512, like the notebook
        small = nn.functional.interpolate(x, size=(x.shape[-2], width), mode="bilinear", align_corners=False)
        gate = self.cls_any(small)
        class_logits = torch.where(gate > 0, self.cls_4(small), torch.full_like(gate, -20.0))
        return torch.cat([seg(x) for seg in self.segs], dim=1), class_logits


def count_gmacs(net: nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / 2e9


# ======================================================================================================
# Timing
# ======================================================================================================
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_predict(
    net: nn.Module, x: torch.Tensor, calls: int, tta: Sequence[str], amp: bool, device: torch.device
) -> tuple[float, float]:
    """(best, median) seconds per image over ``calls`` calls of predict_batch on ``x`` (already warmed up).

    The best call is the headline figure: on a shared machine other processes only ever add time (and
    with as many threads as cores, a descheduled thread stalls every parallel region), so the minimum is
    the closest to the machine's own speed; the median shows how noisy the run was.
    """
    per_call = []
    for _ in range(calls):
        _sync(device)
        start = time.perf_counter()
        predict_batch(net, x, tta=tta, amp=amp)
        _sync(device)
        per_call.append((time.perf_counter() - start) / x.shape[0])
    return min(per_call), float(np.median(per_call))


def warm_up(
    net: nn.Module, x: torch.Tensor, amp: bool, device: torch.device, tta: Sequence[str] = ("hflip",)
) -> float:
    """One call with hflip TTA: the plain and the flipped input (an inference tensor, which torch.compile
    guards on separately) both get compiled/initialised here, not in the timed calls."""
    _sync(device)
    start = time.perf_counter()
    predict_batch(net, x, tta=tta, amp=amp)
    _sync(device)
    return time.perf_counter() - start


def variants(
    device: torch.device, names: Sequence[str], cfg: dict[str, Any], shape: tuple[int, int]
) -> list[dict]:
    """Runtime definitions: name, builder() -> (net, setup seconds, note), amp flag."""
    from steel_defect.models.factory import build_model

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return build_model(cfg).eval().to(device)

    def onnx_builder() -> tuple[nn.Module, float, str]:
        from steel_defect.deploy.onnx_export import export_onnx
        from steel_defect.inference.onnx_net import OnnxNet

        providers = None
        if device.type == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise RuntimeError("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        # the session holds the model once created, so the file can go with its folder
        with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
            start = time.perf_counter()
            path = export_onnx(
                fresh().cpu(), Path(tmp) / "net.onnx", height=shape[0], width=shape[1], verify=False
            )
            seconds = time.perf_counter() - start
            net = OnnxNet(
                path, providers=providers, intra_op_threads=torch.get_num_threads(), device=str(device)
            )
        return net, seconds, f"export {seconds:.0f} s"

    def int8_builder() -> tuple[nn.Module, float, str]:
        """ONNX Runtime int8 (task=quantize's recipe), calibrated on 16 noise crops: speed, not quality."""
        from steel_defect.deploy.onnx_export import export_onnx
        from steel_defect.deploy.quantize import quantize_onnx
        from steel_defect.inference.onnx_net import OnnxNet

        with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
            rng = np.random.default_rng(0)
            images = []
            for i in range(8):
                images.append(Path(tmp) / f"c{i}.png")
                cv2.imwrite(str(images[-1]), rng.integers(60, 160, (shape[0], shape[1], 3), dtype=np.uint8))
            start = time.perf_counter()
            fp32 = export_onnx(
                fresh().cpu(),
                Path(tmp) / "net.onnx",
                height=shape[0],
                width=shape[1],
                dynamic_width=True,
                verify=False,
            )
            path = quantize_onnx(fp32, Path(tmp) / "net.int8.onnx", images, crops=16, crop_width=448)
            seconds = time.perf_counter() - start
            net = OnnxNet(path, intra_op_threads=torch.get_num_threads(), device=str(device))
        return net, seconds, f"export + quantise {seconds:.0f} s"

    def compile_builder(base: Callable[[], nn.Module]) -> Callable[[], tuple[nn.Module, float, str]]:
        return lambda: (torch.compile(base()), 0.0, "compile: see warm-up")

    table: dict[str, dict] = {
        "eager": {"label": "eager fp32", "build": lambda: (fresh(), 0.0, ""), "amp": False},
        "channels_last": {
            "label": "channels_last fp32",
            "build": lambda: (ChannelsLast(fresh()), 0.0, ""),
            "amp": False,
        },
        "compile": {
            "label": "torch.compile fp32",
            "build": compile_builder(fresh),
            "amp": False,
            "compile": True,
        },
        "onnx": {"label": "ONNX Runtime fp32", "build": onnx_builder, "amp": False},
        "bf16": {"label": "eager bf16 autocast", "build": lambda: (fresh(), 0.0, ""), "amp": True},
        "bf16_cl": {
            "label": "channels_last bf16 autocast",
            "build": lambda: (ChannelsLast(fresh()), 0.0, ""),
            "amp": True,
        },
        "int8": {"label": "ONNX Runtime int8 (static QDQ)", "build": int8_builder, "amp": False},
    }
    if device.type == "cuda":
        table["bf16"] = {
            "label": "eager bf16 weights",
            "build": lambda: (Cast(fresh(), torch.bfloat16), 0.0, ""),
            "amp": False,
        }
        table["fp16"] = {"label": "eager fp16 autocast", "build": lambda: (fresh(), 0.0, ""), "amp": True}
        table["channels_last"] = {
            "label": "channels_last fp16 autocast",
            "build": lambda: (ChannelsLast(fresh()), 0.0, ""),
            "amp": True,
        }
        table["compile"] = {
            "label": "torch.compile fp16 autocast",
            "build": compile_builder(fresh),
            "amp": True,
            "compile": True,
        }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"--runtimes: unknown {unknown}; choose from {', '.join(table)}")
    return [dict(table[n], key=n) for n in names]


def bench_runtimes(
    device: torch.device,
    runtimes: Sequence[str],
    cfg: dict[str, Any],
    batches: Sequence[int],
    images: int,
    shape: tuple[int, int],
    console: Console,
) -> list[dict[str, Any]]:
    """One row per runtime x batch x TTA; failures become rows with the error instead of a crash."""
    rows: list[dict[str, Any]] = []
    reference = None
    for spec in variants(device, runtimes, cfg, shape):
        console.print(f"[dim]timing {spec['label']} ...[/dim]")
        try:
            net, setup_s, note = spec["build"]()
        except Exception as err:  # reported in the table, not swallowed
            rows.append({"runtime": spec["label"], "error": f"{type(err).__name__}: {err}".splitlines()[0]})
            console.print(f"[red]{spec['label']} failed to build:[/red]\n{traceback.format_exc()}")
            continue
        for batch in batches:
            x = torch.rand(batch, 3, *shape, generator=torch.Generator().manual_seed(batch)).to(device)
            try:
                warm = warm_up(net, x, spec["amp"], device, tta=("hflip",) if spec.get("compile") else ())
                calls = max(MIN_CALLS, math.ceil(images / batch))
                notes = [note] if note else []
                if spec.get("compile"):
                    notes = [f"compile+1st call {warm:.0f} s"]
                if spec["key"] in ("bf16", "fp16", "onnx", "compile", "channels_last"):
                    if reference is None:
                        ref_net = variants(device, ["eager"], cfg, shape)[0]["build"]()[0]
                        xr = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(99)).to(device)
                        reference = (xr, predict_batch(ref_net, xr)[0])
                        del ref_net
                    probs = predict_batch(net, reference[0], amp=spec["amp"])[0]
                    notes.append(f"max |dp| {float((probs - reference[1]).abs().max()):.1e}")
                for tta in ((), ("hflip",)):
                    seconds, median = time_predict(net, x, calls, tta, spec["amp"], device)
                    rows.append(
                        {
                            "runtime": spec["label"],
                            "batch": batch,
                            "tta": "hflip" if tta else "-",
                            "s_per_image": seconds,
                            "median_s_per_image": median,
                            "images_per_s": 1.0 / seconds,
                            "projected_min": seconds * KAGGLE_TEST_IMAGES / 60,
                            "images_timed": calls * batch,
                            "note": ", ".join(notes),
                        }
                    )
            except Exception as err:  # e.g. a compile failure: one row with the error, keep going
                rows.append(
                    {
                        "runtime": spec["label"],
                        "batch": batch,
                        "error": f"{type(err).__name__}: {err}".splitlines()[0],
                    }
                )
                console.print(f"[red]{spec['label']} batch {batch} failed:[/red]\n{traceback.format_exc()}")
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def bench_six(
    device: torch.device, cfg: dict[str, Any], batches: Sequence[int], calls: int, shape: tuple[int, int]
) -> list[dict]:
    """The six networks against ours, with the same runtime (eager fp32, then channels_last fp32), timed in
    alternation (ours, six, ours, six, ...) so that a change in the machine's load hits both alike."""
    from steel_defect.models.factory import build_model

    torch.manual_seed(0)
    six_eager = SixNetworks().eval().to(device)
    gmacs = count_gmacs(six_eager, torch.rand(1, 3, *shape, device=device))
    torch.manual_seed(0)
    ours_eager = build_model(cfg).eval().to(device)
    rows = []
    for runtime in ("eager fp32", "channels_last fp32"):
        if runtime.startswith("channels_last"):
            six, ours = ChannelsLast(six_eager), ChannelsLast(ours_eager)
        else:
            six, ours = six_eager, ours_eager
        for batch in batches:
            x = torch.rand(batch, 3, *shape, generator=torch.Generator().manual_seed(batch)).to(device)
            warm_up(ours, x, False, device, tta=())
            warm_up(six, x, False, device, tta=())
            t_six, t_ours = [], []
            for _ in range(max(MIN_CALLS, calls)):
                t_ours.append(time_predict(ours, x, 1, (), False, device)[0])
                t_six.append(time_predict(six, x, 1, (), False, device)[0])
            rows.append(
                {
                    "runtime": runtime,
                    "batch": batch,
                    "s_per_image": min(t_six),
                    "median_s_per_image": float(np.median(t_six)),
                    "projected_min": min(t_six) * KAGGLE_TEST_IMAGES / 60,
                    "ours_s_per_image": min(t_ours),
                    "ours_median_s_per_image": float(np.median(t_ours)),
                    "ratio": min(t_six) / min(t_ours),
                    "median_ratio": float(np.median(t_six) / np.median(t_ours)),
                    "gmacs": gmacs,
                }
            )
    return rows


def bench_postprocess(n: int, shape: tuple[int, int], seed: int = 0) -> dict[str, float]:
    """Milliseconds per image: JPEG read + tensor (PredictDataset), post-processing, RLE of the final masks.

    Probabilities are realistic: blurred synthetic defect masks (steel_defect.synthetic) plus noise, with
    class probabilities high where a class is present, post-processed with the notebook's gates and limits.
    """
    from steel_defect.data.dataset import PredictDataset
    from steel_defect.postprocess.apply import postprocess
    from steel_defect.postprocess.params import PostprocessParams
    from steel_defect.rle import masks_to_rles
    from steel_defect.synthetic import render_sample

    rng = np.random.default_rng(seed)
    params = PostprocessParams.notebook_defaults()
    t_read = t_pp = t_rle = 0.0
    nonempty = 0
    with tempfile.TemporaryDirectory(prefix="bench-pp-") as tmp:
        mask_probs, class_probs = [], []
        for i in range(n):
            image, masks = render_sample(seed * 1000 + i, shape)
            cv2.imwrite(
                os.path.join(tmp, f"{i:04d}.jpg"),
                cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 90],
            )
            soft = np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), 3.0) for m in masks])
            soft = np.clip(0.05 + 0.9 * soft + rng.normal(0, 0.05, soft.shape).astype(np.float32), 0, 1)
            mask_probs.append(soft)
            class_probs.append(np.where(masks.reshape(NUM_CLASSES, -1).any(1), 0.9, 0.1).astype(np.float32))
        dataset = PredictDataset(tmp)
        for i in range(n):
            start = time.perf_counter()
            dataset[i]
            t_read += time.perf_counter() - start
            start = time.perf_counter()
            final = postprocess(mask_probs[i], class_probs[i], params)
            t_pp += time.perf_counter() - start
            start = time.perf_counter()
            rles = masks_to_rles(final)
            t_rle += time.perf_counter() - start
            nonempty += sum(bool(r) for r in rles)
    return {
        "read_ms": 1e3 * t_read / n,
        "postprocess_ms": 1e3 * t_pp / n,
        "rle_ms": 1e3 * t_rle / n,
        "nonempty": nonempty,
        "n": n,
    }


# ======================================================================================================
# Report
# ======================================================================================================
def _fmt_min(minutes: float) -> str:
    return f"{minutes:.1f}" if minutes < 1000 else f"{minutes:.0f}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--images", type=int, default=None, help="images timed per row (default: 4 cpu, 64 cuda)"
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--model", default="unet_effb1", help="a conf/model/*.yaml name")
    parser.add_argument(
        "--runtimes", nargs="+", default=None, help="eager channels_last compile onnx bf16 (cuda: + fp16)"
    )
    parser.add_argument(
        "--six-batch", type=int, nargs="+", default=[1], help="batch sizes for the six networks"
    )
    parser.add_argument(
        "--six-calls", type=int, default=3, help="alternating timed calls, six networks vs ours"
    )
    parser.add_argument("--no-six", action="store_true", help="skip the six-network pipeline")
    parser.add_argument("--pp-images", type=int, default=16, help="images for the post-processing/RLE timing")
    parser.add_argument("--height", type=int, default=DEFAULT_SHAPE[0])
    parser.add_argument("--width", type=int, default=DEFAULT_SHAPE[1])
    parser.add_argument("--threads", type=int, default=None, help="torch (and onnxruntime) threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    images = args.images or (64 if device.type == "cuda" else 4)
    runtimes = args.runtimes or (
        ["eager", "fp16", "bf16", "channels_last", "compile", "onnx"]
        if device.type == "cuda"
        else ["eager", "channels_last", "compile", "onnx", "bf16"]
    )
    shape = (args.height, args.width)
    console = Console(width=int(os.environ.get("COLUMNS", 150)))
    cfg = net_config(args.model)

    from steel_defect.models.factory import build_model, count_parameters

    ours = build_model(cfg).eval().to(device)
    gmacs = count_gmacs(ours, torch.rand(1, 3, *shape, device=device))
    params_m = count_parameters(ours) / 1e6
    del ours
    hw = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    load_before = os.getloadavg()
    console.print(
        f"[bold]{args.model}[/bold] ({cfg['arch']} {cfg['encoder_name']}, {params_m:.1f} M params, {gmacs:.1f} GMACs "
        f"per {shape[0]}x{shape[1]} image) on {device} ({hw}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} logical CPUs; load average {load_before[0]:.1f}"
    )

    rows = bench_runtimes(device, runtimes, cfg, args.batch, images, shape, console)
    pp = bench_postprocess(args.pp_images, shape)
    six = [] if args.no_six else bench_six(device, cfg, args.six_batch, args.six_calls, shape)
    load_after = os.getloadavg()

    table = Table(
        title=f"{args.model}: seconds per {shape[0]}x{shape[1]} image ({device}, {torch.get_num_threads()} threads)"
    )
    for col in (
        "runtime",
        "batch",
        "TTA",
        "s/image",
        "(median)",
        "images/s",
        f"min for {KAGGLE_TEST_IMAGES}",
        "notes",
    ):
        table.add_column(col, justify="left" if col in ("runtime", "notes") else "right")
    for r in rows:
        if "error" in r:
            table.add_row(
                r["runtime"],
                str(r.get("batch", "-")),
                "-",
                "-",
                "-",
                "-",
                "-",
                f"[red]{r['error'][:120]}[/red]",
            )
            continue
        table.add_row(
            r["runtime"],
            str(r["batch"]),
            r["tta"],
            f"{r['s_per_image']:.3f}",
            f"{r['median_s_per_image']:.3f}",
            f"{r['images_per_s']:.2f}",
            _fmt_min(r["projected_min"]),
            r["note"],
        )
    console.print(table)

    ok = [r for r in rows if "error" not in r]
    eager = {r["batch"]: r for r in ok if r["runtime"].startswith("eager fp32") and r["tta"] == "-"}
    best = min((r for r in ok if r["tta"] == "-"), key=lambda r: r["s_per_image"], default=None)
    model_s = (eager.get(max(eager)) if eager else best or {}).get("s_per_image")
    rest_s = (pp["read_ms"] + pp["postprocess_ms"] + pp["rle_ms"]) / 1e3
    console.print(
        f"per image besides the network ({pp['n']} synthetic {shape[0]}x{shape[1]} images, notebook post-processing, "
        f"{pp['nonempty']} non-empty masks): JPEG read + tensor {pp['read_ms']:.1f} ms, post-processing "
        f"{pp['postprocess_ms']:.1f} ms, RLE {pp['rle_ms']:.1f} ms"
    )
    if model_s:
        total = model_s + rest_s
        console.print(
            f"share of the end-to-end time per image with eager fp32 (batch {max(eager) if eager else '-'}): network "
            f"{100 * model_s / total:.1f}%, read {100 * pp['read_ms'] / 1e3 / total:.1f}%, post-processing "
            f"{100 * pp['postprocess_ms'] / 1e3 / total:.1f}%, RLE {100 * pp['rle_ms'] / 1e3 / total:.1f}%"
        )
    if best is not None:
        total_min = (best["s_per_image"] + rest_s) * KAGGLE_TEST_IMAGES / 60
        verdict = "meets" if total_min < GOAL_MIN else "misses"
        console.print(
            f"fastest no-TTA row: {best['runtime']} batch {best['batch']}: {best['s_per_image']:.3f} s/image; end to end "
            f"(+ read, post-processing, RLE) {total_min:.1f} min for {KAGGLE_TEST_IMAGES} images: {verdict} the "
            f"{GOAL_MIN:.0f}-minute goal (Kaggle limit {KAGGLE_LIMIT_MIN:.0f} min)"
        )

    if six:
        six_table = Table(
            title="the original notebook's six networks in PyTorch (random weights, no TTA) vs ours, timed alternately"
        )
        for col in (
            "runtime",
            "batch",
            "six s/image",
            "(median)",
            f"six min for {KAGGLE_TEST_IMAGES}",
            "ours s/image",
            "(median)",
            "speed-up",
            "(of medians)",
        ):
            six_table.add_column(col, justify="left" if col == "runtime" else "right")
        for r in six:
            six_table.add_row(
                r["runtime"],
                str(r["batch"]),
                f"{r['s_per_image']:.3f}",
                f"{r['median_s_per_image']:.3f}",
                _fmt_min(r["projected_min"]),
                f"{r['ours_s_per_image']:.3f}",
                f"{r['ours_median_s_per_image']:.3f}",
                f"{r['ratio']:.2f}x",
                f"{r['median_ratio']:.2f}x",
            )
        console.print(six_table)
        console.print(
            f"GMACs per image: six networks {six[0]['gmacs']:.1f}, ours {gmacs:.1f} (FLOP ratio "
            f"{six[0]['gmacs'] / gmacs:.2f}x; goal: a speed-up >= {GOAL_RATIO:.0f}x)"
        )
        if best is not None:
            console.print(
                f"the six networks as the notebook ran them (eager, batch {six[0]['batch']}) / our fastest no-TTA row "
                f"({best['runtime']}, batch {best['batch']}): {six[0]['s_per_image'] / best['s_per_image']:.2f}x"
            )
    console.print(
        f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (other processes share the machine)"
    )
    result = {
        "model": args.model,
        "net": cfg,
        "device": str(device),
        "hardware": hw,
        "threads": torch.get_num_threads(),
        "gmacs": gmacs,
        "params_m": params_m,
        "rows": rows,
        "postprocess": pp,
        "six": six,
        "load_average": [load_before[0], load_after[0]],
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
