"""The torch-free ONNX path: the same submission as the torch Predictor, and no torch import at all."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from tests.conftest import REPO  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny 3-class net with an image head, exported with a dynamic width, and a folder of test images
    of two sizes (one width not a multiple of the stride) plus a corrupt file."""
    from steel_defect.export import export_onnx
    from steel_defect.models.factory import build_model

    root = tmp_path_factory.mktemp("ort")
    torch.manual_seed(0)
    net = build_model(
        {"encoder_name": "resnet18", "encoder_weights": None, "image_head": True, "classes": 3}
    ).eval()
    with torch.no_grad():  # a bias that makes some pixels and classes positive: masks are not all empty
        net.model.segmentation_head[0].bias.fill_(0.1)
    onnx = export_onnx(
        net,
        root / "model.onnx",
        height=64,
        width=128,
        dynamic_width=True,
        meta={"classes": ["pit", "scratch", "scale"], "fingerprint": "abc"},
    )
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, w in enumerate((128, 100, 128, 160, 100)):
        cv2.imwrite(str(images / f"t{i}.png"), rng.integers(0, 255, (64, w, 3), dtype=np.uint8))
    (images / "t9_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return onnx, images


@pytest.mark.parametrize("tta", [[], ["hflip", "vflip"]])
def test_same_submission_as_the_torch_predictor(exported, tmp_path, tta):
    from steel_defect.inference import predict_images
    from steel_defect.ort_predictor import OrtPredictor
    from steel_defect.predictor import Predictor

    onnx, images = exported
    ort = OrtPredictor.load([onnx], thresholds="raw", tta=tta)
    ours = ort.predict_folder(images, tmp_path / "ort.csv", batch_size=2, workers=2)
    reference = Predictor.load(onnx, thresholds="raw", runtime="onnx", device="cpu", tta=tta)
    predict_images(reference, images, tmp_path / "torch.csv", batch_size=2)
    assert (tmp_path / "ort.csv").read_text() == (tmp_path / "torch.csv").read_text()
    assert ours["images"] == 6 and ours["unreadable"] == ["t9_broken.jpg"]
    assert sum(ours["nonempty_masks"].values()) > 0 and list(ours["nonempty_masks"]) == [
        "pit",
        "scratch",
        "scale",
    ]
    # and the probabilities themselves, image by image
    from steel_defect.ort_predictor import probabilities
    from steel_defect.predictor import predict_batch

    x = cv2.cvtColor(cv2.imread(str(images / "t1.png")), cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[
        None
    ] / np.float32(255)
    a = probabilities(ort.models, x.astype(np.float32), tta)
    b = predict_batch(reference.nets, torch.from_numpy(x.astype(np.float32)), tta=tta)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v.numpy(), atol=1e-6)


def test_thresholds_bound_to_the_source_weights_and_tta(exported, tmp_path):
    import yaml

    from steel_defect.ort_predictor import OrtPredictor
    from steel_defect.postprocess import PostprocessParams, save_thresholds

    onnx, _ = exported
    local = tmp_path / "model.onnx"
    local.write_bytes(onnx.read_bytes())
    params = PostprocessParams.for_classes(3)
    save_thresholds(params, tmp_path / "thresholds.yaml", meta={"fingerprints": ["other"], "tta": []})
    with pytest.raises(ValueError, match=r"tuned for weights \['other'\].*are \['abc'\]"):
        OrtPredictor.load([local])
    save_thresholds(params, tmp_path / "thresholds.yaml", meta={"fingerprints": ["abc"], "tta": ["hflip"]})
    with pytest.raises(ValueError, match=r"tuned with tta=\['hflip'\], this run uses tta=\[\]"):
        OrtPredictor.load([local])
    assert OrtPredictor.load([local], tta=["hflip"]).source == str(tmp_path / "thresholds.yaml")
    assert yaml.safe_load((tmp_path / "thresholds.yaml").read_text())["meta"]["tta"] == ["hflip"]
    with pytest.raises(ValueError, match="unknown tta"):
        OrtPredictor.load([local], thresholds="raw", tta=["rot90"])


def test_the_onnx_only_path_never_imports_torch(exported, tmp_path):
    """Run in a fresh interpreter where importing torch (or Lightning, Hydra) raises."""
    onnx, images = exported
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'lightning', 'hydra', 'torchmetrics', 'timm', 'segmentation_models_pytorch'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from steel_defect.ort_predictor import OrtPredictor
p = OrtPredictor.load([{str(onnx)!r}], thresholds='defaults')
s = p.predict_folder({str(images)!r}, {str(tmp_path / "sub.csv")!r})
print(s['images'], sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "6 []"
    assert (tmp_path / "sub.csv").read_text().count("\n") == 1 + 6 * 3
