"""The torch-free ONNX path: the same submission as the torch Predictor, and no torch import at all."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from tests.conftest import REPO, TINY_NET  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny 3-class net with an image head, exported with a dynamic width, and a folder of test images
    of two sizes (one width not a multiple of the stride) plus a corrupt file."""
    from steel_defect.deploy.onnx_export import export_onnx
    from steel_defect.models.factory import build_model

    root = tmp_path_factory.mktemp("ort")
    torch.manual_seed(0)
    net = build_model({**TINY_NET, "image_head": True, "classes": 3}).eval()
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


@pytest.mark.slow
@pytest.mark.parametrize("tta", [[], ["hflip", "vflip"]])
def test_same_submission_as_the_torch_predictor(exported, tmp_path, tta):
    from steel_defect.inference.folder import predict_images
    from steel_defect.inference.ort_predictor import OrtPredictor
    from steel_defect.inference.predictor import Predictor

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
    from steel_defect.inference.ort_predictor import probabilities
    from steel_defect.inference.predictor import predict_batch

    x = cv2.cvtColor(cv2.imread(str(images / "t1.png")), cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[
        None
    ] / np.float32(255)
    a = probabilities(ort.models, x.astype(np.float32), tta)
    b = predict_batch(reference.nets, torch.from_numpy(x.astype(np.float32)), tta=tta)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v.numpy(), atol=1e-6)


@pytest.mark.slow
def test_thresholds_bound_to_the_source_weights_and_tta(exported, tmp_path):
    import yaml

    from steel_defect.inference.ort_predictor import OrtPredictor
    from steel_defect.postprocess.params import PostprocessParams, save_thresholds

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


@pytest.mark.slow
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
from steel_defect.inference.ort_predictor import OrtPredictor
p = OrtPredictor.load([{str(onnx)!r}], thresholds='defaults')
s = p.predict_folder({str(images)!r}, {str(tmp_path / "sub.csv")!r})
print(s['images'], sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "6 []"
    assert (tmp_path / "sub.csv").read_text().count("\n") == 1 + 6 * 3


@pytest.mark.slow
def test_tuned_thresholds_agree_to_a_float_ulp(exported, tmp_path):
    """At a threshold other than 0.5 numpy's and torch's sigmoids (1 ulp apart) may split a pixel: the
    masks still agree on all but a 1e-4 share of pixels."""
    from steel_defect.inference.ort_predictor import OrtPredictor
    from steel_defect.inference.predictor import Predictor
    from steel_defect.postprocess.apply import postprocess
    from steel_defect.postprocess.params import PostprocessParams

    onnx, images = exported
    params = PostprocessParams.disabled(3)
    params.t_pix = [0.47, 0.52, 0.5]
    ort = OrtPredictor.load([onnx], thresholds="raw")
    ort.params = params
    reference = Predictor.load(onnx, thresholds="raw", runtime="onnx", device="cpu")
    x = np.stack([cv2.cvtColor(cv2.imread(str(images / f"t{i}.png")), cv2.COLOR_BGR2RGB) for i in (0, 2)])
    ours = np.stack([p.masks for p in ort.predict(list(x))])
    mp, cp, ip = reference.probabilities(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    theirs = postprocess(mp.numpy(), cp.numpy(), params, image_probs=ip.numpy())
    assert ours.any() and (ours != theirs).mean() < 1e-4


@pytest.mark.slow
def test_export_without_class_names_loads_like_the_torch_path(tmp_path):
    from steel_defect.deploy.onnx_export import export_onnx
    from steel_defect.inference.ort_predictor import OrtPredictor
    from steel_defect.inference.predictor import Predictor
    from steel_defect.models.factory import build_model

    net = build_model({**TINY_NET, "classes": 3}).eval()
    path = export_onnx(net, tmp_path / "bare.onnx", height=64, width=128, meta=None)
    assert (
        OrtPredictor.load([path]).classes == Predictor.load(path, runtime="onnx").classes == ["1", "2", "3"]
    )


@pytest.mark.slow
def test_images_are_read_a_bounded_number_ahead(exported, monkeypatch):
    import steel_defect.inference.ort_predictor as mod

    onnx, images = exported
    calls = []
    real = mod.read_image
    monkeypatch.setattr(mod, "read_image", lambda p: calls.append(p) or real(p))
    paths = sorted(images.glob("t[0-4].png")) * 20  # 100 reads
    reader = mod.OrtPredictor.load([onnx], thresholds="raw")._read(paths, workers=2, ahead=3)
    next(reader)
    import time

    time.sleep(0.3)  # let the workers run as far as they may
    assert len(calls) <= 5, len(calls)
    assert sum(1 for _ in reader) == 99


@pytest.mark.slow
def test_a_model_of_another_height_names_the_images(exported, tmp_path):
    from steel_defect.inference.ort_predictor import OrtPredictor

    onnx, _ = exported
    folder = tmp_path / "tall"
    folder.mkdir()
    cv2.imwrite(str(folder / "tall.png"), np.zeros((100, 128, 3), np.uint8))
    with pytest.raises(ValueError, match=r"tall.png: .*exported for height 64, got images 128 high"):
        OrtPredictor.load([onnx], thresholds="raw").predict_folder(folder, tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()
