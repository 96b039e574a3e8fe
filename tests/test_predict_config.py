"""predict.py's configuration: conf/predict.yaml + the task group conf/task/<task>.yaml, composed by Hydra,
validated by steel_defect.tasks.config.parse_config (errors name the key and the choices)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from steel_defect.tasks.config import TASK_KEYS, TASKS, parse_config, predict_config, predict_defaults
from tests.helpers import CONF


def compose_predict(overrides: list[str], hydra: bool = False):
    """Compose conf/predict.yaml as `python predict.py OVERRIDES` would (plain python)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("predict", overrides=overrides, return_hydra_config=hydra)
    finally:
        GlobalHydra.instance().clear()
    return cfg if hydra else OmegaConf.to_container(cfg, resolve=True)


#: every key of conf/predict.yaml before the task group, with a non-default value, and the task that has it
TODAYS_KEYS = [
    ("ckpt=a.ckpt", "predict"),
    ("thresholds=defaults", "predict"),
    ("check_thresholds=false", "predict"),
    ("data.root=r", "predict"),
    ("data.images=i", "predict"),
    ("data.labels=l.csv", "evaluate"),
    ("data.split=s.json", "tune"),
    ("images=i", "predict"),
    ("out=o.csv", "predict"),
    ("format=legacy", "predict"),
    ("batch_size=2", "predict"),
    ("num_workers=0", "predict"),
    ("device=cpu", "predict"),
    ("amp=false", "predict"),
    ("tta=[hflip]", "predict"),
    ("overlays=2", "evaluate"),
    ("overlays_dir=ov", "predict"),
    ("runtime=torch", "predict"),
    ("pix_modes=[plain,soft]", "tune"),
    ("pix_modes=[scaled]", "tune_oof"),
    ("pseudo.t_pos=0.9", "pseudo"),
    ("pseudo.t_neg=0.1", "pseudo"),
    ("export.out=m.onnx", "export"),
    ("export.opset=13", "export"),
    ("export.dynamic_width=true", "export"),
    ("export.height=128", "export"),
    ("export.width=800", "export"),
    ("quantize.out=q.onnx", "quantize"),
    ("quantize.crops=10", "quantize"),
    ("quantize.crop_width=224", "quantize"),
    ("quantize.seed=3", "quantize"),
    ("quantize.per_channel=false", "quantize"),
]


@pytest.mark.parametrize("task", TASKS)
def test_predict_defaults_are_what_hydra_composes(task):
    """The one python reader of the defaults (train.py folds=K, tests, bench) agrees with Hydra, task by task."""
    cfg = compose_predict([f"task={task}"])
    assert cfg == predict_defaults(task) == predict_config({"task": task})
    assert cfg["task"] == task and cfg["ckpt"] == "???"
    assert {k for k in TASK_KEYS if k in cfg} == {k for k, tasks in TASK_KEYS.items() if task in tasks}


def test_hydra_writes_nothing_and_the_default_task_is_predict():
    cfg = compose_predict([], hydra=True)
    assert cfg.task == "predict"
    assert cfg.hydra.run.dir == "." and cfg.hydra.output_subdir is None and not cfg.hydra.job.chdir


@pytest.mark.parametrize(("override", "task"), TODAYS_KEYS)
def test_every_key_still_composes_and_validates(override, task):
    overrides = [f"task={task}", override] + ([] if override.startswith("ckpt=") else ["ckpt=x.ckpt"])
    cfg = compose_predict(overrides)
    key, value = override.split("=", 1)
    node = cfg
    for part in key.split(".")[:-1]:
        node = node[part]
    assert str(node[key.split(".")[-1]]).lower().replace("'", "").replace(" ", "") == value.lower()
    parse_config(cfg)


def test_composed_task_config():
    c = parse_config(compose_predict(["task=export", "ckpt=m.ckpt", "export.opset=13", "export.out=m.onnx"]))
    assert c.task == "export" and c.export["opset"] == 13 and c.export["out"] == Path("m.onnx")
    assert c.ckpt == (Path("m.ckpt"),) and c.pix_modes == () and c.quantize == {} and c.pseudo == {}
    c = parse_config(compose_predict(["task=tune", "ckpt=m.ckpt"]))
    assert c.pix_modes == ("plain",) and c.export == {}


