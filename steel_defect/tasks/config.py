"""The validated configuration of ``predict.py``: :func:`parse_config` checks every key early and names the key
and its valid choices on error.

The defaults live only in the YAML: conf/predict.yaml (the keys of every task) and conf/task/<task>.yaml (the
task's own keys), composed by Hydra for ``predict.py``; :func:`predict_defaults` / :func:`predict_config` read
the same files for callers that build a config in python (``train.py folds=K``, tests, bench/)."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steel_defect.config import CONF_DIR, boolean, choice, fraction, integer, keys, path
from steel_defect.inference.onnx_model import read_checkpoint_meta
from steel_defect.inference.predictor import RUNTIMES, TTA_TRANSFORMS
from steel_defect.postprocess.thresholds import THRESHOLD_MODES, THRESHOLDS_FILE, recorded_tta
from steel_defect.postprocess.tuning import check_pix_modes
from steel_defect.run_record import resolve_ckpt_arg
from steel_defect.submission import SUBMISSION_FORMATS

TASKS: tuple[str, ...] = ("predict", "evaluate", "tune", "tune_oof", "pseudo", "export", "quantize")

#: The keys only some tasks have (conf/task/<task>.yaml) and the tasks that have them.
TASK_KEYS: dict[str, tuple[str, ...]] = {
    "pix_modes": ("tune", "tune_oof"),
    "min_gain_pairs": ("tune", "tune_oof"),
    "pseudo": ("pseudo",),
    "export": ("export",),
    "quantize": ("quantize",),
}


def _load_yaml(file: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    if not file.is_file():
        raise FileNotFoundError(
            f"no {file}: predict.py's config is read from the checkout's conf/ (not packaged)"
        )
    return OmegaConf.to_container(OmegaConf.load(file), resolve=False)  # type: ignore[return-value]


def predict_defaults(task: str = "predict") -> dict[str, Any]:
    """Every key of ``task``'s config with its default: conf/predict.yaml (less Hydra's own ``defaults`` and
    ``hydra``) and conf/task/<task>.yaml, composed as Hydra composes them (a test checks that it does).
    For the callers that build a config without Hydra; the YAML is the only home of the defaults."""
    choice("task", task, TASKS)
    base = _load_yaml(CONF_DIR / "predict.yaml")
    for key in ("defaults", "hydra"):
        base.pop(key, None)
    return {**base, **_load_yaml(CONF_DIR / "task" / f"{task}.yaml")}


@dataclass(frozen=True)
class PredictConfig:
    """The validated configuration of one ``predict.py`` run (conf/predict.yaml and conf/task/<task>.yaml).
    The fields of other tasks' keys (:data:`TASK_KEYS`) are empty."""

    task: str
    ckpt: tuple[Path, ...]
    thresholds: str
    root: Path | None
    images: Path | None
    labels: Path | None
    split: Path | None
    out: Path
    format: str
    batch_size: int
    num_workers: int
    device: str
    amp: bool
    tta: tuple[str, ...]
    overlays: int
    overlays_dir: Path
    runtime: str
    check_thresholds: bool
    pix_modes: tuple[str, ...] = ()
    min_gain_pairs: int = 0
    pseudo: dict[str, float] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    quantize: dict[str, Any] = field(default_factory=dict)


def _merge(defaults: Mapping[str, Any], cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``cfg`` over ``defaults``; unknown keys raise naming the key and the valid ones."""
    out = copy.deepcopy(dict(defaults))
    for key, value in cfg.items():
        if key not in defaults:
            if not prefix and key in TASK_KEYS:
                raise ValueError(
                    f"config key '{key}' belongs to task={'/'.join(TASK_KEYS[key])}, not task={cfg.get('task', 'predict')}"
                )
            raise ValueError(f"unknown config key '{prefix}{key}'; valid keys: {', '.join(defaults)}")
        if isinstance(defaults[key], Mapping):
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ValueError(f"{prefix}{key} must be a mapping, got {value!r}")
            out[key] = _merge(defaults[key], value, f"{prefix}{key}.")
        else:
            out[key] = value
    return out


def predict_config(cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``cfg`` (a plain, possibly partial ``predict.py`` config) over the defaults of its ``task``
    (:func:`predict_defaults`); unknown keys, and keys of another task, raise naming the key. A config that
    Hydra composed comes back equal."""
    cfg = dict(cfg or {})
    task = choice("task", cfg.get("task", "predict"), TASKS)
    return _merge(predict_defaults(task), cfg)


def _ckpts(ckpt: Any) -> list[str | os.PathLike]:
    if ckpt is None or ckpt == "???" or ckpt == []:
        raise ValueError(
            "ckpt is required: ckpt=PATH, or ckpt=[a.ckpt,b.ckpt] to average several checkpoints"
        )
    ckpts = [ckpt] if isinstance(ckpt, str | os.PathLike) else ckpt
    if not isinstance(ckpts, Sequence) or not all(isinstance(p, str | os.PathLike) for p in ckpts):
        raise ValueError(f"ckpt must be a path or a list of paths, got {ckpt!r}")
    return list(ckpts)


def _thresholds(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"thresholds must be one of {', '.join(THRESHOLD_MODES)} or a path to a yaml file, got {value!r}"
        )
    return value.strip()


def _tta(value: Any) -> tuple[str, ...]:
    tta = value or []
    if isinstance(tta, str) or not isinstance(tta, Sequence):
        raise ValueError(f"tta must be a list such as [hflip,vflip], got {tta!r}")
    bad = [t for t in tta if t not in TTA_TRANSFORMS]
    if bad:
        raise ValueError(f"tta={list(tta)!r}: unknown {bad}; choose from: {', '.join(TTA_TRANSFORMS)}")
    return tuple(tta)


def _followed_tta(task: str, thresholds: str, ckpts: Sequence[Any]) -> tuple[str, ...]:
    """``tta: null``: predict with the TTA the thresholds were tuned with (a run's thresholds.yaml records
    it), so that a model tuned under TTA is used under it; tuning tasks (which write thresholds) use none."""
    if task in ("tune", "tune_oof", "export", "quantize"):
        return ()
    first = Path(ckpts[0])
    stored = (
        thresholds == "auto" and first.suffix == ".onnx" and not (first.parent / THRESHOLDS_FILE).is_file()
    )
    return recorded_tta(
        thresholds, first, read_checkpoint_meta(first) if stored and first.is_file() else None
    )


def _device(device: Any) -> str:
    if not isinstance(device, str):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device != "auto":
        try:
            torch.device(device)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"device={device!r} is not valid (auto, cpu, cuda, cuda:N): {err}") from err
    return device


