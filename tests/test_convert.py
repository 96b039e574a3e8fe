"""python -m steel_defect.data.convert: Kaggle csv <-> images/ + masks/ PNGs, exact both ways, for Severstal's
4 classes and for other class counts and image sizes; every refusal names the file and row or value."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from steel_defect.data.convert import (
    ConversionError,
    folder_to_kaggle,
    index_mask,
    kaggle_to_folder,
    read_kaggle_csv,
)
from steel_defect.rle import rle_decode, rle_encode
from tests.conftest import REPO, SHARED

REAL = SHARED / "data" / "severstal-real"


def masks_of(labels: dict, shape: tuple[int, int], image_id: str) -> dict[int, np.ndarray]:
    return {c: rle_decode(r, shape).astype(bool) for c, r in labels.get(image_id, {}).items()}


@pytest.mark.skipif(not (REAL / "train.csv").is_file(), reason=f"real Severstal images not found at {REAL}")
def test_real_severstal_csv_round_trips_exactly(tmp_path):
    root = tmp_path / "folder"
    counts = kaggle_to_folder(REAL / "train.csv", REAL / "train_images", root)
    assert counts["images"] == len(list((REAL / "train_images").glob("*.jpg"))) and counts["with_defects"] > 0
    back = tmp_path / "back.csv"
    folder_to_kaggle(root, back)
    original, again = read_kaggle_csv(REAL / "train.csv"), read_kaggle_csv(back)
    assert {k: v for k, v in original.items() if v} == {k: v for k, v in again.items() if v}
    # and the PNG pixels are the class of each real mask
    name = next(k for k, v in original.items() if v)
    png = cv2.imread(str(root / "masks" / f"{Path(name).stem}.png"), cv2.IMREAD_UNCHANGED)
    for c, m in masks_of(original, png.shape, name).items():
        assert (png[m] == c).all()
    assert (png[~np.any(list(masks_of(original, png.shape, name).values()), axis=0)] == 0).all()


def make_folder(root: Path, num_classes: int, shapes: list[tuple[int, int]], seed: int = 0) -> None:
    """Random class-index masks of several sizes (not Severstal's), with a defect-free image."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (h, w) in enumerate(shapes):
        cv2.imwrite(str(root / "images" / f"plate{i}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        mask = np.zeros((h, w), np.uint8)
        if i:
            for _ in range(4):
                y, x = rng.integers(0, h - 5), rng.integers(0, w - 7)
                mask[y : y + rng.integers(1, 6), x : x + rng.integers(1, 8)] = rng.integers(
                    1, num_classes + 1
                )
        cv2.imwrite(str(root / "masks" / f"plate{i}.png"), mask)


@pytest.mark.parametrize("num_classes", [2, 6])
def test_folder_round_trips_exactly_with_other_class_counts_and_sizes(tmp_path, num_classes):
    src = tmp_path / "src"
    make_folder(src, num_classes, [(40, 90), (33, 71), (128, 64)])
    csv_path = tmp_path / "labels.csv"
    counts = folder_to_kaggle(src, csv_path, num_classes)
    assert counts["images"] == 3 and counts["rows"] > 0
    assert csv_path.read_text().splitlines()[0] == "ImageId,ClassId,EncodedPixels"
    dst = tmp_path / "dst"
    kaggle_to_folder(csv_path, src / "images", dst, num_classes)
    for p in sorted((src / "masks").glob("*.png")):
        assert np.array_equal(cv2.imread(str(p), -1), cv2.imread(str(dst / "masks" / p.name), -1)), p.name
        assert (dst / "images" / p.name).read_bytes() == (src / "images" / p.name).read_bytes()
    again = tmp_path / "again.csv"
    folder_to_kaggle(dst, again, num_classes)
    assert again.read_bytes() == csv_path.read_bytes()


def test_overlapping_classes_are_refused_or_resolved_as_asked():
    a = np.zeros((4, 5), bool)
    a[1:3, 1:3] = True
    b = np.zeros((4, 5), bool)
    b[2:4, 2:4] = True
    rles = {1: rle_encode(a), 3: rle_encode(b)}
    with pytest.raises(
        ConversionError, match=r"image 'x.jpg': 1 pixels are in class 3 and class\(es\) \[1\]"
    ):
        index_mask(rles, (4, 5), "x.jpg")
    first, last = index_mask(rles, (4, 5), "x.jpg", "first"), index_mask(rles, (4, 5), "x.jpg", "last")
    assert first[2, 2] == 1 and last[2, 2] == 3 and first[3, 3] == 3 and last[1, 1] == 1


def test_bad_folders_are_refused_naming_the_file(tmp_path):
    root = tmp_path / "f"
    make_folder(root, 3, [(20, 30), (20, 30)])
    mask = root / "masks" / "plate1.png"
    good = mask.read_bytes()
    cv2.imwrite(str(mask), np.zeros((21, 30), np.uint8))
    with pytest.raises(ConversionError, match=r"plate1.png: mask is 21x30, its image 20x30"):
        folder_to_kaggle(root, tmp_path / "o.csv", 3)
    cv2.imwrite(str(mask), np.full((20, 30), 4, np.uint8))
    with pytest.raises(ConversionError, match=r"plate1.png: pixel value 4 is above the 3 classes"):
        folder_to_kaggle(root, tmp_path / "o.csv", 3)
    cv2.imwrite(str(mask), np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(ConversionError, match=r"plate1.png: a mask must be an 8-bit single-channel PNG"):
        folder_to_kaggle(root, tmp_path / "o.csv", 3)
    mask.unlink()
    with pytest.raises(ConversionError, match=r"plate1.png: no mask .*--missing empty"):
        folder_to_kaggle(root, tmp_path / "o.csv", 3)
    assert not (tmp_path / "o.csv").exists()  # nothing half-written
    assert folder_to_kaggle(root, tmp_path / "o.csv", 3, missing="empty")["images"] == 2
    mask.write_bytes(good)


def test_bad_csvs_are_refused_naming_the_line(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    for text, message in (
        ("Image,Class\n", "line 1: header 'Image,Class'"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,x,1 2\n", "line 2: class 'x' is not an integer"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,5,1 2\n", "line 2: class 5 is outside 1..4"),
        (
            "ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\na.jpg,1,5 1\n",
            "line 3: image 'a.jpg' class 1 given twice",
        ),
        ("ImageId,ClassId,EncodedPixels\nb.jpg,1,1 2\n", r"labelled images are not in .*\['b.jpg'\]"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,60 10\n", "image 'a.jpg' class 1"),
    ):
        path = tmp_path / "t.csv"
        path.write_text(text)
        with pytest.raises(ConversionError, match=message):
            kaggle_to_folder(path, images, tmp_path / "out")
    legacy = tmp_path / "legacy.csv"
    legacy.write_text("ImageId_ClassId,EncodedPixels\na.jpg_1,1 3\na.jpg_2,\n")
    assert read_kaggle_csv(legacy) == {"a.jpg": {1: "1 3"}}


@pytest.mark.slow
def test_command_line_round_trip_and_error_exit(tmp_path):
    src = tmp_path / "src"
    make_folder(src, 4, [(16, 24), (16, 24)])
    run = [sys.executable, "-m", "steel_defect.data.convert"]
    ok = subprocess.run(
        [*run, "to-kaggle", "--root", str(src), "--out", str(tmp_path / "l.csv")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and "images: 2" in ok.stdout, ok.stderr
    shutil.rmtree(src / "masks")
    bad = subprocess.run(
        [*run, "to-kaggle", "--root", str(src), "--out", str(tmp_path / "m.csv")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr and "plate0.png: no mask" in bad.stderr
