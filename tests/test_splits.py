"""Notebook / k-fold splits: exact sklearn behaviour, small-data fallbacks, persistence."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from steel_defect.data.annotations import DEFECT_COLUMNS, stratify_key
from steel_defect.data.splits import (
    kfold_split,
    load_split,
    make_split,
    notebook_split,
    save_split,
    split_parts,
)


def fake_frame(strata: dict[str, int]) -> pd.DataFrame:
    """ImageIds ``img000.jpg``... with has_defect_* flags giving the requested stratum sizes."""
    rows = []
    for key, count in strata.items():
        classes = set() if key == "0" else {int(c) for c in key.split("+")}
        for _ in range(count):
            rows.append({f"has_defect_{c}": int(c in classes) for c in range(1, 5)})
    df = pd.DataFrame(rows, columns=DEFECT_COLUMNS)
    df.insert(0, "ImageId", [f"img{i:03d}.jpg" for i in range(len(df))])
    df["has_defect"] = df[DEFECT_COLUMNS].max(axis=1)
    # Shuffle rows deterministically so strata are not contiguous.
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


STRATA = {"0": 40, "3": 30, "1": 10, "4": 10, "2": 10}


def test_notebook_split_sizes_strata_and_sklearn_equivalence():
    df = fake_frame(STRATA)
    split = notebook_split(df)
    assert [len(split[k]) for k in ("train", "val", "test")] == [72, 18, 10]
    assert set(split["train"]) | set(split["val"]) | set(split["test"]) == set(df["ImageId"])
    assert not set(split["train"]) & set(split["val"]) and not set(split["test"]) & set(
        split["train"] + split["val"]
    )
    key = stratify_key(df).set_axis(df["ImageId"])
    assert key.loc[split["test"]].value_counts().to_dict() == {"0": 4, "3": 3, "1": 1, "4": 1, "2": 1}
    # Exactly the notebook: two train_test_split calls with random_state=42.
    x_train, x_test = train_test_split(df["ImageId"], test_size=0.1, stratify=key.to_numpy(), random_state=42)
    x_tr, x_val = train_test_split(
        x_train, test_size=0.2, stratify=key.loc[x_train].to_numpy(), random_state=42
    )
    assert split == {"train": x_tr.tolist(), "val": x_val.tolist(), "test": x_test.tolist()}
    # Deterministic, and the seed matters.
    assert notebook_split(df) == split
    assert notebook_split(df, seed=1) != split


def test_notebook_split_merges_rare_strata_with_warning(caplog):
    df = fake_frame({"0": 40, "3": 30, "1": 10, "4": 10, "2": 8, "1+3": 1, "2+4": 1})
    with caplog.at_level(logging.WARNING, logger="steel_defect.data.splits"):
        split = notebook_split(df)
    assert "merging rare strata" in caplog.text
    assert sum(len(v) for v in split.values()) == 100
    assert notebook_split(df) == split


def test_tiny_data_falls_back_to_unstratified(caplog):
    df = fake_frame({"0": 3, "1": 1, "2": 1, "3+4": 1, "4": 1})
    with caplog.at_level(logging.WARNING, logger="steel_defect.data.splits"):
        split = notebook_split(df)
    assert "without stratification" in caplog.text
    assert sorted(sum(split.values(), [])) == sorted(df["ImageId"])
    assert all(len(v) >= 1 for v in split.values())
    assert notebook_split(df) == split
    folds = kfold_split(df, n_splits=3, fold=1)
    assert sorted(folds["train"] + folds["val"]) == sorted(df["ImageId"])


def test_kfold_partitions_and_is_stratified():
    df = fake_frame(STRATA)
    vals = []
    for fold in range(5):
        split = kfold_split(df, n_splits=5, fold=fold)
        assert set(split["train"]).isdisjoint(split["val"])
        assert set(split["train"]) | set(split["val"]) == set(df["ImageId"])
        assert len(split["val"]) == 20
        key = stratify_key(df).set_axis(df["ImageId"])
        assert key.loc[split["val"]].value_counts().to_dict() == {"0": 8, "3": 6, "1": 2, "4": 2, "2": 2}
        vals.append(set(split["val"]))
    assert set().union(*vals) == set(df["ImageId"]) and sum(map(len, vals)) == 100
    assert kfold_split(df, fold=2) == kfold_split(df, fold=2)


@pytest.mark.parametrize("fold", [-1, 5, 1.5])
def test_kfold_bad_fold(fold):
    with pytest.raises(ValueError, match=r"0\.\.4"):
        kfold_split(fake_frame(STRATA), n_splits=5, fold=fold)


def test_make_split_kinds_and_errors():
    df = fake_frame(STRATA)
    split = make_split(df, {"kind": "notebook"})
    assert split["cfg"] == {"kind": "notebook", "test_size": 0.1, "val_size": 0.2, "seed": 42}
    assert split_parts(split) == notebook_split(df)
    kf = make_split(df, {"kind": "kfold", "n_splits": 4, "fold": 3, "seed": 7})
    assert split_parts(kf) == kfold_split(df, n_splits=4, fold=3, seed=7)
    with pytest.raises(ValueError, match=r"unknown split kind 'random'.*kfold.*notebook"):
        make_split(df, {"kind": "random"})
    with pytest.raises(ValueError, match="unknown keys"):
        make_split(df, {"kind": "kfold", "test_size": 0.1})
    with pytest.raises(ValueError, match="n_splits must be an integer"):
        make_split(df, {"kind": "kfold", "n_splits": 2.5})


def test_save_and_load_roundtrip(tmp_path):
    df = fake_frame(STRATA)
    split = make_split(df, {"kind": "notebook", "seed": 3})
    path = save_split(split, tmp_path / "run" / "split.json")
    assert json.loads(path.read_text())["cfg"]["seed"] == 3
    assert load_split(path) == split
    assert not list(path.parent.glob("*.tmp"))


def test_load_split_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="split file not found"):
        load_split(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": ["a"], "val": ["a"]}')
    with pytest.raises(ValueError, match="'a' is in both 'train' and 'val'"):
        load_split(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid split JSON"):
        load_split(bad)
    bad.write_text('{"train": ["a"]}')
    with pytest.raises(ValueError, match="no 'val' part"):
        load_split(bad)