def _task_keys(c: Mapping[str, Any]) -> dict[str, Any]:
    """The validated keys of conf/task/<task>.yaml (:data:`TASK_KEYS`) that ``c`` has."""
    out: dict[str, Any] = {}
    if "pix_modes" in c:
        out["pix_modes"] = tuple(check_pix_modes(c["pix_modes"]))
    if "min_gain_pairs" in c:
        out["min_gain_pairs"] = integer("min_gain_pairs", c["min_gain_pairs"], 0)
    if "pseudo" in c:
        out["pseudo"] = dataclasses.asdict(PseudoRule.from_dict(c["pseudo"]))
    if "export" in c:
        exp = c["export"]
        out["export"] = {
            "out": path("export.out", exp["out"]),
            "opset": integer("export.opset", exp["opset"], 1),
            "dynamic_width": boolean("export.dynamic_width", exp["dynamic_width"]),
            "height": integer("export.height", exp["height"], 1),
            "width": integer("export.width", exp["width"], 1),
        }
    if "quantize" in c:
        quant = c["quantize"]
        out["quantize"] = {
            "out": path("quantize.out", quant["out"]),
            "crops": integer("quantize.crops", quant["crops"], 1),
            "crop_width": integer("quantize.crop_width", quant["crop_width"], 1),
            "seed": integer("quantize.seed", quant["seed"], 0),
            "per_channel": boolean("quantize.per_channel", quant["per_channel"]),
        }
    return out


def parse_config(cfg: Mapping[str, Any]) -> PredictConfig:
    """Validate a plain ``predict.py`` config (composed by Hydra, or partial: :func:`predict_config` fills in
    its task's defaults from the YAML) early; every error names the key and the valid choices."""
    c = predict_config(cfg)
    data = c["data"]
    images, alias = path("data.images", data["images"]), path("images", c["images"])
    if images is not None and alias is not None and images != alias:
        raise ValueError(f"images={alias} and data.images={images} disagree; give one of them")
    resolved, thresholds = resolve_ckpt_arg(_ckpts(c["ckpt"]), _thresholds(c["thresholds"]))  # ckpt=RUN
    out = path("out", c["out"])
    if out is None:
        raise ValueError("out must be a file path such as submission.csv")
    return PredictConfig(
        task=choice("task", c["task"], TASKS),
        ckpt=tuple(resolved),
        thresholds=thresholds,
        root=path("data.root", data["root"]),
        images=images if images is not None else alias,
        labels=path("data.labels", data["labels"]),
        split=path("data.split", data["split"]),
        out=out,
        format=choice("format", c["format"], SUBMISSION_FORMATS),
        batch_size=integer("batch_size", c["batch_size"], 1),
        num_workers=integer("num_workers", c["num_workers"], 0),
        device=_device(c["device"]),
        amp=boolean("amp", c["amp"]),
        tta=_tta(c["tta"]) if c["tta"] is not None else _followed_tta(c["task"], thresholds, resolved),
        overlays=integer("overlays", c["overlays"], 0),
        overlays_dir=path("overlays_dir", c["overlays_dir"]) or Path("overlays"),
        runtime=choice("runtime", c["runtime"], RUNTIMES),
        check_thresholds=boolean("check_thresholds", c["check_thresholds"]),
        **_task_keys(c),
    )


@dataclass(frozen=True)
class PseudoRule:
    """Confidence thresholds of the class head: present above ``t_pos``, absent below ``t_neg``."""

    t_pos: float = 0.95
    t_neg: float = 0.05

    def __post_init__(self) -> None:
        for name in ("t_pos", "t_neg"):
            fraction(f"pseudo.{name}", getattr(self, name))
        if not self.t_neg < self.t_pos:
            raise ValueError(f"pseudo.t_neg ({self.t_neg}) must be below pseudo.t_pos ({self.t_pos})")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PseudoRule:
        return cls(**keys("pseudo", d, ("t_pos", "t_neg")))
