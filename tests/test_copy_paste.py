"""Copy-paste augmentation: exact image/mask consistency, class-balanced choice, SteelDataset and DataModule."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from steel_defect.data.annotations import RLE_COLUMNS, load_annotations
from steel_defect.data.copy_paste import (
    choose_class,
    choose_donor,
    choose_shift,
    class_presence,
    class_weights,
    copy_paste_config,
    donor_pools,
    paste_component,
    paste_defect,
    pick_component,
)
from steel_defect.data.datamodule import SteelDataModule
from steel_defect.data.dataset import SteelDataset
from steel_defect.data.transforms import build_transforms
from steel_defect.synthetic import generate_dataset

H, W = 32, 64
SHAPE = (64, 320)


# --------------------------------------------------------------------------------------------- helpers
def _texture(seed: int) -> np.ndarray:
    """Random RGB texture, never dark (so no pixel counts as black border)."""
    return np.random.default_rng(seed).integers(20, 256, (H, W, 3), dtype=np.uint8)


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Target (image, masks) with classes 1 and 3; donor (image, masks) with two class-2 components."""
    image, donor = _texture(0), _texture(1)
    masks = np.zeros((4, H, W), np.uint8)
    masks[0, 2:8, 5:15] = 1
    masks[2, 20:30, 40:60] = 1
    donor_masks = np.zeros((4, H, W), np.uint8)
    donor_masks[1, 3:10, 10:20] = 1  # component A: a block
    donor_masks[1, 15:25, 30:35] = 1  # component B: an L ...
    donor_masks[1, 22:25, 30:45] = 1
    donor_masks[1, 25, 45] = 1  # ... plus a pixel touching it only diagonally (8-connected)
    donor_masks[3, 28:31, 0:6] = 1
    return image, masks, donor, donor_masks


def _components(mask: np.ndarray) -> list[np.ndarray]:
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [labels == k for k in range(1, n)]


def _match(pasted: np.ndarray, donor_mask: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """(component, dx) pairs of ``donor_mask`` whose component shifted by dx columns is exactly ``pasted``."""
    hits = []
    ys, xs = np.nonzero(pasted)
    for comp in _components(donor_mask):
        cy, cx = np.nonzero(comp)
        if len(cy) != len(ys):
            continue
        dx = int(xs.min() - cx.min())
        shifted = np.zeros_like(pasted)
        tx = cx + dx
        if tx.min() < 0 or tx.max() >= pasted.shape[1]:
            continue
        shifted[cy, tx] = True
        if np.array_equal(shifted, pasted):
            hits.append((comp, dx))
    return hits


def _uint8(image: torch.Tensor) -> np.ndarray:
    """A [0, 1] float (3, H, W) item image back as uint8 (H, W, 3)."""
    return (image * 255).round().byte().permute(1, 2, 0).numpy()


# ------------------------------------------------------------------------------------------ paste_defect
def test_paste_is_exactly_consistent():
    image, masks, donor, donor_masks = _scene()
    before = [a.copy() for a in (image, masks, donor, donor_masks)]
    chosen, shifts = set(), set()
    for seed in range(40):
        out_image, out_masks, pasted = paste_defect(
            image, masks, donor, donor_masks, 1, np.random.default_rng(seed)
        )
        for a, b in zip((image, masks, donor, donor_masks), before, strict=True):
            assert np.array_equal(a, b), "inputs modified"
        assert pasted.dtype == bool and pasted.any()
        # The pasted label is exactly one donor component (8-connected), shifted along its rows.
        hits = _match(pasted, donor_masks[1])
        assert len(hits) == 1, seed
        comp, dx = hits[0]
        chosen.add(int(comp.sum()))
        shifts.add(dx)
        # Image: the donor's pixels on every pasted pixel, the original everywhere else.
        ys, xs = np.nonzero(comp)
        assert np.array_equal(out_image[ys, xs + dx], donor[ys, xs])
        assert np.array_equal(out_image[~pasted], image[~pasted])
        # Masks: the class gains the pasted pixels, every other class loses them and is unchanged elsewhere.
        assert np.array_equal(out_masks[1], (masks[1] | pasted).astype(np.uint8))
        for c in (0, 2, 3):
            assert np.array_equal(out_masks[c][~pasted], masks[c][~pasted])
            assert not out_masks[c][pasted].any()
        assert out_masks.sum(axis=0).max() <= 1, "classes overlap"
        assert out_masks.dtype == masks.dtype and out_image.dtype == image.dtype
    assert chosen == {70, 50 + 45 - 15 + 1}, "both components (the L with its diagonal pixel) get pasted"
    assert len(shifts) > 10


def test_paste_over_other_classes_clears_them():
    image, masks, donor, donor_masks = _scene()
    comp = np.zeros((H, W), bool)
    comp[20:24, 40:50] = True  # lands on class 3's block with dx=0
    out_image, out_masks, pasted = paste_component(image, masks, donor, comp, 1, 0)
    assert np.array_equal(pasted, comp)
    assert out_masks[2][20:24, 40:50].sum() == 0 and out_masks[2].sum() == masks[2].sum() - 40
    assert out_masks[1][comp].all() and out_masks.sum(axis=0).max() <= 1
    assert np.array_equal(out_image[comp], donor[comp])
    with pytest.raises(ValueError, match="out of the 64-px wide image"):
        paste_component(image, masks, donor, comp, 1, 20)


def test_choose_shift_avoids_defects_and_black_pixels():
    image = _texture(2)
    masks = np.zeros((4, H, W), np.uint8)
    comp = np.zeros((H, W), bool)
    comp[5:10, 0:4] = True
    masks[0, 5:10, :30] = 1  # only columns 30..63 are free of defects on rows 5..9
    image[5:10, 40:] = 0  # ... and columns 40.. are black: free shifts are dx in 30..36
    for seed in range(20):
        dx = choose_shift(comp, image, masks, np.random.default_rng(seed), tries=500)
        assert 30 <= dx <= 36, dx
    masks[0, 5:10, :] = 1  # no free shift: still a valid one
    for seed in range(5):
        dx = choose_shift(comp, image, masks, np.random.default_rng(seed))
        assert 0 <= dx <= W - 4


def test_paste_errors():
    image, masks, donor, donor_masks = _scene()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="no defect of class 3"):
        paste_defect(image, masks, donor, donor_masks, 2, rng)
    with pytest.raises(ValueError, match="no defect component"):
        pick_component(np.zeros((H, W), np.uint8), rng)
    with pytest.raises(ValueError, match=r"0\.\.3"):
        paste_defect(image, masks, donor, donor_masks, 4, rng)
    with pytest.raises(ValueError, match="must match"):
        paste_defect(image, masks, donor[:, :32], donor_masks[:, :, :32], 1, rng)
    with pytest.raises(ValueError, match="masks must be"):
        paste_defect(image, masks[:, :3], donor, donor_masks, 1, rng)


