"""Calibration: run the network(s) over labelled images, collect the counts threshold tuning needs, and
the ONE tuning pipeline (:func:`tune_and_save`) used by the end-of-training callback, ``task=tune`` and
``task=tune_oof``: search, then write ``thresholds.yaml`` with one ``meta`` schema
(:func:`steel_defect.postprocess.thresholds.thresholds_meta`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steel_defect import NUM_CLASSES
from steel_defect.inference.predictor import iter_probabilities
from steel_defect.postprocess.params import PostprocessParams, save_thresholds
from steel_defect.postprocess.thresholds import thresholds_meta
from steel_defect.postprocess.tuning import TuningStats, check_pix_modes, stats_for, tune_thresholds

__all__ = [
    "TuneOptions",
    "base_params",
    "collect_tuning_stats",
    "new_tuning_stats",
    "num_classes_of",
    "tune_and_save",
]


def collect_tuning_stats(
    nets: torch.nn.Module | Sequence[torch.nn.Module],
    loader: Iterable[dict],
    device: str | torch.device = "cpu",
    tta: Sequence[str] = (),
    amp: bool = False,
    stats: TuningStats | None = None,
    **stats_kwargs,
):
    """Run the network(s) over a labelled loader and accumulate :class:`TuningStats` (memory-light; with
    the image head's probabilities when every net has one): into ``stats`` when given (e.g. the folds of
    an out-of-fold search), else into a new ``TuningStats(**stats_kwargs)``."""
    stats = TuningStats(**stats_kwargs) if stats is None else stats
    for batch, mask_probs, class_probs, image_probs in iter_probabilities(nets, loader, device, tta, amp):
        stats.update(
            mask_probs.cpu().numpy(),
            class_probs.cpu().numpy(),
            batch["mask"].numpy() > 0.5,
            None if image_probs is None else image_probs.cpu().numpy(),
        )
    return stats


def num_classes_of(meta: Mapping[str, Any]) -> int:
    """The class count of a checkpoint's (or ONNX model's) metadata: its ``classes`` list, else Severstal's."""
    return len(meta.get("classes") or []) or NUM_CLASSES


def base_params(meta: Mapping[str, Any], num_classes: int | None = None) -> PostprocessParams | None:
    """The post-processing a checkpoint stores (``meta["postprocess"]``), the base of a search; None when
    it stores none (the search then starts from the defaults)."""
    if not meta.get("postprocess"):
        return None
    k = num_classes_of(meta) if num_classes is None else num_classes
    return PostprocessParams.from_dict(meta["postprocess"], k)


#: Keyword arguments of :func:`tune_thresholds` that :class:`TuneOptions.grids` may set.
GRID_KEYS: tuple[str, ...] = (
    "t_cls_grid",
    "min_area_grid",
    "tune_max_area",
    "max_area_grid",
    "t_img_grid",
    "img_sources",
)


@dataclass(frozen=True)
class TuneOptions:
    """How to tune: the pixel modes searched, the TTA the nets run with (the thresholds are bound to it),
    ``min_gain_pairs`` (a class must beat keeping nothing by at least this many image-class pairs, else it
    is switched off; 0: never) and ``grids`` (keyword arguments of :func:`tune_thresholds`, see
    :data:`GRID_KEYS`)."""

    pix_modes: Sequence[str] = ("plain",)
    tta: Sequence[str] = ()
    min_gain_pairs: int = 0
    grids: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pix_modes", tuple(check_pix_modes(list(self.pix_modes))))
        object.__setattr__(self, "tta", tuple(str(t) for t in self.tta))
        m = self.min_gain_pairs
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValueError(f"min_gain_pairs must be an integer >= 0 (image-class pairs), got {m!r}")
        unknown = sorted(set(self.grids) - set(GRID_KEYS))
        if unknown:
            raise ValueError(f"grids: unknown keys {unknown}; valid: {', '.join(GRID_KEYS)}")


def new_tuning_stats(
    base: PostprocessParams | None, options: TuneOptions, num_classes: int = NUM_CLASSES
) -> TuningStats:
    """An empty :class:`TuningStats` that can evaluate ``base`` and counts ``options.pix_modes``."""
    return TuningStats(**stats_for(base, options.pix_modes, num_classes))


def tune_and_save(
    path: str | os.PathLike,
    source: str,
    checkpoints: Sequence[Any],
    fingerprints: Sequence[str | None],
    *,
    stats: TuningStats | None = None,
    nets: torch.nn.Module | Sequence[torch.nn.Module] | None = None,
    loader: Iterable[dict] | None = None,
    device: str | torch.device = "cpu",
    amp: bool = False,
    base: PostprocessParams | None = None,
    num_classes: int = NUM_CLASSES,
    options: TuneOptions | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> tuple[PostprocessParams, dict[str, Any]]:
    """Tune the post-processing and write it to ``path`` (``save_thresholds``) with the one ``meta`` schema.

    The counts come from ``stats`` (built with :func:`new_tuning_stats` for ``base`` and ``options``) or,
    when None, from running ``nets`` over the labelled ``loader`` with ``options.tta``. ``base``: the
    post-processing the search starts from (None: the defaults for ``num_classes``). ``source``,
    ``checkpoints``, ``fingerprints`` and ``provenance`` (``labels``, ``split``, ``folds``) go to the meta
    (:func:`~steel_defect.postprocess.thresholds.thresholds_meta`). Returns ``(params, report)``.
    """
    options = TuneOptions() if options is None else options
    meta = thresholds_meta(
        source,
        checkpoints,
        fingerprints,
        options.tta,
        options.pix_modes,
        min_gain_pairs=options.min_gain_pairs,
        **dict(provenance or {}),
    )
    if stats is None:
        if nets is None or loader is None:
            raise ValueError("tune_and_save needs stats, or nets and a labelled loader")
        empty = new_tuning_stats(base, options, num_classes)
        stats = collect_tuning_stats(nets, loader, device, options.tta, amp, stats=empty)
    if not len(stats):
        raise ValueError("tune_and_save: no labelled images to tune on")
    min_gain = options.min_gain_pairs / len(stats)
    params, report = tune_thresholds(stats, base=base, min_gain=min_gain, **dict(options.grids))
    report["min_gain_pairs"] = options.min_gain_pairs
    save_thresholds(params, Path(path), report=report, meta=meta)
    return params, report
