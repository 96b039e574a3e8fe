"""Kaggle offline bundle: ``python -m steel_defect.kaggle bundle ckpt=PATH[,PATH2] out=DIR [key=value ...]``.

Kaggle's code competition runs the kernel with the internet off, so everything the kernel installs must be
inside a Kaggle Dataset. ``bundle`` writes that folder::

    DIR/wheels/steel_defect-<v>-py3-none-any.whl     the project (built from this checkout)
    DIR/wheels/<dependency>-<v>-<tag>.whl            what Kaggle's image lacks (``wheels=``; never torch)
    DIR/checkpoints/<name>.ckpt                      slimmed: state_dict + steel_defect meta + hparams
    DIR/thresholds.yaml                              default: the one beside the first checkpoint
    DIR/kernel.py, DIR/kernel.ipynb                  the kernel (the same code as a one-cell notebook)
    DIR/steel_defect_bundle.json                     manifest: settings, wheels, files with sha256

The kernel checks the files against the manifest, runs ``pip install --no-index --find-links DIR/wheels
--no-deps`` for the pinned bundled wheels (so Kaggle's own torch, numpy, timm ... are used), then predicts
with :func:`steel_defect.inference.folder.predict_images` (the function behind ``predict.py``) and writes
``/kaggle/working/submission.csv`` from ``/kaggle/input/severstal-steel-defect-detection/test_images``.

Dependency wheels are rebuilt offline from the packages installed in this environment (their RECORD files,
with every hash verified); ``download=true`` fetches them with ``pip wheel --no-deps`` instead (network).

Keys: ``ckpt`` (required; ``a,b`` or ``[a,b]``), ``out`` (required), ``thresholds`` (auto: the tuned
thresholds.yaml beside the first checkpoint, refused when there is none | PATH | defaults | raw),
``wheels`` (replaces the default list), ``extra_wheels`` (added to it), ``input``, ``output``, ``download``,
``overwrite``, ``batch_size``, ``num_workers``, ``tta``, ``device``, ``amp``, ``project_wheel`` (a prebuilt
project wheel instead of building this checkout), ``runtime`` (``torch``, or ``onnx``: ``DIR/models/*.onnx``
instead of checkpoints, an onnxruntime wheel instead of smp/Hydra, and a kernel that never imports torch),
``height`` (the ONNX models' input height, default 256).

``out`` is checked before anything is written: it may not be ``/``, ``~``, the working directory or a
folder above it, nor be or hold an input (a checkpoint, the thresholds file, ``project_wheel``). An
existing non-empty ``out`` is replaced only with ``overwrite=true`` and only when it is a bundle (it holds
``steel_defect_bundle.json``); any other folder or file is refused, even with ``overwrite=true``.
"""

from __future__ import annotations

import json
import os
import pprint
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from steel_defect import __version__
from steel_defect.config import parse_key_values
from steel_defect.deploy.kaggle.wheels import (
    build_project_wheel,
    canonical_name,
    check_bundle_name,
    download_wheel,
    sha256_file,
    wheel_from_installed,
    wheel_name_version,
)
from steel_defect.guard import UnsafeWriteError, refuse_broad_dir, refuse_onto_inputs
from steel_defect.io import atomic_save, atomic_write
from steel_defect.run_record import resolve_ckpt_arg

__all__ = [
    "DEFAULT_INPUT",
    "DEFAULT_OUTPUT",
    "DEFAULT_WHEELS",
    "MANIFEST_NAME",
    "build_bundle",
    "build_project_wheel",
    "check_bundle_out",
    "is_bundle",
    "kernel_source",
    "main",
    "notebook_json",
    "parse_args",
    "run_kernel",
    "slim_checkpoint",
    "wheel_from_installed",
]

