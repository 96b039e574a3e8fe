"""The few-shot pieces: a fold ensemble with out-of-fold thresholds recorded in its run folder, ``ckpt=RUN``
resolving to that model, ``model.init_from``, and the run-time bf16 choice (tiny nets, 64x320 images)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY_NET
from tests.helpers import compose_train

FOLD_RUN = [
    "experiment=fewshot_cpu",
    "model=tiny",
    "data.shape=[64,320]",
    "data.crop_width=96",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_steps=2",
    "folds=2",
    "~callbacks.rich_progress_bar",
]


@pytest.fixture(scope="module")
def fold_run(small_synthetic, tmp_path_factory) -> Path:
    """``train.py experiment=fewshot_cpu folds=2`` on a Kaggle-layout set read as real data."""
    from steel_defect.tasks.train import run

    tmp = tmp_path_factory.mktemp("fold_run")
    cfg = compose_train([*FOLD_RUN, "data=severstal", f"data.root={small_synthetic}"], tmp)
    metrics = run(cfg)
    assert 0.0 <= metrics["oof/dice_default"] <= 1.0 and 0.0 <= metrics["oof/dice_tuned"] <= 1.0
    assert metrics["oof/dice_empty"] == pytest.approx(
        1 - small_synthetic_defect_pairs(small_synthetic) / (40 * 4)
    )
    return tmp / "run"


@pytest.mark.slow
def test_fold_ensemble_records_its_checkpoints_and_out_of_fold_thresholds(fold_run, small_synthetic):
    from steel_defect.data.splits import load_split

    doc = yaml.safe_load((fold_run / "model.yaml").read_text())
    assert doc["kind"] == "fold_ensemble" and doc["folds"] == 2
    assert doc["checkpoints"] == ["fold_0/checkpoints/fold.ckpt", "fold_1/checkpoints/fold.ckpt"]
    assert doc["thresholds"] == "thresholds.yaml"
    tuned = yaml.safe_load((fold_run / "thresholds.yaml").read_text())
    assert tuned["meta"]["source"] == "tune_oof" and len(tuned["meta"]["folds"]) == 2
    assert tuned["meta"]["tta"] == ["hflip", "vflip"]  # the recipe's oof.tta
    val = [load_split(fold_run / f"fold_{i}" / "split.json")["val"] for i in range(2)]
    assert not set(val[0]) & set(val[1])  # each image out of fold exactly once
    assert tuned["report"]["num_images"] == len(val[0]) + len(val[1]) == 40
    assert not (fold_run / "fold_0" / "checkpoints" / "last.ckpt").exists()  # one file per fold


@pytest.mark.slow
def test_predict_with_a_run_folder_uses_the_ensemble_and_its_thresholds(fold_run, small_synthetic, tmp_path):
    from steel_defect.tasks.dispatch import run

    summary = run(
        {
            "task": "evaluate",
            "ckpt": str(fold_run),
            "device": "cpu",
            "images": str(small_synthetic / "test_images"),
            "data": {"labels": str(small_synthetic / "test_labels.csv")},
            "out": str(tmp_path / "submission.csv"),
        }
    )
    assert summary["thresholds"] == str(fold_run / "thresholds.yaml")
    report = (tmp_path / "evaluation.json").read_text()
    # tta: null follows the views the thresholds were tuned under
    assert json.loads(report)["tta"] == ["hflip", "vflip"]
    assert "fold_0/checkpoints/fold.ckpt" in report and "fold_1/checkpoints/fold.ckpt" in report


def test_resolve_model_of_files_folders_and_older_runs(tmp_path):
    from steel_defect.run_record import resolve_ckpt_arg, resolve_model, write_run_record

    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"x")
    assert resolve_model(ckpt) == ([ckpt], None)
    old = tmp_path / "old_run"
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match="no checkpoint"):
        resolve_model(old)
    (old / "checkpoints" / "epoch_003.ckpt").write_bytes(b"x")
    assert resolve_model(old) == ([old / "checkpoints" / "epoch_003.ckpt"], None)
    (old / "checkpoints" / "epoch_004.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match="2 checkpoint"):
        resolve_model(old)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    best = run / "checkpoints" / "best.ckpt"
    best.write_bytes(b"x")
    thresholds = run / "checkpoints" / "thresholds.yaml"
    thresholds.write_text("params: {}\n")
    write_run_record(run, [best], thresholds)
    assert resolve_ckpt_arg([str(run)], "auto") == ([best], str(thresholds))
    assert resolve_ckpt_arg([str(run)], "defaults") == ([best], "defaults")
    with pytest.raises(ValueError, match="stands for its whole model"):
        resolve_ckpt_arg([str(run), str(ckpt)])
    thresholds.unlink()
    with pytest.raises(FileNotFoundError, match="thresholds file that is missing"):
        resolve_model(run)


def _tiny_checkpoint(path: Path, net_cfg: dict, classes: list[str]) -> Path:
    from steel_defect.models.module import SteelDefectModule

    module = SteelDefectModule(net=net_cfg, class_names=classes)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def test_init_from_copies_the_network_weights_and_refuses_other_classes_or_architectures(tmp_path):
    from steel_defect.models.module import SteelDefectModule

    torch.manual_seed(0)
    src = _tiny_checkpoint(tmp_path / "src.ckpt", dict(TINY_NET), ["1", "2", "3", "4"])
    theirs = torch.load(src, weights_only=True)["state_dict"]
    torch.manual_seed(1)
    fresh = SteelDefectModule(net=dict(TINY_NET), class_names=["1", "2", "3", "4"])
    assert any(not torch.equal(v, theirs[k]) for k, v in fresh.state_dict().items() if k.startswith("net."))
    seeded = SteelDefectModule(net=dict(TINY_NET), class_names=["1", "2", "3", "4"], init_from=str(src))
    for key, value in seeded.state_dict().items():
        if key.startswith("net."):
            assert torch.equal(value, theirs[key]), key
    assert seeded.hparams.init_from == str(src)
    with pytest.raises(
        ValueError, match=r"classes \['1', '2', '3', '4'\] differ from this run's \['pit', 'scale'\]"
    ):
        SteelDefectModule(net=dict(TINY_NET), class_names=["pit", "scale"], init_from=str(src))
    with pytest.raises(ValueError, match=r"another architecture \(model.net.decoder_channels"):
        SteelDefectModule(
            net={**TINY_NET, "decoder_channels": [16, 16, 8, 8, 8]},
            class_names=["1", "2", "3", "4"],
            init_from=str(src),
        )
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        SteelDefectModule(net=dict(TINY_NET), init_from=str(tmp_path / "nope.ckpt"))


def test_init_from_is_a_model_config_key(tmp_path):
    cfg = compose_train(["model=tiny", "model.init_from=/x.ckpt"], tmp_path)
    assert cfg.model.init_from == "/x.ckpt"


def test_fewshot_experiment_composes_for_both_real_layouts(tmp_path):
    cfg = compose_train(["experiment=fewshot_cpu", f"data.root={tmp_path}"], tmp_path)
    assert cfg.data._target_ == "steel_defect.data.SteelDataModule" and "synthetic" not in cfg.data
    assert cfg.folds == 3 and cfg.trainer.max_steps > 0 and cfg.trainer.precision == "auto-bf16"
    assert cfg.callbacks.tune_thresholds is None and cfg.callbacks.model_checkpoint.monitor is None
    folder = compose_train(
        ["experiment=fewshot_cpu", "data=folder", f"data.root={tmp_path}", "data.classes=[a,b]"], tmp_path
    )
    assert folder.data.layout == "folder" and folder.folds == 3


@pytest.mark.parametrize(
    ("flags", "machine", "accelerator", "expected"),
    [
        ({"avx512f", "amx_bf16", "amx_tile"}, "x86_64", "cpu", "bf16-mixed"),
        ({"avx512f", "avx512_bf16"}, "x86_64", "cpu", "bf16-mixed"),
        ({"avx2", "fma"}, "x86_64", "cpu", "32-true"),
        ({"asimd", "bf16"}, "aarch64", "cpu", "32-true"),
        ({"avx2"}, "x86_64", "gpu", "bf16-mixed"),
    ],
)
def test_auto_bf16_only_where_the_cpu_has_it(flags, machine, accelerator, expected, monkeypatch):
    import platform

    from steel_defect.cpu_features import resolve_precision

    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert resolve_precision("auto-bf16", accelerator, frozenset(flags)) == expected
    assert resolve_precision("16-mixed", accelerator, frozenset(flags)) == "16-mixed"


@pytest.mark.slow
def test_fold_ensemble_with_the_folder_layout_tunes_on_a_csv_in_the_run_folder(small_synthetic, tmp_path):
    """data=folder: the masks become a label csv inside the run folder for the out-of-fold search; the data
    folder is left as it was."""
    from steel_defect.data.convert import kaggle_to_folder
    from steel_defect.tasks.train import run

    plant = tmp_path / "plant"
    images = tmp_path / "src_images"
    shutil.copytree(small_synthetic / "train_images", images)
    kaggle_to_folder(small_synthetic / "train.csv", images, plant)
    before = sorted(p.relative_to(plant).as_posix() for p in plant.rglob("*"))
    cfg = compose_train(
        [
            *FOLD_RUN,
            "data=folder",
            f"data.root={plant}",
            "data.classes=[a,b,c,d]",
            "data.shape=[64,320]",
            "data.crop_height=64",
        ],
        tmp_path,
    )
    run(cfg)
    assert (tmp_path / "run" / "labels.csv").is_file() and (tmp_path / "run" / "model.yaml").is_file()
    assert sorted(p.relative_to(plant).as_posix() for p in plant.rglob("*")) == before


def small_synthetic_defect_pairs(root: Path) -> int:
    """The (image, class) pairs with a defect in ``root/train.csv`` (one row each)."""
    return len((root / "train.csv").read_text().splitlines()) - 1


@pytest.mark.slow
def test_the_service_settings_resolve_a_run_folder(fold_run):
    from steel_defect.deploy.serve.settings import parse_settings

    settings = parse_settings({"ckpt": str(fold_run)})
    assert [Path(p).name for p in settings.ckpt] == ["fold.ckpt", "fold.ckpt"]
    assert settings.thresholds == str(fold_run / "thresholds.yaml")
    assert parse_settings({"ckpt": str(fold_run), "thresholds": "defaults"}).thresholds == "defaults"
