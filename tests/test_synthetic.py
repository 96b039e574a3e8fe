"""Tests for steel_defect.synthetic: Kaggle layout and csv formats, masks, determinism, refusal, class shapes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from steel_defect.data.annotations import load_annotations
from steel_defect.rle import rle_decode, rle_encode
from steel_defect.synthetic import generate_dataset, image_ids, render_sample
from steel_defect.synthetic.dataset import STAMP_NAME, owned_files
from steel_defect.synthetic.params import load_params
from steel_defect.synthetic.realism import black_band, mask_objects, texture_features

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "severstal-samples"
SMALL = (64, 320)
FULL = (256, 1600)
ID_RE = re.compile(r"^[0-9a-f]{9}\.jpg$")


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _labels(path: Path) -> pd.DataFrame:
    return pd.read_csv(
        path, dtype={"ImageId": str, "ClassId": int, "EncodedPixels": str}, keep_default_na=False
    )


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("syn") / "small"
    summary = generate_dataset(out, n_train=12, n_test=4, seed=11, shape=SMALL)
    return out, summary


@pytest.fixture(scope="module")
def full_set(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("syn") / "full"
    summary = generate_dataset(out, n_train=2, n_test=1, seed=5, shape=FULL)
    return out, summary


# ------------------------------------------------------------------------------------------------- layout


@pytest.mark.parametrize("which", ["small_set", "full_set"])
def test_layout_and_csv_formats(which, request):
    out, summary = request.getfixturevalue(which)
    shape = SMALL if which == "small_set" else FULL
    n_train, n_test = (12, 4) if which == "small_set" else (2, 1)
    assert sorted(p.name for p in out.iterdir()) == [
        "sample_submission.csv",
        "synthetic.json",
        "test_images",
        "test_labels.csv",
        "train.csv",
        "train_images",
    ]
    train = sorted(p.name for p in (out / "train_images").iterdir())
    test = sorted(p.name for p in (out / "test_images").iterdir())
    assert len(train) == n_train and len(test) == n_test
    assert all(ID_RE.match(n) for n in train + test), train + test
    assert not set(train) & set(test)
    for name in train[:3] + test[:1]:
        folder = "train_images" if name in train else "test_images"
        img = cv2.imread(str(out / folder / name), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.shape == (*shape, 3) and img.dtype == np.uint8
        assert np.abs(img[..., 0].astype(int) - img[..., 1]).max() <= 2  # grey survives JPEG
        assert np.abs(img[..., 0].astype(int) - img[..., 2]).max() <= 2

    for csv_name, names in (("train.csv", train), ("test_labels.csv", test)):
        text = (out / csv_name).read_text()
        assert text.splitlines()[0] == "ImageId,ClassId,EncodedPixels"
        df = _labels(out / csv_name)
        keys = list(zip(df.ImageId, df.ClassId, strict=True))
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert set(df.ImageId) <= set(names)
        assert df.ClassId.between(1, 4).all()
        stack = {}
        for row in df.itertuples():
            mask = rle_decode(row.EncodedPixels, shape)
            assert mask.shape == shape and mask.any()
            assert rle_encode(mask) == row.EncodedPixels  # canonical strings
            stack.setdefault(row.ImageId, []).append(mask)
        for image_id, masks in stack.items():
            assert np.sum(masks, axis=0).max() <= 1, f"overlapping classes in {image_id}"

    sub_lines = (out / "sample_submission.csv").read_text().splitlines()
    assert sub_lines[0] == "ImageId,EncodedPixels,ClassId"
    assert sub_lines[1:] == [f"{n},1 {shape[0] * shape[1]},0" for n in test]
    if SAMPLES.is_dir():  # same header and row pattern as Kaggle's real file
        real = (SAMPLES / "sample_submission.csv").read_text().splitlines()
        assert real[0] == sub_lines[0]
        assert re.fullmatch(r"[0-9a-f]{9}\.jpg,1 409600,0", real[1])

    assert summary["train"]["images"] == n_train and summary["test"]["images"] == n_test
    df = _labels(out / "train.csv")
    for c in range(1, 5):
        assert summary["train"]["class_images"][c] == (df.ClassId == c).sum()
    assert summary["train"]["defect_free"] == n_train - df.ImageId.nunique()
    assert summary["images_per_s"] > 0


def test_load_annotations_reads_the_output(small_set):
    out, summary = small_set
    df = load_annotations(out, shape=SMALL)
    assert len(df) == 12
    assert df["has_defect"].sum() == 12 - summary["train"]["defect_free"]
    test = load_annotations(out, csv="test_labels.csv", images="test_images", shape=SMALL)
    assert len(test) == 4


def test_same_seed_same_bytes_and_workers(tmp_path, small_set):
    out, _ = small_set
    again = generate_dataset(tmp_path / "a", n_train=12, n_test=4, seed=11, shape=SMALL)
    parallel = generate_dataset(
        tmp_path / "b", n_train=12, n_test=4, seed=11, shape=SMALL, workers=2, chunk_size=3
    )
    reference = _tree_hashes(out)
    assert len(reference) == 12 + 4 + 4  # images + 3 CSVs + the stamp
    assert _tree_hashes(tmp_path / "a") == reference
    assert _tree_hashes(tmp_path / "b") == reference
    assert again["train"] == parallel["train"]
    generate_dataset(tmp_path / "c", n_train=12, n_test=4, seed=12, shape=SMALL)
    assert not set(_tree_hashes(tmp_path / "c")) & {k for k in reference if k.endswith(".jpg")}


def test_image_ids_unique_disjoint_and_prefix_stable():
    train, test = image_ids(0, 500, 200)
    assert len(set(train + test)) == 700
    assert all(ID_RE.match(i) for i in train + test)
    small_train, small_test = image_ids(0, 10, 3)
    assert small_train == train[:10] and small_test == test[:3]
    assert image_ids(1, 10, 0)[0] != small_train


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_refuses_a_folder_it_did_not_make_even_with_overwrite(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=re.escape(str(out))) as err:
            generate_dataset(out, n_train=2, n_test=1, seed=0, shape=SMALL, overwrite=overwrite)
        assert "notes.txt" in str(err.value) and "data=severstal" in str(err.value)
        assert "--overwrite" not in str(err.value)  # the fix is never the flag
        assert _snapshot(out) == {"notes.txt": b"keep me"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary folder left beside it


def test_overwrite_replaces_exactly_its_own_stamped_set(tmp_path):
    out = tmp_path / "data"
    generate_dataset(out, n_train=5, n_test=1, seed=0, shape=SMALL)
    stamp = json.loads((out / STAMP_NAME).read_text())
    assert set(stamp["files"]) == set(_snapshot(out)) - {STAMP_NAME}
    with pytest.raises(FileExistsError, match="--overwrite"):  # a stamped set: the flag is the fix
        generate_dataset(out, n_train=2, n_test=1, seed=1, shape=SMALL)
    generate_dataset(out, n_train=2, n_test=1, seed=1, shape=SMALL, overwrite=True)
    # The images of the first run are gone (no stale image would pass for a defect-free one).
    assert len(list((out / "train_images").iterdir())) == 2
    df = _labels(out / "train.csv")
    assert set(df.ImageId) <= {p.name for p in (out / "train_images").iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    # A foreign file in a stamped set (here one that would pass for a defect-free image): refused, untouched.
    (out / "train_images" / "mine.png").write_bytes(b"x")
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match="mine.png"):
        generate_dataset(out, n_train=2, n_test=1, seed=2, shape=SMALL, overwrite=True)
    assert _snapshot(out) == before


def test_a_stamp_without_a_file_list_owns_the_files_its_arguments_make(tmp_path):
    """Sets stamped before stamps listed their files are still the generator's: the ids follow from the
    stamp's seed and counts, so anything else in the folder is still refused."""
    out = tmp_path / "old"
    generate_dataset(out, n_train=3, n_test=1, seed=4, shape=SMALL)
    stamp = json.loads((out / STAMP_NAME).read_text())
    del stamp["files"]
    (out / STAMP_NAME).write_text(json.dumps(stamp))
    assert owned_files(out) is not None
    generate_dataset(out, n_train=2, n_test=1, seed=5, shape=SMALL, overwrite=True)
    stamp["seed"] = 99  # a stamp whose arguments do not make these files owns none of them
    (out / STAMP_NAME).write_text(json.dumps(stamp))
    with pytest.raises(FileExistsError, match="did not write"):
        generate_dataset(out, n_train=2, n_test=1, seed=5, shape=SMALL, overwrite=True)


