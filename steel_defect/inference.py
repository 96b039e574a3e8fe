"""Full-resolution inference: batched probabilities with padding to the network stride, TTA as exact
augment/de-augment pairs, checkpoint averaging, and the validation-split statistics used for tuning.

On top of that core, the tasks of ``predict.py`` (``run(cfg)`` dispatches on ``cfg["task"]``):

* ``predict``: a folder of images -> ``submission.csv`` (streamed: probabilities live one batch at a time);
* ``evaluate``: the same on a labelled folder, plus the notebook's report (``evaluation.json``);
* ``tune``: threshold search on the run's validation split -> ``thresholds.yaml`` beside the checkpoint;
* ``export``: a checkpoint -> ONNX (``steel_defect.export``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import pickle
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from steel_defect import NUM_CLASSES
from steel_defect.io import atomic_write
from steel_defect.submission import SUBMISSION_FORMATS, write_submission

log = logging.getLogger(__name__)

Tensor = torch.Tensor

#: name -> (augment, de-augment) on (B, C, H, W) tensors. Each pair is an exact inverse (tested); class
#: logits are invariant to these flips, so only the mask probabilities are de-augmented.
TTA_TRANSFORMS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "hflip": (lambda x: x.flip(-1), lambda y: y.flip(-1)),
    "vflip": (lambda x: x.flip(-2), lambda y: y.flip(-2)),
    "hvflip": (lambda x: x.flip(-1, -2), lambda y: y.flip(-1, -2)),
}


def check_tta(names: Iterable[str]) -> list[str]:
    """Validate TTA names, listing the valid ones on error."""
    names = list(names or [])
    bad = [n for n in names if n not in TTA_TRANSFORMS]
    if bad:
        raise ValueError(f"unknown tta {bad}; valid: {sorted(TTA_TRANSFORMS)}")
    return names


def pad_to_multiple(x: Tensor, multiple: int = 32) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad (B, C, H, W) at the bottom/right so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)


def split_outputs(out: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
    """A net's output -> ``(mask_logits, class_logits, image_logits or None)``.

    Nets return ``(mask_logits, class_logits)``, or with an image head (``model.net.image_head``) a third
    output, the "image has any defect" logits (B,).
    """
    if not isinstance(out, tuple | list) or len(out) not in (2, 3):
        got = f"a {len(out)}-tuple" if isinstance(out, tuple | list) else type(out).__name__
        raise ValueError(f"a net must return (mask_logits, class_logits[, image_logits]), got {got}")
    return out[0], out[1], (out[2] if len(out) == 3 else None)


def net_stride(nets: torch.nn.Module | Sequence[torch.nn.Module]) -> int:
    """The padding multiple for ``nets``: the lcm of their ``output_stride`` (32 when they have none)."""
    nets = [nets] if isinstance(nets, torch.nn.Module) else list(nets)
    stride = 1
    for net in nets:
        stride = int(np.lcm(stride, int(getattr(net, "output_stride", None) or 32)))
    return stride


@torch.inference_mode()
def predict_batch(
    nets: torch.nn.Module | Sequence[torch.nn.Module],
    images: Tensor,
    tta: Sequence[str] = (),
    amp: bool = False,
    stride: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Sigmoid probabilities ``(mask_probs (B,4,H,W), class_probs (B,4), image_probs (B,) or None)`` for
    float images in [0, 1]; ``image_probs`` is the image head's "any defect" probability, None unless
    every net has an image head.

    Averages over the identity view, every TTA view and every network (checkpoint ensemble). Images of any
    size are padded to the stride (default: the nets' ``output_stride``, else 32) and the output cropped back.
    """
    nets = [nets] if isinstance(nets, torch.nn.Module) else list(nets)
    views = [(lambda x: x, lambda y: y)] + [TTA_TRANSFORMS[n] for n in check_tta(tta)]
    x, (h, w) = pad_to_multiple(images, net_stride(nets) if stride is None else stride)
    autocast = torch.autocast(
        x.device.type, dtype=torch.bfloat16 if x.device.type == "cpu" else torch.float16
    )
    mask_sum, cls_sum, img_sum = 0.0, 0.0, 0.0
    every_image_head = True
    for net in nets:
        for aug, deaug in views:
            with autocast if amp else nullcontext():
                mask_logits, cls_logits, img_logits = split_outputs(net(aug(x)))
            mask_sum = mask_sum + deaug(mask_logits.float().sigmoid())
            cls_sum = cls_sum + cls_logits.float().sigmoid()
            if img_logits is None:
                every_image_head = False
            else:
                img_sum = img_sum + img_logits.float().sigmoid()
    n = len(nets) * len(views)
    return (mask_sum / n)[..., :h, :w], cls_sum / n, (img_sum / n if every_image_head else None)