PROJECT = "steel-defect"
#: What Kaggle's image lacks (it has torch, torchvision, timm, albumentations, lightning, pandas, opencv ...).
DEFAULT_WHEELS: tuple[str, ...] = (
    "segmentation-models-pytorch",
    "hydra-core",
    "omegaconf",
    "antlr4-python3-runtime",
)
DEFAULT_INPUT = "/kaggle/input/severstal-steel-defect-detection/test_images"
DEFAULT_OUTPUT = "/kaggle/working/submission.csv"
MANIFEST_NAME = "steel_defect_bundle.json"
KERNEL_NAME = "kernel.py"
NOTEBOOK_NAME = "kernel.ipynb"
THRESHOLDS_NAME = "thresholds.yaml"
FORMAT_VERSION = 1
#: Checkpoint keys kept by :func:`slim_checkpoint` (optimizer states, loops and callbacks are dropped).
SLIM_KEYS = (
    "state_dict",
    "steel_defect",
    "hyper_parameters",
    "epoch",
    "global_step",
    "pytorch-lightning_version",
)
#: Settings of ``bundle`` with their defaults (keys accepted on the command line besides ckpt/out).
BUNDLE_DEFAULTS: dict[str, Any] = {
    "thresholds": "auto",
    "wheels": list(DEFAULT_WHEELS),
    "extra_wheels": [],
    "input": DEFAULT_INPUT,
    "output": DEFAULT_OUTPUT,
    "download": False,
    "overwrite": False,
    "batch_size": 4,
    "num_workers": 2,
    "tta": [],
    "device": "auto",
    "amp": True,
    "project_wheel": None,
    "runtime": "torch",
    "height": 256,
}
#: ``runtime=onnx``: the checkpoints go in as ONNX models (dynamic width, ``height`` rows) and the kernel
#: predicts with :class:`steel_defect.inference.ort_predictor.OrtPredictor`: no torch, timm or smp on Kaggle's side.
RUNTIMES: tuple[str, ...] = ("torch", "onnx")
ONNX_WHEELS: tuple[str, ...] = ("onnxruntime",)
_TEMPLATE = Path(__file__).with_name("kernel_template.py")
_SETTINGS_RE = re.compile(r"^# >>> settings\n.*?^# <<< settings\n", re.S | re.M)