# ------------------------------------------------------------------------------------- class balancing
def _presence() -> np.ndarray:
    present = np.zeros((100, 4), bool)
    present[:50, 0] = True  # class 1 in half the images
    present[50:55, 1] = True  # class 2: rare
    present[60:80, 2] = True  # class 3
    return present  # class 4 absent


def test_class_weights_and_draws_favour_rare_classes():
    present = _presence()
    weights = class_weights(present, 1.0)
    assert weights == pytest.approx(np.array([2.0, 20.0, 5.0, 0.0]) / 27)
    assert class_weights(present, 0.0) == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0])
    assert class_weights(present, -1.0) == pytest.approx(np.array([50, 5, 20, 0]) / 75)
    assert not class_weights(np.zeros((3, 4), bool)).any()
    rng = np.random.default_rng(0)
    draws = np.array([choose_class(weights, rng) for _ in range(20000)])
    share = np.bincount(draws, minlength=4) / len(draws)
    assert share == pytest.approx(weights, abs=0.01)
    assert share[1] > share[2] > share[0] and share[3] == 0
    with pytest.raises(ValueError, match="all zero"):
        choose_class(np.zeros(4), rng)


def test_donor_pools_and_choice():
    present = _presence()
    pools = donor_pools(present)
    assert [len(p) for p in pools] == [50, 5, 20, 0]
    rng = np.random.default_rng(1)
    donors = {choose_donor(pools[1], rng) for _ in range(200)}
    assert donors == set(range(50, 55))
    assert 52 not in {choose_donor(pools[1], rng, exclude=52) for _ in range(200)}
    assert choose_donor(np.array([7]), rng, exclude=7) == 7  # the only donor
    with pytest.raises(ValueError, match="empty donor pool"):
        choose_donor(pools[3], rng)
    df = pd.DataFrame({"ImageId": ["a", "b"], **{c: ["", ""] for c in RLE_COLUMNS}})
    df.loc[1, "EncodedPixels_3"] = "1 4"
    assert class_presence(df[RLE_COLUMNS].to_numpy().tolist()).tolist() == [[False] * 4, [0, 0, 1, 0]]


def test_config_validation():
    assert copy_paste_config(None) is None and copy_paste_config({}) is None
    assert copy_paste_config({"p": 0.5}) == {"p": 0.5, "power": 1.0}
    assert copy_paste_config({"p": 1, "power": "0.5"}) == {"p": 1.0, "power": 0.5}
    with pytest.raises(ValueError, match=r"data\.copy_paste\.p must be a probability in \[0, 1\], got 1\.5"):
        copy_paste_config({"p": 1.5})
    with pytest.raises(ValueError, match=r"data\.copy_paste\.p must be a finite number, got 'often'"):
        copy_paste_config({"p": "often"})
    with pytest.raises(ValueError, match=r"data\.copy_paste\.power must be a finite number, got inf"):
        copy_paste_config({"p": 0.5, "power": float("inf")})
    with pytest.raises(ValueError, match=r"data\.copy_paste: unknown keys \['q'\]"):
        copy_paste_config({"p": 0.5, "q": 1})
    with pytest.raises(ValueError, match=r"data\.copy_paste\.p is required"):
        copy_paste_config({"power": 1.0})
    with pytest.raises(ValueError, match=r"data\.copy_paste must be a mapping"):
        copy_paste_config(0.5)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- SteelDataset