def iter_probabilities(
    nets: torch.nn.Module | Sequence[torch.nn.Module],
    loader: Iterable[dict],
    device: str | torch.device = "cpu",
    tta: Sequence[str] = (),
    amp: bool = False,
) -> Iterator[tuple[dict, Tensor, Tensor, Tensor | None]]:
    """Yield ``(batch, mask_probs, class_probs, image_probs or None)`` for every batch of a loader of dict
    batches (see :func:`predict_batch`)."""
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        mask_probs, class_probs, image_probs = predict_batch(nets, images, tta=tta, amp=amp)
        yield batch, mask_probs, class_probs, image_probs


def collect_tuning_stats(
    nets: torch.nn.Module | Sequence[torch.nn.Module],
    loader: Iterable[dict],
    device: str | torch.device = "cpu",
    tta: Sequence[str] = (),
    amp: bool = False,
    **stats_kwargs,
):
    """Run the network(s) over a labelled loader and accumulate :class:`TuningStats` (memory-light; with
    the image head's probabilities when every net has one)."""
    from steel_defect.tuning import TuningStats

    stats = TuningStats(**stats_kwargs)
    for batch, mask_probs, class_probs, image_probs in iter_probabilities(nets, loader, device, tta, amp):
        stats.update(
            mask_probs.cpu().numpy(),
            class_probs.cpu().numpy(),
            batch["mask"].numpy() > 0.5,
            None if image_probs is None else image_probs.cpu().numpy(),
        )
    return stats


# ======================================================================================================
# Configuration (conf/predict.yaml)
# ======================================================================================================
TASKS: tuple[str, ...] = ("predict", "evaluate", "tune", "tune_oof", "pseudo", "export")
#: auto: the fast path that keeps the output faithful (checkpoints: torch with channels_last weights; .onnx
#: files: ONNX Runtime); torch: the eager fp32 reference; onnx: exported models.
RUNTIMES: tuple[str, ...] = ("auto", "torch", "onnx")
THRESHOLD_MODES: tuple[str, ...] = ("auto", "defaults", "raw")
THRESHOLDS_FILE = "thresholds.yaml"

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
    "pseudo": {"t_pos": 0.95, "t_neg": 0.05},
    "export": {
        "out": None,
        "opset": 17,
        "dynamic_width": False,
        "height": 256,
        "width": 1600,
    },
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
    pseudo: dict[str, float] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)


