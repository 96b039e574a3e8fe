"""Ground-truth csv reading (both formats), folder joining and their error messages."""

from __future__ import annotations

import re
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from steel_defect.data.annotations import (
    DEFECT_COLUMNS,
    RLE_COLUMNS,
    AnnotationError,
    load_annotations,
    read_train_csv,
    stratify_key,
)

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "severstal-samples"
SHAPE = (16, 32)


def _samples() -> Path:
    if not (SAMPLES / "train.csv").is_file():
        pytest.skip(f"real Severstal samples not found at {SAMPLES}")
    return SAMPLES


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _tiny_root(tmp_path: Path, names: list[str], csv_text: str) -> Path:
    """root/train_images with blank 16x32 images ``names`` and root/train.csv = ``csv_text``."""
    images = tmp_path / "train_images"
    images.mkdir()
    for name in names:
        cv2.imwrite(str(images / name), np.zeros((*SHAPE, 3), np.uint8))
    _write(tmp_path / "train.csv", csv_text)
    return tmp_path


def _legacy_text(wide: pd.DataFrame) -> str:
    lines = ["ImageId_ClassId,EncodedPixels"]
    for _, row in wide.iterrows():
        for c in range(1, 5):
            lines.append(f"{row['ImageId']}_{c},{row[f'EncodedPixels_{c}']}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ real samples
def test_real_samples_load():
    root = _samples()
    df = load_annotations(root)
    assert list(df.columns) == ["ImageId", *RLE_COLUMNS, *DEFECT_COLUMNS, "has_defect"]
    assert df["ImageId"].tolist() == sorted(p.name for p in (root / "train_images").glob("*.jpg"))
    assert len(df) == 7
    clean = df.set_index("ImageId").loc["0a1cade03.jpg"]
    assert clean["has_defect"] == 0 and all(clean[c] == "" for c in RLE_COLUMNS)
    both = df.set_index("ImageId").loc["f383950e8.jpg"]
    assert [both[c] for c in DEFECT_COLUMNS] == [0, 0, 1, 1]
    assert df["has_defect"].sum() == 6
    assert df[DEFECT_COLUMNS].dtypes.map(lambda d: np.issubdtype(d, np.integer)).all()
    raw = pd.read_csv(root / "train.csv")
    for _, row in raw.iterrows():
        assert (
            df.set_index("ImageId").loc[row["ImageId"], f"EncodedPixels_{row['ClassId']}"]
            == row["EncodedPixels"]
        )
    assert stratify_key(df).tolist() == ["0", "4", "1", "3", "2", "1", "3+4"]


def test_legacy_format_gives_identical_result(tmp_path):
    root = _samples()
    current = load_annotations(root)
    legacy_root = tmp_path / "legacy"
    legacy_root.mkdir()
    (legacy_root / "train_images").symlink_to(root / "train_images")
    _write(legacy_root / "train.csv", _legacy_text(current))
    pd.testing.assert_frame_equal(load_annotations(legacy_root), current)
    # read_train_csv alone: the legacy file restricted to the images of the current csv gives the same frame.
    wide = read_train_csv(root / "train.csv")
    assert len(wide) == 6  # 0a1cade03.jpg has no row in the current format
    legacy_only = _write(tmp_path / "legacy.csv", _legacy_text(wide))
    pd.testing.assert_frame_equal(read_train_csv(legacy_only), wide)


def test_real_legacy_submission_parses_fast():
    path = _samples() / "public-kernel-submission-legacy.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    start = time.perf_counter()
    df = read_train_csv(path)
    elapsed = time.perf_counter() - start
    assert len(df) == 5506
    assert int((df[RLE_COLUMNS] != "").to_numpy().sum()) == 1793
    assert elapsed < 10.0, f"reading 22,024 rows took {elapsed:.1f} s"


def test_current_format_column_order_and_blank_lines(tmp_path):
    csv = _write(tmp_path / "t.csv", "EncodedPixels,ImageId,ClassId\n1 3,b.jpg,2\n\n5 2,a.jpg,4\n")
    df = read_train_csv(csv, shape=SHAPE)
    assert df["ImageId"].tolist() == ["a.jpg", "b.jpg"]
    assert df.loc[0, RLE_COLUMNS].tolist() == ["", "", "", "5 2"]
    assert df.loc[1, RLE_COLUMNS].tolist() == ["", "1 3", "", ""]


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("text", "patterns"),
    [
        (
            "ImageId,Class,EncodedPixels\na.jpg,1,1 2\n",
            ["line 1", "ImageId,ClassId,EncodedPixels", "ImageId_ClassId,EncodedPixels"],
        ),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\na.jpg,5,1 2\n", ["line 3", "'5'", "1..4"]),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\n\na.jpg,x,1 2\n", ["line 4", "'x'"]),
        (
            "ImageId,ClassId,EncodedPixels\na.jpg,2,1 2\nb.jpg,1,1 2\na.jpg,2,3 1\n",
            ["line 4", "line 2", "'a.jpg'"],
        ),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\na.jpg,3,1 2 7\n", ["line 3", "1 2 7", "malformed"]),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 2 x\n", ["line 2", "1 2 x"]),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 99999\n", ["line 2", "1 99999"]),
        ("ImageId_ClassId,EncodedPixels\na.jpg_1,\na.jpg,1 2\n", ["line 3", "'a.jpg'", "suffix"]),
        ("ImageId_ClassId,EncodedPixels\na.jpg_1,\na.jpg_0,\n", ["line 3", "a.jpg_0"]),
        ("ImageId_ClassId,EncodedPixels\na.jpg_1,\na.jpg_1,\n", ["line 3", "line 2"]),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1\n", ["line 2", "expected 3 fields"]),
    ],
)
def test_read_errors_name_file_line_and_value(tmp_path, text, patterns):
    csv = _write(tmp_path / "bad.csv", text)
    with pytest.raises(AnnotationError) as info:
        read_train_csv(csv, shape=SHAPE)
    message = str(info.value)
    assert str(csv) in message
    for pattern in patterns:
        assert pattern in message, f"{pattern!r} not in {message!r}"


