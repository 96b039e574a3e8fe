"""The service's configuration: ``key=value`` arguments (values parsed as YAML, e.g. ``tta=[hflip]``)
validated into :class:`ServeSettings`; every error names the key and what is valid."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from steel_defect.config import choice, integer, number, parse_key_values
from steel_defect.inference.predictor import RUNTIMES, check_tta
from steel_defect.run_record import resolve_ckpt_arg

HOSTS: tuple[str, ...] = ("127.0.0.1", "0.0.0.0", "::")
#: the hosts that only this machine can reach (anything else needs an API key or allow_unauthenticated=true)
LOOPBACK: tuple[str, ...] = ("127.0.0.1",)
ACCELERATORS: tuple[str, ...] = ("auto", "cpu", "cuda")
#: image formats both Pillow (header: format, size) and OpenCV (pixels) read; ``formats=`` picks among them
DECODABLE: tuple[str, ...] = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
#: what a line camera writes: the default of ``formats=``
DEFAULT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "TIFF")
#: a Severstal image is 256x1600; the default pixel limit is 16 of them (e.g. 2560x2560 or 1024x6400)
DEFAULT_MAX_PIXELS = 16 * 256 * 1600
#: the environment variable holding the API key (what a unit file or ``docker run -e`` sets)
API_KEY_ENV = "STEEL_DEFECT_API_KEY"
MIN_KEY_LENGTH = 16
KEY_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


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
    #: an upload's pixels (after padding each side to the network stride) at most; more -> 413
    max_pixels: int = DEFAULT_MAX_PIXELS
    formats: tuple[str, ...] = DEFAULT_FORMATS
    #: clients send ``Authorization: Bearer <api_key>`` (default: the STEEL_DEFECT_API_KEY environment variable)
    api_key: str | None = field(default=None, repr=False)
    allow_unauthenticated: bool = False
    #: /docs and /openapi.json (behind the key like every other route)
    docs: bool = False
    #: seconds a client has to send a whole request (headers and body); slower ones get 408 / are disconnected
    read_timeout: float = 30.0
    #: open connections at most; further requests get 503 (uvicorn's limit_concurrency)
    max_connections: int = 64
    #: request bodies being read and checked at the same time at most (each up to max_upload_mb)
    max_uploads: int = 8
    #: seconds requests in flight get to finish on SIGTERM/SIGINT before the service stops anyway
    stop_timeout: float = 10.0

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values, the API key masked."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        d["api_key"] = None if self.api_key is None else "***"
        return d


FIELDS = {f.name: f for f in dataclasses.fields(ServeSettings)}


def check_api_key(value: Any, where: str) -> str:
    """An API key: printable ASCII without spaces (it travels in an HTTP header), 16 characters or more."""
    if not isinstance(value, str) or not re.fullmatch(r"[\x21-\x7e]+", value):
        raise ValueError(
            f"{where} must be printable ASCII without spaces (it is sent as 'Authorization: Bearer <key>'); "
            + KEY_HINT
        )
    if len(value) < MIN_KEY_LENGTH:
        raise ValueError(
            f"{where} is {len(value)} characters, too short (at least {MIN_KEY_LENGTH}); {KEY_HINT}"
        )
    return value


def check_formats(value: Any) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"formats must be a list such as [JPEG, PNG], got {value!r}")
    aliases = {"JPG": "JPEG", "TIF": "TIFF"}
    out = tuple(dict.fromkeys(aliases.get(n.strip().upper(), n.strip().upper()) for n in names))
    bad = [n for n in out if n not in DECODABLE]
    if bad:
        raise ValueError(f"formats: {bad} not supported; choose among {', '.join(DECODABLE)}")
    return out


def _auth(d: dict[str, Any], host: str, env: Mapping[str, str]) -> tuple[str | None, bool]:
    """The API key (setting, else the environment) and allow_unauthenticated, checked against ``host``."""
    if env.get("LIT_SERVER_API_KEY"):
        raise ValueError(
            "LIT_SERVER_API_KEY is set: LitServe would then ask for an X-API-Key header on /predict, /health "
            "and /info only (the viewer and images stay open, the health check fails). Unset it and give the "
            f"key as {API_KEY_ENV}=KEY (or api_key=KEY): clients send 'Authorization: Bearer KEY' on every route"
        )
    key = d["api_key"]
    if key is None and env.get(API_KEY_ENV):
        key = check_api_key(env[API_KEY_ENV], f"the environment variable {API_KEY_ENV}")
    elif key is not None:
        key = check_api_key(key, "api_key")
    allow = d["allow_unauthenticated"]
    if not isinstance(allow, bool):
        raise ValueError(f"allow_unauthenticated must be true or false, got {allow!r}")
    if key is None and host not in LOOPBACK and not allow:
        raise ValueError(
            f"host={host} without an API key would let anyone on the network use the service (predictions, "
            f"the viewer and the images folder): set {API_KEY_ENV}=KEY in the environment (or api_key=KEY; "
            f"{KEY_HINT}), or say allow_unauthenticated=true to run it open anyway"
        )
    return key, allow


def parse_settings(values: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ServeSettings:
    """Validate a mapping of settings (unknown keys are refused, listing the valid ones); ``env`` (default
    ``os.environ``) may hold the API key as STEEL_DEFECT_API_KEY."""
    env = os.environ if env is None else env
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
    if not isinstance(d["docs"], bool):
        raise ValueError(f"docs must be true or false, got {d['docs']!r}")
    host = choice("host", d["host"], HOSTS)
    api_key, allow = _auth(d, host, env)
    return ServeSettings(
        ckpt=tuple(os.path.expanduser(str(p)) for p in ckpts),
        thresholds=d["thresholds"].strip(),
        check_thresholds=d["check_thresholds"],
        runtime=choice("runtime", d["runtime"], RUNTIMES),
        tta=tuple(check_tta(tta)),
        accelerator=choice("accelerator", d["accelerator"], ACCELERATORS),
        devices=integer("devices", d["devices"], 1),
        workers_per_device=integer("workers_per_device", d["workers_per_device"], 1),
        host=host,
        port=integer("port", d["port"], 1, 65535),
        max_batch_size=integer("max_batch_size", d["max_batch_size"], 1),
        batch_timeout=number("batch_timeout", d["batch_timeout"], 0.0),
        max_upload_mb=number("max_upload_mb", d["max_upload_mb"], 0.001),
        timeout=number("timeout", d["timeout"], 0.1),
        images=images,
        gallery=integer("gallery", d["gallery"], 0),
        max_pixels=integer("max_pixels", d["max_pixels"], 1, 2**30),
        formats=check_formats(d["formats"]),
        api_key=api_key,
        allow_unauthenticated=allow,
        docs=d["docs"],
        read_timeout=number("read_timeout", d["read_timeout"], 0.5, 3600),
        max_connections=integer("max_connections", d["max_connections"], 2),
        max_uploads=integer("max_uploads", d["max_uploads"], 1),
        stop_timeout=number("stop_timeout", d["stop_timeout"], 0.5, 600),
    )


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> ServeSettings:
    """``key=value`` command-line arguments -> :class:`ServeSettings` (values are YAML: ``tta=[hflip]``)."""
    values: dict[str, Any] = {}
    for key, raw in parse_key_values(argv, repeat=False).items():
        if key == "api_key":  # a secret: kept verbatim, never parsed (nor echoed in an error)
            values[key] = raw or None
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as err:
            raise ValueError(f"{key}={raw!r} is not a valid value: {err}") from err
        if key == "host" or (
            key in ("ckpt", "thresholds", "images")
            and isinstance(value, str | int | float)
            and not isinstance(value, bool)
        ):
            value = (
                raw  # paths stay text, even when they look like numbers; host=:: is not YAML's {':': None}
            )
        values[key] = value
    return parse_settings(values, env)
