"""Defect-centred training crops (steel_defect.data.defect_crop) and their use by SteelDataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from steel_defect.data.dataset import SteelDataset
from steel_defect.data.defect_crop import crop_to_defect, defect_window
from steel_defect.rle import rle_encode


def _masks(h: int = 40, w: int = 200) -> np.ndarray:
    """Class 3 fills the left half; class 1 is one pixel at the far right (row 30, column 190)."""
    m = np.zeros((4, h, w), np.uint8)
    m[2, :, : w // 2] = 1
    m[0, 30, 190] = 1
    return m


def test_window_holds_a_pixel_of_a_class_drawn_uniformly_among_those_present():
    masks = _masks()
    rng = np.random.default_rng(0)
    hits = {0: 0, 2: 0}
    for _ in range(2000):
        y0, y1, x0, x1 = defect_window(masks, (None, 40), rng)
        assert (y0, y1) == (0, 40) and x1 - x0 == 40 and 0 <= x0 and x1 <= 200
        inside = masks[:, y0:y1, x0:x1].reshape(4, -1).any(axis=1)
        assert inside.any()
        hits[0] += bool(inside[0])
        hits[2] += bool(inside[2])
    # the one-pixel class is in the window about half the time (class drawn uniformly), not 1 in 10^4
    assert 900 < hits[0] < 1100
    # the class-3 half is in the window whenever it was drawn (and never when the speck was: 150 px apart)
    assert hits[0] + hits[2] == 2000


def test_window_start_is_uniform_among_the_windows_holding_the_pixel():
    masks = np.zeros((1, 10, 100), np.uint8)
    masks[0, 5, 50] = 1
    rng = np.random.default_rng(1)
    starts = [defect_window(masks, (4, 20), rng) for _ in range(4000)]
    ys = np.array([s[0] for s in starts])
    xs = np.array([s[2] for s in starts])
    assert set(ys.tolist()) == {2, 3, 4, 5} and set(xs.tolist()) == set(range(31, 51))
    assert np.bincount(xs - 31).min() > 4000 / 20 * 0.6


def test_edges_sizes_and_no_defect():
    rng = np.random.default_rng(2)
    empty = np.zeros((4, 8, 16), np.uint8)
    assert defect_window(empty, (4, 4), rng) is None
    image = np.arange(8 * 16 * 3, dtype=np.uint8).reshape(8, 16, 3)
    same_image, same_masks = crop_to_defect(image, empty, (4, 4), rng)
    assert same_image is image and same_masks is empty
    edge = np.zeros((1, 8, 16), np.uint8)
    edge[0, 7, 15] = 1  # bottom-right corner: the window must end at the border
    for _ in range(20):
        assert defect_window(edge, (4, 4), rng) == (4, 8, 12, 16)
    # a crop larger than the image (or None) keeps that axis whole
    assert defect_window(edge, (100, None), rng) == (0, 8, 0, 16)
    img, m = crop_to_defect(image, edge, (4, 4), rng)
    assert img.shape == (4, 4, 3) and m.shape == (1, 4, 4) and m[0, 3, 3] == 1
    assert np.array_equal(img, image[4:8, 12:16])
    with pytest.raises(ValueError, match="differ in size"):
        crop_to_defect(image, np.zeros((4, 8, 15), np.uint8), (4, 4), rng)
    with pytest.raises(ValueError, match="positive"):
        defect_window(edge, (0, 4), rng)
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        defect_window(edge[0], (4, 4), rng)


def test_dataset_defect_crops(tmp_path):
    """With defect_crop_p=1 every training crop of a defect image holds a defect (here a 3x3 class-2 speck
    that a random 32-px crop of the 256-px width would miss most of the time); p=0 is the plain crop."""
    import cv2

    from steel_defect.data.transforms import build_transforms

    h, w = 32, 256
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.jpg"), np.full((h, w, 3), 90, np.uint8))
    speck = np.zeros((h, w), np.uint8)
    speck[10:13, 200:203] = 1
    df = pd.DataFrame({"ImageId": ["a.jpg"], **{f"EncodedPixels_{k}": [""] for k in (1, 3, 4)}})
    df["EncodedPixels_2"] = rle_encode(speck)
    df = df[["ImageId", *(f"EncodedPixels_{k}" for k in range(1, 5))]]
    transform = build_transforms("train", crop_width=32, shape=(h, w), vflip_p=0.0, hflip_p=0.0)
    labels = {}
    for p in (0.0, 1.0):
        ds = SteelDataset(df, tmp_path / "img", transform, shape=(h, w), defect_crop_p=p, crop=(None, 32))
        items = [ds[(0, seed)] for seed in range(40)]
        assert all(it["image"].shape == (3, h, 32) for it in items)
        labels[p] = sum(float(it["labels"][1]) for it in items)
        for it in items:  # the label follows the mask that came through the crop
            assert float(it["labels"][1]) == float(it["mask"][1].amax())
    assert labels[1.0] == 40 and labels[0.0] < 20
    with pytest.raises(ValueError, match="defect_crop_p"):
        SteelDataset(df, tmp_path / "img", transform, defect_crop_p=1.5)
