"""The validated configuration of ``predict.py`` (conf/predict.yaml): :func:`parse_config` checks every key
early and names the key and its valid choices on error."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steel_defect.config import boolean, choice, integer, path
from steel_defect.inference.predictor import RUNTIMES, TTA_TRANSFORMS
from steel_defect.postprocess.thresholds import THRESHOLD_MODES
from steel_defect.postprocess.tuning import check_pix_modes
from steel_defect.run_record import resolve_ckpt_arg
from steel_defect.submission import SUBMISSION_FORMATS

TASKS: tuple[str, ...] = ("predict", "evaluate", "tune", "tune_oof", "pseudo", "export", "quantize")

#: Every key of conf/predict.yaml with its default (kept equal to the YAML by a test).
DEFAULTS: dict[str, Any] = {
    "task": "predict",
    "ckpt": "???",
    "thresholds": "auto",
    "data": {"root": None, "images": None, "labels": None, "split": None},
    "images": None,
    "out": "submission.csv",
    "format": "current",
    "batch_size": 4,
    "num_workers": 2,
    "device": "auto",
    "amp": True,
    "tta": [],
    "overlays": 0,
    "overlays_dir": "overlays",
    "runtime": "auto",
    "check_thresholds": True,
    "pix_modes": ["plain"],
    "min_gain_pairs": 0,
    "pseudo": {"t_pos": 0.95, "t_neg": 0.05},
    "export": {
        "out": None,
        "opset": 17,
        "dynamic_width": False,
        "height": 256,
        "width": 1600,
    },
    "quantize": {"out": None, "crops": 200, "crop_width": 448, "seed": 0, "per_channel": True},
}


@dataclass(frozen=True)
class PredictConfig:
    """The validated configuration of one ``predict.py`` run (see :data:`DEFAULTS` and conf/predict.yaml)."""

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
    check_thresholds: bool = True
    pix_modes: tuple[str, ...] = ("plain",)
    min_gain_pairs: int = 0
    pseudo: dict[str, float] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    quantize: dict[str, Any] = field(default_factory=dict)


def _merge(defaults: Mapping[str, Any], cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``cfg`` over ``defaults``; unknown keys raise naming the key and the valid ones."""
    out = copy.deepcopy(dict(defaults))
    for key, value in cfg.items():
        if key not in defaults:
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


def parse_config(cfg: Mapping[str, Any]) -> PredictConfig:
    """Validate a plain ``predict.yaml`` dict early; every error names the key and the valid choices."""
    c = _merge(DEFAULTS, cfg)
    task = choice("task", c["task"], TASKS)
    ckpt = c["ckpt"]
    if ckpt is None or ckpt == "???" or ckpt == []:
        raise ValueError(
            "ckpt is required: ckpt=PATH, or ckpt=[a.ckpt,b.ckpt] to average several checkpoints"
        )
    ckpts = [ckpt] if isinstance(ckpt, str | os.PathLike) else ckpt
    if not isinstance(ckpts, Sequence) or not all(isinstance(p, str | os.PathLike) for p in ckpts):
        raise ValueError(f"ckpt must be a path or a list of paths, got {ckpt!r}")
    thresholds = c["thresholds"]
    if not isinstance(thresholds, str) or not thresholds.strip():
        raise ValueError(
            f"thresholds must be one of {', '.join(THRESHOLD_MODES)} or a path to a yaml file, got {thresholds!r}"
        )
    data = c["data"]
    images, alias = path("data.images", data["images"]), path("images", c["images"])
    if images is not None and alias is not None and images != alias:
        raise ValueError(f"images={alias} and data.images={images} disagree; give one of them")
    tta = c["tta"] or []
    if isinstance(tta, str) or not isinstance(tta, Sequence):
        raise ValueError(f"tta must be a list such as [hflip,vflip], got {tta!r}")
    bad_tta = [t for t in tta if t not in TTA_TRANSFORMS]
    if bad_tta:
        raise ValueError(f"tta={list(tta)!r}: unknown {bad_tta}; choose from: {', '.join(TTA_TRANSFORMS)}")
    device = c["device"]
    if not isinstance(device, str):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device != "auto":
        try:
            torch.device(device)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"device={device!r} is not valid (auto, cpu, cuda, cuda:N): {err}") from err
    resolved, thresholds = resolve_ckpt_arg(ckpts, thresholds.strip())  # ckpt=RUN: the run's model
    exp, quant = c["export"], c["quantize"]
    out = path("out", c["out"])
    if out is None:
        raise ValueError("out must be a file path such as submission.csv")
    return PredictConfig(
        task=task,
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
        device=device,
        amp=boolean("amp", c["amp"]),
        tta=tuple(tta),
        overlays=integer("overlays", c["overlays"], 0),
        overlays_dir=path("overlays_dir", c["overlays_dir"]) or Path("overlays"),
        runtime=choice("runtime", c["runtime"], RUNTIMES),
        check_thresholds=boolean("check_thresholds", c["check_thresholds"]),
        pix_modes=tuple(check_pix_modes(c["pix_modes"])),
        min_gain_pairs=integer("min_gain_pairs", c["min_gain_pairs"], 0),
        pseudo=dataclasses.asdict(PseudoRule.from_dict(c["pseudo"])),
        export={
            "out": path("export.out", exp["out"]),
            "opset": integer("export.opset", exp["opset"], 1),
            "dynamic_width": boolean("export.dynamic_width", exp["dynamic_width"]),
            "height": integer("export.height", exp["height"], 1),
            "width": integer("export.width", exp["width"], 1),
        },
        quantize={
            "out": path("quantize.out", quant["out"]),
            "crops": integer("quantize.crops", quant["crops"], 1),
            "crop_width": integer("quantize.crop_width", quant["crop_width"], 1),
            "seed": integer("quantize.seed", quant["seed"], 0),
            "per_channel": boolean("quantize.per_channel", quant["per_channel"]),
        },
    )


@dataclass(frozen=True)
class PseudoRule:
    """Confidence thresholds of the class head: present above ``t_pos``, absent below ``t_neg``."""

    t_pos: float = 0.95
    t_neg: float = 0.05

    def __post_init__(self) -> None:
        for name in ("t_pos", "t_neg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 < float(v) < 1.0:
                raise ValueError(f"pseudo.{name} must be in (0, 1), got {v!r}")
        if not self.t_neg < self.t_pos:
            raise ValueError(f"pseudo.t_neg ({self.t_neg}) must be below pseudo.t_pos ({self.t_pos})")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PseudoRule:
        d = dict(d or {})
        unknown = sorted(set(d) - {"t_pos", "t_neg"})
        if unknown:
            raise ValueError(f"pseudo: unknown keys {unknown}; valid: t_pos, t_neg")
        return cls(**d)
