"""train.py and the Hydra configs: composed for real, run for real (tiny settings, CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from hydra.errors import InstantiationException

from tests.conftest import REPO, SMALL_SHAPE
from tests.helpers import TINY, compose_train


def run_cli(args: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python train.py ARGS` in a subprocess with its data/logs under tmp_path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO)}
    flags = [a for a in args if a.startswith("-") and not a.startswith("~")]
    overrides = [a for a in args if a not in flags]
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        *flags,
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("model", ["unet_effb1", "unet_efflite1", "unet_resnet34", "fpn_effb3", "tiny"])
def test_every_model_config_composes_and_builds(model, tmp_path):
    from steel_defect.models import build_model

    cfg = compose_train([f"model={model}", "model.net.encoder_weights=null"], tmp_path)
    assert cfg.model._target_ == "steel_defect.models.SteelDefectModule"
    net = build_model(dict(cfg.model.net))
    mask, cls, img = net(torch.rand(1, 3, 64, 128))  # every model config has the image head on
    assert mask.shape == (1, 4, 64, 128) and cls.shape == (1, 4) and img.shape == (1,)
    assert cfg.model.loss.image_weight > 0


@pytest.mark.parametrize("trainer", ["default", "cpu", "gpu", "ddp", "ddp_cpu"])
def test_every_trainer_config_composes(trainer, tmp_path):
    cfg = compose_train([f"trainer={trainer}"], tmp_path)
    assert cfg.trainer._target_.endswith("Trainer")


def test_experiments_and_debug_configs_compose(tmp_path):
    for overrides in (
        ["experiment=demo_cpu"],
        ["experiment=severstal_effb1", "data.root=/x"],
        ["debug=overfit"],
        ["debug=limit"],
        ["debug=fast_dev_run"],
        ["logger=tensorboard"],
        ["callbacks=none"],
    ):
        cfg = compose_train(overrides, tmp_path)
        # the network's classes follow the data's names (Severstal's four unless data.classes says otherwise)
        assert cfg.model.net.classes is None and list(cfg.model.class_names) == ["1", "2", "3", "4"]


def test_split_group_and_ema_callbacks_compose(tmp_path):
    from steel_defect.training.callbacks import EMA
    from steel_defect.training.instantiate import instantiate_group

    cfg = compose_train(["data/split=kfold", "data.split.fold=3"], tmp_path)
    assert dict(cfg.data.split) == {"kind": "kfold", "n_splits": 5, "fold": 3, "seed": 42}
    assert dict(compose_train([], tmp_path).data.split) == {
        "kind": "notebook",
        "test_size": 0.1,
        "val_size": 0.2,
        "seed": 42,
    }
    cfg = compose_train(["callbacks=ema", "callbacks.ema.decay=0.99"], tmp_path)
    callbacks = instantiate_group(cfg.callbacks, "callbacks")
    ema = [c for c in callbacks if isinstance(c, EMA)]
    assert len(ema) == 1 and ema[0].decay == 0.99
    assert "model_checkpoint" in cfg.callbacks and "tune_thresholds" in cfg.callbacks  # the defaults stay


def test_the_winners_experiment_composes_into_valid_parts(tmp_path):
    from omegaconf import OmegaConf

    from steel_defect.data.splits import normalise_split_cfg
    from steel_defect.models.losses import SegClsLoss
    from steel_defect.postprocess.params import PostprocessParams

    cfg = compose_train(["experiment=severstal_winners", "data.root=/x", "data.split.fold=2"], tmp_path)
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model", "callbacks")}
    assert normalise_split_cfg(plain["data"]["split"])["fold"] == 2
    pp = PostprocessParams.from_dict(plain["model"]["postprocess"])
    assert pp.min_component == [150] * 4 and pp.t_cls == [0.7, 0.7, 0.6, 0.6]
    SegClsLoss(**plain["model"]["loss"])
    assert plain["model"]["optimizer"]["encoder_lr"] < plain["model"]["optimizer"]["lr"]
    assert plain["callbacks"]["ema"]["decay"] == 0.999
    assert plain["callbacks"]["tune_thresholds"]["pix_modes"] == ["plain", "soft", "scaled"]


def test_the_demo_composes_into_valid_parts(tmp_path):
    """The demo's data and net settings are accepted by the parts they configure (a step budget, fp32)."""
    from omegaconf import OmegaConf

    from steel_defect.models.factory import resolve_config
    from steel_defect.synthetic.datamodule import SyntheticDataModule

    cfg = compose_train(["experiment=demo_cpu"], tmp_path)
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model", "trainer")}
    assert plain["data"].pop("_target_") == "steel_defect.synthetic.datamodule.SyntheticDataModule"
    plain["data"].pop("split_file")
    dm = SyntheticDataModule(**plain["data"])
    assert dm.hparams.defect_crop_p == 0.5 and dm.hparams.crop_width == 320
    assert dm.synthetic["n_train"] == 1000 and dm.synthetic["class_mix"] == "balanced"
    # the same experiment on real data: the demo's settings, no generation
    real = compose_train(["experiment=demo_cpu", "data=severstal", f"data.root={tmp_path}"], tmp_path)
    assert real.data._target_ == "steel_defect.data.SteelDataModule" and "synthetic" not in real.data
    assert real.data.crop_width == 320 and real.data.defect_crop_p == 0.5
    net = resolve_config({**plain["model"]["net"], "encoder_weights": None, "classes": 4})
    assert net["decoder_channels"] == [128, 64, 32, 16, 8] and net["mask_prior"] == 0.01
    assert plain["trainer"]["precision"] == "32-true" and plain["trainer"]["max_epochs"] == 4