def _choice(key: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")
    return value


def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _path(key: str, value: Any) -> Path | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"{key} must be a path, got {value!r}")
    return Path(os.path.expanduser(str(value)))


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
    from steel_defect.pseudo import PseudoRule
    from steel_defect.tuning import check_pix_modes

    c = _merge(DEFAULTS, cfg)
    task = _choice("task", c["task"], TASKS)
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
    images, alias = _path("data.images", data["images"]), _path("images", c["images"])
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
    exp = c["export"]
    out = _path("out", c["out"])
    if out is None:
        raise ValueError("out must be a file path such as submission.csv")
    return PredictConfig(
        task=task,
        ckpt=tuple(Path(os.path.expanduser(str(p))) for p in ckpts),
        thresholds=thresholds.strip(),
        root=_path("data.root", data["root"]),
        images=images if images is not None else alias,
        labels=_path("data.labels", data["labels"]),
        split=_path("data.split", data["split"]),
        out=out,
        format=_choice("format", c["format"], SUBMISSION_FORMATS),
        batch_size=_int("batch_size", c["batch_size"], 1),
        num_workers=_int("num_workers", c["num_workers"], 0),
        device=device,
        amp=_bool("amp", c["amp"]),
        tta=tuple(tta),
        overlays=_int("overlays", c["overlays"], 0),
        overlays_dir=_path("overlays_dir", c["overlays_dir"]) or Path("overlays"),
        runtime=_choice("runtime", c["runtime"], RUNTIMES),
        check_thresholds=_bool("check_thresholds", c["check_thresholds"]),
        pix_modes=tuple(check_pix_modes(c["pix_modes"])),
        pseudo=dataclasses.asdict(PseudoRule.from_dict(c["pseudo"])),
        export={
            "out": _path("export.out", exp["out"]),
            "opset": _int("export.opset", exp["opset"], 1),
            "dynamic_width": _bool("export.dynamic_width", exp["dynamic_width"]),
            "height": _int("export.height", exp["height"], 1),
            "width": _int("export.width", exp["width"], 1),
        },
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an explicit cuda device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=cpu or device=auto")
    return device


# ======================================================================================================
# Checkpoints and thresholds
# ======================================================================================================
def runtime_kind(runtime: str, path: str | os.PathLike) -> str:
    """``torch`` or ``onnx``: what ``runtime`` runs the model file ``path`` with (auto: by its suffix)."""
    if runtime == "auto":
        return "onnx" if Path(path).suffix == ".onnx" else "torch"
    return runtime


def load_nets(
    paths: Sequence[str | os.PathLike], device: torch.device | str = "cpu", runtime: str = "torch"
) -> tuple[list[torch.nn.Module], list[dict[str, Any]]]:
    """Load every checkpoint (``weights_only=True``; or exported ONNX models) in eval mode on ``device``.

    ``runtime``: ``torch`` (eager, the reference), ``onnx``, or ``auto``: ``.onnx`` files with ONNX Runtime,
    checkpoints with their weights in channels_last memory format (1.4x faster convolutions on CPU, the same
    Dice: see the README's faithfulness table). Returns the nets and their ``steel_defect`` metadata; all
    must predict the same classes.
    """
    _choice("runtime", runtime, RUNTIMES)
    nets, metas = [], []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"ckpt: checkpoint not found: {path}")
        if runtime_kind(runtime, path) == "torch":
            from steel_defect.models.checkpoint import load_net_from_checkpoint

            try:
                net, meta = load_net_from_checkpoint(path, map_location=device)
            except pickle.UnpicklingError as err:
                raise _refusal(path, err) from err
            net = net.to(device).eval()
            if runtime == "auto":
                net = net.to(memory_format=torch.channels_last)
        else:
            from steel_defect.export import OnnxNet

            net = OnnxNet(path, device=str(device))
            meta = dict(net.meta.get("meta") or {})
            meta.setdefault(
                "classes", [str(c + 1) for c in range(int(net.meta.get("classes") or NUM_CLASSES))]
            )
        nets.append(net)
        metas.append(dict(meta))
    classes = [m.get("classes") for m in metas]
    if any(c != classes[0] for c in classes):
        detail = ", ".join(f"{p}: {c}" for p, c in zip(paths, classes, strict=True))
        raise ValueError(f"ckpt: the checkpoints predict different classes and cannot be averaged ({detail})")
    return nets, metas


def _refusal(path: Path, err: Exception) -> ValueError:
    """A clear error for a file that ``torch.load(weights_only=True)`` refused."""
    if not zipfile.is_zipfile(path):
        return ValueError(f"ckpt: not a steel-defect checkpoint (not a torch checkpoint file): {path}")
    text = str(err)
    detail = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0].strip()
    return ValueError(
        f"ckpt: refused to load {path}: it holds pickled objects, not only tensors and plain values "
        f"(torch.load with weights_only=True: {detail or text}). A checkpoint is data, never code: it is "
        "never loaded with weights_only=False; re-save it with plain hyper-parameters."
    )


