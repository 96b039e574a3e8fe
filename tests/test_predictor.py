"""steel_defect.predictor: the Predictor on in-memory images agrees with predict.py, accepts the arrays a
service receives, refuses bad ones, and needs none of the training stack."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from steel_defect.data.dataset import PredictDataset
from steel_defect.data.transforms import build_transforms
from steel_defect.inference.predictor import Predictor, image_tensor
from steel_defect.submission import read_submission
from steel_defect.tasks.dispatch import run
from tests.conftest import REPO
from tests.helpers import config, isolated_ckpt


def test_image_tensor_equals_the_prediction_loader(run_files):
    paths = sorted((run_files["data"] / "test_images").glob("*.jpg"))[:2]
    dataset = PredictDataset([str(p) for p in paths], build_transforms("predict"))
    for k, path in enumerate(paths):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        assert torch.equal(image_tensor(rgb), dataset[k]["image"])
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    t = image_tensor(grey)
    assert t.shape == (3, 3, 4) and torch.equal(t[0], t[2]) and float(t[0, 2, 3]) == pytest.approx(11 / 255)
    rgba = np.dstack([np.full((3, 4, 3), 255, np.uint8), np.zeros((3, 4), np.uint8)])
    assert torch.equal(image_tensor(rgba), torch.ones(3, 3, 4))
    assert torch.equal(image_tensor(np.full((2, 2), 0.5, np.float32)), torch.full((3, 2, 2), 0.5))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 3, 2), np.uint8), "got shape (2, 3, 2)"),
        (np.zeros((0, 5, 3), np.uint8), "got shape (0, 5, 3)"),
        (np.zeros((4,), np.uint8), "got shape (4,)"),
        (np.zeros((2, 2), np.int32), "dtype int32"),
        (np.full((2, 2), 2.0, np.float32), "[0, 1]"),
    ],
)
def test_image_tensor_refuses_what_is_not_an_image(array, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        image_tensor(array)


@pytest.mark.slow
def test_predictor_on_in_memory_images_equals_predict_py(run_files, tmp_path):
    """Same masks as the CLI, for several sizes in one call, in the order given, with an ensemble and TTA."""
    folder = run_files["data"] / "test_images"
    paths = sorted(folder.glob("*.jpg"))
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    odd = cv2.resize(images[1], (200, 80))  # another size, not a multiple of 32
    ckpts = [str(run_files["a"]), str(run_files["b"])]
    out = tmp_path / "s.csv"
    run(config(ckpt=ckpts, tta=["hflip"], images=str(folder), thresholds="raw", out=str(out)))
    frame = read_submission(out)
    want = {i: g["EncodedPixels"].tolist() for i, g in frame.groupby("ImageId")}

    predictor = Predictor.load(ckpts, thresholds="raw", device="cpu", tta=["hflip"])
    assert predictor.classes == ["1", "2", "3", "4"] and len(predictor.fingerprints()) == 2
    preds = predictor.predict([images[0], odd, *images[1:]], ["first", "odd", *[p.name for p in paths[1:]]])
    assert [p.image_id for p in preds] == ["first", "odd", *[p.name for p in paths[1:]]]
    assert preds[0].rles == want[paths[0].name]
    for pred, path in zip(preds[2:], paths[1:], strict=True):
        assert pred.rles == want[path.name]
    assert preds[1].masks.shape == (4, 80, 200) and preds[1].class_probs.shape == (4,)
    single = predictor.predict([odd])[0]
    assert np.array_equal(single.masks, preds[1].masks)
    assert any(p.masks.any() for p in preds)  # the comparison is not between empty masks


@pytest.mark.slow
def test_predictor_refuses_thresholds_tuned_for_other_weights(run_files, tmp_path):
    import yaml

    ckpt = isolated_ckpt(run_files, tmp_path)
    run(
        config(
            task="tune",
            ckpt=str(ckpt),
            data={"root": str(run_files["data"]), "split": str(run_files["run"] / "split.json")},
        )
    )
    doc = yaml.safe_load((ckpt.parent / "thresholds.yaml").read_text())
    doc["meta"]["fingerprints"] = ["0" * 16]
    (ckpt.parent / "thresholds.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match="tuned for weights"):
        Predictor.load(ckpt, device="cpu")
    assert Predictor.load(ckpt, device="cpu", check_thresholds=False).source.endswith("thresholds.yaml")
    with pytest.raises(ValueError, match="unknown tta"):
        Predictor.load(ckpt, device="cpu", tta=["rot90"], check_thresholds=False)
    with pytest.raises(ValueError, match="2 images but 1 image ids"):
        Predictor.load(ckpt, thresholds="raw", device="cpu").predict(
            [np.zeros((8, 8, 3), np.uint8)] * 2, ["a"]
        )


@pytest.mark.slow
def test_prediction_needs_no_lightning_hydra_or_torchmetrics(run_files, tmp_path):
    """Loading a Predictor, predicting in-memory images and a folder (what predict.py, the kernel and the
    service do) imports none of the training stack."""
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from steel_defect.inference.folder import predict_images\n"
        "from steel_defect.inference.predictor import Predictor\n"
        f"p = Predictor.load([{str(run_files['a'])!r}], thresholds='raw', device='cpu')\n"
        "assert p.predict([np.zeros((64, 96, 3), np.uint8)])[0].masks.shape == (4, 64, 96)\n"
        f"predict_images(p, {str(run_files['data'] / 'test_images')!r}, {str(tmp_path / 's.csv')!r})\n"
        "heavy = ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf', 'torchmetrics')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "s.csv").is_file()