@pytest.mark.slow
def test_fast_dev_run_in_process(tmp_path):
    from train import train

    cfg = compose_train(["model=tiny", "trainer.fast_dev_run=true", *TINY], tmp_path)
    metrics = train(cfg)
    assert "val/dice" in metrics and 0.0 <= float(metrics["val/dice"]) <= 1.0
    # the synthetic set was generated on first use into data_dir
    assert (tmp_path / "data" / "synthetic" / "train.csv").is_file()


@pytest.mark.slow
def test_cli_fast_dev_run_default_model(tmp_path):
    """`python train.py trainer.fast_dev_run=true` with the default model (EfficientNet-B1, no download)."""
    proc = run_cli(["trainer.fast_dev_run=true", "model.net.encoder_weights=null", *TINY], tmp_path)
    assert "val/dice" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_cli_real_samples_with_effb1(samples_dir, tmp_path):
    """`python train.py model=unet_effb1 data=severstal data.root=<real samples>` at full 256x1600 size."""
    run_cli(
        [
            "model=unet_effb1",
            "data=severstal",
            f"data.root={samples_dir}",
            "model.net.encoder_weights=null",
            "data.batch_size=2",
            "data.val_batch_size=2",
            "data.num_workers=0",
            "data.crop_width=256",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "trainer.num_sanity_val_steps=0",
            "~callbacks.rich_progress_bar",
            "test=false",
            "hydra.run.dir=" + str(tmp_path / "run"),
        ],
        tmp_path,
    )
    assert (tmp_path / "run" / "split.json").is_file()
    assert list((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    # threshold tuning ran on the best checkpoint at the end of fit and wrote thresholds.yaml beside it
    from steel_defect.postprocess.params import load_thresholds

    params = load_thresholds(tmp_path / "run" / "checkpoints" / "thresholds.yaml")
    assert len(params.t_pix) == 4


def held_out_dice(ckpt: Path, datamodule, params) -> dict[str, float]:
    """Kaggle Dice of ``params`` on the datamodule's held-out test split, computed directly (no Lightning)."""
    import numpy as np

    from steel_defect.inference.predictor import iter_probabilities, load_nets
    from steel_defect.metrics import kaggle_dice, kaggle_dice_per_class
    from steel_defect.postprocess.apply import postprocess

    datamodule.prepare_data()
    datamodule.setup("test")
    nets, _ = load_nets([ckpt])
    preds, targets = [], []
    for batch, mp, cp, ip in iter_probabilities(nets, datamodule.test_dataloader()):
        preds.append(
            postprocess(mp.numpy(), cp.numpy(), params, image_probs=None if ip is None else ip.numpy())
        )
        targets.append(batch["mask"].numpy() > 0.5)
    pred, target = np.concatenate(preds), np.concatenate(targets)
    return {"mean": float(kaggle_dice(pred, target)), "per_class": kaggle_dice_per_class(pred, target)}


@pytest.mark.slow
def test_fit_then_test_logs_held_out_dice_three_ways_and_tuned_uses_thresholds_yaml(tmp_path, caplog):
    """After fit + test: test/dice_{raw,default,tuned} (+ per class) on the held-out split; dice_tuned is the
    Dice of the thresholds.yaml that tuning wrote on val (with both image-gate sources measured)."""
    import logging

    from steel_defect.postprocess.params import PostprocessParams, load_thresholds
    from steel_defect.training.instantiate import instantiate_plain
    from train import train

    cfg = compose_train(
        [
            "model=tiny",
            *TINY,
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "~callbacks.early_stopping",
        ],
        tmp_path,
    )
    with caplog.at_level(logging.INFO):
        metrics = train(cfg)
    for kind in ("raw", "default", "tuned"):
        for key in (f"test/dice_{kind}", *(f"test/dice_{kind}_{c}" for c in range(1, 5))):
            assert key in metrics, key
            assert 0.0 <= float(metrics[key]) <= 1.0, key
    path = tmp_path / "run" / "checkpoints" / "thresholds.yaml"
    doc = yaml.safe_load(path.read_text())
    best = Path(doc["meta"]["checkpoints"][0])
    assert doc["meta"]["source"] == "end_of_training" and best.parent == path.parent
    # Tuning measured both sources of the image gate (the tiny net has the image head) and wrote the choice.
    assert set(doc["report"]["image_gate"]["sources"]) == {"max_cls", "image_head"}
    assert "img_source" in doc["params"] and "dice_tuned_no_gate" in doc["report"]["mean"]
    tuned = load_thresholds(path)
    assert tuned != PostprocessParams.notebook_defaults()
    # Recomputed on the held-out test split with the best checkpoint: raw, defaults and the written yaml.
    datamodule = instantiate_plain(cfg.data)
    for kind, params in (
        ("raw", PostprocessParams.disabled()),
        ("default", PostprocessParams.notebook_defaults()),
        ("tuned", tuned),
    ):
        expected = held_out_dice(best, datamodule, params)
        assert float(metrics[f"test/dice_{kind}"]) == pytest.approx(expected["mean"], abs=1e-6), kind
        for c in range(1, 5):
            assert float(metrics[f"test/dice_{kind}_{c}"]) == pytest.approx(
                expected["per_class"][c - 1], abs=1e-6
            )
    # The end-of-training table says which figures are in-sample (val) and which held-out (test).
    assert "in-sample (val) vs held-out (test)" in caplog.text
    table = caplog.text[caplog.text.index("split post-processing") :]
    lines = table.splitlines()
    assert lines[4].startswith("val   tuned") and "in-sample: tuned on val" in lines[4]
    assert f"{doc['report']['mean']['dice_tuned']:6.4f}" in lines[4]
    assert lines[7].startswith("test  tuned") and "held-out" in lines[7]
    assert f"{float(metrics['test/dice_tuned']):6.4f}" in lines[7]
    assert f"{float(metrics['test/dice_raw']):6.4f}" in lines[5]


@pytest.mark.slow
def test_cli_multirun_two_runs_two_dirs(tmp_path):
    run_cli(
        [
            "-m",
            "model.optimizer.lr=1e-3,3e-4",
            "trainer.fast_dev_run=true",
            "model=tiny",
            *TINY,
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        tmp_path,
    )
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert runs == ["0", "1"]
    for run in runs:
        overrides = (tmp_path / "sweep" / run / ".hydra" / "overrides.yaml").read_text()
        assert "model.optimizer.lr" in overrides


@pytest.mark.slow
def test_cli_optuna_two_trials(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed")
    proc = run_cli(
        [
            "-m",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=1",
            "model=tiny",
            "trainer.fast_dev_run=true",
            *TINY,
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        tmp_path,
    )
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert runs == ["0", "1"]
    best = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "best_value" in best, proc.stdout[-2000:]


@pytest.mark.slow
def test_cli_ddp_cpu_two_processes_validate_whole_set(tmp_path):
    """Real DDP (2 processes, gloo): the logged val/dice equals a 1-process validation of the same weights,
    and the held-out test/dice_{raw,default,tuned} equal a 1-process computation with the thresholds.yaml
    that rank 0 tuned (the tuned params reach every process)."""
    run_dir = tmp_path / "run"
    run_cli(
        [
            "trainer=ddp_cpu",
            "trainer.devices=2",
            "model=tiny",
            *TINY,
            "data.limit_val=6",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    metrics = pd.read_csv(next(run_dir.glob("csv/*/metrics.csv")))
    ddp_dice = metrics["val/dice_raw"].dropna().iloc[-1]

    from steel_defect.postprocess.params import PostprocessParams, load_thresholds
    from steel_defect.training.instantiate import instantiate_plain

    thresholds = run_dir / "checkpoints" / "thresholds.yaml"
    best = Path(yaml.safe_load(thresholds.read_text())["meta"]["checkpoints"][0])
    data_cfg = compose_train(["model=tiny", *TINY, "data.limit_val=6"], tmp_path).data
    for kind, params in (
        ("raw", PostprocessParams.disabled()),
        ("default", PostprocessParams.notebook_defaults()),
        ("tuned", load_thresholds(thresholds)),
    ):
        expected = held_out_dice(best, instantiate_plain(data_cfg), params)["mean"]
        assert metrics[f"test/dice_{kind}"].dropna().iloc[-1] == pytest.approx(expected, abs=1e-6), kind

    from train import train

    cfg = compose_train(
        ["model=tiny", *TINY, "data.limit_val=6", "train=false", "test=false"], tmp_path / "single"
    )
    # validate the DDP run's final weights in one process over the whole validation split
    import hydra

    from steel_defect.training.instantiate import instantiate_plain

    model = instantiate_plain(cfg.model)
    dm = instantiate_plain(cfg.data)
    trainer = hydra.utils.instantiate(cfg.trainer, devices=1, logger=False, enable_progress_bar=False)
    (single,) = trainer.validate(
        model, datamodule=dm, ckpt_path=str(run_dir / "checkpoints" / "last.ckpt"), weights_only=True
    )
    assert dm.val_size == 6
    assert single["val/dice_raw"] == pytest.approx(ddp_dice, abs=1e-6)
    del train


@pytest.mark.slow
def test_resume_matches_straight_run(tmp_path):
    """A run stopped after epoch 1 and resumed with ckpt_path ends where a straight 2-epoch run ends."""
    from train import train

    common = [
        "model=tiny",
        *TINY,
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.deterministic=true",
        "test=false",
        "callbacks.tune_thresholds.enabled=false",
        "~callbacks.early_stopping",
        "data.limit_val=4",
    ]
    straight = compose_train(common, tmp_path / "a")
    train(straight)
    stopped = compose_train(
        [
            *common,
            "+callbacks.stop_after._target_=tests.helpers.StopAfterEpochs",
            "+callbacks.stop_after.epochs=1",
        ],
        tmp_path / "b",
    )
    train(stopped)
    first = torch.load(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 0
    resumed = compose_train(
        [*common, f"ckpt_path={tmp_path / 'b' / 'run' / 'checkpoints' / 'last.ckpt'}"], tmp_path / "c"
    )
    train(resumed)
    a = torch.load(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    c = torch.load(tmp_path / "c" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["epoch"] == c["epoch"] == 1 and a["global_step"] == c["global_step"] == 6
    for key, value in a["state_dict"].items():
        assert torch.equal(value, c["state_dict"][key]), key
    sa, sc = a["optimizer_states"][0]["state"], c["optimizer_states"][0]["state"]
    for idx in sa:
        assert torch.equal(sa[idx]["exp_avg"], sc[idx]["exp_avg"])
    assert a["lr_schedulers"][0]["last_epoch"] == c["lr_schedulers"][0]["last_epoch"]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model.net.encoder_name=efficientnet-b99"], "model.net.encoder_name"),
        (["model.optimizer.lr=-0.001"], "model.optimizer.lr"),
        (["data=severstal"], "data.root"),
        (["model.net.arch=Unetto"], "model.net.arch"),
    ],
)
def test_bad_config_fails_at_start_naming_the_key(overrides, needle, tmp_path):
    from train import train

    cfg = compose_train(["model.net.encoder_weights=null", *overrides], tmp_path)
    with pytest.raises((ValueError, InstantiationException)) as err:
        train(cfg)
    # the configuration check's own ValueError naming the key (Hydra wraps it when the model refuses it)
    cause = err.value if isinstance(err.value, ValueError) else err.value.__cause__
    assert isinstance(cause, ValueError), f"not a configuration error: {err.value!r}"
    assert needle in str(cause)
    assert not (tmp_path / "data" / "synthetic").exists() or needle != "data.root"


def test_tiny_overrides_give_small_images_cropped_for_training(tmp_path):
    """The TINY settings the runs above use reach the data module: SMALL_SHAPE images, 100-pixel-wide
    training crops of the full height, whole images for validation."""
    from steel_defect.training.instantiate import instantiate_plain

    cfg = compose_train(["model=tiny", *TINY, "data.synthetic.n_train=8"], tmp_path)
    dm = instantiate_plain(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    train_batch, val_batch = next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))
    assert tuple(train_batch["image"].shape[1:]) == (3, SMALL_SHAPE[0], 100)
    assert tuple(val_batch["image"].shape[1:]) == (3, *SMALL_SHAPE)
    assert tuple(val_batch["mask"].shape[1:]) == (4, *SMALL_SHAPE)