def resolve_thresholds(mode: str, ckpt: str | os.PathLike, meta: Mapping[str, Any] | None = None):
    """The post-processing for ``thresholds=mode`` -> ``(PostprocessParams, description of the source)``.

    ``auto``: ``thresholds.yaml`` beside ``ckpt`` if it exists, else the checkpoint's stored post-processing,
    else the notebook defaults; ``defaults``: the notebook's; ``raw``: every gate off, pixel threshold 0.5;
    anything else: a yaml file written by ``save_thresholds``.
    """
    from steel_defect.postprocess import PostprocessParams, load_thresholds

    num_classes = len((meta or {}).get("classes") or []) or NUM_CLASSES
    if mode == "raw":
        return PostprocessParams.disabled(num_classes), "raw (no gates, pixel threshold 0.5)"
    if mode == "defaults":
        return PostprocessParams.notebook_defaults(), "the notebook's defaults"
    if mode == "auto":
        beside = Path(ckpt).parent / THRESHOLDS_FILE
        if beside.is_file():
            return load_thresholds(beside, num_classes), str(beside)
        if meta and meta.get("tuned_thresholds"):  # an ONNX model exported with its tuned thresholds
            tuned = meta["tuned_thresholds"]
            return PostprocessParams.from_dict(tuned["params"], num_classes), f"{STORED_TUNED} {ckpt}"
        if meta and meta.get("postprocess"):
            return PostprocessParams.from_dict(meta["postprocess"], num_classes), f"stored in {ckpt}"
        return PostprocessParams.notebook_defaults(), "the notebook's defaults"
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
    import yaml

    if source.startswith(STORED_TUNED):
        tuned = (meta or {}).get("tuned_thresholds") or {}
        return {"fingerprints": tuned.get("fingerprints"), "tta": tuned.get("tta") or []}
    path = Path(source)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return None
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
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

    binding = thresholds_binding(source, meta)
    if binding is None or not binding["fingerprints"]:
        return
    want, have = sorted(binding["fingerprints"]), sorted(str(net_fingerprint(n)) for n in nets)
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


# ======================================================================================================
# Streaming prediction
# ======================================================================================================
@dataclass
class ImagePrediction:
    """The result for one image. ``masks`` (C, H, W) bool and ``class_probs`` (C,) are None for an
    unreadable image (``ok=False``); ``image`` (3, H, W) float in [0, 1] is the batch's tensor (CPU);
    ``image_prob`` is the image head's "any defect" probability (None without an image head)."""

    image_id: str
    ok: bool
    masks: np.ndarray | None
    class_probs: np.ndarray | None
    image: Tensor | None
    image_prob: float | None = None

    @property
    def rles(self) -> list[str]:
        from steel_defect.rle import masks_to_rles

        return [""] * NUM_CLASSES if self.masks is None else masks_to_rles(self.masks)


def iter_predictions(
    nets: Sequence[torch.nn.Module],
    loader: Iterable[Any],
    params: Any,
    device: torch.device | str = "cpu",
    tta: Sequence[str] = (),
    amp: bool = False,
) -> Iterator[ImagePrediction]:
    """Post-processed predictions, one image at a time, in dataset order.

    ``loader`` yields :func:`~steel_defect.data.dataset.predict_collate` batches (lists of same-size
    sub-batches with ``image``, ``image_id``, ``ok`` and ``index``) or plain dict batches. Unreadable images
    (``ok=False``) never reach the network.
    """
    from steel_defect.postprocess import postprocess

    for batch in loader:
        groups = [batch] if isinstance(batch, Mapping) else list(batch)
        results: dict[int, ImagePrediction] = {}
        offset = 0
        for sub in groups:
            ids = list(sub["image_id"])
            ok = (
                torch.as_tensor(sub["ok"], dtype=torch.bool)
                if "ok" in sub
                else torch.ones(len(ids), dtype=torch.bool)
            )
            index = sub["index"].tolist() if "index" in sub else list(range(offset, offset + len(ids)))
            offset += len(ids)
            masks = probs = img = None
            good = ok.nonzero().flatten()
            if len(good):
                images = sub["image"][good].to(device, non_blocking=True)
                mask_probs, class_probs, image_probs = predict_batch(nets, images, tta=tta, amp=amp)
                probs = class_probs.float().cpu().numpy()
                img = None if image_probs is None else image_probs.float().cpu().numpy()
                masks = postprocess(mask_probs.float().cpu().numpy(), probs, params, image_probs=img)
            row = {int(g): j for j, g in enumerate(good.tolist())}
            for i, image_id in enumerate(ids):
                j = row.get(i)
                results[index[i]] = ImagePrediction(
                    image_id=str(image_id),
                    ok=j is not None,
                    masks=None if j is None else masks[j],
                    class_probs=None if j is None else probs[j],
                    image=sub["image"][i],
                    image_prob=None if j is None or img is None else float(img[j]),
                )
        for i in sorted(results):
            yield results[i]


