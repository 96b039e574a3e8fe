"""L1 + L4: the weights an exported ONNX model really runs are fingerprinted (tampered weights no longer pass
for the original under the metadata's claimed fingerprint), and hostile .onnx files are refused with a
ValueError naming the file, by the torch-free OrtModel and by the service at start."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")

from steel_defect.inference.onnx_model import METADATA_KEY, weights_fingerprint  # noqa: E402
from tests.conftest import REPO, TINY_NET  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An exported tiny model, a copy with every float weight multiplied by -3 (metadata untouched: it
    still claims the source fingerprint), one with metadata nested 100,000 deep and a text file."""
    from onnx import numpy_helper

    from steel_defect.deploy.onnx_export import export_onnx
    from steel_defect.models.factory import build_model

    root = tmp_path_factory.mktemp("integrity")
    torch.manual_seed(0)
    net = build_model(dict(TINY_NET)).eval()
    good = export_onnx(
        net, root / "good.onnx", height=64, width=128, meta={"fingerprint": "claimed0123"}, verify=False
    )
    proto = onnx.load(str(good))
    for t in proto.graph.initializer:
        array = numpy_helper.to_array(t)
        if array.dtype.kind == "f":
            t.CopyFrom(numpy_helper.from_array((array * -3).astype(array.dtype), t.name))
    tampered = root / "tampered.onnx"
    onnx.save(proto, str(tampered))
    deep = onnx.load(str(good))
    for prop in deep.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = "[" * 100_000 + "]" * 100_000
    nested = root / "nested.onnx"
    onnx.save(deep, str(nested))
    text = root / "text.onnx"
    text.write_text("this is not a model\n" * 50)
    return {"good": good, "tampered": tampered, "nested": nested, "text": text}


@pytest.mark.slow
def test_the_fingerprint_is_of_the_weights_actually_loaded(models):
    from steel_defect.deploy.serve.app import describe
    from steel_defect.inference.onnx_model import OrtModel
    from steel_defect.inference.predictor import Predictor

    good, tampered = OrtModel(models["good"]), OrtModel(models["tampered"])
    assert good.inner["fingerprint"] == tampered.inner["fingerprint"] == "claimed0123"  # the claim
    assert good.weights_fingerprint and tampered.weights_fingerprint != good.weights_fingerprint
    assert good.weights_fingerprint == weights_fingerprint(models["good"])
    x = np.random.default_rng(0).random((1, 3, 64, 128), dtype=np.float32)
    assert not np.allclose(good(x)[1], tampered(x)[1])  # it really predicts something else
    # the service reports both: what thresholds are bound to (the claim) and what runs
    a = describe(Predictor.load(models["good"], thresholds="raw", device="cpu"), "onnx")
    b = describe(Predictor.load(models["tampered"], thresholds="raw", device="cpu"), "onnx")
    assert a["fingerprints"] == b["fingerprints"] == ["claimed0123"]
    assert a["weights_fingerprints"] == [good.weights_fingerprint]
    assert b["weights_fingerprints"] == [tampered.weights_fingerprint]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["nested", "text"])
def test_a_hostile_onnx_file_is_a_value_error_naming_it(models, which):
    from steel_defect.inference.onnx_model import OrtModel, parse_metadata

    path = models[which]
    with pytest.raises(ValueError, match=path.name):
        OrtModel(path)
    if which == "nested":
        with pytest.raises(ValueError, match="nested too deeply"):
            parse_metadata(path, {METADATA_KEY: "[" * 100_000 + "]" * 100_000})
    with pytest.raises(ValueError, match=path.name):
        weights_fingerprint(path.read_bytes() if which == "text" else b"\x08\x07garbage", path)


@pytest.mark.slow
def test_the_service_refuses_a_hostile_onnx_at_start_with_its_name(models):
    proc = subprocess.run(
        [sys.executable, "-m", "steel_defect.serve", f"ckpt={models['text']}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "text.onnx" in proc.stderr
    assert "Traceback" not in proc.stderr
