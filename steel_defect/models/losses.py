"""Segmentation + classification loss: BCE (or focal), soft Dice and optionally the Lovasz hinge on the mask
channels, BCE on the class logits and, for a network with an image head, BCE of its logit on "image has any
defect"."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Config key prefix used in error messages.
KEY = "model.loss"
MASK_LOSSES = ("bce", "focal")


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{KEY}.{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _weights(name: str, value: Sequence[float] | None) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{KEY}.{name} must be a list with one positive number per class, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{KEY}.{name} must be a list with one positive number per class, got {value!r}")
    return torch.tensor([float(v) for v in value], dtype=torch.float32)


def soft_dice_per_pair(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice (2|P.T| + s) / (|P| + |T| + s) per image and class: (B, C, H, W) -> (B, C)."""
    dims = tuple(range(2, probs.ndim))
    inter = (probs * target).sum(dims)
    return (2.0 * inter + smooth) / (probs.sum(dims) + target.sum(dims) + smooth)


def focal_loss_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: float | None = None,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Element-wise sigmoid focal loss: BCE * (1 - p_t)^gamma (* alpha_t); gamma 0 and alpha None give BCE."""
    ce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t).pow(gamma) if gamma else ce
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted in decreasing order.

    ``gt_sorted`` (..., P): the 0/1 ground truth of each pixel, in the order of decreasing error, per row of the
    last dimension. Returns (..., P) float weights ``J(k) - J(k-1)`` with ``J(k)`` the Jaccard loss when the
    ``k`` largest errors are mispredicted (Berman et al. 2018, Algorithm 1). The union is never 0: it counts
    the first pixel whether it is positive (``gts >= 1``) or negative (the cumulative count of negatives).
    """
    gt = gt_sorted.float()
    gts = gt.sum(-1, keepdim=True)
    intersection = gts - gt.cumsum(-1)
    union = gts + (1.0 - gt).cumsum(-1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def lovasz_hinge_per_pair(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovasz hinge (Berman et al. 2018, "The Lovasz-Softmax loss") per image and class: (B, C, H, W) -> (B, C).

    Each (image, class) pair is one binary problem (like the Kaggle metric's per-pair Dice): hinge errors
    ``1 - logit * (2 * target - 1)`` sorted in decreasing order, ``relu``-ed and weighted by :func:`lovasz_grad`.
    Computed in float32 (element-wise products, no matmul that autocast would lower). An empty target gives
    ``relu(1 + max logit)``; a full one ``mean(relu(1 - logit))``. Differentiable w.r.t. ``logits``.
    """
    if logits.ndim < 3 or target.shape != logits.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must be equal (B, C, ...)"
        )
    logits = logits.float().flatten(2)
    labels = (target.flatten(2) > 0.5).float()
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    errors_sorted, perm = torch.sort(errors, dim=-1, descending=True)
    grad = lovasz_grad(labels.gather(-1, perm))
    return (F.relu(errors_sorted) * grad).sum(-1)


class SegClsLoss(nn.Module):
    """``bce_weight * mask BCE/focal + dice_weight * (1 - soft Dice) + cls_weight * class BCE
    [+ lovasz_weight * Lovasz hinge] [+ image_weight * image BCE]``.

    ``forward(mask_logits (B,C,H,W), class_logits (B,C), mask (B,C,H,W) 0/1, labels (B,C) | None,
    image_logits (B,) | None)`` returns a dict of scalar tensors ``loss, loss_mask, loss_dice, loss_cls``
    (+ ``loss_lovasz`` when ``lovasz_weight > 0``: the mean over (image, class) pairs of
    :func:`lovasz_hinge_per_pair`, not computed at all when the weight is 0; + ``loss_image`` when
    ``image_logits`` is given; its target is "any label", i.e. the image has a defect). ``labels`` default to
    "mask non-empty". ``pos_weight``/``cls_pos_weight`` are per-class positive weights for the mask/class BCE.
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        cls_weight: float = 0.5,
        image_weight: float = 0.5,
        lovasz_weight: float = 0.0,
        pos_weight: list[float] | None = None,
        cls_pos_weight: list[float] | None = None,
        mask_loss: str = "bce",
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        self.bce_weight = _non_negative("bce_weight", bce_weight)
        self.dice_weight = _non_negative("dice_weight", dice_weight)
        self.cls_weight = _non_negative("cls_weight", cls_weight)
        self.image_weight = _non_negative("image_weight", image_weight)
        self.lovasz_weight = _non_negative("lovasz_weight", lovasz_weight)
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"{KEY}.mask_loss must be one of {', '.join(MASK_LOSSES)}, got {mask_loss!r}")
        self.mask_loss = mask_loss
        self.focal_gamma = _non_negative("focal_gamma", focal_gamma)
        if focal_alpha is not None and (
            isinstance(focal_alpha, bool)
            or not isinstance(focal_alpha, int | float)
            or not 0 <= focal_alpha <= 1
        ):
            raise ValueError(f"{KEY}.focal_alpha must be null or in [0, 1], got {focal_alpha!r}")
        self.focal_alpha = None if focal_alpha is None else float(focal_alpha)
        self.smooth = _non_negative("smooth", smooth)
        if self.smooth == 0:
            raise ValueError(
                f"{KEY}.smooth must be > 0 (an empty mask and an empty prediction would give 0/0)"
            )
        pw, cpw = _weights("pos_weight", pos_weight), _weights("cls_pos_weight", cls_pos_weight)
        # Non-persistent buffers: follow .to(device), stay out of checkpoints.
        self.register_buffer("pos_weight", pw, persistent=False)
        self.register_buffer("cls_pos_weight", cpw, persistent=False)

    def _check(self, mask_logits, class_logits, mask, labels, image_logits=None) -> None:
        if mask_logits.ndim != 4 or mask.shape != mask_logits.shape:
            raise ValueError(
                f"mask_logits {tuple(mask_logits.shape)} and mask {tuple(mask.shape)} must be equal (B, C, H, W)"
            )
        b, c = mask_logits.shape[:2]
        if class_logits.shape != (b, c):
            raise ValueError(f"class_logits shape {tuple(class_logits.shape)} must be (B, C) = {(b, c)}")
        if labels is not None and labels.shape != (b, c):
            raise ValueError(f"labels shape {tuple(labels.shape)} must be (B, C) = {(b, c)}")
        if image_logits is not None and image_logits.shape != (b,):
            raise ValueError(f"image_logits shape {tuple(image_logits.shape)} must be (B,) = {(b,)}")
        for name, w in (("pos_weight", self.pos_weight), ("cls_pos_weight", self.cls_pos_weight)):
            if w is not None and w.numel() != c:
                raise ValueError(f"{KEY}.{name} has {w.numel()} values but the network has {c} classes")

    def forward(
        self,
        mask_logits: torch.Tensor,
        class_logits: torch.Tensor,
        mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        image_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        self._check(mask_logits, class_logits, mask, labels, image_logits)
        mask_logits, class_logits, mask = mask_logits.float(), class_logits.float(), mask.float()
        labels = (mask.flatten(2).amax(2) > 0).float() if labels is None else labels.float()
        pos_weight = None if self.pos_weight is None else self.pos_weight.view(-1, 1, 1)
        if self.mask_loss == "focal":
            loss_mask = focal_loss_with_logits(
                mask_logits, mask, self.focal_gamma, self.focal_alpha, pos_weight=pos_weight
            ).mean()
        else:
            loss_mask = F.binary_cross_entropy_with_logits(mask_logits, mask, pos_weight=pos_weight)
        loss_dice = 1.0 - soft_dice_per_pair(torch.sigmoid(mask_logits), mask, self.smooth).mean()
        loss_cls = F.binary_cross_entropy_with_logits(class_logits, labels, pos_weight=self.cls_pos_weight)
        loss = self.bce_weight * loss_mask + self.dice_weight * loss_dice + self.cls_weight * loss_cls
        out = {"loss": loss, "loss_mask": loss_mask, "loss_dice": loss_dice, "loss_cls": loss_cls}
        if self.lovasz_weight > 0:
            out["loss_lovasz"] = lovasz_hinge_per_pair(mask_logits, mask).mean()
            out["loss"] = out["loss"] + self.lovasz_weight * out["loss_lovasz"]
        if image_logits is not None:
            has_defect = (labels > 0.5).any(dim=1).float()
            out["loss_image"] = F.binary_cross_entropy_with_logits(image_logits.float(), has_defect)
            out["loss"] = out["loss"] + self.image_weight * out["loss_image"]
        return out