# ======================================================================================================
# Checkpoints
# ======================================================================================================
def slim_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a training checkpoint without optimizer states, loops or callbacks (``weights_only`` safe).

    Keeps :data:`SLIM_KEYS`; the result still loads with ``load_net_from_checkpoint`` (checked).
    """
    import torch

    from steel_defect.models.checkpoint import load_net_from_checkpoint

    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"ckpt: checkpoint not found: {src}")
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, Mapping) or "steel_defect" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(
            f"ckpt: {src} is not a steel-defect training checkpoint (no 'steel_defect'/'state_dict')"
        )
    slim = {key: ckpt[key] for key in SLIM_KEYS if key in ckpt}
    path = atomic_save(dst, lambda tmp: torch.save(slim, tmp))
    net, _ = load_net_from_checkpoint(path)
    del net
    return path


def export_for_kernel(src: str | os.PathLike, dst: str | os.PathLike, height: int = 256) -> Path:
    """A training checkpoint -> the ONNX model a ``runtime=onnx`` kernel runs (dynamic width, ``height`` rows,
    verified against torch by the export; the checkpoint's fingerprint in its metadata)."""
    from steel_defect import DEFAULT_SHAPE
    from steel_defect.deploy.onnx_export import export_onnx
    from steel_defect.fingerprint import net_fingerprint
    from steel_defect.inference.predictor import load_nets

    (net,), (meta,) = load_nets([src], "cpu", "torch")
    meta = {**meta, "fingerprint": net_fingerprint(net)}
    width = DEFAULT_SHAPE[1] - DEFAULT_SHAPE[1] % net.output_stride
    return export_onnx(net, dst, height=height, width=width, dynamic_width=True, meta=meta)


# ======================================================================================================
# Kernel
# ======================================================================================================
#: What the kernel needs from Kaggle's own environment (the rest is bundled): checked at kernel start.
RUNTIME_PACKAGES: tuple[str, ...] = (
    "torch",
    "timm",
    "segmentation-models-pytorch",
    "numpy",
    "opencv-python-headless",
)
#: The same for ``runtime=onnx`` bundles (onnxruntime itself is bundled as a wheel).
ONNX_RUNTIME_PACKAGES: tuple[str, ...] = ("numpy", "opencv-python-headless", "pyyaml", "onnxruntime")


def runtime_requirements(bundled: Sequence[str], packages: Sequence[str] | None = None) -> dict[str, Any]:
    """``{"python": spec, "packages": {name: spec}}`` from this project's metadata for the kernel's start-up
    check: the Python version and every ``packages`` entry (default :data:`RUNTIME_PACKAGES`) not shipped as
    a bundled wheel (``opencv-python-headless`` also accepts Kaggle's ``opencv-python``)."""
    dist = metadata.distribution(PROJECT)
    specs: dict[str, str] = {}
    for line in dist.requires or []:
        if ";" in line:  # extras and markers: not needed by the kernel
            continue
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", line)
        if m:
            specs[m.group(1).lower()] = m.group(2).strip().strip("()")
    skip = {b.lower() for b in bundled}
    packages = {n: specs.get(n, "") for n in (packages or RUNTIME_PACKAGES) if n not in skip}
    return {"python": dist.metadata.get("Requires-Python") or "", "packages": packages}


def kernel_source(settings: Mapping[str, Any]) -> str:
    """The kernel script: the template in ``steel_defect/deploy/kaggle/kernel_template.py`` with ``SETTINGS`` filled in."""
    template = _TEMPLATE.read_text(encoding="utf-8")
    block = (
        "# >>> settings\nSETTINGS = "
        + pprint.pformat(dict(settings), sort_dicts=False, width=100)
        + "\n# <<< settings\n"
    )
    source, n = _SETTINGS_RE.subn(lambda _: block, template, count=1)
    if n != 1:
        raise RuntimeError(f"{_TEMPLATE}: the '# >>> settings' / '# <<< settings' block is missing")
    compile(source, KERNEL_NAME, "exec")
    return source


def notebook_json(source: str) -> dict[str, Any]:
    """A valid nbformat 4 notebook with ``source`` as its only code cell."""
    return {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": "steel-defect-kernel",
                "metadata": {},
                "outputs": [],
                "source": source.splitlines(keepends=True),
            }
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


#: the bundle's ``engine`` setting (its ``runtime=`` key) -> the inference engine the kernel loads
KERNEL_ENGINES = {"torch": "torch", "onnx": "onnxruntime"}


def run_kernel(settings: Mapping[str, Any], bundle: str | os.PathLike) -> dict[str, Any]:
    """What the kernel does after installing: predict ``settings["input"]`` into ``settings["output"]``.

    The same code path as ``python predict.py ckpt=... thresholds=... images=... out=...``: the one factory
    (:func:`~steel_defect.inference.engine.load_predictor`) and the one folder loop
    (:func:`~steel_defect.inference.folder.predict_images`), whatever the engine (``runtime=onnx`` bundles:
    ONNX Runtime, numpy and OpenCV only, no torch).
    """
    from steel_defect.inference.engine import load_predictor
    from steel_defect.inference.folder import predict_images
    from steel_defect.submission import format_summary

    bundle = Path(bundle)
    images = Path(settings["input"])
    if not images.is_dir():
        raise FileNotFoundError(
            f"kernel input: test image folder not found: {images} (STEEL_DEFECT_INPUT overrides)"
        )
    thresholds = settings.get("thresholds")
    predictor = load_predictor(
        [bundle / p for p in settings["checkpoints"]],
        thresholds=thresholds
        if thresholds in ("defaults", "raw")
        else str(bundle / thresholds)
        if thresholds
        else "auto",
        device=str(settings["device"]),
        runtime="auto",
        tta=list(settings["tta"]),
        amp=bool(settings["amp"]),
        engine=KERNEL_ENGINES[settings.get("engine", "torch")],
    )
    summary = predict_images(
        predictor,
        images,
        settings["output"],
        fmt="current",
        batch_size=int(settings["batch_size"]),
        num_workers=int(settings["num_workers"]),
    )
    print(f"predicted with the {predictor.engine} engine; thresholds: {summary['thresholds']}", flush=True)
    print(format_summary(summary), flush=True)
    return summary


# ======================================================================================================
# Bundle
# ======================================================================================================
def _as_list(key: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | os.PathLike):
        text = str(value).strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        return [v.strip().strip("'\"") for v in text.split(",") if v.strip()]
    if isinstance(value, Sequence):
        return [str(v) for v in value]
    raise ValueError(f"{key} must be a list (a,b or [a,b]), got {value!r}")


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ValueError(f"{key} must be true or false, got {value!r}")


def _as_int(key: str, value: Any, minimum: int) -> int:
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum or str(number) != str(value).strip():
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return number


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names = [p.name for p in paths]
    return [f"{i}_{n}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def is_bundle(path: Path) -> bool:
    """True when the folder ``path`` holds a bundle manifest (:data:`MANIFEST_NAME`) that is a JSON object."""
    manifest = path / MANIFEST_NAME
    if manifest.is_symlink() or not manifest.is_file():
        return False
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict)


def check_bundle_out(out: Path, inputs: Sequence[Path | None], overwrite: bool) -> None:
    """Refuse an ``out`` that ``build_bundle`` may not write (before anything is written).

    Refused even with ``overwrite``: ``/``, the home folder, the working directory or a folder above it; an
    ``out`` that is or holds an input (a checkpoint, the thresholds file, the project wheel); a symbolic
    link or a file; an existing non-empty folder that is not a bundle (no :data:`MANIFEST_NAME`). An existing
    bundle is replaced only with ``overwrite``; an empty folder is always used.
    """
    refuse_broad_dir(out, what="out")
    refuse_onto_inputs(out, what="out", inputs=inputs)
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise UnsafeWriteError(
            f"out={out} exists and is {'a symbolic link' if out.is_symlink() else 'not a folder'}: refusing "
            "to replace it (nothing was written); choose another out folder"
        )
    if not any(out.iterdir()):
        return
    if not is_bundle(out):
        raise UnsafeWriteError(
            f"out={out} is a non-empty folder that is not a Kaggle bundle (no {MANIFEST_NAME}): refusing to "
            "replace it, even with overwrite=true (nothing was written); choose a new or empty out folder"
        )
    if not overwrite:
        raise FileExistsError(
            f"out={out} is an existing bundle; pass overwrite=true to replace it, or choose another out"
        )


def _move_into_place(tmp: Path, out: Path, overwrite: bool, inputs: Sequence[Path | None]) -> None:
    """Rename the finished bundle ``tmp`` to ``out``; a replaced ``out`` is checked again (it must still be
    a bundle: :func:`check_bundle_out`) before it is deleted."""
    check_bundle_out(out, inputs, overwrite)
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()
    if os.path.lexists(out):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old)  # a bundle this project wrote: verified by check_bundle_out
    else:
        os.replace(tmp, out)