def _progress(console: Any):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _image_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] -> (H, W, 3) uint8 (exact for images that were uint8 / 255)."""
    return image.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def read_labels(path: str | os.PathLike, image_ids: Sequence[str]) -> dict[str, list[str]]:
    """Ground truth for ``image_ids`` from a csv in either Kaggle format: image_id -> C RLE strings.

    Images without rows are defect-free; a csv row naming an image that is not among ``image_ids`` raises.
    RLEs are decoded later, at each image's own size.
    """
    from steel_defect.data.annotations import RLE_COLUMNS, read_train_csv

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.labels: label csv not found: {path}")
    frame = read_train_csv(path, validate_rle=False)
    rles = dict(
        zip(frame["ImageId"], frame[RLE_COLUMNS].fillna("").astype(str).to_numpy().tolist(), strict=True)
    )
    missing = sorted(set(rles) - set(image_ids))
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} labelled images are not in the image folder, e.g. {missing[:3]} "
            "(point data.images at the folder these labels describe)"
        )
    return {i: rles.get(i, [""] * NUM_CLASSES) for i in image_ids}


@dataclass
class _Evaluation:
    """Per-image accumulators of task=evaluate: pair Dice and "defect present" flags, (N, C) each."""

    dice: list[np.ndarray] = field(default_factory=list)
    pred: list[np.ndarray] = field(default_factory=list)
    true: list[np.ndarray] = field(default_factory=list)

    def add(
        self,
        image_id: str,
        pred_masks: np.ndarray | None,
        true_rles: Sequence[str],
        shape: tuple[int, int] | None,
    ) -> np.ndarray | None:
        """Score one image; returns its true masks (None for an unreadable image, scored as empty)."""
        from steel_defect.metrics import dice_per_pair
        from steel_defect.rle import rles_to_masks

        true_flags = np.asarray([bool(r.strip()) for r in true_rles])
        if pred_masks is None:
            self.dice.append((~true_flags).astype(np.float64))
            self.pred.append(np.zeros_like(true_flags))
            self.true.append(true_flags)
            return None
        try:
            true_masks = rles_to_masks(true_rles, shape).astype(bool)
        except ValueError as err:
            raise ValueError(
                f"labels of image {image_id!r} do not fit its {shape[0]}x{shape[1]} size: {err}"
            ) from err
        self.dice.append(dice_per_pair(pred_masks[None], true_masks[None])[0])
        self.pred.append(pred_masks.reshape(len(pred_masks), -1).any(axis=1))
        self.true.append(true_flags)
        return true_masks


def prediction_loader(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    nets: Sequence[torch.nn.Module],
    batch_size: int = 4,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> Any:
    """A loader of the unlabelled images of ``source`` (a folder, sorted by name, a file or a list), batched
    by :func:`~steel_defect.data.dataset.predict_collate` into same-size sub-batches, in order."""
    from torch.utils.data import DataLoader

    from steel_defect.data.dataset import PredictDataset, predict_collate
    from steel_defect.data.transforms import build_transforms

    stride = net_stride(nets)
    # Unreadable images never reach the network, so their stand-in image is as small as possible.
    dataset = PredictDataset(source, build_transforms("predict"), fallback_shape=(stride, stride))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=predict_collate,
        pin_memory=torch.device(device).type == "cuda",
    )


def predict_images(
    nets: Sequence[torch.nn.Module],
    source: str | os.PathLike | Sequence[str | os.PathLike],
    params: Any,
    out: str | os.PathLike,
    fmt: str = "current",
    device: torch.device | str = "cpu",
    tta: Sequence[str] = (),
    amp: bool = False,
    batch_size: int = 4,
    num_workers: int = 0,
    labels: str | os.PathLike | None = None,
    overlays: int = 0,
    overlays_dir: str | os.PathLike = "overlays",
    console: Any = None,
) -> dict[str, Any]:
    """Predict every image of ``source`` (a folder, sorted by name, or a list of files) into a submission.

    Streams: each batch is post-processed and RLE-encoded at once, so memory does not grow with the number
    of images. Unreadable images get empty masks, a warning and a count. Every image is predicted at its
    own size (padded to the stride). With ``labels`` (a csv), also scores every image (``evaluation`` in the
    returned summary). The first ``overlays`` readable images are drawn to ``overlays_dir`` as PNG.
    """
    from steel_defect.report import evaluation_report, render_overlay, save_overlay

    device = torch.device(device)
    loader = prediction_loader(source, nets, batch_size, num_workers, device)
    dataset = loader.dataset
    truth = None if labels is None else read_labels(labels, dataset.image_ids)
    console = console if console is not None else _stderr_console()
    evaluation = _Evaluation() if truth is not None else None
    unreadable: list[str] = []
    nonempty = np.zeros(NUM_CLASSES, dtype=np.int64)
    written: list[Path] = []
    start = time.perf_counter()

    with _progress(console) as progress:
        task = progress.add_task("predict" if truth is None else "evaluate", total=len(dataset), rate="")

        def rows() -> Iterator[tuple[str, list[str]]]:
            done = 0
            for pred in iter_predictions(nets, loader, params, device=device, tta=tta, amp=amp):
                if not pred.ok:
                    unreadable.append(pred.image_id)
                    log.warning("unreadable image %s: written with empty masks", pred.image_id)
                else:
                    nonempty[:] += pred.masks.reshape(len(pred.masks), -1).any(axis=1)
                true_masks = None
                if evaluation is not None:
                    shape = None if pred.masks is None else pred.masks.shape[-2:]
                    true_masks = evaluation.add(pred.image_id, pred.masks, truth[pred.image_id], shape)
                if pred.ok and len(written) < overlays:
                    picture = render_overlay(
                        _image_uint8(pred.image),
                        pred.masks,
                        pred.class_probs,
                        pred.image_id,
                        true_masks=true_masks,
                    )
                    written.append(
                        save_overlay(Path(overlays_dir) / f"{Path(pred.image_id).stem}.png", picture)
                    )
                yield pred.image_id, pred.rles
                done += 1
                elapsed = time.perf_counter() - start
                progress.update(task, advance=1, rate=f"{done / elapsed:.2f} img/s" if elapsed > 0 else "")

        count = write_submission(rows(), out, fmt)
    seconds = time.perf_counter() - start
    summary: dict[str, Any] = {
        "out": str(out),
        "format": fmt,
        "images": count,
        "seconds": seconds,
        "images_per_s": count / seconds if seconds > 0 else float("inf"),
        "seconds_per_image": seconds / count if count else 0.0,
        "nonempty_masks": {str(c + 1): int(v) for c, v in enumerate(nonempty)},
        "unreadable": list(unreadable),
        "overlays": [str(p) for p in written],
    }
    if evaluation is not None:
        summary["evaluation"] = evaluation_report(
            np.stack(evaluation.dice), np.stack(evaluation.pred), np.stack(evaluation.true), len(unreadable)
        )
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """The lines printed at the end of a prediction run."""
    per_class = ", ".join(f"{c}: {n}" for c, n in summary["nonempty_masks"].items())
    lines = [
        f"wrote {summary['out']} ({summary['format']} format): {summary['images']} images in "
        f"{summary['seconds']:.1f} s ({summary['images_per_s']:.2f} images/s, "
        f"{summary['seconds_per_image']:.3f} s/image)",
        f"non-empty masks per class: {per_class}",
        f"unreadable images: {len(summary['unreadable'])}"
        + (
            f" ({', '.join(summary['unreadable'][:10])}{', ...' if len(summary['unreadable']) > 10 else ''})"
            if summary["unreadable"]
            else ""
        ),
    ]
    if summary.get("overlays"):
        lines.append(f"overlays: {len(summary['overlays'])} PNGs in {Path(summary['overlays'][0]).parent}")
    return "\n".join(lines)


# ======================================================================================================
# Tasks
# ======================================================================================================
def _images_dir(c: PredictConfig, default: str) -> Path:
    if c.images is not None:
        return c.images
    if c.root is None:
        raise ValueError(
            f"data.root (or data.images) is required for task={c.task}: the folder holding {default}/"
        )
    return c.root / default


def _setup(
    c: PredictConfig,
) -> tuple[torch.device, list[torch.nn.Module], list[dict[str, Any]], Any, str, bool]:
    device = resolve_device(c.device)
    nets, metas = load_nets(c.ckpt, device, c.runtime)
    check_binding = c.check_thresholds and c.task not in ("tune", "tune_oof")
    params, source = checked_thresholds(c.thresholds, c.ckpt, nets, metas, c.tta, check_binding)
    amp = c.amp and device.type == "cuda" and runtime_kind(c.runtime, c.ckpt[0]) == "torch"
    return device, nets, metas, params, source, amp


def run_predict(c: PredictConfig, console: Any = None) -> dict[str, Any]:
    """task=predict / task=evaluate."""
    from rich.console import Console

    from steel_defect.report import print_evaluation_report

    console = console if console is not None else Console()
    images = _images_dir(c, "test_images")
    labels = None
    if c.task == "evaluate":
        labels = c.labels
        if labels is None:
            default = c.root / "test_labels.csv" if c.root is not None else None
            if default is None or not default.is_file():
                raise ValueError(
                    f"task=evaluate needs labels: set data.labels=CSV (no {default or 'data.root/test_labels.csv'})"
                )
            labels = default
    device, nets, _, params, source, amp = _setup(c)
    log.info(
        "%s %s with %d checkpoint(s) on %s%s%s; thresholds: %s",
        c.task,
        images,
        len(nets),
        device,
        f", tta {list(c.tta)}" if c.tta else "",
        ", amp" if amp else "",
        source,
    )
    summary = predict_images(
        nets,
        images,
        params,
        c.out,
        fmt=c.format,
        device=device,
        tta=c.tta,
        amp=amp,
        batch_size=c.batch_size,
        num_workers=c.num_workers,
        labels=labels,
        overlays=c.overlays,
        overlays_dir=c.overlays_dir,
    )
    summary["thresholds"] = source
    console.print(format_summary(summary), highlight=False, soft_wrap=True)
    if "evaluation" in summary:
        print_evaluation_report(summary["evaluation"], console)
        path = c.out.with_name("evaluation.json")
        doc = {
            "images": str(images),
            "labels": str(labels),
            "checkpoints": [str(p) for p in c.ckpt],
            "tta": list(c.tta),
            "thresholds": source,
            "params": params.to_dict(),
            **summary["evaluation"],
        }
        with atomic_write(path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")
        summary["evaluation_json"] = str(path)
        console.print(f"evaluation written to {path}", highlight=False, soft_wrap=True)
    return summary


def _tuning_sources(c: PredictConfig) -> tuple[Path, Path]:
    """The labelled images folder and label csv of task=tune / tune_oof (defaults under data.root)."""
    images = _images_dir(c, "train_images")
    labels = c.labels
    if labels is None:
        if c.root is None:
            raise ValueError(f"task={c.task} needs data.root (for train.csv) or data.labels=CSV")
        labels = c.root / "train.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"data.labels: label csv not found: {labels}")
    return images, labels


def labelled_loader(
    ids: Sequence[str],
    images: Path,
    labels: Path,
    split_path: Path,
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> Any:
    """A loader over the labelled images ``ids`` (from ``split_path``) at full size, no augmentation."""
    import pandas as pd
    from torch.utils.data import DataLoader

    from steel_defect.data.annotations import RLE_COLUMNS, read_train_csv
    from steel_defect.data.dataset import SteelDataset
    from steel_defect.data.transforms import build_transforms

    missing = [i for i in ids if not (images / i).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{split_path}: {len(missing)} validation images are not in {images}, e.g. {missing[:3]}"
        )
    frame = pd.DataFrame({"ImageId": list(ids)}).merge(
        read_train_csv(labels, validate_rle=False), on="ImageId", how="left"
    )
    frame[RLE_COLUMNS] = frame[RLE_COLUMNS].fillna("")
    return DataLoader(
        SteelDataset(frame, images, build_transforms("val")),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )


def run_tune(c: PredictConfig, console: Any = None) -> dict[str, Any]:
    """task=tune: search t_pix, t_cls, min_area per class on the validation split; write thresholds.yaml."""
    from rich.console import Console

    from steel_defect.data.splits import load_split
    from steel_defect.fingerprint import net_fingerprint
    from steel_defect.postprocess import PostprocessParams, save_thresholds
    from steel_defect.tuning import format_tuning_report, stats_for, tune_thresholds

    console = console if console is not None else Console()
    split_path = c.split if c.split is not None else c.ckpt[0].resolve().parent.parent / "split.json"
    if not split_path.is_file():
        raise FileNotFoundError(
            f"data.split: split file not found: {split_path} (training writes <run>/split.json; pass data.split=PATH)"
        )
    ids = list(load_split(split_path)["val"])
    if not ids:
        raise ValueError(f"{split_path}: the validation split is empty")
    images, labels = _tuning_sources(c)
    device, nets, metas, _, _, amp = _setup(c)
    loader = labelled_loader(ids, images, labels, split_path, c.batch_size, c.num_workers, device)
    base = PostprocessParams.from_dict(metas[0]["postprocess"]) if metas[0].get("postprocess") else None
    kwargs = stats_for(base, c.pix_modes)
    with _progress(_stderr_console()) as progress:
        task = progress.add_task("tune", total=len(ids), rate="")

        def tracked() -> Iterator[dict]:
            for batch in loader:
                yield batch
                progress.update(task, advance=len(batch["image_id"]))

        stats = collect_tuning_stats(nets, tracked(), device=device, tta=c.tta, amp=amp, **kwargs)
    params, report = tune_thresholds(stats, base=base) if base is not None else tune_thresholds(stats)
    path = c.ckpt[0].parent / THRESHOLDS_FILE
    save_thresholds(
        params,
        path,
        report=report,
        meta={
            "checkpoint": c.ckpt[0].name,
            "checkpoints": [str(p) for p in c.ckpt],
            "fingerprints": [net_fingerprint(n) for n in nets],
            "tta": list(c.tta),
            "pix_modes": list(c.pix_modes),
            "split": str(split_path),
            "labels": str(labels),
        },
    )
    console.print(format_tuning_report(report), highlight=False, soft_wrap=True)
    console.print(f"tuned thresholds written to {path}", highlight=False, soft_wrap=True)
    return {"thresholds": str(path), "params": params.to_dict(), "report": report}


def run_export(c: PredictConfig, console: Any = None) -> dict[str, Any]:
    """task=export: one checkpoint -> an ONNX model (default: beside it, ``.onnx``)."""
    from rich.console import Console

    from steel_defect.export import export_onnx
    from steel_defect.fingerprint import net_fingerprint

    console = console if console is not None else Console()
    if len(c.ckpt) != 1:
        raise ValueError(f"task=export takes one checkpoint, got ckpt={[str(p) for p in c.ckpt]}")
    if c.runtime == "onnx":
        raise ValueError("task=export reads a training checkpoint: use runtime=torch (or auto)")
    nets, metas = load_nets(c.ckpt, "cpu", "torch")
    out = c.export["out"] or c.ckpt[0].with_suffix(".onnx")
    meta = {**metas[0], "fingerprint": net_fingerprint(nets[0])}
    params, source = resolve_thresholds(c.thresholds, c.ckpt[0], metas[0])
    binding = thresholds_binding(source, metas[0])
    if binding is not None:  # tuned thresholds travel inside the model
        if c.check_thresholds:
            check_thresholds_binding(source, metas[0], nets, binding["tta"], c.ckpt)
        meta["tuned_thresholds"] = {"params": params.to_dict(), "source": source, **binding}
    path = export_onnx(
        nets[0],
        out,
        height=c.export["height"],
        width=c.export["width"],
        opset=c.export["opset"],
        dynamic_width=c.export["dynamic_width"],
        meta=meta,
    )
    stored = f"; tuned thresholds from {source} stored in its metadata" if binding is not None else ""
    console.print(f"exported {c.ckpt[0]} to {path}{stored}", highlight=False, soft_wrap=True)
    return {"onnx": str(path), "thresholds": source if binding is not None else None}


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Entry point of ``predict.py``: validate the plain config, then run its ``task``; with a ``trainer``
    config (``trainer=ddp``), predict with Lightning's Trainer.predict in several processes."""
    cfg = dict(cfg)
    trainer_cfg = cfg.pop("trainer", None)
    c = parse_config(cfg)
    if trainer_cfg is not None:
        if not isinstance(trainer_cfg, Mapping):
            raise ValueError(
                f"trainer must be a trainer config (trainer=ddp, trainer=ddp_cpu), got {trainer_cfg!r}"
            )
        from steel_defect.distributed import run_distributed

        return run_distributed(c, trainer_cfg)
    if c.task in ("predict", "evaluate"):
        return run_predict(c)
    if c.task == "tune":
        return run_tune(c)
    if c.task == "tune_oof":
        from steel_defect.folds import run_tune_oof

        return run_tune_oof(c)
    if c.task == "pseudo":
        from steel_defect.pseudo import run_pseudo

        return run_pseudo(c)
    return run_export(c)
