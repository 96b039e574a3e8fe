"""Where a run's post-processing thresholds come from, and what they were tuned for.

``thresholds=auto|defaults|raw|PATH`` -> :class:`~steel_defect.postprocess.params.PostprocessParams` plus a
description of the source (:func:`resolve_thresholds`); thresholds are bound to the weights (content
fingerprints) and TTA they were tuned for, and a mismatch is refused before any prediction
(:func:`checked_thresholds`).
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
    file_meta = doc.get("meta") if isinstance(doc, Mapping) else None
    if not isinstance(file_meta, Mapping) or not file_meta.get("fingerprints"):
        return None
    return {"fingerprints": list(file_meta["fingerprints"]), "tta": list(file_meta.get("tta") or [])}


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
    check_thresholds_for_nets(params, nets, source, ckpts)
    if check_binding:
        check_thresholds_binding(source, metas[0], nets, tta, ckpts)
    return params, source


def check_thresholds_for_nets(
    params: Any, nets: Sequence[torch.nn.Module], source: str, ckpts: Sequence[Any] = ()
) -> None:
    """Fail before any prediction when ``params`` gate on the image head and a net has none."""
    if params.t_img is None or params.img_source != "image_head":
        return
    lacking = [i for i, net in enumerate(nets) if not getattr(net, "image_head", False)]
    if lacking:
        names = [str(ckpts[i]) if i < len(ckpts) else f"net {i}" for i in lacking]
        raise ValueError(
            f"thresholds from {source}: img_source='image_head' (t_img={params.t_img}) needs the image head, "
            f"but {', '.join(names)} has none (trained without model.net.image_head); use thresholds tuned "
            "for this checkpoint, or img_source: max_cls"
        )
