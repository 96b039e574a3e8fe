"""The inference core: load models once, then probabilities and post-processed masks for images.

Full-resolution prediction with padding to the network stride, TTA as exact augment/de-augment pairs and
checkpoint averaging (:func:`predict_batch`); streaming, post-processed predictions for a loader
(:func:`iter_predictions`); and :class:`Predictor`, which holds loaded nets, their thresholds and their
TTA for in-memory images. This is what ``predict.py``, the Kaggle kernel, the benchmarks and the
inspection service use. It imports torch, numpy and (to load checkpoints) smp/timm; never Lightning, Hydra
or torchmetrics (tested).
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from steel_defect import NUM_CLASSES
from steel_defect.inference.engine import ImagePrediction, image_array, size_groups
from steel_defect.inference.onnx_net import OnnxNet
from steel_defect.inference.tta import TTA_FLIPS, check_tta
from steel_defect.models.factory import split_outputs

log = logging.getLogger(__name__)

Tensor = torch.Tensor

#: name -> (augment, de-augment) on (B, C, H, W) tensors: the flips of :data:`steel_defect.inference.tta.TTA_FLIPS`.
#: Each pair is an exact inverse (tested); class logits are invariant to these flips, so only the mask
#: probabilities are de-augmented.
TTA_TRANSFORMS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    name: (lambda x, a=axes: x.flip(a), lambda y, a=axes: y.flip(a)) for name, axes in TTA_FLIPS.items()
}


def pad_to_multiple(x: Tensor, multiple: int = 32) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad (B, C, H, W) at the bottom/right so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)


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


#: auto: the fast path that keeps the output faithful (checkpoints: torch with channels_last weights; .onnx
#: files: ONNX Runtime); torch: the eager fp32 reference; onnx: exported models.
RUNTIMES: tuple[str, ...] = ("auto", "torch", "onnx", "int8")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an explicit cuda device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=cpu or device=auto")
    return device


def runtime_kind(runtime: str, path: str | os.PathLike) -> str:
    """``torch`` or ``onnx``: what ``runtime`` runs the model file ``path`` with (auto: by its suffix; int8:
    ONNX Runtime on a model quantised by ``task=quantize``)."""
    if runtime == "auto":
        return "onnx" if Path(path).suffix == ".onnx" else "torch"
    return "onnx" if runtime == "int8" else runtime


def load_nets(
    paths: Sequence[str | os.PathLike],
    device: torch.device | str = "cpu",
    runtime: str = "torch",
    threads: int | None = None,
) -> tuple[list[torch.nn.Module], list[dict[str, Any]]]:
    """Load every checkpoint (``weights_only=True``; or exported ONNX models) in eval mode on ``device``.

    ``runtime``: ``torch`` (eager, the reference), ``onnx``, or ``auto``: ``.onnx`` files with ONNX Runtime,
    checkpoints with their weights in channels_last memory format (1.4x faster convolutions on CPU, the same
    Dice: see the README's faithfulness table). Returns the nets and their ``steel_defect`` metadata; all
    must predict the same classes. ``threads``: ONNX Runtime's intra-op threads for ONNX models.
    """
    from steel_defect.config import choice

    choice("runtime", runtime, RUNTIMES)
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
            if runtime == "int8" and path.suffix != ".onnx":
                raise ValueError(
                    f"runtime=int8 runs an int8 ONNX model, not the checkpoint {path}: make one with "
                    f"python predict.py task=export ckpt={path} export.dynamic_width=true, then "
                    f"python predict.py task=quantize ckpt={path.with_suffix('.onnx')} data.images=TRAIN_IMAGES"
                )
            net = OnnxNet(path, intra_op_threads=threads, device=str(device))
            if runtime == "int8" and not net.meta.get("quantization"):
                raise ValueError(
                    f"runtime=int8: {path} is an fp32 export; quantise it first: python predict.py "
                    f"task=quantize ckpt={path} data.images=TRAIN_IMAGES (or run it with runtime=onnx)"
                )
            meta = dict(net.model.inner)  # the exported checkpoint's meta, class names filled in
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


def iter_predictions(
    nets: Sequence[torch.nn.Module],
    loader: Iterable[Any],
    params: Any,
    device: torch.device | str = "cpu",
    tta: Sequence[str] = (),
    amp: bool = False,
    num_classes: int = NUM_CLASSES,
) -> Iterator[ImagePrediction]:
    """Post-processed predictions, one image at a time, in dataset order.

    ``loader`` yields :func:`~steel_defect.data.dataset.predict_collate` batches (lists of same-size
    sub-batches with ``image``, ``image_id``, ``ok`` and ``index``) or plain dict batches. Unreadable images
    (``ok=False``) never reach the network.
    """
    from steel_defect.postprocess.apply import postprocess

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
                    num_classes=num_classes,
                )
        for i in sorted(results):
            yield results[i]


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


def image_tensor(image: np.ndarray) -> Tensor:
    """An image as read by OpenCV/PIL -> float (3, H, W) in [0, 1], exactly as the prediction loader makes it
    (see :func:`steel_defect.inference.engine.image_array`, shared by every engine, for accepted arrays)."""
    return torch.from_numpy(image_array(image))


class Predictor:
    """Loaded model(s) with their thresholds and TTA: probabilities and post-processed masks for images.
    The torch engine of :class:`steel_defect.inference.engine.Inferencer` (load it with
    :func:`steel_defect.inference.engine.load_predictor`).

    Load once (:meth:`load`), then call :meth:`predict` on in-memory images of any size (each is padded to
    the nets' stride and cropped back), or :meth:`iter_loader` on a loader of image batches. Several
    checkpoints are averaged (an ensemble); thresholds are checked against the weights and TTA they were
    tuned for before anything is predicted.
    """

    def __init__(
        self,
        nets: Sequence[torch.nn.Module],
        metas: Sequence[Mapping[str, Any]],
        params: Any,
        source: str = "given",
        device: torch.device | str = "cpu",
        tta: Sequence[str] = (),
        amp: bool = False,
        ckpts: Sequence[str | os.PathLike] = (),
    ) -> None:
        if not nets:
            raise ValueError("a Predictor needs at least one net")
        self.nets = list(nets)
        self.metas = [dict(m) for m in metas]
        self.params = params
        self.source = source
        self.device = torch.device(device)
        self.tta = tuple(check_tta(tta))
        self.amp = bool(amp)
        self.ckpts = tuple(Path(p) for p in ckpts)
        classes = self.metas[0].get("classes") if self.metas else None
        self.classes: list[str] = [str(c) for c in (classes or range(1, params.num_classes + 1))]
        if len(self.classes) != params.num_classes:
            raise ValueError(
                f"thresholds from {source} are for {params.num_classes} classes, the model predicts "
                f"{len(self.classes)} ({self.classes})"
            )
        self.stride = net_stride(self.nets)

    @classmethod
    def load(
        cls,
        ckpt: str | os.PathLike | Sequence[str | os.PathLike],
        thresholds: str = "auto",
        device: str | torch.device = "auto",
        runtime: str = "auto",
        tta: Sequence[str] = (),
        amp: bool = True,
        check_thresholds: bool = True,
        threads: int | None = None,
    ) -> Predictor:
        """Load checkpoint(s) or ONNX model(s) with their thresholds (see ``predict.py``'s keys of the same
        names; ``amp`` applies on CUDA with the torch runtime only; ``threads``: ONNX Runtime's)."""
        from steel_defect.postprocess.thresholds import checked_thresholds

        ckpts = [ckpt] if isinstance(ckpt, str | os.PathLike) else list(ckpt)
        if not ckpts:
            raise ValueError("ckpt: give at least one checkpoint")
        dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
        nets, metas = load_nets(ckpts, dev, runtime, threads)
        params, source = checked_thresholds(thresholds, ckpts, nets, metas, check_tta(tta), check_thresholds)
        use_amp = amp and dev.type == "cuda" and runtime_kind(runtime, ckpts[0]) == "torch"
        return cls(nets, metas, params, source, dev, tta, use_amp, ckpts)

    engine = "torch"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprints(self) -> list[str]:
        """The content fingerprints of the loaded weights (what thresholds are bound to)."""
        from steel_defect.fingerprint import net_fingerprint

        return [str(net_fingerprint(n)) for n in self.nets]

    def weights_fingerprints(self) -> list[str | None]:
        """The hash of the weights each net really runs: a checkpoint's fingerprint is that already; an
        exported ONNX model's is the hash of the initializers its session loaded (not the claimed one)."""
        claimed = self.fingerprints()
        return [getattr(n, "weights_fingerprint", c) for n, c in zip(self.nets, claimed, strict=True)]

    def probabilities(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """:func:`predict_batch` for a (B, 3, H, W) float batch in [0, 1] with this predictor's nets and TTA."""
        return predict_batch(
            self.nets, images.to(self.device), tta=self.tta, amp=self.amp, stride=self.stride
        )

    def predict(
        self, images: Sequence[np.ndarray], image_ids: Sequence[str] | None = None
    ) -> list[ImagePrediction]:
        """Post-processed predictions for in-memory images (see :func:`image_tensor` for accepted arrays).

        Images of the same size are batched together; results come back in the order given.
        """
        ids = [str(i) for i in (image_ids if image_ids is not None else range(len(images)))]
        if len(ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(ids)} image ids")
        tensors = [image_tensor(im) for im in images]
        batches = [
            {
                "image": torch.stack([tensors[i] for i in idx]),
                "image_id": [ids[i] for i in idx],
                "index": torch.tensor(idx),
            }
            for idx in size_groups([t.shape for t in tensors])
        ]
        out = list(self.iter_loader([batches]))
        return out

    def predict_source(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        batch_size: int = 4,
        num_workers: int = 0,
    ) -> tuple[list[str], Iterator[ImagePrediction]]:
        """The image ids of ``source`` (a folder, sorted by name, a file or a list) and their predictions,
        streamed through :meth:`loader` (``num_workers`` loader processes)."""
        loader = self.loader(source, batch_size, num_workers)
        return list(loader.dataset.image_ids), self.iter_loader(loader)

    def iter_loader(self, loader: Iterable[Any]) -> Iterator[ImagePrediction]:
        """:func:`iter_predictions` over a loader (e.g. :func:`prediction_loader`) with this predictor."""
        return iter_predictions(
            self.nets, loader, self.params, self.device, self.tta, self.amp, num_classes=self.num_classes
        )

    def loader(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        batch_size: int = 4,
        num_workers: int = 0,
    ) -> Any:
        """:func:`prediction_loader` for this predictor's nets and device."""
        return prediction_loader(source, self.nets, batch_size, num_workers, self.device)
