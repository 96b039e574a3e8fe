"""LightningModule: one SteelNet, the SegClsLoss, Kaggle Dice (raw and post-processed) and head metrics.

Every constructor argument is a plain value (dict/list/str/number/bool/None), so ``save_hyperparameters``
and the checkpoint stay loadable with ``torch.load(weights_only=True)``. The checkpoint also carries a
``"steel_defect"`` entry (resolved net config, post-processing, class names) from which
:func:`load_net_from_checkpoint` rebuilds the network with no Hydra config and no network access.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Iterator, Mapping
from typing import Any

import hydra
import lightning as L
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    MultilabelF1Score,
    MultilabelPrecision,
    MultilabelRecall,
)

from steel_defect.config import to_plain
from steel_defect.metrics import KaggleDice
from steel_defect.models.checkpoint import CLASS_NAMES, FORMAT_VERSION, init_net_from_checkpoint
from steel_defect.models.factory import SteelNet, build_model, resolve_config, split_outputs
from steel_defect.models.losses import SegClsLoss
from steel_defect.postprocess.apply import postprocess
from steel_defect.postprocess.params import PostprocessParams

SCHEDULERS = ("cosine", "onecycle", "none")
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "name": "cosine",
    "warmup_steps": 0,
    "min_lr_ratio": 0.01,
    "pct_start": 0.3,
}
OPTIMIZER_DEFAULTS: dict[str, Any] = {"_target_": "torch.optim.AdamW", "lr": 3e-4, "weight_decay": 1e-4}


# ======================================================================================================
# Plain-value helpers
# ======================================================================================================
def _check_keys(cfg: Mapping[str, Any], valid: Any, key: str) -> None:
    unknown = sorted(map(str, set(cfg) - set(valid)))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(f'{key}.{k}' for k in unknown)}; valid: {', '.join(valid)}"
        )


def _resolve_optimizer(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate an optimizer config (``_target_`` + kwargs); ``_partial_`` is accepted and dropped.

    ``encoder_lr`` (null or a number > 0) is ours, not the optimizer's: when set, the encoder trains at that
    LR and the decoder and heads at ``lr`` (see :meth:`SteelDefectModule.configure_optimizers`).
    """
    out = dict(OPTIMIZER_DEFAULTS if cfg is None else cfg)
    out.pop("_partial_", None)
    target = out.get("_target_")
    if not isinstance(target, str):
        raise ValueError(f"model.optimizer._target_ must name an optimizer class, got {target!r}")
    try:
        cls = hydra.utils.get_class(target)
    except ImportError as err:
        raise ValueError(f"model.optimizer._target_={target!r} cannot be imported: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"model.optimizer._target_={target!r} is not a torch.optim.Optimizer")
    lr = out.get("lr")
    if lr is not None and (
        isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0
    ):
        raise ValueError(f"model.optimizer.lr must be a number > 0, got {lr!r}")
    encoder_lr = out.get("encoder_lr")
    if encoder_lr is not None and (
        isinstance(encoder_lr, bool)
        or not isinstance(encoder_lr, int | float)
        or not math.isfinite(encoder_lr)
        or encoder_lr <= 0
    ):
        raise ValueError(f"model.optimizer.encoder_lr must be null or a number > 0, got {encoder_lr!r}")
    return out


def _resolve_scheduler(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = {"name": "none"} if cfg is None else cfg
    _check_keys(cfg, SCHEDULER_DEFAULTS, "model.scheduler")
    out = {**SCHEDULER_DEFAULTS, **cfg}
    if out["name"] not in SCHEDULERS:
        raise ValueError(f"model.scheduler.name={out['name']!r} is unknown; valid: {', '.join(SCHEDULERS)}")
    warmup = out["warmup_steps"]
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"model.scheduler.warmup_steps must be an integer >= 0, got {warmup!r}")
    ratio = out["min_lr_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
        raise ValueError(f"model.scheduler.min_lr_ratio must be in [0, 1], got {ratio!r}")
    pct = out["pct_start"]
    if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0 < pct < 1:
        raise ValueError(f"model.scheduler.pct_start must be in (0, 1), got {pct!r}")
    return out


def cosine_warmup_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ======================================================================================================
# The module
# ======================================================================================================
class SteelDefectModule(L.LightningModule):
    """Train/validate/test one SteelNet (see the module docstring; all arguments are plain values). Prediction
    is the Predictor's (steel_defect.inference.predictor): no Lightning needed.

    ``class_names`` (train.yaml passes ``data.classes``) name the mask channels; ``net.classes`` null
    follows their number. Without ``postprocess`` the gates start at the notebook's for Severstal's four
    classes, else at :meth:`PostprocessParams.for_classes` (no Severstal area limits).

    Logged: ``train/loss*``; ``val/loss*``, ``val/dice_raw[_c]`` (threshold 0.5), ``val/dice[_c]`` (after
    post-processing with ``postprocess``; the monitored metric), ``val/cls_{precision,recall,f1}_c``,
    ``val/img_auroc_max_cls`` (max of the class head as an "image has a defect" score) and, with an image
    head, ``val/img_auroc_head`` (+ ``loss_image``). ``test/`` mirrors ``val/`` but reports the Kaggle Dice
    three ways: ``test/dice_raw[_c]``, ``test/dice_default[_c]`` (``postprocess``, i.e. the model's stored
    post-processing) and ``test/dice_tuned[_c]`` with :attr:`tuned_postprocess` (set by the
    :class:`~steel_defect.training.callbacks.TuneThresholds` callback from the thresholds.yaml it wrote; absent when
    it is None).
    """

    def __init__(
        self,
        net: dict,
        loss: dict | None = None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        postprocess: dict | None = None,
        channels_last: bool = False,
        compile: bool = False,
        cls_threshold: float = 0.5,
        class_names: list[str] | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        net = to_plain(net, "model.net", strict=True)
        names = (
            None
            if class_names is None
            else [str(n) for n in to_plain(class_names, "model.class_names", strict=True)]
        )
        if isinstance(net, Mapping) and net.get("classes") is None:
            net = {**net, "classes": len(names) if names else len(CLASS_NAMES)}
        net = resolve_config(net)
        if names is not None and len(names) != net["classes"]:
            raise ValueError(
                f"model.net.classes={net['classes']} but there are {len(names)} class names {names} "
                "(model.class_names, from data.classes): leave model.net.classes null to follow the data"
            )
        #: Class names in mask-channel order (Severstal's "1".."4" by default), stored in the checkpoint.
        self.class_names: list[str] = names or [str(c + 1) for c in range(net["classes"])]
        loss = to_plain(loss, "model.loss", strict=True) or {}
        optimizer = _resolve_optimizer(to_plain(optimizer, "model.optimizer", strict=True))
        scheduler = _resolve_scheduler(to_plain(scheduler, "model.scheduler", strict=True))
        pp = to_plain(postprocess, "model.postprocess", strict=True)
        k = int(net["classes"])
        self.pp_params = (
            PostprocessParams.for_classes(k, severstal=self.class_names == CLASS_NAMES)
            if pp is None
            else PostprocessParams.from_dict(pp, num_classes=k)
        )
        if (
            not isinstance(cls_threshold, int | float)
            or isinstance(cls_threshold, bool)
            or not 0 < cls_threshold < 1
        ):
            raise ValueError(f"model.cls_threshold must be in (0, 1), got {cls_threshold!r}")
        for name, flag in (("channels_last", channels_last), ("compile", compile)):
            if not isinstance(flag, bool):
                raise ValueError(f"model.{name} must be true or false, got {flag!r}")
        self.save_hyperparameters(
            {
                "net": net,
                "loss": loss,
                "optimizer": optimizer,
                "scheduler": scheduler,
                "postprocess": pp,
                "channels_last": channels_last,
                "compile": compile,
                "cls_threshold": float(cls_threshold),
                "class_names": names,
                "init_from": None if init_from is None else str(init_from),
            }
        )
        _check_keys(loss, inspect.signature(SegClsLoss).parameters, "model.loss")
        self.criterion = SegClsLoss(**loss)  # validates before any weights download
        self.net: SteelNet = build_model(net)
        if init_from is not None:  # the network's weights only: optimizer, schedule and epoch start afresh
            init_net_from_checkpoint(self.net, net, self.class_names, init_from)
        classes = int(net["classes"])
        self.eval_metrics = torch.nn.ModuleDict(
            {
                stage: self._make_metrics(classes, cls_threshold, dice, bool(net["image_head"]))
                for stage, dice in (("val", ("dice",)), ("test", ("dice_default", "dice_tuned")))
            }
        )
        #: Post-processing tuned on the validation split, for ``test/dice_tuned`` (None: not logged). Not a
        #: hyper-parameter: :class:`~steel_defect.training.callbacks.TuneThresholds` sets it at test start.
        self.tuned_postprocess: PostprocessParams | None = None
        self._configured = False

    @staticmethod
    def _make_metrics(
        classes: int, threshold: float, dice: tuple[str, ...], image_head: bool
    ) -> torch.nn.ModuleDict:
        kw = {"num_labels": classes, "threshold": float(threshold), "average": None}
        metrics: dict[str, torch.nn.Module] = {"dice_raw": KaggleDice(num_classes=classes)}
        metrics.update({name: KaggleDice(num_classes=classes) for name in dice})
        metrics["cls"] = MetricCollection(
            {
                "precision": MultilabelPrecision(**kw),
                "recall": MultilabelRecall(**kw),
                "f1": MultilabelF1Score(**kw),
            }
        )
        # How well each image-level score ranks "image has a defect" (what the image gate relies on).
        metrics["img_auroc_max_cls"] = BinaryAUROC()
        if image_head:
            metrics["img_auroc_head"] = BinaryAUROC()
        return torch.nn.ModuleDict(metrics)

    # --- setup ------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """channels_last / torch.compile, once (in place: state-dict keys stay ``net.*``)."""
        if self._configured:
            return
        self._configured = True
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile:
            self.net.compile()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The net's outputs: ``(mask_logits, class_logits[, image_logits])``."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    # --- steps ------------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        mask_logits, class_logits, image_logits = split_outputs(self(batch["image"]))
        losses = self.criterion(
            mask_logits, class_logits, batch["mask"], batch.get("labels"), image_logits=image_logits
        )
        n = batch["image"].shape[0]
        self.log(
            "train/loss",
            losses["loss"],
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=n,
            sync_dist=True,
        )
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items() if k != "loss"},
            on_step=False,
            on_epoch=True,
            batch_size=n,
            sync_dist=True,
        )
        return losses["loss"]

    def _eval_step(self, batch: Mapping[str, Any], stage: str) -> None:
        mask_logits, class_logits, image_logits = split_outputs(self(batch["image"]))
        mask = batch["mask"]
        labels = batch.get("labels")
        losses = self.criterion(mask_logits, class_logits, mask, labels, image_logits=image_logits)
        n = mask.shape[0]
        self.log_dict(
            {f"{stage}/{k}": v for k, v in losses.items()}, on_epoch=True, batch_size=n, sync_dist=True
        )
        target = mask > 0.5
        target_labels = (target.flatten(2).any(2) if labels is None else labels > 0.5).int()
        mask_probs = torch.sigmoid(mask_logits.float())
        class_probs = torch.sigmoid(class_logits.float())
        image_probs = None if image_logits is None else torch.sigmoid(image_logits.float())
        metrics = self.eval_metrics[stage]
        metrics["dice_raw"].update(mask_probs >= 0.5, target)
        pp = {"dice": self.pp_params} if stage == "val" else {"dice_default": self.pp_params}
        if stage == "test" and self.tuned_postprocess is not None:
            pp["dice_tuned"] = self.tuned_postprocess
        arrays = [
            p.detach().cpu().numpy() if p is not None else None
            for p in (mask_probs, class_probs, image_probs)
        ]
        for name, params in pp.items():
            final = postprocess(arrays[0], arrays[1], params, image_probs=arrays[2])
            metrics[name].update(torch.from_numpy(final).to(target.device), target)
        metrics["cls"].update(class_probs, target_labels)
        has_defect = target_labels.any(dim=1).int()
        metrics["img_auroc_max_cls"].update(class_probs.max(dim=1).values, has_defect)
        if image_probs is not None:
            metrics["img_auroc_head"].update(image_probs, has_defect)

    def _log_epoch_metrics(self, stage: str) -> None:
        """Compute (synced over processes by torchmetrics), log and reset the epoch metrics of ``stage``."""
        metrics = self.eval_metrics[stage]
        if not metrics["dice_raw"].update_called:
            return
        values: dict[str, torch.Tensor] = {}
        for name, metric in metrics.items():
            if name.startswith("dice") and metric.update_called:
                for key, value in metric.compute().items():
                    values[f"{stage}/{key.replace('dice', name, 1)}"] = value
            elif name.startswith("img_auroc"):
                values[f"{stage}/{name}"] = metric.compute()
        for name, per_class in metrics["cls"].compute().items():
            for c, v in enumerate(per_class):
                values[f"{stage}/cls_{name}_{c + 1}"] = v
        # Values are already identical on every process; sync_dist only averages identical numbers.
        main = f"{stage}/dice" if stage == "val" else f"{stage}/dice_default"
        self.log(main, values.pop(main).float(), on_epoch=True, prog_bar=True, sync_dist=True)
        self.log_dict({k: v.float() for k, v in values.items()}, on_epoch=True, sync_dist=True)
        for metric in metrics.values():
            metric.reset()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # --- optimisation -----------------------------------------------------------------------------
    def _param_groups(self, encoder_lr: float | None) -> Iterator[torch.nn.Parameter] | list[dict[str, Any]]:
        """All parameters (``encoder_lr`` None), or two named groups: the encoder's at ``encoder_lr`` and the
        decoder's and heads' at the optimizer's ``lr`` (LearningRateMonitor logs ``lr-<Optimizer>/<name>``)."""
        if encoder_lr is None:
            return self.parameters()
        encoder = {id(p) for p in self.net.encoder_parameters()}
        params = list(self.parameters())
        return [
            {"params": [p for p in params if id(p) in encoder], "lr": float(encoder_lr), "name": "encoder"},
            {"params": [p for p in params if id(p) not in encoder], "name": "decoder_heads"},
        ]

    def configure_optimizers(self) -> dict[str, Any]:
        """The optimizer (one or two param groups, see ``_param_groups``) and a per-step LR schedule that
        scales every group alike (cosine: the same factor; onecycle: one ``max_lr`` per group)."""
        opt_cfg = dict(self.hparams.optimizer)
        cls = hydra.utils.get_class(opt_cfg.pop("_target_"))
        encoder_lr = opt_cfg.pop("encoder_lr", None)
        optimizer = cls(self._param_groups(encoder_lr), **opt_cfg)
        sched = self.hparams.scheduler
        if sched["name"] == "none":
            return {"optimizer": optimizer}
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError(
                f"model.scheduler.name={sched['name']!r} needs a finite number of steps; set trainer.max_epochs "
                f"or trainer.max_steps (estimated stepping batches: {total})"
            )
        total = int(total)
        if sched["name"] == "cosine":
            warmup, ratio = int(sched["warmup_steps"]), float(sched["min_lr_ratio"])

            def factor(step: int) -> float:
                return cosine_warmup_factor(step, total, warmup, ratio)

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        else:  # onecycle
            cycle_momentum = "betas" in optimizer.defaults or optimizer.defaults.get("momentum", 0) > 0
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[g["lr"] for g in optimizer.param_groups],
                total_steps=total,
                pct_start=float(sched["pct_start"]),
                cycle_momentum=cycle_momentum,
            )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # --- checkpoint -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what rebuilds net + preprocessing with no network and no Hydra config (plain values)."""
        net_cfg = copy.deepcopy(dict(self.hparams.net))
        net_cfg["encoder_weights"] = None
        checkpoint["steel_defect"] = {
            "format_version": FORMAT_VERSION,
            "net": net_cfg,
            "postprocess": self.pp_params.to_dict(),
            "classes": list(self.class_names),
        }
