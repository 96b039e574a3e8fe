"""SteelDataModule on a small synthetic set (64x320): loaders, split persistence, oversampling, stages."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from steel_defect.data.datamodule import SteelDataModule, class_frequencies, oversample_weights
from steel_defect.data.splits import load_split, split_parts
from steel_defect.synthetic.datamodule import SyntheticDataModule

SHAPE = [64, 320]
SYNTH = {"n_train": 40, "n_test": 3, "seed": 11}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A synthetic data set generated through the DataModule's own ``prepare_data``."""
    path = tmp_path_factory.mktemp("data") / "synthetic"
    dm = SyntheticDataModule(root=str(path), synthetic=SYNTH, shape=SHAPE, num_workers=0)
    dm.prepare_data()
    assert (path / "train.csv").is_file() and len(list((path / "train_images").glob("*.jpg"))) == 40
    return path


def make(root: Path, **kwargs) -> SteelDataModule:
    defaults = {"shape": SHAPE, "num_workers": 0, "crop_width": 128, "batch_size": 4, "val_batch_size": 2}
    return SteelDataModule(root=str(root), **(defaults | kwargs))


def test_loaders_shapes_dtypes_and_crop(root):
    dm = make(root)
    dm.setup("fit")
    assert [len(dm.split[k]) for k in ("train", "val", "test")] == [28, 8, 4]
    assert len(dm.train_dataset) == 28 and len(dm.val_dataset) == 8
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 128) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 4, 64, 128) and batch["mask"].dtype == torch.float32
    assert batch["labels"].shape == (4, 4) and batch["labels"].dtype == torch.float32
    assert torch.equal(batch["labels"], (batch["mask"].flatten(2).amax(2) > 0).float())
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert len(batch["image_id"]) == 4 and all(isinstance(i, str) for i in batch["image_id"])
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (2, 3, 64, 320) and val["mask"].shape == (2, 4, 64, 320)
    assert val["image_id"] == dm.split["val"][:2]
    assert dm.hparams.crop_width == 128 and dm.hparams.root == str(root)
    # crop_width None (or >= image width) -> full-size training images.
    full = make(root, crop_width=None)
    full.setup("fit")
    assert full.train_dataset[0]["image"].shape == (3, 64, 320)
    wide = make(root, crop_width=1000)
    wide.setup("fit")
    assert wide.train_dataset[0]["image"].shape == (3, 64, 320)


def test_split_saved_and_reloaded(root, tmp_path, caplog):
    split_file = tmp_path / "run" / "split.json"
    dm = make(root, split_file=str(split_file), split={"kind": "notebook", "seed": 5})
    dm.setup("fit")
    assert split_file.is_file()
    assert load_split(split_file) == dm.split
    # A second run with another configured seed re-uses the saved split (and says so).
    again = make(root, split_file=str(split_file), split={"kind": "notebook", "seed": 6})
    with caplog.at_level(logging.WARNING, logger="steel_defect.data.datamodule"):
        again.setup("validate")
    assert again.split == dm.split and "using the file" in caplog.text
    assert [it["image_id"] for it in again.val_dataset] == dm.split["val"]
    assert again.train_dataset is None
    # Without a split file the same configuration gives the same split.
    fresh = make(root, split={"kind": "notebook", "seed": 5})
    fresh.setup("validate")
    assert split_parts(fresh.split) == split_parts(dm.split)


def test_limits_and_the_test_stage(root):
    dm = make(root, limit_train=5, limit_val=3)
    dm.setup("fit")
    assert [it["image_id"] for it in dm.train_dataset] == dm.split["train"][:5]
    assert [it["image_id"] for it in dm.val_dataset] == dm.split["val"][:3]
    dm.setup("test")
    test_batches = list(dm.test_dataloader())
    assert sum(len(b["image_id"]) for b in test_batches) == 4
    # threshold tuning sees the whole validation part, limit_val or not, in split order
    tune_ids = [i for b in dm.tune_dataloader() for i in b["image_id"]]
    assert tune_ids == dm.split["val"] and len(tune_ids) == 8
    assert [i for b in dm.val_dataloader() for i in b["image_id"]] == dm.split["val"][:3]


def test_defect_crops_only_in_training(root):
    """data.defect_crop_p=1: every training crop of a defect image holds a defect, validation is whole."""
    dm = make(root, defect_crop_p=1.0)
    dm.setup("fit")
    train_ids = dm.split["train"]
    has_defect = dm.train_dataset.rles
    for i in range(len(train_ids)):
        item = dm.train_dataset[(i, 7)]
        assert item["image"].shape == (3, 64, 128)
        assert bool(item["labels"].any()) == any(has_defect[i])
    assert dm.val_dataset.defect_crop_p == 0.0 and dm.val_dataset[0]["image"].shape == (3, 64, 320)


def test_kfold_has_no_test_part(root):
    dm = make(root, split={"kind": "kfold", "n_splits": 4, "fold": 1})
    dm.setup("fit")
    assert len(dm.train_dataset) == 30 and len(dm.val_dataset) == 10
    dm.setup("test")
    with pytest.raises(RuntimeError, match="no test part"):
        dm.test_dataloader()


