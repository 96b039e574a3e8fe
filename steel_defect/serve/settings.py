"""The service's configuration: ``key=value`` arguments (values parsed as YAML, e.g. ``tta=[hflip]``)
validated into :class:`ServeSettings`; every error names the key and what is valid."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from steel_defect.checks import choice, integer, number
from steel_defect.predictor import RUNTIMES, check_tta
from steel_defect.run_record import resolve_ckpt_arg

HOSTS: tuple[str, ...] = ("127.0.0.1", "0.0.0.0", "::")
ACCELERATORS: tuple[str, ...] = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ServeSettings:
    """What ``python -m steel_defect.serve`` runs with (the defaults are the ones documented in the README)."""

    ckpt: tuple[str, ...]
    thresholds: str = "auto"
    check_thresholds: bool = True
    runtime: str = "auto"
    tta: tuple[str, ...] = ()
    accelerator: str = "auto"
    devices: int = 1
    workers_per_device: int = 1
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 4
    batch_timeout: float = 0.01
    max_upload_mb: float = 20.0
    timeout: float = 30.0
    images: str | None = None
    gallery: int = 12

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


FIELDS = {f.name: f for f in dataclasses.fields(ServeSettings)}


def parse_settings(values: Mapping[str, Any]) -> ServeSettings:
    """Validate a mapping of settings (unknown keys are refused, listing the valid ones)."""
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; valid keys: {', '.join(FIELDS)}")
    ckpt = values.get("ckpt")
    if ckpt in (None, "", []):
        raise ValueError(
            "ckpt is required: ckpt=PATH (a checkpoint or an exported .onnx), or ckpt=[a.ckpt,b.ckpt]"
        )
    ckpts = [ckpt] if isinstance(ckpt, str | os.PathLike) else ckpt
    if not isinstance(ckpts, Sequence) or not all(isinstance(p, str | os.PathLike) for p in ckpts):
        raise ValueError(f"ckpt must be a path or a list of paths, got {ckpt!r}")
    d = {k: values.get(k, FIELDS[k].default) for k in FIELDS if k != "ckpt"}
    if isinstance(d["thresholds"], str):  # ckpt=RUN: the run's model, with its thresholds when auto
        ckpts, d["thresholds"] = resolve_ckpt_arg(ckpts, d["thresholds"].strip())
    missing = [str(p) for p in ckpts if not Path(os.path.expanduser(str(p))).is_file()]
    if missing:
        raise FileNotFoundError(f"ckpt: not found: {', '.join(missing)}")
    tta = d["tta"] or []
    if isinstance(tta, str) or not isinstance(tta, Sequence):
        raise ValueError(f"tta must be a list such as [hflip], got {tta!r}")
    images = d["images"]
    if images is not None:
        images = os.path.expanduser(str(images))
        if not Path(images).is_dir():
            raise FileNotFoundError(f"images={images}: not a folder (the viewer's pick-an-image folder)")
    for key in ("thresholds",):
        if not isinstance(d[key], str) or not d[key].strip():
            raise ValueError(
                f"{key} must be auto, defaults, raw or a path to a thresholds.yaml, got {d[key]!r}"
            )
    if not isinstance(d["check_thresholds"], bool):
        raise ValueError(f"check_thresholds must be true or false, got {d['check_thresholds']!r}")
    return ServeSettings(
        ckpt=tuple(os.path.expanduser(str(p)) for p in ckpts),
        thresholds=d["thresholds"].strip(),
        check_thresholds=d["check_thresholds"],
        runtime=choice("runtime", d["runtime"], RUNTIMES),
        tta=tuple(check_tta(tta)),
        accelerator=choice("accelerator", d["accelerator"], ACCELERATORS),
        devices=integer("devices", d["devices"], 1),
        workers_per_device=integer("workers_per_device", d["workers_per_device"], 1),
        host=choice("host", d["host"], HOSTS),
        port=integer("port", d["port"], 1, 65535),
        max_batch_size=integer("max_batch_size", d["max_batch_size"], 1),
        batch_timeout=number("batch_timeout", d["batch_timeout"], 0.0),
        max_upload_mb=number("max_upload_mb", d["max_upload_mb"], 0.001),
        timeout=number("timeout", d["timeout"], 0.1),
        images=images,
        gallery=integer("gallery", d["gallery"], 0),
    )


def parse_args(argv: Sequence[str]) -> ServeSettings:
    """``key=value`` command-line arguments -> :class:`ServeSettings` (values are YAML: ``tta=[hflip]``)."""
    values: dict[str, Any] = {}
    for arg in argv:
        key, sep, raw = arg.partition("=")
        if not sep or not key:
            raise ValueError(f"arguments are key=value, got {arg!r} (e.g. ckpt=best.ckpt port=8000)")
        if key in values:
            raise ValueError(f"{key} given twice")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as err:
            raise ValueError(f"{key}={raw!r} is not a valid value: {err}") from err
        if (
            key in ("ckpt", "thresholds", "images")
            and isinstance(value, str | int | float)
            and not isinstance(value, bool)
        ):
            value = raw  # paths stay text, even when they look like numbers
        values[key] = value
    return parse_settings(values)