def test_an_interrupted_replacement_is_undone_by_the_next_run(tmp_path):
    """A run killed between moving the old set aside and moving the new one in: the next run puts the old
    set back (then proceeds); an unfinished new set is deleted, never anything without the marker."""
    out = tmp_path / "data"
    generate_dataset(out, n_train=2, n_test=1, seed=0, shape=SMALL)
    before = _snapshot(out)
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    aside = tmp_path / f".data.synthetic-old-{dead}-abc123"
    out.rename(aside)
    unfinished = tmp_path / f".data.synthetic-new-{dead}-def456"
    (unfinished / "train_images").mkdir(parents=True)
    (unfinished / ".synthetic-unfinished").touch()
    (unfinished / "train_images" / "0123456789.jpg").write_bytes(b"half")
    stranger = tmp_path / f".data.synthetic-new-{dead}-zzz999"  # no marker: not provably the generator's
    stranger.mkdir()
    (stranger / "mine.txt").write_text("keep")
    generate_dataset(out, n_train=2, n_test=1, seed=0, shape=SMALL, overwrite=True)
    assert _snapshot(out) == before  # the same arguments: the same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data", stranger.name])
    assert (stranger / "mine.txt").read_text() == "keep"


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        generate_dataset(tmp_path / "x", n_train=-1, n_test=0)
    with pytest.raises(ValueError, match="too small"):
        render_sample(0, (8, 8))
    with pytest.raises(ValueError, match="classes"):
        render_sample(0, SMALL, classes=(3, 3))
    with pytest.raises(ValueError, match="classes"):
        render_sample(0, SMALL, classes=(5,))


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "steel_defect.synthetic", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_cli_summary_help_and_refusal(tmp_path):
    out = tmp_path / "cli"
    args = [
        "--out",
        str(out),
        "--n-train",
        "4",
        "--n-test",
        "2",
        "--seed",
        "3",
        "--height",
        "64",
        "--width",
        "320",
    ]
    res = _run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert "4 train + 2 test images (64x320)" in res.stdout
    assert "images/s" in res.stdout and "defect-free" in res.stdout and "class 3:" in res.stdout
    again = _run_cli(*args)
    assert again.returncode == 2
    assert str(out) in again.stderr and "--overwrite" in again.stderr
    assert _run_cli(*args, "--overwrite").returncode == 0
    helped = _run_cli("--help")
    assert helped.returncode == 0 and "--n-train" in helped.stdout and "--overwrite" in helped.stdout


