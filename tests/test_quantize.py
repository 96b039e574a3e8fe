"""int8 post-training quantisation (task=quantize, runtime=int8) on a tiny net and tiny images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from steel_defect.deploy.onnx_export import export_onnx
from steel_defect.deploy.quantize import calibration_crops, quantize_onnx
from steel_defect.inference.onnx_net import OnnxNet
from tests.conftest import TINY_NET  # noqa: E402

H = 64


def _images(folder: Path, n: int = 6, widths=(192, 160)) -> list[Path]:
    """Grey steel-like images: noise plus a few bright streaks (what the calibration sees)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        w = widths[i % len(widths)]
        image = rng.normal(110, 12, size=(H, w)).clip(0, 255).astype(np.uint8)
        image[:, int(rng.integers(0, w - 8)) :][:, :6] = 200
        path = folder / f"s{i}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, torch.nn.Module, list[Path]]:
    """A tiny net whose batch-norm statistics were set on the images (so activations are in a sane range,
    as in a trained net), exported with a dynamic width."""
    from steel_defect.models.factory import build_model

    root = tmp_path_factory.mktemp("quant")
    images = _images(root / "images", n=8)
    torch.manual_seed(0)
    net = build_model({**TINY_NET, "image_head": True, "classes": 2})
    batch = torch.stack(
        [torch.from_numpy(cv2.imread(str(p))[:, :160]).permute(2, 0, 1).float() / 255 for p in images]
    )
    net.train()
    with torch.no_grad():
        for _ in range(20):
            net(batch)
    net.eval()
    path = export_onnx(
        net, root / "model.onnx", height=H, width=128, dynamic_width=True, meta={"classes": ["a", "b"]}
    )
    return path, net, images


@pytest.mark.slow
def test_int8_model_keeps_its_metadata_and_stays_close_to_fp32(exported, tmp_path):
    src, net, images = exported
    out = quantize_onnx(src, tmp_path / "m.int8.onnx", images, crops=8, crop_width=96)
    fp32, int8 = OnnxNet(src), OnnxNet(out)
    assert int8.meta["quantization"]["calibration"] == {
        "crops": 8,
        "crop_width": 96,
        "height": H,
        "seed": 0,
        "images": len(images),
    }
    assert int8.meta["meta"] == fp32.meta["meta"] and int8.width is None  # still any width
    x = torch.stack(
        [torch.from_numpy(cv2.imread(str(p))[:, :192]).permute(2, 0, 1).float() / 255 for p in images[::2]]
    )
    gaps = [(a.sigmoid() - b.sigmoid()).abs() for a, b in zip(fp32(x), int8(x), strict=True)]
    assert float(gaps[0].mean()) < 0.02 and float(gaps[1].max()) < 0.1, [float(g.max()) for g in gaps]
    assert out.stat().st_size < 0.5 * src.stat().st_size  # int8 weights


@pytest.mark.slow
def test_runtime_int8_loads_only_quantised_models(exported, tmp_path):
    from steel_defect.inference.predictor import load_nets

    src, _, images = exported
    with pytest.raises(ValueError, match="is an fp32 export; quantise it first"):
        load_nets([src], "cpu", "int8")
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    with pytest.raises(ValueError, match="runtime=int8 runs an int8 ONNX model, not the checkpoint"):
        load_nets([ckpt], "cpu", "int8")
    out = quantize_onnx(src, tmp_path / "m.int8.onnx", images, crops=16, crop_width=64)
    (net,), (meta,) = load_nets([out], "cpu", "int8")
    assert meta["classes"] == ["a", "b"] and net.meta["quantization"]
    with pytest.raises(ValueError, match="already quantised"):
        quantize_onnx(out, tmp_path / "again.onnx", images, crops=4, crop_width=64)


@pytest.mark.slow
def test_task_quantize_writes_beside_the_model_and_refuses_bad_input(exported, tmp_path):
    from steel_defect.tasks.dispatch import run

    src, _, images = exported
    local = tmp_path / "model.onnx"
    local.write_bytes(src.read_bytes())
    result = run(
        {
            "task": "quantize",
            "ckpt": str(local),
            "data": {"images": str(images[0].parent)},
            "quantize": {"crops": 4, "crop_width": 64},
        }
    )
    assert result["onnx"] == str(tmp_path / "model.int8.onnx") and Path(result["onnx"]).is_file()
    with pytest.raises(ValueError, match="quantize.crop_width must be a positive multiple of 32"):
        quantize_onnx(src, tmp_path / "x.onnx", images, crops=4, crop_width=100)
    with pytest.raises(ValueError, match=r"takes an exported ONNX model .*task=export"):
        quantize_onnx(tmp_path / "model.ckpt", tmp_path / "x.onnx", images)
    assert not (tmp_path / "x.onnx").exists()


def test_calibration_crops_are_seeded_padded_and_check_the_height(tmp_path):
    images = _images(tmp_path / "a", n=3, widths=(80, 200))
    first = list(calibration_crops(images, 5, H, 128, seed=3))
    again = list(calibration_crops(images, 5, H, 128, seed=3))
    assert len(first) == 5 and all(c.shape == (1, 3, H, 128) and c.dtype == np.float32 for c in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(0.0 <= c.min() and c.max() <= 1.0 for c in first)
    with pytest.raises(ValueError, match="needs at least 4 calibration images"):
        list(calibration_crops(images, 7, H, 128))
    tall = tmp_path / "a" / "tall.png"
    cv2.imwrite(str(tall), np.zeros((H + 8, 100), np.uint8))
    with pytest.raises(ValueError, match=r"tall.png is 72 pixels high; the model takes 64"):
        list(calibration_crops([tall], 1, H, 64))


@pytest.mark.slow
def test_every_calibration_crop_counts(exported, tmp_path):
    """One bright image among dim ones, used by the FIRST crop only: its range must reach the model's
    first activation scale (onnxruntime's CalibMaxIntermediateOutputs once dropped all but the last crops)."""
    import onnx
    from onnx import numpy_helper

    src, _, images = exported
    images = [Path(tmp_path / p.name) for p in images]
    for p, q in zip(exported[2], images, strict=True):
        q.write_bytes(p.read_bytes())
    rng = np.random.default_rng(0)
    first, second = rng.permutation(len(images)), rng.permutation(len(images))
    bright = int(first[0])
    assert bright != int(second[-1]), "the bright image must not also be the last crop"

    def first_scale(path: Path) -> float:
        model = onnx.load(str(path))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        quant = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
        return float(inits[quant.input[1]])

    dim = first_scale(quantize_onnx(src, tmp_path / "dim.onnx", images, crops=16, crop_width=64))
    w = cv2.imread(str(images[bright])).shape[1]
    cv2.imwrite(str(images[bright]), np.full((H, w), 255, np.uint8))
    lit = first_scale(quantize_onnx(src, tmp_path / "lit.onnx", images, crops=16, crop_width=64))
    assert lit > 1.2 * dim, (dim, lit)
