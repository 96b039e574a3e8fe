"""k-fold end to end: tune_oof pools each fold's own validation predictions into one thresholds.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from steel_defect.data.annotations import load_annotations
from steel_defect.data.splits import load_split, make_split, save_split
from steel_defect.postprocess.params import PostprocessParams
from steel_defect.tasks.dispatch import run
from tests.helpers import SHAPE, config, tiny_run


def fold_runs(tmp_path: Path, kind: str = "kfold") -> tuple[Path, list[Path]]:
    """Two fold runs <multirun>/{0,1}/ with a checkpoint and the fold's split.json each."""
    files = tiny_run(tmp_path / "tiny")
    frame = load_annotations(files["data"], shape=SHAPE)
    multirun = tmp_path / "multirun"
    ckpts = []
    for fold, which in ((0, "a"), (1, "a")):
        run_dir = multirun / str(fold)
        cfg = {"kind": "kfold", "n_splits": 2, "fold": fold, "seed": 1} if kind == "kfold" else {"kind": kind}
        save_split(make_split(frame, cfg), run_dir / "split.json")
        ckpt = run_dir / "checkpoints" / "best.ckpt"
        ckpt.parent.mkdir(parents=True)
        state = torch.load(files[which], weights_only=True)
        if fold == 1:  # a clearly different net for fold 1, so that swapping the folds changes the result
            gen = torch.Generator().manual_seed(7)
            state["state_dict"] = {  # conv / linear weights only: BatchNorm statistics stay valid
                k: v + 0.5 * torch.randn(v.shape, generator=gen) if v.ndim >= 2 else v
                for k, v in state["state_dict"].items()
            }
        torch.save(state, ckpt)
        ckpts.append(ckpt)
    return files["data"], ckpts


@pytest.mark.slow
def test_tune_oof_pools_every_fold_with_its_own_checkpoint(tmp_path):
    data, ckpts = fold_runs(tmp_path)
    result = run(config(task="tune_oof", ckpt=[str(p) for p in ckpts], data={"root": str(data)}))
    out = tmp_path / "multirun" / "thresholds.yaml"
    assert result["thresholds"] == str(out)
    doc = yaml.safe_load(out.read_text())
    splits = [load_split(p.parent.parent / "split.json") for p in ckpts]
    assert doc["report"]["num_images"] == sum(len(s["val"]) for s in splits) == 8  # the whole training set
    assert doc["meta"]["oof"] is True and doc["meta"]["checkpoints"] == [str(p) for p in ckpts]
    # Pooled out of fold, by another route: task=tune of each fold's checkpoint alone on its own split's
    # validation images. Dice at fixed thresholds (raw, default) is a mean over images, so the pooled report
    # must be the image-weighted mean of the per-fold reports, class by class.
    per_fold = []
    for fold, (ckpt, split) in enumerate(zip(ckpts, splits, strict=True)):
        alone = tmp_path / "alone" / str(fold) / "model.ckpt"
        alone.parent.mkdir(parents=True)
        shutil.copy(ckpt, alone)
        split_file = ckpt.parent.parent / "split.json"
        run(config(task="tune", ckpt=str(alone), data={"root": str(data), "split": str(split_file)}))
        report = yaml.safe_load((alone.parent / "thresholds.yaml").read_text())["report"]
        assert report["num_images"] == len(split["val"])
        per_fold.append(report)
    n = np.array([r["num_images"] for r in per_fold], dtype=float)
    for key in ("dice_raw", "dice_default"):
        for k, row in enumerate(doc["report"]["classes"]):
            folds = np.array([r["classes"][k][key] for r in per_fold])
            assert np.isclose(row[key], (folds * n).sum() / n.sum()), (key, k)
    assert PostprocessParams.from_dict(doc["params"]).num_classes == 4
    # Each fold used its own net: the same splits with the two checkpoints' files exchanged give other counts.
    swapped_runs = []
    for fold, source in ((0, ckpts[1]), (1, ckpts[0])):
        run_dir = tmp_path / "swapped" / str(fold)
        (run_dir / "checkpoints").mkdir(parents=True)
        shutil.copy(ckpts[fold].parent.parent / "split.json", run_dir / "split.json")
        swapped_runs.append(str(shutil.copy(source, run_dir / "checkpoints" / "best.ckpt")))
    swapped = run(config(task="tune_oof", ckpt=swapped_runs, data={"root": str(data)}))
    assert swapped["report"]["classes"] != doc["report"]["classes"]
    # An explicit .yaml out is honoured.
    other = tmp_path / "elsewhere.yaml"
    run(config(task="tune_oof", ckpt=[str(p) for p in ckpts], data={"root": str(data)}, out=str(other)))
    assert yaml.safe_load(other.read_text())["params"] == doc["params"]


@pytest.mark.slow
def test_tune_oof_refuses_what_is_not_one_kfold_split(tmp_path):
    data, ckpts = fold_runs(tmp_path, kind="notebook")
    with pytest.raises(ValueError, match="needs k-fold runs"):
        run(config(task="tune_oof", ckpt=[str(p) for p in ckpts], data={"root": str(data)}))
    data, ckpts = fold_runs(tmp_path / "same")
    shutil.copy(ckpts[0].parent.parent / "split.json", ckpts[1].parent.parent / "split.json")
    with pytest.raises(ValueError, match="same fold"):
        run(config(task="tune_oof", ckpt=[str(p) for p in ckpts], data={"root": str(data)}))
    with pytest.raises(ValueError, match="checkpoints of every fold"):
        run(config(task="tune_oof", ckpt=[str(ckpts[0])], data={"root": str(data)}))


def test_check_folds_refuses_mixed_partial_and_overlapping_folds(tmp_path):
    from steel_defect.tasks.tune import check_folds

    paths = [tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"]

    def split(fold, val, n=3, seed=1):
        return {"cfg": {"kind": "kfold", "n_splits": n, "fold": fold, "seed": seed}, "val": val}

    check_folds([split(0, ["x"]), split(1, ["y"]), split(2, ["z"])], paths)
    with pytest.raises(ValueError, match="different k-fold splits"):
        check_folds([split(0, ["x"]), split(1, ["y"], seed=2), split(2, ["z"])], paths)
    with pytest.raises(ValueError, match=r"every fold 0..2.*got folds \[0, 2\]"):
        check_folds([split(0, ["x"]), split(2, ["z"])], paths[:2])
    with pytest.raises(ValueError, match="'y' is in both"):
        check_folds([split(0, ["x", "y"]), split(1, ["y"]), split(2, ["z"])], paths)