# --------------------------------------------------------------------------------------------- rendering


def test_render_sample_types_determinism_and_grey():
    img, masks = render_sample(42, SMALL)
    assert img.shape == (*SMALL, 3) and img.dtype == np.uint8
    assert masks.shape == (4, *SMALL) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()
    img2, masks2 = render_sample(np.random.default_rng(42), SMALL)
    assert (img == img2).all() and (masks == masks2).all()
    img3, _ = render_sample(43, SMALL)
    assert not (img == img3).all()
    assert img.std() > 2  # not a flat image


def test_defect_free_fraction_class_mix_and_no_overlap():
    n = 200
    free = 0
    per_class = np.zeros(4)
    for seed in range(n):
        _, masks = render_sample(seed, SMALL)
        present = masks.reshape(4, -1).any(axis=1)
        assert masks.sum(axis=0).max() <= 1, f"seed {seed}: classes overlap"
        free += not present.any()
        per_class += present
    real_free = load_params()["class_sets"][""]  # 0.47, from the real index
    assert abs(free / n - real_free) <= 0.12  # 3.4 sigma at n=200
    assert per_class.argmax() == 2  # class 3 dominates, like the real set
    assert per_class[2] > 0.5 * (n - free)
    assert per_class[1] < per_class[2] / 5  # class 2 is rare


def test_forced_classes_and_defect_free():
    _, masks = render_sample(1, SMALL, classes=())
    assert not masks.any()
    for cls in (1, 2, 3, 4):
        _, masks = render_sample(7, SMALL, classes=(cls,))
        present = masks.reshape(4, -1).any(axis=1)
        assert present.tolist() == [c == cls for c in (1, 2, 3, 4)]
    _, masks = render_sample(3, SMALL, classes=(1, 4))
    assert masks[0].any() and masks[3].any() and not (masks[0] & masks[3]).any()


def test_defects_are_visible():
    """The image differs from its surroundings inside the defect mask (contrast is not zero)."""
    for cls in (1, 2, 3, 4):
        diffs = []
        for seed in range(8):
            img, masks = render_sample(seed, FULL, classes=(cls,))
            grey = img[..., 0].astype(np.float32)
            m = masks[cls - 1].astype(bool)
            local = cv2.blur(grey, (61, 61))  # background estimate
            diffs.append(np.abs(grey - local)[m].mean() - np.abs(grey - local)[~m].mean())
        assert np.median(diffs) > 1.0, (cls, diffs)


