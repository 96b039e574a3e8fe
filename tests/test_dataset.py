"""Image reading, SteelDataset / PredictDataset items, transforms and the defect blackout."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from steel_defect.data.annotations import RLE_COLUMNS, load_annotations
from steel_defect.data.blackout import blackout_defect
from steel_defect.data.dataset import (
    ImageReadError,
    PredictDataset,
    SteelDataset,
    predict_collate,
    read_image,
)
from steel_defect.data.transforms import build_transforms
from steel_defect.rle import rle_area, rle_decode, rle_encode
from steel_defect.synthetic import generate_dataset

SHAPE = (64, 320)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, n_train=24, n_test=4, seed=3, shape=SHAPE)
    return root


@pytest.fixture(scope="module")
def annotations(synth) -> pd.DataFrame:
    return load_annotations(synth, shape=SHAPE)


def _defective(df: pd.DataFrame, min_classes: int = 1) -> int:
    """Index of the first image with at least ``min_classes`` classes."""
    counts = df[[f"has_defect_{c}" for c in range(1, 5)]].sum(axis=1)
    hits = np.flatnonzero(counts.to_numpy() >= min_classes)
    if not len(hits):
        pytest.skip(f"synthetic set has no image with {min_classes} classes")
    return int(hits[0])


# -------------------------------------------------------------------------------------------- read_image
def test_read_image_rgb_and_grey(tmp_path):
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    rgb = read_image(tmp_path / "blue.png")
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 2] == 200).all() and (rgb[..., 0] == 0).all()
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((5, 7), 9, np.uint8))
    grey = read_image(tmp_path / "grey.png")
    assert grey.shape == (5, 7, 3) and (grey == 9).all()


def test_read_image_errors(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(OSError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")


# ------------------------------------------------------------------------------------------- transforms
def test_build_transforms_stages():
    image = np.random.default_rng(0).integers(0, 256, (*SHAPE, 3), dtype=np.uint8)
    mask = np.zeros((*SHAPE, 4), np.uint8)
    mask[10:20, 30:40, 2] = 1
    out = build_transforms("val")(image=image, mask=mask)
    assert out["image"].dtype == torch.float32 and out["image"].shape == (3, *SHAPE)
    assert torch.allclose(out["image"], torch.from_numpy(image.transpose(2, 0, 1)).float() / 255)
    assert out["mask"].shape == (4, *SHAPE) and out["mask"][2].sum() == 100
    train = build_transforms("train", crop_width=128, shape=SHAPE, seed=0)(image=image, mask=mask)
    assert train["image"].shape == (3, 64, 128) and train["mask"].shape == (4, 64, 128)
    assert 0.0 <= train["image"].min() and train["image"].max() <= 1.0
    # No crop when the crop is not smaller than the image; explicit crop height honoured.
    assert build_transforms("train", crop_width=400, shape=(64, 400))(image=np.zeros((64, 400, 3), np.uint8))[
        "image"
    ].shape == (3, 64, 400)
    assert build_transforms("train", crop_height=32, crop_width=64, shape=SHAPE)(image=image)[
        "image"
    ].shape == (
        3,
        32,
        64,
    )
    with pytest.raises(ValueError, match="'train', 'val', 'test', 'predict'"):
        build_transforms("eval")
    with pytest.raises(ValueError, match="hflip_p"):
        build_transforms("train", hflip_p=2.0)
    with pytest.raises(ValueError, match="fit in the image"):
        build_transforms("train", crop_width=500, crop_height=65, shape=SHAPE)


def test_domain_randomisation_keeps_grey_masks_and_is_off_by_default():
    """gamma/blur/noise/jpeg change the image (still grey in all channels), never the mask."""
    rng = np.random.default_rng(1)
    grey = rng.integers(40, 200, SHAPE, dtype=np.uint8)
    image = np.repeat(grey[..., None], 3, axis=2)
    mask = np.zeros((*SHAPE, 4), np.uint8)
    mask[5:30, 40:90, 1] = 1
    plain = dict(hflip_p=0.0, vflip_p=0.0, brightness_contrast_p=0.0)
    names = [type(t).__name__ for t in build_transforms("train", shape=SHAPE, **plain).transforms]
    assert not {"RandomGamma", "GaussianBlur", "GaussNoise", "ImageCompression"} & set(names)
    for key in ("gamma_p", "blur_p", "noise_p", "jpeg_p"):
        out = build_transforms("train", shape=SHAPE, seed=3, **plain, **{key: 1.0})(image=image, mask=mask)
        img = out["image"]
        assert not torch.allclose(img, torch.from_numpy(image.transpose(2, 0, 1)).float() / 255), key
        assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2]), key
        assert torch.equal(out["mask"], torch.from_numpy(mask.transpose(2, 0, 1))), key
    with pytest.raises(ValueError, match="noise_p"):
        build_transforms("train", shape=SHAPE, noise_p=1.5)


# ----------------------------------------------------------------------------------------- SteelDataset
@pytest.mark.slow
def test_steel_dataset_items_match_annotations(synth, annotations):
    ds = SteelDataset(annotations, synth / "train_images", shape=SHAPE)
    assert len(ds) == len(annotations)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image_id"] == annotations.loc[i, "ImageId"]
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, *SHAPE)
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert item["mask"].dtype == torch.float32 and item["mask"].shape == (4, *SHAPE)
        expected = np.stack([rle_decode(annotations.loc[i, c], SHAPE) for c in RLE_COLUMNS])
        assert np.array_equal(item["mask"].numpy(), expected)
        assert item["labels"].tolist() == [float(annotations.loc[i, f"has_defect_{c}"]) for c in range(1, 5)]
        assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}


def test_train_crop_labels_follow_the_cropped_mask(synth, annotations):
    transform = build_transforms("train", crop_width=64, shape=SHAPE, seed=1)
    ds = SteelDataset(annotations, synth / "train_images", transform, shape=SHAPE)
    dropped = 0
    for _ in range(3):
        for i in range(len(ds)):
            item = ds[i]
            assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (4, 64, 64)
            assert item["labels"].tolist() == (item["mask"].flatten(1).amax(1) > 0).float().tolist()
            dropped += int(
                item["labels"].sum() < annotations.loc[i, [f"has_defect_{c}" for c in range(1, 5)]].sum()
            )
    assert dropped > 0, "a 64-px crop of a 320-px image should sometimes miss a defect"


def test_steel_dataset_errors(synth, annotations, tmp_path):
    with pytest.raises(ValueError, match=r"64x320 but the data shape is 256x1600"):
        SteelDataset(annotations, synth / "train_images", shape=(256, 1600))[0]
    with pytest.raises(KeyError, match="EncodedPixels_1"):
        SteelDataset(annotations[["ImageId"]], synth / "train_images")
    with pytest.raises(FileNotFoundError):
        SteelDataset(annotations, tmp_path / "nowhere")
    bad = annotations.head(1).copy()
    bad["EncodedPixels_2"] = "1 999999"
    with pytest.raises(ValueError, match="class 2"):
        SteelDataset(bad, synth / "train_images")[0]


# -------------------------------------------------------------------------------------------- blackout
def _texture(h: int = 20, w: int = 60, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_blackout_copies_clean_texture_from_the_same_row():
    image = _texture()
    masks = np.zeros((4, 20, 60), np.uint8)
    masks[1, 5:10, 20:30] = 1
    masks[3, 12:15, 0:8] = 1
    before = (image.copy(), masks.copy())
    out_img, out_masks = blackout_defect(image, masks, 1, np.random.default_rng(0))
    assert np.array_equal(image, before[0]) and np.array_equal(masks, before[1]), "inputs modified"
    assert out_masks[1].sum() == 0
    assert np.array_equal(np.delete(out_masks, 1, 0), np.delete(masks, 1, 0))
    region = masks[1] > 0
    assert np.array_equal(out_img[~region], image[~region])
    assert not np.array_equal(out_img[region], image[region])
    clean = ~masks.any(0)
    for y, x in zip(*np.nonzero(region), strict=True):
        row_clean = image[y][clean[y]]
        assert (row_clean == out_img[y, x]).all(axis=1).any(), "filled pixel is not clean texture of its row"


def test_blackout_row_median_fallback():
    # One row, two clean pixels: a shift reaches a pixel only when its distance to them is one of the
    # candidate magnitudes; every other pixel gets the median of the row's clean pixels.
    image = np.full((1, 200, 3), 200, np.uint8)
    image[0, 0], image[0, 1] = 50, 70
    masks = np.zeros((4, 1, 200), np.uint8)
    masks[0, 0, 2:] = 1
    out, _ = blackout_defect(image, masks, 0, np.random.default_rng(0))
    values = set(out[0, 2:, 0].tolist())
    assert values <= {50, 70, 60} and 60 in values and (50 in values or 70 in values)
    assert (out[0, :2] == image[0, :2]).all()


def test_blackout_vertical_shift_global_median_and_dark_border():
    image = np.full((3, 200, 3), 120, np.uint8)
    image[1] = 0  # a black (unimaged) row: never used as texture
    image[2, :2] = (30, 40, 50)
    masks = np.zeros((4, 3, 200), np.uint8)
    masks[0, 0] = 1  # class 1: the whole top row
    masks[2, 2, 2:] = 1  # class 3 covers the bottom row except its first two pixels
    out, out_masks = blackout_defect(image, masks, 0, np.random.default_rng(1))
    assert out_masks[0].sum() == 0 and np.array_equal(out_masks[2], masks[2])
    assert np.array_equal(out[1:], image[1:])
    # Top row has no usable pixel: columns 0 and 1 are copied from two rows below, the rest is the median
    # of all usable pixels; nothing comes from the black row.
    assert (out[0] == (30, 40, 50)).all()
    assert not (out[0] == 0).all(axis=1).any()


def test_blackout_validation_and_absent_class():
    image = _texture(6, 10)
    masks = np.zeros((4, 6, 10), np.uint8)
    masks[0, 2:4, 3:5] = 1
    with pytest.raises(ValueError, match=r"0\.\.3"):
        blackout_defect(image, masks, 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="masks must be"):
        blackout_defect(image, masks[:, :3], 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="image must be"):
        blackout_defect(image[..., 0], masks, 0, np.random.default_rng(0))
    same_img, same_masks = blackout_defect(image, masks, 3, np.random.default_rng(0))
    assert np.array_equal(same_img, image) and np.array_equal(same_masks, masks)


def test_dataset_blackout_removes_one_class_and_changes_only_its_pixels(synth, annotations):
    i = _defective(annotations)
    plain = SteelDataset(annotations, synth / "train_images", shape=SHAPE)[i]
    blacked = SteelDataset(annotations, synth / "train_images", shape=SHAPE, blackout_p=1.0, seed=5)[i]
    removed = np.flatnonzero((plain["labels"] - blacked["labels"]).numpy())
    assert len(removed) == 1 and plain["labels"].sum() - blacked["labels"].sum() == 1
    k = int(removed[0])
    assert blacked["mask"][k].sum() == 0
    keep = [c for c in range(4) if c != k]
    assert torch.equal(blacked["mask"][keep], plain["mask"][keep])
    changed = (blacked["image"] != plain["image"]).any(dim=0)
    assert changed.any()
    assert not (changed & (plain["mask"][k] == 0)).any(), "pixels outside the blacked-out mask changed"


def test_dataset_seeds_each_dataloader_worker_differently(synth, annotations):
    """Forked workers start from copies of one random state; each must get its own stream."""
    df = pd.concat([annotations.head(1)] * 8, ignore_index=True)
    ds = SteelDataset(
        df, synth / "train_images", build_transforms("train", crop_width=64, shape=SHAPE), shape=SHAPE
    )
    loader = DataLoader(ds, batch_size=1, num_workers=2)  # worker 0: items 0, 2, ...; worker 1: 1, 3, ...
    images = [b["image"][0] for b in loader]
    assert any(not torch.equal(images[j], images[j + 1]) for j in range(0, 8, 2))


def test_dataset_augmentation_is_reproducible(synth, annotations):
    def items(seed: int) -> list[torch.Tensor]:
        transform = build_transforms("train", crop_width=64, shape=SHAPE)  # unseeded Compose
        ds = SteelDataset(
            annotations, synth / "train_images", transform, shape=SHAPE, blackout_p=0.5, seed=seed
        )
        return [ds[i]["image"] for i in range(6)]

    first, again, other = items(0), items(0), items(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_real_samples_dataset():
    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "severstal-samples"
    if not (root / "train.csv").is_file():
        pytest.skip(f"real Severstal samples not found at {root}")
    df = load_annotations(root)
    ds = SteelDataset(df, root / "train_images", shape=(256, 1600))
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 256, 1600) and item["mask"].shape == (4, 256, 1600)
        areas = [rle_area(df.loc[i, c], (256, 1600)) for c in RLE_COLUMNS]
        assert item["mask"].sum(dim=(1, 2)).tolist() == areas
        assert item["labels"].tolist() == [float(a > 0) for a in areas]


# ------------------------------------------------------------------------------------------ prediction
def test_predict_dataset_folder_corrupt_and_collate(synth, tmp_path, caplog):
    folder = tmp_path / "predict"
    folder.mkdir()
    for name in sorted(p.name for p in (synth / "test_images").glob("*.jpg"))[:2]:
        (folder / name).write_bytes((synth / "test_images" / name).read_bytes())
    cv2.imwrite(str(folder / "small.png"), np.full((32, 160, 3), 255, np.uint8))
    (folder / "zz_corrupt.jpg").write_bytes(b"\xff\xd8 truncated")
    ds = PredictDataset(folder, fallback_shape=SHAPE)
    assert ds.image_ids == sorted(ds.image_ids) and len(ds) == 4
    with caplog.at_level(logging.WARNING, logger="steel_defect.data.dataset"):
        items = [ds[i] for i in range(len(ds))]
    assert "zz_corrupt.jpg" in caplog.text
    by_id = {it["image_id"]: it for it in items}
    bad = by_id["zz_corrupt.jpg"]
    assert bad["ok"] is False and bad["image"].shape == (3, *SHAPE) and bad["image"].abs().sum() == 0
    small = by_id["small.png"]
    assert small["ok"] is True and small["orig_size"].tolist() == [32, 160] and small["image"].max() == 1.0
    batches = predict_collate(items)
    assert [b["image"].shape[-2:] for b in batches] == [torch.Size(SHAPE), torch.Size([32, 160])]
    assert batches[0]["image"].shape == (3, 3, *SHAPE) and batches[0]["ok"].tolist() == [True, True, False]
    assert batches[0]["orig_size"].shape == (3, 2) and batches[0]["index"].tolist() == [0, 1, 3]
    assert batches[1]["image_id"] == ["small.png"] and batches[1]["index"].tolist() == [2]
    loader = DataLoader(ds, batch_size=4, collate_fn=predict_collate)
    assert sum(len(b["image_id"]) for batch in loader for b in batch) == 4


def test_predict_dataset_sources_and_errors(synth, tmp_path):
    paths = sorted((synth / "test_images").glob("*.jpg"))
    listed = PredictDataset([str(p) for p in paths[::-1]])
    assert listed.image_ids == [p.name for p in paths[::-1]]
    assert PredictDataset(paths[0])[0]["image"].shape == (3, *SHAPE)
    missing = PredictDataset([tmp_path / "gone.jpg"])[0]
    assert missing["ok"] is False and missing["image"].shape == (3, 256, 1600)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        PredictDataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        PredictDataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="empty list"):
        PredictDataset([])


def test_rle_roundtrip_through_dataset(tmp_path):
    """Hand-written image + csv: a mask written with rle_encode comes back exactly."""
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((8, 12, 3), np.uint8))
    mask = np.zeros((8, 12), np.uint8)
    mask[2:5, 3:9] = 1
    df = pd.DataFrame({"ImageId": ["a.png"], **{c: [""] for c in RLE_COLUMNS}})
    df.loc[0, "EncodedPixels_4"] = rle_encode(mask)
    item = SteelDataset(df, tmp_path / "imgs")[0]
    assert item["labels"].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert np.array_equal(item["mask"][3].numpy(), mask)