@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("copy_paste")
    generate_dataset(root, n_train=24, n_test=2, seed=3, shape=SHAPE)
    return root


@pytest.fixture(scope="module")
def annotations(synth) -> pd.DataFrame:
    return load_annotations(synth, shape=SHAPE)


def _counting(ds: SteelDataset) -> list[int]:
    """Record every ``ds.load`` call's index."""
    calls: list[int] = []
    load = ds.load

    def counted(index: int):
        calls.append(index)
        return load(index)

    ds.load = counted  # type: ignore[method-assign]
    return calls


def test_dataset_pastes_a_donor_defect_reproducibly(synth, annotations):
    free = np.flatnonzero(annotations["has_defect"].to_numpy() == 0)
    if not len(free):
        pytest.skip("synthetic set has no defect-free image")
    i = int(free[0])
    ds = SteelDataset(annotations, synth / "train_images", shape=SHAPE, copy_paste={"p": 1.0}, seed=7)
    assert ds.copy_paste == {"p": 1.0, "power": 1.0}
    assert ds._paste_weights == pytest.approx(class_weights(class_presence(ds.rles), 1.0))
    plain = SteelDataset(annotations, synth / "train_images", shape=SHAPE)
    base_image, _ = plain.load(i)
    calls = _counting(ds)
    masks_seen = []
    for item_seed in range(5):
        calls.clear()
        item = ds[(i, item_seed)]
        assert len(calls) == 2 and calls[0] == i and calls[1] != i, "one donor, another image"
        mask = item["mask"].numpy().astype(bool)
        assert mask.any() and mask.sum(axis=0).max() <= 1
        (cls,) = np.flatnonzero(mask.any(axis=(1, 2)))
        assert item["labels"].tolist() == [float(c == cls) for c in range(4)]
        donor_image, donor_masks = plain.load(calls[1])
        hits = _match(mask[cls], donor_masks[cls])
        assert hits, "the pasted mask is not a shifted donor component"
        comp, dx = hits[0]
        ys, xs = np.nonzero(comp)
        image = _uint8(item["image"])
        assert np.array_equal(image[ys, xs + dx], donor_image[ys, xs])
        assert np.array_equal(image[~mask[cls]], base_image[~mask[cls]])
        # A pure function of (index, item_seed): the same twice, after other items, in a fresh dataset.
        ds[3]
        again = ds[(i, item_seed)]
        fresh = SteelDataset(annotations, synth / "train_images", shape=SHAPE, copy_paste={"p": 1.0}, seed=7)
        for other in (again, fresh[(i, item_seed)]):
            assert torch.equal(other["image"], item["image"]) and torch.equal(other["mask"], item["mask"])
        masks_seen.append(item["mask"])
    assert any(not torch.equal(masks_seen[0], m) for m in masks_seen[1:])


def test_dataset_without_copy_paste_is_unchanged(synth, annotations):
    def make(**kwargs) -> SteelDataset:
        transform = build_transforms("train", crop_width=128, shape=SHAPE)
        return SteelDataset(
            annotations, synth / "train_images", transform, shape=SHAPE, blackout_p=0.5, seed=2, **kwargs
        )

    base, off, empty = make(), make(copy_paste={"p": 0.0, "power": 2.0}), make(copy_paste={})
    calls = _counting(off)
    for k in range(8):
        for key in ((k, 100 + k), k):
            ref = base[key]
            for ds in (off, empty):
                item = ds[key]
                assert torch.equal(item["image"], ref["image"]) and torch.equal(item["mask"], ref["mask"])
    assert len(calls) == 16, "p=0 must not read donor images"
    with pytest.raises(ValueError, match=r"data\.copy_paste\.p"):
        make(copy_paste={"p": 2})


# ------------------------------------------------------------------------------------------ DataModule
def test_datamodule_passes_copy_paste_to_training_only(synth):
    from omegaconf import OmegaConf

    root = synth
    cfg = OmegaConf.create({"p": 1.0, "power": 0.5})
    dm = SteelDataModule(
        root=str(root), shape=list(SHAPE), num_workers=0, crop_width=128, batch_size=4, copy_paste=cfg
    )
    dm.setup("fit")
    dm.setup("test")
    assert dm.train_dataset.copy_paste == {"p": 1.0, "power": 0.5}
    assert dm.val_dataset.copy_paste is None and dm.test_dataset.copy_paste is None
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask"].shape == (4, 4, 64, 128)
    assert torch.equal(batch["labels"], (batch["mask"].flatten(2).amax(2) > 0).float())
    with pytest.raises(ValueError, match=r"data\.copy_paste: unknown keys \['q'\]"):
        SteelDataModule(root=str(root), copy_paste={"p": 0.5, "q": 1})
    with pytest.raises(ValueError, match=r"data\.copy_paste\.p .*-0\.1"):
        SteelDataModule(root=str(root), copy_paste={"p": -0.1})
    conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "severstal.yaml")
    assert "copy_paste" in conf and conf.copy_paste is None