def _objects(cls: int, shape: tuple[int, int], n: int, seed: int = 100) -> np.ndarray:
    """(k, 3) area, bbox height, bbox width of every class-``cls`` component in ``n`` forced images."""
    found = [mask_objects(render_sample(seed + s, shape, classes=(cls,))[1][cls - 1]) for s in range(n)]
    return np.concatenate(found)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [SMALL, FULL])
def test_class2_and_3_objects_are_tall_and_thin(shape):
    """Real class 2 and 3 objects run along the rolling direction (median bbox 165x19 and 158x33 px)."""
    for cls, share in ((2, 0.8), (3, 0.6)):  # real: 97% and 78% of the objects are taller than wide
        o = _objects(cls, shape, 25)
        assert len(o) >= 25
        assert np.mean(o[:, 1] > o[:, 2]) >= share, (cls, o[:, 1:].tolist())


@pytest.mark.slow
def test_object_shapes_match_the_real_quantiles():
    """Per class, median object bbox height/width and area within 1.5x of the real medians (params.json)."""
    params = load_params()
    for cls in (1, 2, 3, 4):
        o = _objects(cls, FULL, 40).astype(float)
        real = params["objects"][str(cls)]
        for col, key in ((1, "height_q"), (2, "width_q")):
            real_median = real[key][10]  # the 50% quantile
            ratio = np.median(o[:, col]) / real_median
            assert 1 / 1.5 <= ratio <= 1.5, (cls, key, np.median(o[:, col]), real_median)
        real_area = real["height_q"][10] * real["width_q"][10] * real["fill_q"][10]
        assert 1 / 2 <= np.median(o[:, 0]) / real_area <= 2, (cls, np.median(o[:, 0]), real_area)
    # Areas scale with the image: (64*320)/(256*1600) = 5% of the full size.
    small, full = _objects(4, SMALL, 30), _objects(4, FULL, 30)
    assert 0.02 < np.median(small[:, 0]) / np.median(full[:, 0]) < 0.12


def test_texture_runs_along_the_height_like_real_steel():
    """Rolling texture: smoothed-gradient anisotropy |d/dx|/|d/dy| > 1 (real median 1.31; v1 had 0.32)."""
    feats = [texture_features(render_sample(s, FULL, classes=())[0]) for s in range(20)]
    aniso = np.nanmedian([f["anisotropy"] for f in feats])
    real = load_params()["texture"]["anisotropy_q"][10]
    assert 1.0 < aniso and 1 / 1.5 <= aniso / real <= 1.5, (aniso, real)
    grain = np.nanmedian([f["grain_std"] for f in feats])
    assert grain > 2.0  # a grainy surface, not a smooth gradient


@pytest.mark.slow
def test_black_band_has_no_defects():
    """Images with an off-steel black band (as realism.black_band detects it) never carry masks in it."""
    seen = 0
    for seed in range(60):
        img, masks = render_sample(seed, FULL, classes=(3,))
        band = black_band(img)
        if band.sum() >= 0.02 * band.size:
            seen += 1
            assert not masks[:, band].any(), seed
    assert seen >= 15  # about half the real images have a band


def test_class_mix_balanced_keeps_the_defect_free_share_and_evens_the_classes():
    from steel_defect.synthetic.render import class_set_probs

    real = load_params()["class_sets"]
    bal = class_set_probs(real, "balanced")
    assert class_set_probs(real, "real") == real
    assert abs(sum(bal.values()) - 1) < 1e-9 and bal[""] == pytest.approx(real[""])
    share = {c: sum(p for k, p in bal.items() if c in k.split("|")) for c in "1234"}
    # real: 0.41 vs 0.02; class 3 keeps a little more as the partner of the others
    assert max(share.values()) / min(share.values()) < 1.6, share
    assert bal["3|4"] > bal["1|2"]  # co-occurrence given a class stays as in the real data
    with pytest.raises(ValueError, match="class_mix must be one of real, balanced"):
        class_set_probs(real, "uniform")
    n, counts = 300, np.zeros(4)
    for s in range(n):
        counts += render_sample(s, SMALL, class_mix="balanced")[1].reshape(4, -1).any(axis=1)
    assert counts.min() > 0.5 * counts.max(), counts