def test_a_key_of_another_task_is_refused():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="export"):
        compose_predict(["task=predict", "ckpt=x", "export.opset=13"])
    with pytest.raises(ValueError, match="config key 'export' belongs to task=export, not task=predict"):
        parse_config({"ckpt": "x", "export": {"opset": 13}})
    with pytest.raises(
        ValueError, match="config key 'pix_modes' belongs to task=tune/tune_oof, not task=pseudo"
    ):
        parse_config({"ckpt": "x", "task": "pseudo", "pix_modes": ["plain"]})


def test_an_unknown_task_names_the_tasks():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="task/train") as err:
        compose_predict(["task=train", "ckpt=x"])
    assert all(t in str(err.value) for t in TASKS)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"task": "train"},
            r"task='train' is not valid; choose one of: predict, evaluate, tune, tune_oof, pseudo, export",
        ),
        ({"format": "csv"}, r"format='csv' is not valid; choose one of: current, legacy"),
        ({"runtime": "tensorrt"}, r"runtime='tensorrt' is not valid; choose one of: auto, torch, onnx"),
        ({"tta": ["hflip", "rot90"]}, r"tta=.*unknown \['rot90'\]; choose from: hflip, vflip, hvflip"),
        ({"batch_size": 0}, r"batch_size must be an integer >= 1"),
        ({"overlays": -1}, r"overlays must be an integer >= 0"),
        ({"device": "gpu0"}, r"device='gpu0' is not valid"),
        ({"bogus": 1}, r"unknown config key 'bogus'"),
        ({"data": {"root": "x", "imgs": "y"}}, r"unknown config key 'data.imgs'"),
        ({"images": "a", "data": {"images": "b"}}, r"images=a and data.images=b disagree"),
        ({"task": "export", "export": {"opset": 0}}, r"export.opset must be an integer >= 1"),
        (
            {"task": "quantize", "quantize": {"per_channel": "yes"}},
            r"quantize.per_channel must be true or false",
        ),
        ({"task": "pseudo", "pseudo": {"t_pos": 1.5}}, r"pseudo.t_pos must be in \(0, 1\)"),
        ({"task": "tune", "pix_modes": ["fancy"]}, r"fancy"),
    ],
)
def test_config_errors_name_the_key_and_the_choices(overrides, message):
    with pytest.raises(ValueError, match=message):
        parse_config({"ckpt": "x.ckpt", **overrides})


def test_ckpt_is_required():
    for ckpt in ("???", None, []):
        with pytest.raises(ValueError, match="ckpt is required"):
            parse_config({"ckpt": ckpt})
    with pytest.raises(ValueError, match="ckpt is required"):
        parse_config(compose_predict([]))
    c = parse_config({"ckpt": ["a.ckpt", "b.ckpt"], "images": "imgs"})
    assert c.ckpt == (Path("a.ckpt"), Path("b.ckpt")) and c.images == Path("imgs")


def test_tta_null_follows_the_tta_the_thresholds_were_tuned_with(tmp_path):
    """``tta: null`` (the default) predicts with the views recorded in the thresholds file it resolves to (a
    fold ensemble tuned out of fold under hflip+vflip is then used under them); an explicit list wins; tuning
    tasks and untuned thresholds use none."""
    from steel_defect.postprocess.params import PostprocessParams, save_thresholds
    from steel_defect.tasks.config import parse_config

    ckpt = tmp_path / "run" / "best.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not read")
    save_thresholds(
        PostprocessParams(),
        ckpt.parent / "thresholds.yaml",
        meta={"fingerprints": ["f"], "tta": ["hflip", "vflip"]},
    )
    assert parse_config({"ckpt": str(ckpt)}).tta == ("hflip", "vflip")
    assert parse_config({"ckpt": str(ckpt), "tta": []}).tta == ()
    assert parse_config({"ckpt": str(ckpt), "tta": ["hflip"]}).tta == ("hflip",)
    assert parse_config({"ckpt": str(ckpt), "thresholds": "defaults"}).tta == ()
    assert parse_config({"ckpt": str(ckpt), "task": "tune"}).tta == ()
    other = tmp_path / "other.yaml"
    save_thresholds(PostprocessParams(), other, meta={"fingerprints": ["f"], "tta": ["hvflip"]})
    assert parse_config({"ckpt": str(ckpt), "thresholds": str(other)}).tta == ("hvflip",)
    (ckpt.parent / "thresholds.yaml").unlink()
    assert parse_config({"ckpt": str(ckpt)}).tta == ()
