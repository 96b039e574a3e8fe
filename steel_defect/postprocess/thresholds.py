"""Where a run's post-processing thresholds come from, and what they were tuned for.

``thresholds=auto|defaults|raw|PATH`` -> :class:`~steel_defect.postprocess.params.PostprocessParams` plus a
description of the source (:func:`resolve_thresholds`); thresholds are bound to the weights (content
fingerprints) and TTA they were tuned for, and a mismatch is refused before any prediction
(:func:`checked_thresholds`); thresholds gating on an image head a model lacks are refused too
(:func:`check_image_head_gate`). A thresholds.yaml's ``meta`` has one schema (:func:`thresholds_meta`);
older layouts are read through :func:`read_thresholds_meta`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from steel_defect import NUM_CLASSES, SEVERSTAL_CLASSES

THRESHOLD_MODES: tuple[str, ...] = ("auto", "defaults", "raw")
THRESHOLDS_FILE = "thresholds.yaml"


def resolve_thresholds(mode: str, ckpt: str | os.PathLike, meta: Mapping[str, Any] | None = None):
    """The post-processing for ``thresholds=mode`` -> ``(PostprocessParams, description of the source)``.

    ``auto``: ``thresholds.yaml`` beside ``ckpt`` if it exists, else the checkpoint's stored post-processing,
    else the defaults; ``defaults``: the notebook's (Severstal's four classes) or, for other classes, gates
    and pixel thresholds at 0.5 without area limits; ``raw``: every gate off, pixel threshold 0.5;
    anything else: a yaml file written by ``save_thresholds``.
    """
    from steel_defect.postprocess.params import PostprocessParams, load_thresholds

    num_classes = len((meta or {}).get("classes") or []) or NUM_CLASSES
    if mode == "raw":
        return PostprocessParams.disabled(num_classes), "raw (no gates, pixel threshold 0.5)"
    severstal = list((meta or {}).get("classes") or SEVERSTAL_CLASSES) == list(SEVERSTAL_CLASSES)
    default = PostprocessParams.for_classes(num_classes, severstal=severstal)
    what = (
        "the notebook's defaults" if severstal else f"the defaults for {num_classes} classes (no area limits)"
    )
    if mode == "defaults":
        return default, what
    if mode == "auto":
        beside = Path(ckpt).parent / THRESHOLDS_FILE
        if beside.is_file():
            return load_thresholds(beside, num_classes), str(beside)
        if meta and meta.get("tuned_thresholds"):  # an ONNX model exported with its tuned thresholds
            tuned = meta["tuned_thresholds"]
            return PostprocessParams.from_dict(tuned["params"], num_classes), f"{STORED_TUNED} {ckpt}"
        if meta and meta.get("postprocess"):
            return PostprocessParams.from_dict(meta["postprocess"], num_classes), f"stored in {ckpt}"
        return default, what
    path = Path(os.path.expanduser(mode))
    if not path.is_file():
        raise FileNotFoundError(
            f"thresholds={mode!r}: no such file (use {', '.join(THRESHOLD_MODES)} or a path to a thresholds.yaml)"
        )
    return load_thresholds(path, num_classes), str(path)


STORED_TUNED = "tuned thresholds stored in"


def thresholds_binding(source: str, meta: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """What the thresholds of ``source`` (from :func:`resolve_thresholds`) were tuned for: ``{"fingerprints",
    "tta"}`` from a thresholds.yaml's meta or an ONNX model's stored thresholds; None when unknown (defaults,
    raw, the checkpoint's own post-processing, or a file written before fingerprints existed)."""

    if source.startswith(STORED_TUNED):
        tuned = (meta or {}).get("tuned_thresholds") or {}
        return {"fingerprints": tuned.get("fingerprints"), "tta": tuned.get("tta") or []}
    path = Path(source)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return None
    from steel_defect.postprocess.params import read_thresholds_yaml

    doc = read_thresholds_yaml(path) or {}
    file_meta = read_thresholds_meta(doc.get("meta") if isinstance(doc, Mapping) else None)
    if file_meta is None or not file_meta.get("fingerprints"):
        return None
    return {"fingerprints": list(file_meta["fingerprints"]), "tta": list(file_meta["tta"] or [])}


def recorded_tta(
    thresholds: str, ckpt: str | os.PathLike, model_meta: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """The TTA the thresholds of ``thresholds=...`` are bound to, for ``tta: null`` (follow the thresholds):
    found in the order :func:`resolve_thresholds` uses (with ``auto``: the ``thresholds.yaml`` beside
    ``ckpt``, else the tuned thresholds an ONNX model carries in ``model_meta``); () where nothing binds a
    TTA (defaults, raw, untuned or pre-fingerprint thresholds). Reads metadata only."""
    if thresholds in ("defaults", "raw"):
        return ()
    if thresholds != "auto":
        source = os.path.expanduser(thresholds)
    elif (Path(ckpt).parent / THRESHOLDS_FILE).is_file():
        source = str(Path(ckpt).parent / THRESHOLDS_FILE)
    elif (model_meta or {}).get("tuned_thresholds"):
        source = f"{STORED_TUNED} {ckpt}"
    else:
        return ()
    binding = thresholds_binding(source, model_meta)
    return tuple(binding["tta"]) if binding else ()


def check_thresholds_binding(
    source: str,
    meta: Mapping[str, Any] | None,
    nets: Sequence[torch.nn.Module],
    tta: Sequence[str],
    ckpts: Sequence[Any] = (),
) -> None:
    """Refuse thresholds tuned for other weights (content fingerprints) or another TTA than this run's."""
    from steel_defect.fingerprint import net_fingerprint

    check_fingerprints(source, meta, [net_fingerprint(n) for n in nets], tta, ckpts)


def check_fingerprints(
    source: str,
    meta: Mapping[str, Any] | None,
    fingerprints: Sequence[str | None],
    tta: Sequence[str],
    ckpts: Sequence[Any] = (),
) -> None:
    """:func:`check_thresholds_binding` for the weights' ``fingerprints`` (no torch needed)."""
    binding = thresholds_binding(source, meta)
    if binding is None or not binding["fingerprints"]:
        return
    want, have = sorted(binding["fingerprints"]), sorted(str(f) for f in fingerprints)
    problems = []
    if want != have:
        problems.append(f"they were tuned for weights {want}, but {[str(p) for p in ckpts]} are {have}")
    if list(binding["tta"]) != list(tta):
        problems.append(f"they were tuned with tta={list(binding['tta'])}, this run uses tta={list(tta)}")
    if problems:
        raise ValueError(
            f"thresholds from {source}: {'; '.join(problems)}. Re-tune them for what you predict with "
            "(python predict.py task=tune ckpt=[...] tta=[...], or task=tune_oof for k-fold checkpoints), use "
            "thresholds=defaults or thresholds=raw, or check_thresholds=false to use them anyway"
        )


def checked_thresholds(
    mode: str,
    ckpts: Sequence[Any],
    nets: Sequence[torch.nn.Module],
    metas: Sequence[Mapping[str, Any]],
    tta: Sequence[str],
    check_binding: bool = True,
) -> tuple[Any, str]:
    """:func:`resolve_thresholds` for ``nets``, refused before any prediction when they gate on an image head
    a net lacks or (with ``check_binding``) were tuned for other weights or another TTA."""
    params, source = resolve_thresholds(mode, ckpts[0], metas[0])
    names = [str(ckpts[i]) if i < len(ckpts) else f"net {i}" for i in range(len(nets))]
    check_image_head_gate(params, [bool(getattr(n, "image_head", False)) for n in nets], names, source)
    if check_binding:
        check_thresholds_binding(source, metas[0], nets, tta, ckpts)
    return params, source


def check_image_head_gate(
    params: Any, has_head: Sequence[bool], names: Sequence[Any], source: str = "the thresholds"
) -> None:
    """Fail before any prediction when ``params`` gate on the image head (``img_source: image_head`` with a
    t_img) and a model lacks it: ``has_head[i]`` says whether model ``names[i]`` has one."""
    if params.t_img is None or params.img_source != "image_head":
        return
    lacking = [str(name) for name, head in zip(names, has_head, strict=True) if not head]
    if lacking:
        raise ValueError(
            f"thresholds from {source}: img_source='image_head' needs the image head (t_img={params.t_img}), "
            f"but {', '.join(lacking)} has none (trained without model.net.image_head); use thresholds tuned "
            "for these weights, or img_source: max_cls"
        )


# ------------------------------------------------------------------------------------------------------
# The ``meta`` of a thresholds.yaml: what the thresholds were tuned for, one schema for every tuning
# ------------------------------------------------------------------------------------------------------
#: Version of the meta schema :func:`thresholds_meta` writes (files without ``schema`` are older layouts).
META_SCHEMA = 1
#: Who tuned: the end-of-training callback, ``task=tune`` or ``task=tune_oof`` (train.py ``folds: K`` too).
TUNING_SOURCES: tuple[str, ...] = ("end_of_training", "tune", "tune_oof")


def thresholds_meta(
    source: str,
    checkpoints: Sequence[Any],
    fingerprints: Sequence[str | None],
    tta: Sequence[str] = (),
    pix_modes: Sequence[str] = ("plain",),
    labels: Any = None,
    split: Any = None,
    folds: Sequence[Mapping[str, Any]] | None = None,
    min_gain_pairs: int = 0,
) -> dict[str, Any]:
    """The ``meta`` of a thresholds.yaml (every key always present): ``schema``, ``source`` (one of
    :data:`TUNING_SOURCES`), ``checkpoints`` (paths), ``fingerprints`` (content fingerprints of the
    weights: what :func:`check_fingerprints` binds to), ``tta``, ``pix_modes``, ``labels`` (the labels csv,
    None when tuned on a datamodule's split), ``split`` (the split file or None), ``folds`` (tune_oof:
    ``[{checkpoint, fold, val_images}]``, else None) and ``min_gain_pairs``."""
    if source not in TUNING_SOURCES:
        raise ValueError(f"source must be one of {', '.join(TUNING_SOURCES)}, got {source!r}")
    return {
        "schema": META_SCHEMA,
        "source": source,
        "checkpoints": [str(p) for p in checkpoints],
        "fingerprints": [None if f is None else str(f) for f in fingerprints],
        "tta": [str(t) for t in tta],
        "pix_modes": [str(m) for m in pix_modes],
        "labels": None if labels is None else str(labels),
        "split": None if split is None else str(split),
        "folds": None if folds is None else [dict(f) for f in folds],
        "min_gain_pairs": int(min_gain_pairs),
    }


_META_KEYS: tuple[str, ...] = tuple(thresholds_meta("tune", [], []))


def read_thresholds_meta(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A thresholds.yaml's ``meta`` in the :func:`thresholds_meta` schema, also from the three older layouts
    (before ``schema``): ``task=tune`` (checkpoint, checkpoints, ..., split, labels), ``task=tune_oof``
    (``oof: true``, folds) and the end-of-training callback (checkpoint, fingerprints, tta only).
    None when there is no meta mapping."""
    if not isinstance(meta, Mapping):
        return None
    if meta.get("schema") is not None:  # written by thresholds_meta; keys someone removed read as unknown
        return {**dict.fromkeys(_META_KEYS), **meta}
    if meta.get("oof"):
        source = "tune_oof"
    elif "split" in meta or "labels" in meta or "checkpoints" in meta:
        source = "tune"
    else:
        source = "end_of_training"
    checkpoints = meta.get("checkpoints") or ([meta["checkpoint"]] if meta.get("checkpoint") else [])
    return {
        "schema": 0,
        "source": source,
        "checkpoints": [str(p) for p in checkpoints],
        "fingerprints": list(meta.get("fingerprints") or []),
        "tta": list(meta.get("tta") or []),
        "pix_modes": list(meta.get("pix_modes") or ["plain"]),
        "labels": meta.get("labels"),
        "split": meta.get("split"),
        "folds": meta.get("folds"),
        "min_gain_pairs": 0,
    }
