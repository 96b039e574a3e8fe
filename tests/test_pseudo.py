"""Pseudo-labels: the 1st-place selection rule, the files task=pseudo writes, and reading them back."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from steel_defect.data.annotations import RLE_COLUMNS, AnnotationError, read_train_csv
from steel_defect.data.pseudo_labels import empty_list_path, read_pseudo_labels, write_pseudo_labels
from steel_defect.rle import rle_encode
from steel_defect.tasks.config import PseudoRule
from steel_defect.tasks.pseudo import pseudo_decision

SHAPE = (16, 40)


def masks_for(present: list[bool]) -> np.ndarray:
    m = np.zeros((len(present), *SHAPE), bool)
    for k, p in enumerate(present):
        if p:
            m[k, 2:6, 3 + 5 * k : 6 + 5 * k] = True
    return m


@pytest.mark.parametrize(
    "probs, present, expected",
    [
        ([0.01, 0.02, 0.97, 0.03], [False, False, True, False], "labelled"),
        ([0.01, 0.02, 0.03, 0.04], [False, False, False, False], "empty"),
        ([0.01, 0.02, 0.90, 0.03], [False, False, True, False], None),  # class 3 not confident
        ([0.01, 0.02, 0.97, 0.03], [False, False, False, False], None),  # confident but no mask
        ([0.01, 0.02, 0.03, 0.04], [True, False, False, False], None),  # a mask the classifier denies
        ([0.96, 0.02, 0.97, 0.01], [True, False, True, False], "labelled"),
    ],
)
def test_the_first_place_rule(probs, present, expected):
    assert pseudo_decision(np.array(probs), masks_for(present)) == expected


def test_rule_thresholds_are_checked():
    assert (
        pseudo_decision(np.array([0.9, 0.1]), masks_for([True, False]), PseudoRule(0.85, 0.15)) == "labelled"
    )
    with pytest.raises(ValueError, match="pseudo.t_pos must be in"):
        PseudoRule(t_pos=1.5)
    with pytest.raises(ValueError, match="must be below"):
        PseudoRule(t_pos=0.4, t_neg=0.6)
    with pytest.raises(ValueError, match="unknown keys"):
        PseudoRule.from_dict({"t_pos": 0.9, "margin": 1})


def image_folder(tmp_path: Path, names: list[str]) -> Path:
    folder = tmp_path / "test_images"
    folder.mkdir()
    for name in names:
        cv2.imwrite(str(folder / name), np.full((*SHAPE, 3), 90, np.uint8))
    return folder


def test_written_files_read_back_as_training_labels(tmp_path):
    folder = image_folder(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    m = masks_for([False, True, False, True])
    rles = [rle_encode(x) for x in m]
    csv_path, empty_path = write_pseudo_labels(tmp_path / "pseudo.csv", [("b.jpg", rles)], ["a.jpg"])
    assert empty_path == empty_list_path(csv_path) == tmp_path / "pseudo_empty.txt"
    assert csv_path.read_text().splitlines() == [
        "ImageId,ClassId,EncodedPixels",
        f"b.jpg,2,{rles[1]}",
        f"b.jpg,4,{rles[3]}",
    ]
    assert read_train_csv(csv_path, shape=SHAPE).shape[0] == 1
    frame = read_pseudo_labels(csv_path, folder, SHAPE, exclude={"val": {"c.jpg"}})
    assert frame["ImageId"].tolist() == ["a.jpg", "b.jpg"]
    assert frame.loc[0, RLE_COLUMNS].tolist() == ["", "", "", ""]
    assert frame.loc[1, RLE_COLUMNS].tolist() == rles


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(["ImageId,ClassId,EncodedPixels", *rows]) + "\n")
    return path


def test_bad_pseudo_files_are_refused_naming_file_line_and_value(tmp_path):
    folder = image_folder(tmp_path, ["a.jpg", "b.jpg"])
    rle = rle_encode(masks_for([True])[0])
    unknown = write_csv(tmp_path / "unknown.csv", [f"a.jpg,1,{rle}", f"zzz.jpg,3,{rle}"])
    with pytest.raises(AnnotationError, match=r"unknown.csv:3: image 'zzz.jpg' is not in .*test_images"):
        read_pseudo_labels(unknown, folder, SHAPE)
    bad_rle = write_csv(tmp_path / "bad.csv", [f"a.jpg,1,{rle}", "b.jpg,2,5 3 1"])
    with pytest.raises(AnnotationError, match=r"bad.csv.*line 3"):
        read_pseudo_labels(bad_rle, folder, SHAPE)
    overlap = write_csv(tmp_path / "overlap.csv", [f"b.jpg,1,{rle}"])
    with pytest.raises(AnnotationError, match=r"overlap.csv:2: image 'b.jpg' is in the val split"):
        read_pseudo_labels(overlap, folder, SHAPE, exclude={"val": ["b.jpg"], "test": []})
    both = write_csv(tmp_path / "both.csv", [f"a.jpg,1,{rle}"])
    empty_list_path(both).write_text("b.jpg\na.jpg\n")
    with pytest.raises(AnnotationError, match=r"both_empty.txt:2: image 'a.jpg' is listed as empty"):
        read_pseudo_labels(both, folder, SHAPE)
    empty_list_path(both).write_text("b.jpg\nb.jpg\n")
    with pytest.raises(AnnotationError, match=r"both_empty.txt:2: image 'b.jpg' is listed twice"):
        read_pseudo_labels(both, folder, SHAPE)
    empty_list_path(both).write_text("b.jpg\nnope.jpg\n")
    with pytest.raises(AnnotationError, match=r"both_empty.txt:2: image 'nope.jpg' is not in"):
        read_pseudo_labels(both, folder, SHAPE)


@pytest.mark.slow
def test_task_pseudo_writes_what_the_rule_keeps(tmp_path):
    from torch.utils.data import DataLoader

    from steel_defect.data.dataset import PredictDataset, predict_collate
    from steel_defect.inference.predictor import iter_predictions, load_nets
    from steel_defect.postprocess.params import PostprocessParams, save_thresholds
    from steel_defect.tasks.dispatch import run
    from tests.helpers import config, tiny_run

    files = tiny_run(tmp_path / "run")
    images = files["data"] / "test_images"
    ckpt = Path(shutil.copy(files["a"], tmp_path / "model.ckpt"))
    # Gates that keep no mask, and t_neg at the median image's largest class probability: about half the
    # images are then confidently empty and the others rejected.
    blocked = PostprocessParams(t_cls=[1.0] * 4)
    save_thresholds(blocked, tmp_path / "blocked.yaml")
    nets, _ = load_nets([ckpt])
    loader = DataLoader(PredictDataset(images), batch_size=2, collate_fn=predict_collate)
    preds = list(iter_predictions(nets, loader, blocked))
    top = sorted(float(p.class_probs.max()) for p in preds)
    t_neg = (top[len(top) // 2 - 1] + top[len(top) // 2]) / 2
    rule = {"t_pos": (t_neg + 1.0) / 2, "t_neg": t_neg}
    out = tmp_path / "out" / "pseudo.csv"
    summary = run(
        config(
            task="pseudo",
            ckpt=str(ckpt),
            thresholds=str(tmp_path / "blocked.yaml"),
            images=str(images),
            out=str(out),
            pseudo=rule,
        )
    )
    expected_empty = [
        p.image_id for p in preds if pseudo_decision(p.class_probs, p.masks, PseudoRule(**rule))
    ]
    assert (
        summary["empty"] == len(expected_empty) > 0
        and summary["rejected"] == len(preds) - len(expected_empty) > 0
    )
    assert empty_list_path(out).read_text().split() == expected_empty
    assert out.read_text() == "ImageId,ClassId,EncodedPixels\n"
    for bad in ("p.txt", "submission.csv"):
        with pytest.raises(ValueError, match="other than submission.csv"):
            run(config(task="pseudo", ckpt=str(ckpt), images=str(images), out=str(tmp_path / bad)))


# ------------------------------------------------------------------------------------------------------
# Mixing into training
# ------------------------------------------------------------------------------------------------------
def test_mix_sampler_puts_the_share_in_every_batch_and_is_seeded():
    from steel_defect.data.datamodule import EpochSampler, PseudoMixSampler

    s = PseudoMixSampler(EpochSampler(10, seed=1), n_pseudo=3, batch_size=4, share=0.25, seed=1)
    s.set_epoch(2)
    items = list(s)
    assert len(items) == len(s) == 10 + 4  # ceil(10 / 3) = 4 batches, one pseudo item each
    batches = [items[i : i + 4] for i in range(0, len(items), 4)]
    assert [sum(i >= 10 for i, _ in b) for b in batches] == [1, 1, 1, 1]
    assert sorted(i for i, _ in items if i < 10) == sorted(i for i, _ in EpochSampler(10, seed=1).__iter__())
    assert {i - 10 for i, _ in items if i >= 10} <= {0, 1, 2}
    again = PseudoMixSampler(EpochSampler(10, seed=1), n_pseudo=3, batch_size=4, share=0.25, seed=1)
    again.set_epoch(2)
    assert list(again) == items
    s.set_epoch(3)
    other = list(s)
    assert other != items and sorted(i for i, _ in other if i < 10) == sorted(range(10))
    assert PseudoMixSampler(EpochSampler(10), 3, 8, share=0.12).k == 1
    assert PseudoMixSampler(EpochSampler(10), 3, 4, share=0.99).k == 3  # never a batch without real images
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        PseudoMixSampler(EpochSampler(10), 3, 1, share=0.5)


def test_mix_survives_the_distributed_round_robin():
    """Lightning wraps the sampler in DistributedSamplerWrapper (round-robin, no shuffle): every process
    must still see k pseudo items in each of its batches."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    from steel_defect.data.datamodule import EpochSampler, PseudoMixSampler

    for world in (2, 3):
        sampler = PseudoMixSampler(EpochSampler(42, seed=0), 5, batch_size=4, share=0.25, world_size=world)
        full = [b for b in sampler.batches() if len(b) == 4]
        for rank in range(world):
            mine = list(DistributedSamplerWrapper(sampler, num_replicas=world, rank=rank, shuffle=False))
            batches = [mine[i : i + 4] for i in range(0, len(mine) - 3, 4)][: len(full) // world]
            assert batches and all(sum(i >= 42 for i, _ in b) == 1 for b in batches), (world, rank)


@pytest.mark.slow
def test_datamodule_mixes_pseudo_labels_into_training_only(tmp_path):
    from steel_defect.data.datamodule import SteelDataModule
    from steel_defect.synthetic import generate_dataset

    root = tmp_path / "data"
    generate_dataset(root, n_train=24, n_test=6, seed=2, shape=[64, 320])
    test_ids = sorted(p.name for p in (root / "test_images").iterdir())
    m = np.zeros((4, 64, 320), bool)
    m[1, 10:30, 40:90] = True
    pseudo = write_pseudo_labels(
        tmp_path / "pseudo.csv", [(test_ids[0], [rle_encode(x) for x in m])], test_ids[1:3]
    )[0]
    kw = dict(root=str(root), shape=[64, 320], num_workers=0, crop_width=None, batch_size=4, val_batch_size=2)
    augment = {"hflip_p": 0.0, "vflip_p": 0.0, "brightness_contrast_p": 0.0}
    dm = SteelDataModule(**kw, augment=augment, pseudo_labels=str(pseudo), pseudo_share=0.25)
    dm.setup("fit")
    assert dm.pseudo_frame["ImageId"].tolist() == sorted(test_ids[:3])
    seen = [image_id for batch in dm.train_dataloader() for image_id in batch["image_id"]]
    batches = [seen[i : i + 4] for i in range(0, len(seen), 4)]
    assert all(sum(i in test_ids for i in b) == 1 for b in batches)
    val_ids = [image_id for batch in dm.val_dataloader() for image_id in batch["image_id"]]
    assert not set(val_ids) & set(test_ids)
    labelled = next(dm.pseudo_dataset[i] for i in range(3) if dm.pseudo_dataset.image_ids[i] == test_ids[0])
    assert torch_equal_mask(labelled["mask"], m)
    # A pseudo-label file naming a validation image is refused.
    val_id = dm.split["val"][0]
    shutil.copy(root / "train_images" / val_id, root / "test_images" / val_id)
    bad = write_pseudo_labels(tmp_path / "bad.csv", [(val_id, [rle_encode(x) for x in m])], [])[0]
    with pytest.raises(AnnotationError, match=rf"bad.csv:2: image '{val_id}' is in the val split"):
        SteelDataModule(**kw, pseudo_labels=str(bad)).setup("fit")
    with pytest.raises(ValueError, match="data.pseudo_share must be in"):
        SteelDataModule(**kw, pseudo_labels=str(pseudo), pseudo_share=1.0)


def torch_equal_mask(mask, expected: np.ndarray) -> bool:
    return bool((mask.numpy() > 0.5).tolist() == expected.tolist())