def test_oversampling_draws_rare_classes_more_often(root):
    dm = make(root, oversample={"power": 1.0})
    dm.setup("fit")
    train = dm.annotations.set_index("ImageId").loc[dm.split["train"]].reset_index()
    freq = dm.class_frequencies
    assert freq == class_frequencies(train)
    present = [c for c in range(1, 5) if freq[c] > 0]
    rarest = min(present, key=lambda c: freq[c])
    assert freq[rarest] < 0.5
    sampler = dm.train_sampler()
    assert sampler.weights is not None and len(sampler) == len(train)
    draws = []
    for epoch in range(100):
        sampler.set_epoch(epoch)
        draws.append(np.array([index for index, _ in sampler], dtype=np.int64))
    draws = np.concatenate(draws)
    is_rare = train[f"has_defect_{rarest}"].to_numpy().astype(bool)
    drawn_share = is_rare[draws].mean()
    assert drawn_share > 1.5 * is_rare.mean(), (drawn_share, is_rare.mean())
    # Weights follow the documented rule.
    w = oversample_weights(train, power=0.5)
    i = int(np.flatnonzero(is_rare)[0])
    flags = [c for c in range(1, 5) if train.loc[i, f"has_defect_{c}"]]
    assert w[i] == pytest.approx(max((1 / freq[c]) ** 0.5 for c in flags))
    j = int(np.flatnonzero(train["has_defect"].to_numpy() == 0)[0])
    assert w[j] == pytest.approx((1 / freq[0]) ** 0.5)
    # Without oversampling the training loader shuffles: a permutation per epoch, a different one next epoch.
    plain = make(root)
    plain.setup("fit")
    uniform = plain.train_sampler()
    assert uniform.weights is None
    first = [index for index, _ in uniform]
    assert sorted(first) == list(range(len(train)))
    uniform.set_epoch(1)
    assert [index for index, _ in uniform] != first
    uniform.set_epoch(0)
    assert [index for index, _ in uniform] == first  # a pure function of (seed, epoch)


def test_blackout_only_in_training(root):
    dm = make(root, blackout_p=0.7)
    dm.setup("fit")
    assert dm.train_dataset.blackout_p == 0.7 and dm.val_dataset.blackout_p == 0.0


def test_configuration_errors(root, tmp_path):
    with pytest.raises(ValueError, match="data.root"):
        SteelDataModule()
    with pytest.raises(ValueError, match="data.root"):
        SteelDataModule(root="")
    with pytest.raises(ValueError, match=r"data.augment: unknown keys \['rotate_p'\]"):
        make(root, augment={"rotate_p": 0.5})
    with pytest.raises(ValueError, match="unknown split kind"):
        make(root, split={"kind": "random"})
    with pytest.raises(ValueError, match=r"data.defect_crop_p must be a probability in \[0, 1\], got 2"):
        make(root, defect_crop_p=2)
    missing = make(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="absent"):
        missing.setup("fit")
    with pytest.raises(RuntimeError, match=r"setup\('fit'\)"):
        make(root).train_dataloader()
    other = make(root, shape=[256, 1600])
    other.setup("fit")
    with pytest.raises(ValueError, match="data.shape"):
        other.val_dataset[0]


def test_prepare_data_keeps_a_current_set_and_regenerates_a_stale_one(tmp_path):
    """A set made by another generator version (or other arguments) is regenerated, a current one kept."""
    import json

    from steel_defect.synthetic.dataset import GENERATOR_VERSION, STAMP_NAME

    path = tmp_path / "synthetic"
    synth = {"n_train": 6, "n_test": 1, "seed": 3}
    SyntheticDataModule(root=str(path), synthetic=synth, shape=SHAPE, num_workers=0).prepare_data()
    stamp = json.loads((path / STAMP_NAME).read_text())
    files = stamp.pop("files")
    assert stamp == {**synth, "generator_version": GENERATOR_VERSION, "shape": SHAPE, "class_mix": "real"}
    assert len(files) == 3 + 6 + 1  # the three csvs and every image
    first = sorted(p.stat().st_mtime_ns for p in (path / "train_images").iterdir())
    SyntheticDataModule(root=str(path), synthetic=synth, shape=SHAPE, num_workers=0).prepare_data()
    assert sorted(p.stat().st_mtime_ns for p in (path / "train_images").iterdir()) == first  # kept
    (path / STAMP_NAME).write_text(
        json.dumps({**stamp, "files": files, "generator_version": 1})
    )  # as if v1 had made it
    SyntheticDataModule(root=str(path), synthetic=synth, shape=SHAPE, num_workers=0).prepare_data()
    assert json.loads((path / STAMP_NAME).read_text())["generator_version"] == GENERATOR_VERSION
    assert len(list((path / "train_images").iterdir())) == 6
    bigger = {**synth, "n_train": 8}
    SyntheticDataModule(root=str(path), synthetic=bigger, shape=SHAPE, num_workers=0).prepare_data()
    assert len(list((path / "train_images").iterdir())) == 8
    balanced = {**bigger, "class_mix": "balanced"}
    SyntheticDataModule(root=str(path), synthetic=balanced, shape=SHAPE, num_workers=0).prepare_data()
    assert json.loads((path / STAMP_NAME).read_text())["class_mix"] == "balanced"