def test_annotation_error_is_value_error():
    assert issubclass(AnnotationError, ValueError)


def test_validate_rle_can_be_skipped(tmp_path):
    csv = _write(tmp_path / "t.csv", "ImageId,ClassId,EncodedPixels\na.jpg,1,1 2 7\n")
    assert read_train_csv(csv, validate_rle=False).loc[0, "EncodedPixels_1"] == "1 2 7"


def test_missing_image_names_csv_line_and_id(tmp_path):
    root = _tiny_root(tmp_path, ["a.jpg"], "ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\nzz.jpg,3,4 4\n")
    with pytest.raises(AnnotationError, match=r"train\.csv: line 3: ImageId 'zz\.jpg'"):
        load_annotations(root, shape=SHAPE)


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        load_annotations(tmp_path / "nope")
    (tmp_path / "train_images").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "train.csv"))):
        load_annotations(tmp_path)
    _write(tmp_path / "train.csv", "ImageId,ClassId,EncodedPixels\n")
    with pytest.raises(FileNotFoundError, match="no images"):
        load_annotations(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "other_images"))):
        load_annotations(tmp_path, images="other_images")
    with pytest.raises(FileNotFoundError, match="csv not found"):
        read_train_csv(tmp_path / "missing.csv")


def test_folder_defines_rows_and_suffixes(tmp_path):
    root = _tiny_root(
        tmp_path,
        ["c.png", "a.jpg", "b.JPEG"],
        "ImageId,ClassId,EncodedPixels\nc.png,2,1 3\nc.png,4,10 2\n",
    )
    (root / "train_images" / "notes.txt").write_text("not an image")
    df = load_annotations(root, shape=SHAPE)
    assert df["ImageId"].tolist() == ["a.jpg", "b.JPEG", "c.png"]
    assert df["has_defect"].tolist() == [0, 0, 1]
    assert df[DEFECT_COLUMNS].to_numpy().tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 1]]
    assert stratify_key(df).tolist() == ["0", "0", "2+4"]
    # stratify_key also works from the RLE columns alone.
    assert stratify_key(df[["ImageId", *RLE_COLUMNS]]).tolist() == ["0", "0", "2+4"]
