"""ONE predictor interface: the torch Predictor and the torch-free OrtPredictor both implement
:class:`~steel_defect.inference.engine.Inferencer`, come from one factory, and give the same masks and the same
submission (through the one folder loop) on a tiny model with robust thresholds."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from tests.conftest import TINY_NET  # noqa: E402
from tests.helpers import separated_thresholds  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny 4-class net with an image head exported with a dynamic width, images plus a corrupt file, and
    thresholds in gaps of its probabilities (on images of one size: the helper stacks them)."""
    from steel_defect.deploy.onnx_export import export_onnx
    from steel_defect.models.factory import build_model

    root = tmp_path_factory.mktemp("engine")
    torch.manual_seed(0)
    net = build_model({**TINY_NET, "image_head": True}).eval()
    onnx = export_onnx(
        net, root / "model.onnx", height=64, width=128, dynamic_width=True, meta={"fingerprint": "abc"}
    )
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i, w in enumerate((128, 128, 128, 128)):
        cv2.imwrite(str(images / f"e{i}.png"), rng.integers(0, 255, (64, w, 3), dtype=np.uint8))
    thresholds = separated_thresholds(net, images, root / "thresholds.yaml", ["hflip"])
    (images / "e9_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return onnx, images, thresholds


def _both(onnx, thresholds):
    from steel_defect.inference.engine import load_predictor

    kw = dict(thresholds=str(thresholds), tta=["hflip"], device="cpu", check_thresholds=False)
    return [load_predictor(onnx, engine=e, runtime="onnx", **kw) for e in ("torch", "onnxruntime")]


@pytest.mark.slow
def test_both_engines_implement_the_interface_and_agree(model, tmp_path):
    from steel_defect.inference.engine import ENGINES, ImagePrediction, Inferencer
    from steel_defect.inference.folder import predict_images

    onnx, images, thresholds = model
    predictors = _both(onnx, thresholds)
    assert [p.engine for p in predictors] == list(ENGINES)
    for p in predictors:
        assert isinstance(p, Inferencer)
        assert p.classes == ["1", "2", "3", "4"] and p.num_classes == 4 and p.stride == 32
        assert [c.name for c in p.ckpts] == ["model.onnx"] and p.fingerprints() == ["abc"]
        assert p.weights_fingerprints()[0] and p.tta == ("hflip",)
    pics = [cv2.cvtColor(cv2.imread(str(images / f"e{i}.png")), cv2.COLOR_BGR2RGB) for i in range(4)]
    torch_preds, ort_preds = (p.predict(pics, [f"e{i}" for i in range(4)]) for p in predictors)
    for a, b in zip(torch_preds, ort_preds, strict=True):
        assert isinstance(a, ImagePrediction) and isinstance(b, ImagePrediction)
        assert a.image_id == b.image_id and a.masks.shape == b.masks.shape == (
            4,
            *pics[int(a.image_id[1])].shape[:2],
        )
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_allclose(a.class_probs, b.class_probs, atol=1e-5)
        assert a.rles == b.rles
    assert any(p.masks.any() for p in ort_preds)
    summaries = [
        predict_images(
            p,
            images,
            tmp_path / f"{p.engine}.csv",
            batch_size=3,
            overlays=1,
            overlays_dir=tmp_path / p.engine,
        )
        for p in predictors
    ]
    assert (tmp_path / "torch.csv").read_bytes() == (tmp_path / "onnxruntime.csv").read_bytes()
    for s in summaries:
        assert (
            s["images"] == 5 and s["unreadable"] == ["e9_broken.jpg"] and s["thresholds"] == str(thresholds)
        )
    assert sorted(x.name for x in (tmp_path / "torch").iterdir()) == ["e0.png"]
    overlays = [cv2.imread(str(tmp_path / e / "e0.png")) for e in ("torch", "onnxruntime")]
    np.testing.assert_array_equal(*overlays)


def test_the_factory_refuses_what_an_engine_cannot_run(tmp_path):
    from steel_defect.inference.engine import load_predictor, resolve_engine

    assert resolve_engine("auto") == "torch"  # torch is installed here
    with pytest.raises(ValueError, match="engine"):
        resolve_engine("tensorrt")
    with pytest.raises(ValueError, match="runtime=torch needs engine=torch"):
        load_predictor(tmp_path / "m.ckpt", runtime="torch", engine="onnxruntime")
