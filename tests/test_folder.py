"""The plant's own layout (images/ + class-index masks/), with other class counts and image sizes than
Severstal's: read, refused when wrong, batched, trained, tuned, tested and predicted end to end."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from steel_defect.data.annotations import AnnotationError, rle_columns
from steel_defect.data.folder import load_folder_annotations
from steel_defect.rle import rle_decode
from tests.conftest import TINY_NET
from tests.helpers import compose_train

# Not Severstal's 256x1600, and not one size: every image is predicted and evaluated at its own size.
SIZES = ((96, 160), (64, 224), (96, 160), (80, 128))


def make_folder(
    root: Path, num_classes: int, n: int = 12, seed: int = 0, sizes=SIZES
) -> dict[str, np.ndarray]:
    """``root/images/*.png`` + ``root/masks/*.png``: a bright rectangle per present class, class k drawn with
    grey level 40 * k so that the classes are learnable. Returns image name -> class-index mask."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    out = {}
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        image = rng.integers(90, 110, size=(h, w), dtype=np.uint8)
        index = np.zeros((h, w), np.uint8)
        for k in range(1, num_classes + 1):
            if (i + k) % 3 == 0:
                y, x = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 30))
                index[y : y + 16, x : x + 24] = k
                image[y : y + 16, x : x + 24] = min(255, 110 + 20 * k)
        name = f"img{i:02d}.png"
        cv2.imwrite(str(root / "images" / name), image)
        cv2.imwrite(str(root / "masks" / f"img{i:02d}.png"), index)
        out[name] = index
    return out


@pytest.mark.parametrize("num_classes", [2, 6])
def test_folder_annotations_are_the_masks_exactly(tmp_path, num_classes):
    truth = make_folder(tmp_path, num_classes)
    df = load_folder_annotations(tmp_path, num_classes)
    assert list(df["ImageId"]) == sorted(truth)
    assert [c for c in df.columns if c.startswith("EncodedPixels_")] == rle_columns(num_classes)
    for row in df.itertuples(index=False):
        index = truth[row.ImageId]
        assert (row.height, row.width) == index.shape
        for k in range(1, num_classes + 1):
            decoded = rle_decode(getattr(row, f"EncodedPixels_{k}"), index.shape)
            assert np.array_equal(decoded.astype(bool), index == k), (row.ImageId, k)
            assert getattr(row, f"has_defect_{k}") == int((index == k).any())


def _break(root: Path, what: str) -> str:
    """Damage a good folder data set in one way; returns the file name the error must name."""
    if what == "size":
        cv2.imwrite(str(root / "masks" / "img03.png"), np.zeros((10, 10), np.uint8))
        return "img03.png"
    if what == "class":
        mask = cv2.imread(str(root / "masks" / "img05.png"), cv2.IMREAD_UNCHANGED)
        mask[0, 0] = 3
        cv2.imwrite(str(root / "masks" / "img05.png"), mask)
        return "img05.png"
    if what == "missing":
        (root / "masks" / "img07.png").unlink()
        return "img07.png"
    if what == "orphan":
        cv2.imwrite(str(root / "masks" / "stray.png"), np.zeros((8, 8), np.uint8))
        return "stray.png"
    if what == "rgb":
        cv2.imwrite(str(root / "masks" / "img02.png"), np.zeros((96, 160, 3), np.uint8))
        return "img02.png"
    raise ValueError(what)


@pytest.mark.parametrize(
    ("what", "needle"),
    [
        ("size", "mask is 10x10, its image 80x128"),
        ("class", "pixel value 3 is above the 2 classes configured"),
        ("missing", "no mask"),
        ("orphan", "a mask without an image"),
        ("rgb", "8-bit single-channel"),
    ],
)
def test_bad_folder_data_is_refused_naming_the_file(tmp_path, what, needle):
    make_folder(tmp_path, 2)
    name = _break(tmp_path, what)
    with pytest.raises(AnnotationError, match=needle) as err:
        load_folder_annotations(tmp_path, 2)
    assert name in str(err.value)


def test_an_image_without_a_mask_is_defect_free_only_when_configured(tmp_path):
    make_folder(tmp_path, 2)
    (tmp_path / "masks" / "img07.png").unlink()
    df = load_folder_annotations(tmp_path, 2, missing_mask="empty").set_index("ImageId")
    assert df.loc["img07.png", ["EncodedPixels_1", "EncodedPixels_2"]].tolist() == ["", ""]
    assert df.loc["img07.png", "has_defect"] == 0
    with pytest.raises(ValueError, match="missing_mask='maybe'; choose one of: error, empty"):
        load_folder_annotations(tmp_path, 2, missing_mask="maybe")


def test_datamodule_crops_mixed_sizes_for_training_and_evaluates_each_at_its_size(tmp_path):
    from steel_defect.data.datamodule import SteelDataModule

    truth = make_folder(tmp_path / "plant", 6, n=16)
    dm = SteelDataModule(
        root=str(tmp_path / "plant"),
        layout="folder",
        classes=["pit", "scratch", "scale", "roll", "hole", "edge"],
        shape=None,
        crop_height=72,
        crop_width=144,  # wider than two of the image sizes: zero-padded there
        batch_size=4,
        val_batch_size=3,
        num_workers=0,
        split={"kind": "notebook", "test_size": 0.25, "val_size": 0.3, "seed": 1},
    )
    dm.setup("fit")
    dm.setup("test")
    assert dm.num_classes == 6
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 72, 144) and batch["mask"].shape == (4, 6, 72, 144)
    seen = []
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            assert len({tuple(batch["image"].shape[-2:])}) == 1 and len(batch["image_id"]) <= 3
            for image_id, mask in zip(batch["image_id"], batch["mask"], strict=True):
                index = truth[image_id]
                expected = np.stack([index == k for k in range(1, 7)])
                assert np.array_equal(mask.numpy() > 0.5, expected), image_id
                seen.append(image_id)
    assert len(seen) == len(set(seen)) == len(dm._part("val")) + len(dm._part("test"))


def test_folder_datamodule_refuses_what_it_cannot_batch_or_name(tmp_path):
    from steel_defect.data.datamodule import SteelDataModule

    make_folder(tmp_path / "plant", 2)
    common = {"root": str(tmp_path / "plant"), "layout": "folder", "num_workers": 0}
    with pytest.raises(ValueError, match="set data.crop_height and data.crop_width"):
        SteelDataModule(**common, classes=["a", "b"], crop_width=64)
    with pytest.raises(ValueError, match="distinct non-empty class names"):
        SteelDataModule(**common, classes=["a", "a"], crop_height=64, crop_width=64)
    with pytest.raises(ValueError, match="data.layout='coco'; choose one of: kaggle, folder"):
        SteelDataModule(**{**common, "layout": "coco"}, classes=["a"])
    dm = SteelDataModule(**common, classes=["a", "b"], shape=[96, 160], crop_width=64)
    with pytest.raises(ValueError, match=r"img01.png is 64x224 but data.shape is 96x160"):
        dm.setup("fit")


def test_data_folder_requires_its_root_and_classes(tmp_path):
    from steel_defect.training.instantiate import validate_config

    for overrides, needle in (
        (["data=folder"], r"data=folder needs data.root=DIR and data.classes=\[name,...\]"),
        (["data=folder", f"data.root={tmp_path}"], r"data=folder needs data.classes="),
        (["data=severstal"], r"data=severstal needs data.root=DIR \(DIR holds train.csv"),
    ):
        cfg = compose_train(overrides, tmp_path)
        with pytest.raises(ValueError, match=needle):
            validate_config(cfg)


def test_size_batches_survive_lightnings_distributed_sampler(tmp_path):
    """Under DDP Lightning re-creates the evaluation batch sampler around a DistributedSampler: every
    process then gets its own images, still batched one size at a time."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DistributedSampler

    from steel_defect.data.datamodule import SteelDataModule

    make_folder(tmp_path / "plant", 2, n=16)
    dm = SteelDataModule(
        root=str(tmp_path / "plant"),
        layout="folder",
        classes=["a", "b"],
        crop_height=64,
        crop_width=64,
        val_batch_size=3,
        num_workers=0,
        split={"kind": "kfold", "n_splits": 2, "fold": 0, "seed": 0},
    )
    dm.setup("validate")
    with _replace_dunder_methods(BatchSampler):
        loader = dm.val_dataloader()
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=False)
        for batch in _update_dataloader(loader, sampler):
            assert len({tuple(batch["image"].shape[-2:])}) == 1 and len(batch["image_id"]) <= 3
            seen += batch["image_id"]
    assert sorted(seen) == sorted(dm.val_dataset.image_ids)


def test_module_follows_the_class_names_and_refuses_a_mismatch():
    from steel_defect.models import SteelDefectModule

    net = {**TINY_NET, "classes": None, "image_head": True}
    module = SteelDefectModule(net=net, class_names=["a", "b", "c", "d", "e", "f"])
    masks, classes, image = module(torch.rand(1, 3, 64, 96))
    assert masks.shape == (1, 6, 64, 96) and classes.shape == (1, 6) and image.shape == (1,)
    # the notebook's Severstal area limits are not used for other classes
    assert module.pp_params.num_classes == 6 and module.pp_params.min_area == [None] * 6
    with pytest.raises(ValueError, match=r"model.net.classes=4 but there are 2 class names"):
        SteelDefectModule(net={**net, "classes": 4}, class_names=["a", "b"])


@pytest.mark.slow
def test_train_tune_test_and_predict_two_classes_of_mixed_sizes(tmp_path):
    """`python train.py data=folder data.classes=[pit,scratch]` on images of several non-Severstal sizes:
    the checkpoint, the thresholds, the held-out table and predict.py all carry two named classes."""
    from steel_defect.deploy.serve.result import overlay_png, prediction_json
    from steel_defect.inference.predictor import Predictor
    from train import train

    truth = make_folder(tmp_path / "plant", 2, n=20)
    cfg = compose_train(
        [
            "model=tiny",
            "data=folder",
            f"data.root={tmp_path / 'plant'}",
            "data.classes=[pit,scratch]",
            "data.crop_height=64",
            "data.crop_width=96",
            "data.batch_size=4",
            "data.val_batch_size=2",
            "data.num_workers=0",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.num_sanity_val_steps=0",
            "trainer.log_every_n_steps=1",
            "~callbacks.rich_progress_bar",
            "~callbacks.early_stopping",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    for key in ("test/dice_raw_2", "test/dice_default_2", "test/dice_tuned_2"):
        assert 0.0 <= float(metrics[key]) <= 1.0, key
    assert "test/dice_raw_3" not in metrics
    ckpt_dir = tmp_path / "run" / "checkpoints"
    doc = yaml.safe_load((ckpt_dir / "thresholds.yaml").read_text())
    assert len(doc["params"]["t_pix"]) == 2 and [r["class"] for r in doc["report"]["classes"]] == [1, 2]
    best = Path(doc["meta"]["checkpoints"][0])
    meta = torch.load(best, map_location="cpu", weights_only=True)["steel_defect"]
    assert meta["classes"] == ["pit", "scratch"] and meta["net"]["classes"] == 2
    predictor = Predictor.load(best)
    assert predictor.classes == ["pit", "scratch"] and predictor.params.num_classes == 2
    names = ["img00.png", "img01.png"]  # 96x160 and 64x224: each at its own size
    images = [cv2.imread(str(tmp_path / "plant" / "images" / n), cv2.IMREAD_COLOR) for n in names]
    # predict.py task=tune on the same images (mixed sizes, labels converted to a csv) re-tunes 2 classes
    from steel_defect.data.convert import folder_to_kaggle
    from steel_defect.tasks.dispatch import run

    folder_to_kaggle(tmp_path / "plant", tmp_path / "labels.csv", num_classes=2)
    result = run(
        {
            "task": "tune",
            "ckpt": str(best),
            "data": {
                "images": str(tmp_path / "plant" / "images"),
                "labels": str(tmp_path / "labels.csv"),
                "split": str(tmp_path / "run" / "split.json"),
            },
        }
    )
    assert len(yaml.safe_load(Path(result["thresholds"]).read_text())["params"]["t_pix"]) == 2
    for name, image, result in zip(names, images, predictor.predict(images, names), strict=True):
        assert result.masks.shape == (2, *truth[name].shape) and len(result.rles) == 2
        # what the service answers: the two named classes at the image's own size, and a drawable overlay
        doc = prediction_json(result, predictor.classes, {}, {})
        assert [c["name"] for c in doc["classes"]] == ["pit", "scratch"]
        assert (doc["image"]["height"], doc["image"]["width"]) == truth[name].shape
        overlay = cv2.imdecode(
            np.frombuffer(base64.b64decode(overlay_png(image, result, predictor.classes)), np.uint8), 1
        )
        assert overlay.shape[1] >= truth[name].shape[1]
