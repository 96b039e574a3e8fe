"""Calibration: run the network(s) over labelled images and collect the counts threshold tuning needs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from steel_defect.inference.predictor import iter_probabilities
from steel_defect.postprocess.tuning import TuningStats


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
    stats = TuningStats(**stats_kwargs)
    for batch, mask_probs, class_probs, image_probs in iter_probabilities(nets, loader, device, tta, amp):
        stats.update(
            mask_probs.cpu().numpy(),
            class_probs.cpu().numpy(),
            batch["mask"].numpy() > 0.5,
            None if image_probs is None else image_probs.cpu().numpy(),
        )
    return stats