def test_only_the_synthetic_module_generates_and_it_refuses_real_data(tmp_path):
    """SteelDataModule (data=severstal / folder) cannot generate; SyntheticDataModule refuses a folder of
    real-looking data before writing a byte, naming it and the fix."""
    assert "prepare_data" not in vars(SteelDataModule)  # Lightning's no-op: nothing written, ever
    with pytest.raises(TypeError, match="synthetic"):
        SteelDataModule(root=str(tmp_path), synthetic={"n_train": 2, "n_test": 0})
    real = tmp_path / "real"
    (real / "train_images").mkdir(parents=True)
    (real / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    (real / "train_images" / "a.jpg").write_bytes(b"not really a jpeg")
    dm = SyntheticDataModule(
        root=str(real), synthetic={"n_train": 2, "n_test": 0}, shape=SHAPE, num_workers=0
    )
    with pytest.raises(FileExistsError, match="data=severstal") as err:
        dm.prepare_data()
    assert str(real) in str(err.value)
    assert (real / "train.csv").read_text() == "ImageId,ClassId,EncodedPixels\n"
    assert (real / "train_images" / "a.jpg").read_bytes() == b"not really a jpeg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real"]


def test_options_are_checked_once_into_typed_groups(root):
    from steel_defect.data.config import CropConfig, LimitConfig, LoaderConfig, OversampleConfig, PseudoConfig

    dm = make(
        root,
        crop_height=32,
        defect_crop_p=0.25,
        augment={"hflip_p": 0.1, "jpeg_p": 0.2},
        blackout_p=0.3,
        oversample={"power": 1.0},
        pseudo_share=0.2,
        limit_train=5,
    )
    c = dm.cfg
    assert c.crop == CropConfig(height=32, width=128, defect_p=0.25)
    assert dict(c.augment.transforms) == {"hflip_p": 0.1, "jpeg_p": 0.2} and c.augment.blackout_p == 0.3
    assert c.oversample == OversampleConfig(power=1.0)
    assert c.pseudo == PseudoConfig(labels=None, images=None, share=0.2)
    assert c.loader == LoaderConfig(
        batch_size=4, val_batch_size=2, num_workers=0, pin_memory=False, persistent_workers=False
    )
    assert c.limits == LimitConfig(train=5, val=None)
    assert c.layout.layout == "kaggle" and c.layout.train_csv == "train.csv"
    assert make(root, oversample={}).cfg.oversample is None
    assert dm.hparams.crop_height == 32 and dm.hparams.augment == {"hflip_p": 0.1, "jpeg_p": 0.2}  # as given


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, r"data.batch_size must be an integer >= 1, got 0"),
        ({"num_workers": -1}, r"data.num_workers must be an integer >= 0"),
        ({"pin_memory": "yes"}, r"data.pin_memory must be true or false"),
        ({"limit_train": 0}, r"data.limit_train must be an integer >= 1 or null, got 0"),
        ({"crop_width": 0}, r"data.crop_width must be an integer >= 1 or null"),
        ({"augment": {"hflip_p": "often"}}, r"data.augment.hflip_p must be a number >= 0.0"),
        ({"oversample": {"pow": 1}}, r"data.oversample: unknown keys \['pow'\]"),
        ({"blackout_p": 1.5}, r"data.blackout_p must be a number >= 0.0 and <= 1.0, got 1.5"),
        ({"missing_mask": "skip"}, r"data.missing_mask='skip' is not valid; choose one of: error, empty"),
        ({"train_csv": ""}, r"data.train_csv must be a non-empty file or folder name"),
        ({"shape": [64]}, r"data.shape must be \[height, width\]"),
    ],
)
def test_option_errors_name_the_key(root, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(root, **kwargs)


def test_the_yaml_keys_reach_the_groups(tmp_path):
    """conf/data/*.yaml keys are unchanged: data.crop_width=, data.augment.hflip_p=, data.pseudo_share=..."""
    from hydra.utils import instantiate

    from tests.helpers import TINY, compose_train

    overrides = [
        *TINY,
        "data.crop_height=32",
        "data.augment.hflip_p=0.25",
        "data.pseudo_share=0.3",
        "data.limit_val=2",
        "data.oversample={power: 2.0}",
        "data.defect_crop_p=0.5",
    ]
    cfg = compose_train(overrides, tmp_path)
    dm = instantiate(cfg.data, _convert_="object")
    assert isinstance(dm, SyntheticDataModule)
    c = dm.cfg
    assert (c.crop.height, c.crop.width, c.crop.defect_p) == (32, 100, 0.5)
    assert c.augment.transforms["hflip_p"] == 0.25 and c.augment.transforms["vflip_p"] == 0.5
    assert c.pseudo.share == 0.3 and c.limits.val == 2 and c.oversample.power == 2.0
    assert c.loader.batch_size == 4 and c.loader.num_workers == 0
