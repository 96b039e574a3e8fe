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
    assert doc["meta"]["source"] == "tune_oof" and doc["meta"]["checkpoints"] == [str(p) for p in ckpts]
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


def test_train_folds_tunes_out_of_fold_with_the_oof_keys(tmp_path, monkeypatch):
    """train.py ``folds: K`` hands ``oof.tta`` and ``oof.min_gain_pairs`` to its out-of-fold search (the
    fits and the search itself are stubbed: this is only the wiring)."""
    from omegaconf import OmegaConf

    import steel_defect.tasks.train as train_task
    from steel_defect.run_record import write_run_record

    def fake_train(cfg):
        out = Path(cfg.paths.output_dir)
        ckpt = out / "checkpoints" / "best.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"")
        write_run_record(out, [ckpt], None)
        return {}

    seen = {}

    def fake_tune_oof(c):
        seen["config"] = c
        return {"report": {"num_images": 4, "mean": {"dice_default": 0.5, "dice_tuned": 0.6}}}

    monkeypatch.setattr(train_task, "train", fake_train)
    monkeypatch.setattr(train_task, "validate_config", lambda cfg: None)
    monkeypatch.setattr(train_task, "_labels_for_tuning", lambda cfg, base: (tmp_path, tmp_path / "l.csv"))
    monkeypatch.setattr(train_task, "_all_empty_dice", lambda *a: 0.25)
    monkeypatch.setattr(train_task, "run_tune_oof", fake_tune_oof)
    cfg = OmegaConf.create(
        {
            "folds": 2,
            "seed": 1,
            "paths": {"output_dir": str(tmp_path / "run")},
            "trainer": {"accelerator": "cpu"},
            "data": {"classes": ["a", "b"]},
            "oof": {"min_gain_pairs": 3, "tta": ["hflip"]},
        }
    )
    metrics = train_task.train_folds(cfg)
    c = seen["config"]
    assert c.task == "tune_oof" and c.min_gain_pairs == 3 and c.tta == ("hflip",) and len(c.ckpt) == 2
    assert metrics["oof/dice_tuned"] == 0.6
    with train_task.open_dict(cfg):  # without an oof section (older configs): today's search
        cfg.pop("oof")
    cfg.paths.output_dir = str(tmp_path / "run2")
    train_task.train_folds(cfg)
    assert seen["config"].min_gain_pairs == 0 and seen["config"].tta == ()


def test_min_gain_pairs_is_a_validated_predict_key():
    from steel_defect.tasks.config import parse_config

    assert parse_config({"ckpt": "a.ckpt", "task": "tune_oof"}).min_gain_pairs == 0
    assert parse_config({"ckpt": "a.ckpt", "task": "tune", "min_gain_pairs": 2}).min_gain_pairs == 2
    with pytest.raises(ValueError, match="min_gain_pairs"):
        parse_config({"ckpt": "a.ckpt", "task": "tune", "min_gain_pairs": -1})
