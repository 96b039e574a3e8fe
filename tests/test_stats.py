"""Tests for steel_defect.data.stats: the real samples' numbers (worked out independently here) and the CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steel_defect.data.annotations import load_annotations
from steel_defect.data.stats import AREA_STAT_KEYS, area_limits, compute_stats, main
from steel_defect.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "severstal-samples"
SMALL = (64, 320)
HEADINGS = (
    "No. of Images in train set",
    "No. of Images having: Label 1 =",
    "No. of Images with no defects",
    "Images per class",
    "Labels per image",
    "Mask area per class",
    "Suggested area limits",
)


@pytest.fixture(scope="module")
def samples() -> Path:
    if not (SAMPLES / "train.csv").is_file():
        pytest.skip(f"real Severstal samples not found at {SAMPLES} (../shared is not beside this checkout)")
    return SAMPLES


def _hand_numbers(root: Path) -> dict:
    """The expected numbers straight from the csv and the folder, without the project's code."""
    long = pd.read_csv(root / "train.csv")
    images = sorted(p.name for p in (root / "train_images").glob("*.jpg"))
    labels_per_image = long.groupby("ImageId").size().reindex(images, fill_value=0)
    # Area of an RLE = sum of its run lengths (every second token).
    long["area"] = long["EncodedPixels"].map(lambda s: sum(int(t) for t in s.split()[1::2]))
    return {
        "n_images": len(images),
        "per_class": long.groupby("ClassId")["ImageId"]
        .nunique()
        .reindex([1, 2, 3, 4], fill_value=0)
        .to_dict(),
        "no_defect": int((labels_per_image == 0).sum()),
        "one": int((labels_per_image == 1).sum()),
        "multi": int((labels_per_image >= 2).sum()),
        "areas": {c: long.loc[long.ClassId == c, "area"].to_numpy() for c in (1, 2, 3, 4)},
    }


def test_real_samples_known_numbers(samples):
    expected = _hand_numbers(samples)
    # The samples README: 7 images, 0a1cade03.jpg without defect, f383950e8.jpg with classes 3 and 4.
    assert expected["n_images"] == 7 and expected["no_defect"] == 1 and expected["multi"] == 1
    stats = compute_stats(load_annotations(samples))
    assert stats["n_images"] == 7
    assert stats["images_per_class"] == {1: 2, 2: 1, 3: 2, 4: 2} == expected["per_class"]
    assert (stats["no_defect"], stats["one_label"], stats["multi_label"]) == (1, 5, 1)
    assert (expected["one"], expected["multi"]) == (5, 1)
    for c in (1, 2, 3, 4):
        areas = np.sort(expected["areas"][c])
        got = stats["area"][c]
        assert list(got) == list(AREA_STAT_KEYS)
        assert got["count"] == len(areas)
        assert got["mean"] == pytest.approx(areas.mean())
        assert got["min"] == areas[0] and got["max"] == areas[-1]
        if len(areas) == 2:  # linear interpolation between the two values, by hand
            a, b = areas
            assert got["25%"] == pytest.approx(a + 0.25 * (b - a))
            assert got["50%"] == pytest.approx((a + b) / 2)
            assert got["std"] == pytest.approx(abs(b - a) / math.sqrt(2))  # ddof=1
            lo, hi = a + 0.02 * (b - a), a + 0.98 * (b - a)
            assert stats["area_limits"][c] == (100 * math.floor(lo / 100), 100 * math.ceil(hi / 100))
        else:
            assert math.isnan(got["std"]) and got["50%"] == areas[0]
            assert stats["area_limits"][c] == (
                100 * math.floor(areas[0] / 100),
                100 * math.ceil(areas[0] / 100),
            )


def test_real_samples_cli_output(samples, capsys):
    main(["--root", str(samples)])
    out = capsys.readouterr().out
    for heading in HEADINGS:
        assert heading in out
    assert "No. of Images having: Label 1 = 2, Label 2 = 1, Label 3 = 2, Label 4 = 2" in out
    assert "No. of Images with no defects: 1, with only one label: 5, with two or more labels: 1" in out


def test_area_limits_rounding():
    areas = np.arange(1, 10001)  # p2 = 200.98, p98 = 9800.02
    assert area_limits(areas) == (200, 9900)
    assert area_limits([1000, 1000]) == (1000, 1000)
    assert area_limits([150]) == (100, 200)
    with pytest.raises(ValueError, match="at least one"):
        area_limits([])


def test_compute_stats_on_a_hand_made_frame():
    shape = (4, 5)  # 20 pixels, column-major
    df = pd.DataFrame(
        {
            "ImageId": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
            "EncodedPixels_1": ["1 3", "", "2 2 10 4", ""],
            "EncodedPixels_2": ["", "", "", ""],
            "EncodedPixels_3": ["5 10", float("nan"), "", ""],
            "EncodedPixels_4": ["", "1 20", "", ""],
        }
    )
    stats = compute_stats(df, shape)
    assert stats["images_per_class"] == {1: 2, 2: 0, 3: 1, 4: 1}
    assert (stats["no_defect"], stats["one_label"], stats["multi_label"]) == (1, 2, 1)
    assert stats["area"][1]["count"] == 2 and stats["area"][1]["mean"] == 4.5  # areas 3 and 6
    assert stats["area"][4]["max"] == 20
    assert stats["area"][2]["count"] == 0 and math.isnan(stats["area"][2]["mean"])
    assert stats["area_limits"][2] is None


def test_compute_stats_errors():
    with pytest.raises(KeyError, match="EncodedPixels_4"):
        compute_stats(pd.DataFrame({"ImageId": ["a.jpg"], "EncodedPixels_1": [""]}))
    bad = pd.DataFrame({"ImageId": ["x.jpg"], **{f"EncodedPixels_{c}": [""] for c in (1, 2, 3)}})
    bad["EncodedPixels_4"] = ["1 999"]  # runs past a 4x5 image
    with pytest.raises(ValueError, match="x.jpg"):
        compute_stats(bad, (4, 5))


@pytest.mark.slow
def test_cli_on_synthetic_set(tmp_path):
    root = tmp_path / "syn"
    summary = generate_dataset(root, n_train=10, n_test=2, seed=4, shape=SMALL)
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "steel_defect.data.stats",
            "--root",
            str(root),
            "--height",
            "64",
            "--width",
            "320",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    for heading in HEADINGS:
        assert heading in res.stdout
    per_class = ", ".join(f"Label {c} = {summary['train']['class_images'][c]}" for c in (1, 2, 3, 4))
    assert f"No. of Images having: {per_class}" in res.stdout
    assert f"No. of Images in train set: {summary['train']['images']}" in res.stdout
    test = subprocess.run(
        [sys.executable, "-m", "steel_defect.data.stats", "--root", str(root), "--csv", "test_labels.csv"]
        + ["--images", "test_images", "--height", "64", "--width", "320"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert test.returncode == 0, test.stderr
    assert "No. of Images in test set: 2" in test.stdout