def build_bundle(
    ckpt: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    **options: Any,
) -> Path:
    """Write the Kaggle Dataset folder ``out`` (see the module docstring); returns ``out``.

    ``options`` are the :data:`BUNDLE_DEFAULTS` keys. The folder is built beside ``out`` and renamed into
    place at the end, so ``out`` is either complete or untouched. Before anything is written, ``out`` is
    checked (:func:`check_bundle_out`): never a broad folder or one that is or holds an input; an existing
    non-empty ``out`` is replaced only with ``overwrite=True`` and only when it is a bundle.
    """
    opt, ckpts = _bundle_options(ckpt, options)
    out = Path(out)
    overwrite = _as_bool("overwrite", opt["overwrite"])
    download = _as_bool("download", opt["download"])
    engine = str(opt["runtime"])
    wheels = _wheel_names(opt, engine, "wheels" in options, download)
    tta = _as_list("tta", opt["tta"])
    from steel_defect.inference.tta import check_tta

    check_tta(tta)
    thresholds_src, mode = _thresholds_source(opt["thresholds"], ckpts)
    project_wheel = opt["project_wheel"]
    if project_wheel:
        project_wheel = Path(project_wheel)
        if not project_wheel.is_file() or not project_wheel.name.startswith("steel_defect-"):
            raise FileNotFoundError(f"project_wheel={project_wheel}: not an existing steel_defect-*.whl")
    inputs = [*ckpts, thresholds_src, project_wheel or None]
    check_bundle_out(out, inputs, overwrite)  # before the first write

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        wheel_info = _pack_wheels(tmp / "wheels", project_wheel, wheels, download)
        models = _pack_models(tmp, ckpts, engine, opt["height"])
        if thresholds_src is not None:
            shutil.copyfile(thresholds_src, tmp / THRESHOLDS_NAME)
        settings = _kernel_settings(opt, engine, models, wheel_info, tta)
        settings["thresholds"] = THRESHOLDS_NAME if thresholds_src is not None else mode
        _write_kernel(tmp, settings)
        _write_manifest(tmp, settings, wheel_info, ckpts, thresholds_src)
        for sub in (tmp / "wheels", tmp / Path(models[0]).parent):
            sub.chmod(0o755)
        _move_into_place(tmp, out, overwrite, inputs)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _bundle_options(
    ckpt: str | os.PathLike | Sequence[str | os.PathLike], options: Mapping[str, Any]
) -> tuple[dict[str, Any], list[Path]]:
    """The options over :data:`BUNDLE_DEFAULTS` and the checkpoints (``ckpt=RUN``: the run's model and its
    thresholds), checked: known keys, existing checkpoints, a known runtime."""
    unknown = sorted(set(options) - set(BUNDLE_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown bundle option(s) {unknown}; valid: ckpt, out, {', '.join(BUNDLE_DEFAULTS)}"
        )
    opt = {**BUNDLE_DEFAULTS, **options}
    ckpts = [Path(p) for p in _as_list("ckpt", ckpt)]
    if ckpts and isinstance(opt["thresholds"], str):  # ckpt=RUN: the run's model and its thresholds
        ckpts, opt["thresholds"] = resolve_ckpt_arg(ckpts, opt["thresholds"].strip())
    if not ckpts:
        raise ValueError("ckpt is required: ckpt=PATH or ckpt=[a.ckpt,b.ckpt]")
    for path in ckpts:
        if not path.is_file():
            raise FileNotFoundError(f"ckpt: checkpoint not found: {path}")
    return opt, ckpts


def _wheel_names(opt: dict[str, Any], engine: str, listed: bool, download: bool) -> list[str]:
    """The dependency wheels to bundle (canonical names), checked before any work: never steel-defect
    itself, and installed here unless they are downloaded."""
    if engine not in RUNTIMES:
        raise ValueError(f"runtime={engine!r}; choose one of: {', '.join(RUNTIMES)}")
    if engine == "onnx" and not listed:
        opt["wheels"] = list(ONNX_WHEELS)
    wheels = list(
        dict.fromkeys(
            canonical_name(n)
            for n in _as_list("wheels", opt["wheels"]) + _as_list("extra_wheels", opt["extra_wheels"])
        )
    )
    for name in wheels:
        check_bundle_name(name)
        if name == PROJECT:
            raise ValueError("wheels: steel-defect itself is always bundled; do not list it")
    if not download:  # fail before any work, not after building the project wheel
        for name in wheels:
            try:
                metadata.distribution(name)
            except metadata.PackageNotFoundError:
                raise ValueError(
                    f"wheels: {name!r} is not installed in this environment ({sys.prefix}); install it, drop it "
                    "from wheels=, or pass download=true"
                ) from None
    return wheels


def _thresholds_source(value: Any, ckpts: Sequence[Path]) -> tuple[Path | None, str | None]:
    """(the thresholds.yaml to bundle, None) or (None, "defaults" / "raw": no file, the kernel uses that
    mode); the file is validated, and an image-head gate refused for checkpoints without the head."""
    thresholds = "" if value is None else str(value).strip()
    if thresholds in ("defaults", "raw"):
        return None, thresholds
    if thresholds == "auto":
        src = ckpts[0].parent / THRESHOLDS_NAME
        if not src.is_file():
            raise FileNotFoundError(
                f"thresholds=auto: no tuned {THRESHOLDS_NAME} beside {ckpts[0]}; tune them first (python "
                "predict.py task=tune ckpt=..., or task=tune_oof for k-fold checkpoints), give thresholds=PATH, "
                "or bundle untuned post-processing on purpose with thresholds=defaults (the notebook's) or "
                "thresholds=raw"
            )
    elif thresholds in ("", "none", "null"):
        raise ValueError(
            f"thresholds={value!r}: say which post-processing the kernel uses: auto (the tuned "
            f"{THRESHOLDS_NAME} beside the first checkpoint), a thresholds.yaml path, defaults or raw"
        )
    else:
        src = Path(thresholds)
        if not src.is_file():
            raise FileNotFoundError(
                f"thresholds={thresholds}: no such file (auto, defaults, raw or a thresholds.yaml path)"
            )
    from steel_defect.postprocess.params import load_thresholds
    from steel_defect.postprocess.thresholds import check_image_head_gate

    params = load_thresholds(src, num_classes=None)  # validate before bundling
    if params.t_img is not None and params.img_source == "image_head":  # only then read the checkpoints
        import torch

        metas = [
            torch.load(p, map_location="cpu", weights_only=True).get("steel_defect") or {} for p in ckpts
        ]
        check_image_head_gate(
            params, [(m.get("net") or {}).get("image_head", False) for m in metas], ckpts, str(src)
        )
    return src, None


def _pack_wheels(
    wheel_dir: Path, project_wheel: Path | None, wheels: Sequence[str], download: bool
) -> list[dict[str, Any]]:
    """The project wheel (built, or ``project_wheel``) and the dependency wheels into ``wheel_dir``; their
    manifest entries (name, version, file, source)."""
    wheel_dir.mkdir()
    if project_wheel:
        built = Path(shutil.copy2(project_wheel, wheel_dir / project_wheel.name))
    else:
        built = build_project_wheel(wheel_dir)
    records = [(built, "project")]
    for name in wheels:
        path = download_wheel(name, wheel_dir) if download else wheel_from_installed(name, wheel_dir)
        records.append((path, "download" if download else "installed"))
    wheel_info = []
    for path, source in records:
        canon, version = wheel_name_version(path)
        wheel_info.append(
            {"name": canon, "version": version, "file": f"wheels/{path.name}", "source": source}
        )
    return wheel_info


def _pack_models(tmp: Path, ckpts: Sequence[Path], engine: str, height: Any) -> list[str]:
    """The checkpoints into the bundle ``tmp``: slimmed (``checkpoints/``), or exported for the ONNX-only
    kernel (``models/*.onnx``); their paths relative to the bundle."""
    names = _unique_names(ckpts)
    if engine == "onnx":
        (tmp / "models").mkdir()
        names = [str(Path(n).with_suffix(".onnx")) for n in names]
        for src, name in zip(ckpts, names, strict=True):
            export_for_kernel(src, tmp / "models" / name, _as_int("height", height, 1))
    else:
        (tmp / "checkpoints").mkdir()
        for src, name in zip(ckpts, names, strict=True):
            slim_checkpoint(src, tmp / "checkpoints" / name)
    models_dir = "models" if engine == "onnx" else "checkpoints"
    return [f"{models_dir}/{n}" for n in names]


def _kernel_settings(
    opt: Mapping[str, Any], engine: str, models: list[str], wheel_info: list[dict[str, Any]], tta: list[str]
) -> dict[str, Any]:
    """The kernel's ``SETTINGS`` (``thresholds`` is set by the caller, in its place)."""
    return {
        "input": str(opt["input"]),
        "output": str(opt["output"]),
        "checkpoints": models,
        "engine": engine,
        "thresholds": None,
        "wheels_dir": "wheels",
        "requirements": [f"{w['name']}=={w['version']}" for w in wheel_info],
        "runtime": {
            **runtime_requirements(
                [w["name"] for w in wheel_info], ONNX_RUNTIME_PACKAGES if engine == "onnx" else None
            ),
            "wheel_tags": {
                w["name"]: tag
                for w in wheel_info
                if not (tag := "-".join(Path(w["file"]).stem.split("-")[-3:])).endswith("-none-any")
            },
        },
        "batch_size": _as_int("batch_size", opt["batch_size"], 1),
        "num_workers": _as_int("num_workers", opt["num_workers"], 0),
        "tta": tta,
        "device": str(opt["device"]),
        "amp": _as_bool("amp", opt["amp"]),
        "manifest": MANIFEST_NAME,
    }


def _write_kernel(tmp: Path, settings: Mapping[str, Any]) -> None:
    source = kernel_source(settings)
    with atomic_write(tmp / KERNEL_NAME, "w", encoding="utf-8") as fh:
        fh.write(source)
    with atomic_write(tmp / NOTEBOOK_NAME, "w", encoding="utf-8") as fh:
        json.dump(notebook_json(source), fh, indent=1)
        fh.write("\n")


def _write_manifest(
    tmp: Path,
    settings: Mapping[str, Any],
    wheel_info: list[dict[str, Any]],
    ckpts: Sequence[Path],
    thresholds_src: Path | None,
) -> None:
    """Every file of the bundle ``tmp`` (size, sha256; mode 0644) into its manifest."""
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        path.chmod(0o644)
        files[path.relative_to(tmp).as_posix()] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    for item in wheel_info:
        item["sha256"] = files[item["file"]]["sha256"]
    import torch

    manifest = {
        "format_version": FORMAT_VERSION,
        "steel_defect": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "built_with": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": sys.platform,
        },
        "source_checkpoints": [str(p.resolve()) for p in ckpts],
        "thresholds_source": str(thresholds_src.resolve()) if thresholds_src is not None else None,
        "wheels": wheel_info,
        "settings": settings,
        "files": files,
    }
    with atomic_write(tmp / MANIFEST_NAME, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    (tmp / MANIFEST_NAME).chmod(0o644)
    tmp.chmod(0o755)


# ======================================================================================================
# CLI
# ======================================================================================================
USAGE = (
    "usage: python -m steel_defect.kaggle bundle ckpt=PATH[,PATH2] out=DIR [thresholds=auto|PATH|defaults|raw]\n"
    "       [wheels=a,b] [extra_wheels=c] [input=DIR] [output=CSV] [download=false] [overwrite=false]\n"
    "       [batch_size=4] [num_workers=2] [tta=[hflip]] [device=auto] [amp=true] [project_wheel=WHL]\n"
    "       [runtime=torch|onnx] [height=256]"
)


def parse_args(argv: Sequence[str]) -> tuple[str, dict[str, str]]:
    """``bundle key=value ...`` -> ("bundle", {key: value}); unknown keys raise naming the valid ones."""
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit(USAGE)
    command, *pairs = argv
    if command != "bundle":
        raise ValueError(f"unknown command {command!r}; valid: bundle\n{USAGE}")
    valid = ("ckpt", "out", *BUNDLE_DEFAULTS)
    out = parse_key_values(pairs, valid, flags={"--online": ("download", "true")}, strip_plus=True)
    for key in ("ckpt", "out"):
        if not out.get(key):
            raise ValueError(f"{key}= is required\n{USAGE}")
    return command, out


def main(argv: Sequence[str] | None = None) -> int:
    _, args = parse_args(list(sys.argv[1:] if argv is None else argv))
    ckpt, out = args.pop("ckpt"), args.pop("out")
    try:
        path = build_bundle(ckpt, out, **args)
    except (UnsafeWriteError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    manifest = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    size = sum(f["size"] for f in manifest["files"].values())
    print(f"wrote Kaggle bundle {path} ({len(manifest['files'])} files, {size / 1e6:.1f} MB)")
    for wheel in manifest["wheels"]:
        print(f"  {wheel['file']}  ({wheel['source']})")
    print(
        f"upload {path} as a Kaggle Dataset, attach it to a notebook and run {KERNEL_NAME} / {NOTEBOOK_NAME}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
