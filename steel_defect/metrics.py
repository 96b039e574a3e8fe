"""The competition metric: mean Dice over every (image, class) pair, with empty/empty scoring 1.

Dice of one pair = 2|X∩Y| / (|X| + |Y|); both masks empty -> 1; exactly one empty -> 0 (the same formula,
since then the intersection is 0). The leaderboard score is the mean over all N*C pairs. Functions here take
bool or 0/1 arrays/tensors of shape (N, C, H, W); :class:`KaggleDice` accumulates the same score across
batches and DDP processes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

__all__ = ["KaggleDice", "dice_from_counts", "dice_per_pair", "kaggle_dice", "kaggle_dice_per_class"]

ArrayLike = np.ndarray | torch.Tensor


def dice_from_counts(pred_area: Any, target_area: Any, intersection: Any) -> np.ndarray:
    """Dice from pixel counts (broadcasting arrays): ``2 * inter / (pred + target)``, 1 where both are 0."""
    pred_area, target_area, intersection = (
        np.asarray(x, dtype=np.float64) for x in (pred_area, target_area, intersection)
    )
    if (pred_area < 0).any() or (target_area < 0).any() or (intersection < 0).any():
        raise ValueError("dice_from_counts: areas and intersections must be non-negative")
    if (intersection > np.minimum(pred_area, target_area)).any():
        raise ValueError("dice_from_counts: an intersection is larger than one of its two areas")
    denom = pred_area + target_area
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2.0 * intersection / denom, 1.0)


def _check_pair(pred: ArrayLike, target: ArrayLike) -> None:
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            f"pred and target shapes differ: pred {tuple(pred.shape)} vs target {tuple(target.shape)}"
        )
    if pred.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) masks, got pred {tuple(pred.shape)}")


def _as_bool_tensor(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dtype == torch.bool:
        return x
    if x.is_complex() or not bool(((x == 0) | (x == 1)).all()):
        raise ValueError(f"{name} must be bool or contain only 0 and 1 (threshold probabilities first)")
    return x != 0


def _as_bool_array(x: np.ndarray, name: str) -> np.ndarray:
    if x.dtype == np.bool_:
        return x
    if (
        not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating))
        or not ((x == 0) | (x == 1)).all()
    ):
        raise ValueError(f"{name} must be bool or contain only 0 and 1 (threshold probabilities first)")
    return x != 0


def _dice_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _dice_torch(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, C) per-pair Dice of two (N, C, H, W) tensors, computed on their device."""
    _check_pair(pred, target)
    pred, target = _as_bool_tensor(pred, "pred"), _as_bool_tensor(target, "target")
    dims = (-2, -1)
    dtype = _dice_dtype(pred.device)
    pred_area = pred.sum(dims, dtype=dtype)
    target_area = target.sum(dims, dtype=dtype)
    intersection = (pred & target).sum(dims, dtype=dtype)
    denom = pred_area + target_area
    return torch.where(denom > 0, 2.0 * intersection / denom.clamp_min(1), torch.ones_like(denom))


def dice_per_pair(pred: ArrayLike, target: ArrayLike) -> np.ndarray:
    """Dice of every (image, class) pair of two (N, C, H, W) masks, as an (N, C) float64 array."""
    if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
        device = pred.device if isinstance(pred, torch.Tensor) else target.device
        pred_t, target_t = (torch.as_tensor(x, device=device) for x in (pred, target))
        return _dice_torch(pred_t, target_t).detach().cpu().numpy().astype(np.float64)
    pred, target = np.asarray(pred), np.asarray(target)
    _check_pair(pred, target)
    pred, target = _as_bool_array(pred, "pred"), _as_bool_array(target, "target")
    axes = (2, 3)
    return dice_from_counts(
        np.count_nonzero(pred, axis=axes),
        np.count_nonzero(target, axis=axes),
        np.count_nonzero(pred & target, axis=axes),
    )


def _nonempty(dice: np.ndarray) -> np.ndarray:
    if dice.shape[0] == 0:
        raise ValueError("the Kaggle Dice of zero images is undefined")
    return dice


def kaggle_dice(pred: ArrayLike, target: ArrayLike) -> float:
    """The leaderboard score: mean Dice over all N*C (image, class) pairs."""
    return float(_nonempty(dice_per_pair(pred, target)).mean())


def kaggle_dice_per_class(pred: ArrayLike, target: ArrayLike) -> list[float]:
    """Mean Dice over images for each class (C floats); their mean is :func:`kaggle_dice`."""
    return [float(v) for v in _nonempty(dice_per_pair(pred, target)).mean(axis=0)]


class KaggleDice(Metric):
    """Streaming, DDP-correct Kaggle Dice: per-class sums of per-pair Dice plus the number of images.

    ``compute()`` returns ``{"dice": mean over all pairs, "dice_1": class 1, ..., "dice_C": class C}``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    dice_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, num_classes: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.add_state(
            "dice_sum", default=torch.zeros(self.num_classes, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of (N, C, H, W) bool or 0/1 masks."""
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.ndim == 4 and pred.shape[1] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes (dim 1), got pred {tuple(pred.shape)}")
        dice = _dice_torch(pred.to(self.dice_sum.device), target.to(self.dice_sum.device))
        self.dice_sum += dice.sum(0).to(self.dice_sum.dtype)
        self.count += dice.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        """Mean Dice over all pairs (``dice``) and per class (``dice_1``..``dice_C``)."""
        per_class = self.dice_sum / self.count
        out = {"dice": per_class.mean()}
        out.update({f"dice_{c + 1}": per_class[c] for c in range(self.num_classes)})
        return out
