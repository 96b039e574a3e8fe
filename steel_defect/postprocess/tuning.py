"""Streaming threshold tuning: choose the post-processing of :mod:`steel_defect.postprocess` on a
labelled split from per-image counts only.

``TuningStats`` keeps, per image, class and candidate pixel threshold (for every pixel mode searched), the
predicted area and its intersection with the target (memory O(N * C * grid), so a full 2,263 x 4 x 256 x 1600
probability tensor never has to be held); ``tune_thresholds`` then searches the image gate and, per class,
pixel mode and threshold, class gate and area limits exactly over the grids. Both use the helpers of
:mod:`steel_defect.postprocess`, so the tuned Dice is exactly what ``postprocess`` produces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from steel_defect import NUM_CLASSES
from steel_defect.metrics import dice_from_counts
from steel_defect.postprocess.apply import (
    batch_inputs,
    image_gate,
    lower_bound,
    pixel_scores,
    remove_small_components,
    scale_area,
    to_numpy,
    upper_bound,
)
from steel_defect.postprocess.params import (
    DEFAULT_MAX_AREA_GRID,
    DEFAULT_MIN_AREA_GRID,
    DEFAULT_T_CLS_GRID,
    DEFAULT_T_IMG_GRID,
    DEFAULT_T_PIX_GRID,
    IMG_SOURCES,
    NOTEBOOK_REFERENCE_SHAPE,
    PIX_MODES,
    PostprocessParams,
    check_area,
    check_prob,
    is_seq,
)

__all__ = [
    "TuningStats",
    "check_pix_modes",
    "format_tuning_report",
    "search_modes",
    "stats_for",
    "tune_thresholds",
]


def search_modes(modes: Sequence[str], base: PostprocessParams | None = None) -> list[str]:
    """The pixel modes to count: ``modes`` plus those ``base`` uses (its values are always candidates)."""
    return check_pix_modes([*modes, *(base.pix_mode if base is not None else [])])


def stats_for(
    base: PostprocessParams | None, pix_modes: Sequence[str] = ("plain",), num_classes: int = NUM_CLASSES
) -> dict[str, Any]:
    """``TuningStats`` keyword arguments that can evaluate ``base`` (its pixel modes, its min_component
    and reference shape) besides ``pix_modes``; the defaults for ``num_classes`` when ``base`` is None."""
    base = PostprocessParams.for_classes(num_classes) if base is None else base
    return {
        "num_classes": base.num_classes,
        "pix_modes": search_modes(pix_modes, base),
        "min_component": list(base.min_component),
        "reference_shape": base.reference_shape,
    }


#: Two mean Dice values closer than this are a tie (float summation noise is ~1e-13).
_TIE_TOL = 1e-12


def check_pix_modes(modes: Any, key: str = "pix_modes") -> list[str]:
    """``modes`` as a list of distinct PIX_MODES names, in their given order (TuningStats puts ``plain``,
    the notebook's, first)."""
    if isinstance(modes, str) or not is_seq(modes) or not len(modes):
        raise ValueError(f"{key} must be a non-empty list drawn from {', '.join(PIX_MODES)}, got {modes!r}")
    bad = [m for m in modes if m not in PIX_MODES]
    if bad:
        raise ValueError(f"{key}: unknown {bad}; valid: {', '.join(PIX_MODES)}")
    return list(dict.fromkeys(modes))


def _as_per_class(name: str, value: Any, num_classes: int) -> list[int | None]:
    if value is None or not is_seq(value):
        return [check_area(name, value)] * num_classes
    if len(value) != num_classes:
        raise ValueError(f"{name} must be one value or {num_classes} values, got {value!r}")
    return [check_area(f"{name}[{i}]", v) for i, v in enumerate(value)]


def _grid_index(grid: Sequence[tuple[str, float]], mode: str, value: float, what: str) -> int:
    """Position of (pixel mode, threshold) in a TuningStats grid."""
    for i, (m, t) in enumerate(grid):
        if m == mode and abs(t - value) <= 1e-9:
            return i
    modes = sorted({m for m, _ in grid})
    thresholds = sorted({t for _, t in grid})
    raise ValueError(
        f"{what}={value} with pix_mode {mode!r} is not in the TuningStats grid "
        f"(pix modes {modes}, thresholds {thresholds})"
    )


class TuningStats:
    """Per image, class and (pixel mode, pixel threshold): predicted area and intersection with the target.

    Also keeps the target area, class probabilities, image-head probabilities (when the network has an
    image head: given to every ``update`` or to none) and image size. With ``min_component`` set, counts
    are also kept after removing small components (variant 1; variant 0 is without), so both can be
    evaluated. ``pix_modes`` (default: plain only) are the pixel scores counted (see
    :func:`steel_defect.postprocess.apply.pixel_scores`); ``grid`` lists the (mode, threshold) pairs, mode-major.
    Memory is O(N * C * len(pix_modes) * len(t_pix_grid)).
    """

    def __init__(
        self,
        t_pix_grid: Sequence[float] = DEFAULT_T_PIX_GRID,
        num_classes: int = NUM_CLASSES,
        min_component: int | Sequence[int | None] | None = None,
        reference_shape: Sequence[int] | None = NOTEBOOK_REFERENCE_SHAPE,
        pix_modes: Sequence[str] = ("plain",),
    ) -> None:
        grid = {round(float(check_prob("t_pix_grid value", t, allow_none=False)), 9) for t in t_pix_grid}
        grid.add(0.5)  # the raw / notebook pixel threshold must always be evaluable
        self.t_pix_grid: list[float] = sorted(grid)
        modes = check_pix_modes(pix_modes)
        self.pix_modes: list[str] = ["plain", *(m for m in modes if m != "plain")]  # raw must be evaluable
        self.grid: list[tuple[str, float]] = [(m, t) for m in self.pix_modes for t in self.t_pix_grid]
        self.num_classes = int(num_classes)
        self.min_component = _as_per_class("min_component", min_component, self.num_classes)
        self.reference_shape = None if reference_shape is None else [int(v) for v in reference_shape]
        self.num_variants = 2 if any(m is not None for m in self.min_component) else 1
        self._pred: list[np.ndarray] = []  # (n, C, G, V) int64
        self._inter: list[np.ndarray] = []  # (n, C, G, V) int64
        self._target: list[np.ndarray] = []  # (n, C) int64
        self._cls: list[np.ndarray] = []  # (n, C) float64
        self._img: list[np.ndarray] = []  # (n,) float64 image-head probabilities (empty: no image head)
        self._hw: list[np.ndarray] = []  # (n,) int64 pixel count per image

    def __len__(self) -> int:
        return int(sum(len(a) for a in self._hw))

    @property
    def has_image_probs(self) -> bool:
        """Whether image-head probabilities were accumulated (so ``img_source="image_head"`` is evaluable)."""
        return bool(self._img)

    def update(self, mask_probs: Any, class_probs: Any, targets: Any, image_probs: Any = None) -> None:
        """Accumulate a batch: mask_probs (N, C, H, W), class_probs (N, C), targets (N, C, H, W) 0/1 and,
        for a network with an image head, image_probs (N,)."""
        mask = to_numpy(mask_probs)
        if mask.ndim != 4:
            raise ValueError(f"mask_probs must be (N, C, H, W), got shape {mask.shape}")
        mask, cls, img, _ = batch_inputs(mask, class_probs, self.num_classes, image_probs)
        if cls is None:
            raise ValueError("class_probs is required by TuningStats.update")
        if self._hw and (img is not None) != self.has_image_probs:
            raise ValueError(
                "image_probs must be given to every TuningStats.update or to none: earlier batches had "
                f"{'some' if self.has_image_probs else 'none'}, this one has {'some' if img is not None else 'none'}"
            )
        target = to_numpy(targets)
        if target.shape != mask.shape:
            raise ValueError(f"targets shape {target.shape} does not match mask_probs shape {mask.shape}")
        target = target > 0.5 if target.dtype.kind == "f" else target.astype(bool, copy=False)
        n, c, h, w = mask.shape
        g_count, v_count = len(self.grid), self.num_variants
        pred = np.zeros((n, c, g_count, v_count), dtype=np.int64)
        inter = np.zeros_like(pred)
        min_comp = scale_area(self.min_component, h * w, self.reference_shape)
        binary = np.empty((n, h, w), dtype=bool)
        both = np.empty((n, h, w), dtype=bool)
        for g, (mode, t) in enumerate(self.grid):
            if g % len(self.t_pix_grid) == 0:
                scores = [pixel_scores(mask, cls, mode, k) for k in range(c)]
            for k in range(c):
                np.greater_equal(scores[k], np.float64(t), out=binary)
                np.logical_and(binary, target[:, k], out=both)
                pred[:, k, g, 0] = np.count_nonzero(binary, axis=(1, 2))
                inter[:, k, g, 0] = np.count_nonzero(both, axis=(1, 2))
                if v_count == 2:  # variant 1 = variant 0 except for the classes with a min_component
                    if np.isnan(min_comp[k]):
                        pred[:, k, g, 1], inter[:, k, g, 1] = pred[:, k, g, 0], inter[:, k, g, 0]
                        continue
                    for i in range(n):
                        kept = remove_small_components(binary[i], min_comp[k])
                        pred[i, k, g, 1] = np.count_nonzero(kept)
                        inter[i, k, g, 1] = np.count_nonzero(kept & target[i, k])
        self._pred.append(pred)
        self._inter.append(inter)
        self._target.append(np.count_nonzero(target, axis=(2, 3)).astype(np.int64))
        self._cls.append(cls.astype(np.float64))
        if img is not None:
            self._img.append(img.astype(np.float64))
        self._hw.append(np.full(n, h * w, dtype=np.int64))

    def arrays(self) -> dict[str, np.ndarray]:
        """Concatenated counts: pred/inter (N, C, G, V), target (N, C), class_probs (N, C), hw (N,) and,
        with an image head, image_probs (N,)."""
        if not self._hw:
            raise ValueError("TuningStats is empty: call update() with at least one batch first")
        out = {
            "pred": np.concatenate(self._pred),
            "inter": np.concatenate(self._inter),
            "target": np.concatenate(self._target),
            "class_probs": np.concatenate(self._cls),
            "hw": np.concatenate(self._hw),
        }
        # Keep one chunk so repeated calls stay cheap.
        self._pred, self._inter, self._target = [out["pred"]], [out["inter"]], [out["target"]]
        self._cls, self._hw = [out["class_probs"]], [out["hw"]]
        if self._img:
            out["image_probs"] = np.concatenate(self._img)
            self._img = [out["image_probs"]]
        return out

    def _variant(self, params: PostprocessParams, k: int) -> int:
        want = params.min_component[k]
        if want is None:
            return 0
        if want == self.min_component[k] and self.reference_shape == params.reference_shape:
            return 1
        raise ValueError(
            f"min_component[{k}]={want} (reference_shape {params.reference_shape}) cannot be evaluated: "
            f"TuningStats was built with min_component {self.min_component} "
            f"(reference_shape {self.reference_shape})"
        )

    def dice_per_pair(self, params: PostprocessParams) -> np.ndarray:
        """(N, C) Dice of ``postprocess(..., params)`` against the targets, from the counts alone."""
        if params.num_classes != self.num_classes:
            raise ValueError(f"params have {params.num_classes} classes, TuningStats {self.num_classes}")
        a = self.arrays()
        cls, hw = a["class_probs"], a["hw"]
        out = np.empty(a["target"].shape, dtype=np.float64)
        img_ok = image_gate(cls, a.get("image_probs"), params, len(hw))
        for k in range(self.num_classes):
            g = _grid_index(self.grid, params.pix_mode[k], params.t_pix[k], f"t_pix[{k}]")
            v = self._variant(params, k)
            p, i = a["pred"][:, k, g, v], a["inter"][:, k, g, v]
            lo = lower_bound(scale_area([params.min_area[k]], hw, params.reference_shape))
            hi = upper_bound(scale_area([params.max_area[k]], hw, params.reference_shape))
            keep = img_ok & (p >= lo) & (p <= hi)
            if params.t_cls[k] is not None:
                keep &= cls[:, k] >= params.t_cls[k]
            out[:, k] = dice_from_counts(np.where(keep, p, 0), a["target"][:, k], np.where(keep, i, 0))
        return out

    def dice_per_class(self, params: PostprocessParams) -> list[float]:
        """Mean Dice per class of ``postprocess(..., params)`` (exact, from counts)."""
        return [float(v) for v in self.dice_per_pair(params).mean(axis=0)]


def _preference(values: Sequence[Any], base: Any, higher_first: bool) -> np.ndarray:
    """Rank of each candidate for tie-breaking: the base value first, then the more conservative."""
    finite = [v for v in values if v is not None]
    order = sorted(set(finite), reverse=higher_first)
    ranks = []
    for v in values:
        if v == base or (v is None and base is None):
            ranks.append(-1)
        elif v is None:
            ranks.append(len(order))
        else:
            ranks.append(order.index(v))
    return np.asarray(ranks)


def _pixel_preference(grid: Sequence[tuple[str, float]], base_mode: str, base_t: float) -> np.ndarray:
    """Tie-break rank of (pixel mode, threshold) pairs: the base pair first, then the base mode, then
    the other modes in PIX_MODES order; within a mode the higher threshold first."""
    modes = [base_mode, *(m for m in PIX_MODES if m != base_mode)]
    thresholds = sorted({t for _, t in grid}, reverse=True)
    ranks = [
        -1
        if (m == base_mode and abs(t - base_t) <= 1e-9)
        else modes.index(m) * len(thresholds) + thresholds.index(t)
        for m, t in grid
    ]
    return np.asarray(ranks)


def _with_base(grid: Sequence[Any], base: Any) -> list[Any]:
    values = list(dict.fromkeys(grid))
    if base not in values:
        values.append(base)
    return values


def _img_sources(stats: TuningStats, img_sources: Sequence[str] | None) -> list[str]:
    """The image-gate sources to tune: default max_cls, plus image_head when ``stats`` has its probabilities."""
    if img_sources is None:
        return ["max_cls", "image_head"] if stats.has_image_probs else ["max_cls"]
    if isinstance(img_sources, str) or not is_seq(img_sources):
        raise ValueError(
            f"img_sources must be a list drawn from {', '.join(IMG_SOURCES)}, got {img_sources!r}"
        )
    out = list(dict.fromkeys(img_sources))
    bad = [v for v in out if v not in IMG_SOURCES]
    if bad:
        raise ValueError(f"img_sources: unknown {bad}; valid: {', '.join(IMG_SOURCES)}")
    if "image_head" in out and not stats.has_image_probs:
        raise ValueError(
            "img_sources includes 'image_head' but TuningStats has no image-head probabilities "
            "(the network has no image head, or update() was called without image_probs)"
        )
    return out


def _lex_key(*ranks: np.ndarray) -> np.ndarray:
    """Integer key over the outer product of rank vectors: ordering by it is lexicographic in ``ranks``."""
    key = np.zeros((), dtype=np.int64)
    for r in ranks:
        r = np.asarray(r, dtype=np.int64) + 1  # ranks start at -1 (the base value)
        key = key[..., None] * (int(r.max()) + 1) + r
    return key


@dataclasses.dataclass(frozen=True)
class _Grids:
    """The validated search grids of one :func:`tune_thresholds` call."""

    t_cls: list[float | None]
    min_area: list[int | None]
    max_area: list[int | None]
    t_img: list[float | None]
    tune_max_area: bool


def _checked_inputs(
    stats: TuningStats,
    base: PostprocessParams | None,
    t_cls_grid: Sequence[float | None],
    min_area_grid: Sequence[int | None],
    max_area_grid: Sequence[int | None],
    t_img_grid: Sequence[float | None],
    tune_max_area: bool,
    min_gain: float,
) -> tuple[PostprocessParams, _Grids]:
    """``base`` (the defaults for ``stats``' classes when None) and the grids, validated against ``stats``."""
    base = PostprocessParams.for_classes(stats.num_classes) if base is None else base
    if base.num_classes != stats.num_classes:
        raise ValueError(f"base has {base.num_classes} classes, TuningStats {stats.num_classes}")
    if stats.num_variants == 2 and stats.reference_shape != base.reference_shape:
        raise ValueError(
            f"TuningStats.reference_shape {stats.reference_shape} (used to scale min_component) differs "
            f"from base.reference_shape {base.reference_shape}"
        )
    for k in range(base.num_classes):
        _grid_index(stats.grid, base.pix_mode[k], base.t_pix[k], f"base.t_pix[{k}]")
        stats._variant(base, k)
    if isinstance(min_gain, bool) or not isinstance(min_gain, int | float) or not min_gain >= 0:
        raise ValueError(f"min_gain must be a number >= 0 (mean Dice per class), got {min_gain!r}")
    grids = _Grids(
        t_cls=[check_prob("t_cls_grid value", t, allow_none=True) for t in t_cls_grid],
        min_area=[check_area("min_area_grid value", a) for a in min_area_grid],
        max_area=[check_area("max_area_grid value", a) for a in max_area_grid],
        t_img=[check_prob("t_img_grid value", t, allow_none=True) for t in t_img_grid],
        tune_max_area=bool(tune_max_area),
    )
    return base, grids


def _gate_candidates(
    base: PostprocessParams, sources: Sequence[str], t_img_values: Sequence[float | None], a: Mapping
) -> tuple[list[tuple[float | None, str]], np.ndarray]:
    """Image-gate candidates in tie-break order (the base gate, no gate, then per source the higher t_img
    first) and, per candidate, which images pass it: (J, N) float64."""
    gates: list[tuple[float | None, str]] = []
    if base.t_img is not None:
        gates.append((base.t_img, base.img_source))
    gates.append((None, "max_cls"))
    for src in sources:
        gates += [(t, src) for t in sorted({t for t in t_img_values if t is not None}, reverse=True)]
    gates = list(dict.fromkeys(gates))
    n_img = len(a["hw"])
    gate_ok = np.stack(
        [
            image_gate(
                a["class_probs"],
                a.get("image_probs"),
                dataclasses.replace(base, t_img=t, img_source=src),
                n_img,
            )
            for t, src in gates
        ]
    ).astype(np.float64)
    return gates, gate_ok


def _class_values(stats: TuningStats, base: PostprocessParams, grids: _Grids, k: int) -> dict[str, list]:
    """Class ``k``'s candidate values (each with its base value): t_cls, min_area, max_area, min_component."""
    return {
        "t_cls": _with_base(grids.t_cls, base.t_cls[k]),
        "min_area": _with_base(grids.min_area, base.min_area[k]),
        "max_area": (
            _with_base([*grids.max_area, None], base.max_area[k])
            if grids.tune_max_area
            else [base.max_area[k]]
        ),
        "min_component": [None] if stats.min_component[k] is None else [None, stats.min_component[k]],
    }


def _class_scores(
    a: Mapping, k: int, base: PostprocessParams, values: Mapping[str, list], gate_ok: np.ndarray
) -> tuple[np.ndarray, float]:
    """Mean Dice of class ``k`` for every candidate, (J, K, G, V, M, X) over (gate, t_cls, (pix_mode,
    t_pix), min_component, min_area, max_area), -inf for an invalid area window; and the class's mean
    Dice when it keeps nothing."""
    hw, n_img = a["hw"], len(a["hw"])
    n_var = len(values["min_component"])
    pred = a["pred"][:, k, :, :n_var].astype(np.float64)  # (N, G, V)
    inter = a["inter"][:, k, :, :n_var].astype(np.float64)
    target = a["target"][:, k].astype(np.float64)  # (N,)

    # Mean Dice = mean(d_drop) + mean(keep * (d_keep - d_drop)), keep = image gate & class gate & area.
    d_keep = dice_from_counts(pred, target[:, None, None], inter)
    d_drop = dice_from_counts(np.zeros_like(target), target, np.zeros_like(target))
    gain = np.asarray(d_keep, dtype=np.float64) - np.asarray(d_drop, dtype=np.float64)[:, None, None]
    lo = lower_bound(scale_area(values["min_area"], hw[:, None], base.reference_shape))  # (N, M)
    hi = upper_bound(scale_area(values["max_area"], hw[:, None], base.reference_shape))  # (N, X)
    area_ok = (pred[..., None, None] >= lo[:, None, None, :, None]) & (
        pred[..., None, None] <= hi[:, None, None, None, :]
    )  # (N, G, V, M, X)
    t_cls_arr = np.asarray([-np.inf if t is None else t for t in values["t_cls"]], dtype=np.float64)
    cls_ok = (a["class_probs"][:, k, None] >= t_cls_arr[None, :]).astype(np.float64)  # (N, K)
    weighted = (gain[..., None, None] * area_ok).reshape(n_img, -1)  # (N, G*V*M*X)
    keep = (gate_ok[:, None, :] * cls_ok.T[None]).reshape(-1, n_img)  # (J * K, N), contiguous for BLAS
    score = (keep @ weighted) / n_img  # (J * K, G*V*M*X)
    off = float(np.mean(d_drop))
    score = score.reshape(len(gate_ok), len(values["t_cls"]), *area_ok.shape[1:]) + off
    # A window with min_area > max_area is not a valid parameter set.
    lo_ref = np.asarray([-np.inf if v is None else v for v in values["min_area"]])
    hi_ref = np.asarray([np.inf if v is None else v for v in values["max_area"]])
    score[..., lo_ref[:, None] > hi_ref[None, :]] = -np.inf
    return score, off


def _class_choices(
    score: np.ndarray, grid: Sequence[tuple[str, float]], base: PostprocessParams, k: int, values: Mapping
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Per gate, class ``k``'s best mean Dice (J,) and its parameter values, ties broken by preference."""
    # Lexicographic tie-break key over (K, G, V, M, X): t_pix, t_cls, min_area, min_component, max_area.
    key = _lex_key(
        _pixel_preference(grid, base.pix_mode[k], base.t_pix[k]),
        _preference(values["t_cls"], base.t_cls[k], higher_first=True),
        _preference(values["min_area"], base.min_area[k], higher_first=True),
        _preference(values["min_component"], base.min_component[k], higher_first=True),
        _preference(values["max_area"], base.max_area[k], higher_first=False),
    ).transpose(1, 0, 3, 2, 4)  # (G, K, M, V, X) -> (K, G, V, M, X)
    best = np.empty(len(score))
    chosen = []
    for j, s in enumerate(score):
        best[j] = s.max()
        tied_key = np.where(s >= best[j] - _TIE_TOL, key, np.iinfo(np.int64).max)
        ik, ig, iv, im, ix = np.unravel_index(int(np.argmin(tied_key)), s.shape)
        chosen.append(
            {
                "t_pix": grid[ig][1],
                "pix_mode": grid[ig][0],
                "t_cls": values["t_cls"][ik],
                "min_area": values["min_area"][im],
                "min_component": values["min_component"][iv],
                "max_area": values["max_area"][ix],
            }
        )
    return best, chosen


def _switch_off(
    best_score: np.ndarray, off_score: np.ndarray, chosen: list[list[dict[str, Any]]], min_gain: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per gate and class, switch a class off (keep nothing: max_area 0, min_area None) when its best
    score beats keeping nothing by less than ``min_gain`` (never with ``min_gain`` 0); ``chosen`` is
    updated in place. Returns the scores after switching and which (gate, class) pairs are off."""
    gain = best_score - off_score[None, :]
    off = (gain < min_gain - _TIE_TOL) if min_gain > 0 else np.zeros(gain.shape, dtype=bool)
    for j, k in zip(*np.nonzero(off), strict=True):
        chosen[j][k] = {**chosen[j][k], "min_area": None, "max_area": 0}
    return np.where(off, off_score[None, :], best_score), off


def tune_thresholds(
    stats: TuningStats,
    t_cls_grid: Sequence[float | None] = DEFAULT_T_CLS_GRID,
    min_area_grid: Sequence[int | None] = DEFAULT_MIN_AREA_GRID,
    base: PostprocessParams | None = None,
    tune_max_area: bool = False,
    max_area_grid: Sequence[int | None] = DEFAULT_MAX_AREA_GRID,
    t_img_grid: Sequence[float | None] = DEFAULT_T_IMG_GRID,
    img_sources: Sequence[str] | None = None,
    min_gain: float = 0.0,
) -> tuple[PostprocessParams, dict[str, Any]]:
    """Exhaustive search over the image gate and, per class, ((pix_mode, t_pix), t_cls, min_area[, max_area][,
    min_component]); the pixel modes are those ``stats`` counted (``TuningStats(pix_modes=...)``).

    Gate candidates: no gate (t_img None) and every t_img of ``t_img_grid`` for every source of
    ``img_sources`` (default: ``max_cls``, plus ``image_head`` when ``stats`` has image-head
    probabilities). For a fixed gate the classes are independent, so the exact per-class search runs once
    per gate and the gate with the best mean Dice is kept: the result is the exact optimum over the grids.
    Area grids are in ``base.reference_shape`` pixels; the base value of every parameter is always a
    candidate. With ``stats.min_component`` set, removing small components is a candidate too. Ties
    (within 1e-12) prefer, per class, the base value, then the more conservative one (higher thresholds,
    lower max area), in the order t_pix, t_cls, min_area, min_component, max_area; between gates, the base
    gate, then no gate, then max_cls before image_head, then the higher t_img.

    ``min_gain`` > 0 (mean Dice of one class over the tuned images: ``p / len(stats)`` is ``p`` image-class
    pairs): a class whose best score beats keeping nothing by less than that is switched off (max_area 0,
    min_area None: :func:`~steel_defect.postprocess.apply.postprocess` then keeps nothing of it); the
    gate is chosen with the switched-off scores. 0 (the default) switches nothing off.
    Returns (params, report); the report's Dice values come from ``stats.dice_per_class`` and include
    the best tuned result without a gate and with a gate per source; per class, ``gain_pairs`` (the best
    score's gain over keeping nothing, in image-class pairs) and ``off``.
    """
    base, grids = _checked_inputs(
        stats, base, t_cls_grid, min_area_grid, max_area_grid, t_img_grid, tune_max_area, min_gain
    )
    sources = _img_sources(stats, img_sources)
    a = stats.arrays()
    gates, gate_ok = _gate_candidates(base, sources, grids.t_img, a)
    best_score = np.empty((len(gates), stats.num_classes))
    off_score = np.empty(stats.num_classes)
    chosen: list[list[dict[str, Any]]] = [[] for _ in gates]  # [gate][class] -> parameter values
    for k in range(stats.num_classes):
        values = _class_values(stats, base, grids, k)
        score, off_score[k] = _class_scores(a, k, base, values, gate_ok)
        best_score[:, k], per_gate = _class_choices(score, stats.grid, base, k, values)
        for j, c in enumerate(per_gate):
            chosen[j].append(c)
    gain_pairs = (best_score - off_score[None, :]) * len(a["hw"])
    best_score, off = _switch_off(best_score, off_score, chosen, float(min_gain))
    search = _Search(stats, base, gates, sources, best_score, chosen)
    tuned, report = _report(search)
    j_best = search.first_best(list(range(len(gates))))
    report["min_gain"] = float(min_gain)
    for k, row in enumerate(report["classes"]):
        row["gain_pairs"] = float(gain_pairs[j_best, k])
        row["off"] = bool(off[j_best, k])
    return tuned, report


@dataclasses.dataclass
class _Search:
    """The per-gate, per-class outcome of a search: enough to build any gate's parameters."""

    stats: TuningStats
    base: PostprocessParams
    gates: list[tuple[float | None, str]]
    sources: list[str]
    best_score: np.ndarray  # (J, C)
    chosen: list[list[dict[str, Any]]]  # [gate][class] -> parameter values

    def tuned_for(self, j: int) -> PostprocessParams:
        t, src = self.gates[j]
        names = self.chosen[j][0]
        return dataclasses.replace(
            self.base, t_img=t, img_source=src, **{name: [c[name] for c in self.chosen[j]] for name in names}
        )

    def first_best(self, candidates: list[int]) -> int:
        means = self.best_score[candidates].mean(axis=1)
        return candidates[int(np.flatnonzero(means >= means.max() - _TIE_TOL)[0])]


def _report(search: _Search) -> tuple[PostprocessParams, dict[str, Any]]:
    """The best parameters over every gate, and the tuning report (Dice from ``stats.dice_per_class``)."""
    stats, gates = search.stats, search.gates
    tuned = search.tuned_for(search.first_best(list(range(len(gates)))))
    tuned_no_gate = search.tuned_for(gates.index((None, "max_cls")))
    dice_raw = stats.dice_per_class(PostprocessParams.disabled(stats.num_classes))
    dice_default = stats.dice_per_class(search.base)
    dice_tuned = stats.dice_per_class(tuned)
    dice_no_gate = stats.dice_per_class(tuned_no_gate)
    per_source: dict[str, Any] = {}
    for src in search.sources:
        js = [j for j, (t, s) in enumerate(gates) if s == src and t is not None]
        if js:
            j = search.first_best(js)
            dice = stats.dice_per_class(search.tuned_for(j))
            per_source[src] = {"t_img": gates[j][0], "dice": float(np.mean(dice)), "dice_per_class": dice}
    classes = [
        {
            "class": k + 1,
            "dice_raw": dice_raw[k],
            "dice_default": dice_default[k],
            "dice_tuned_no_gate": dice_no_gate[k],
            "dice_tuned": dice_tuned[k],
            **{name: getattr(tuned, name)[k] for name in _REPORTED},
        }
        for k in range(stats.num_classes)
    ]
    report: dict[str, Any] = {
        "num_images": len(stats),
        "classes": classes,
        "mean": {
            "dice_raw": float(np.mean(dice_raw)),
            "dice_default": float(np.mean(dice_default)),
            "dice_tuned_no_gate": float(np.mean(dice_no_gate)),
            "dice_tuned": float(np.mean(dice_tuned)),
        },
        "image_gate": {
            "t_img": tuned.t_img,
            "img_source": tuned.img_source if tuned.t_img is not None else None,
            "sources": per_source,
        },
    }
    return tuned, report


#: The per-class parameters a tuning report lists, in its order.
_REPORTED = ("t_pix", "pix_mode", "t_cls", "min_area", "max_area", "min_component")


def format_tuning_report(report: Mapping[str, Any]) -> str:
    """A small fixed-width table: per class Dice raw / notebook defaults / tuned and chosen thresholds, then
    the image gate: mean Dice tuned without a gate and with the best gate of each source."""

    def fmt(v: Any, spec: str) -> str:
        if v is None:
            return "-"
        return format(v, spec)

    head = (
        f"{'class':>5} {'raw':>7} {'default':>7} {'tuned':>7} "
        f"{'mode':>6} {'t_pix':>5} {'t_cls':>5} {'min_area':>8} {'max_area':>8} {'min_comp':>8}"
    )
    lines = [head, "-" * len(head)]
    for row in report["classes"]:
        lines.append(
            f"{row['class']:>5} {row['dice_raw']:>7.4f} {row['dice_default']:>7.4f} {row['dice_tuned']:>7.4f} "
            f"{row.get('pix_mode', 'plain'):>6} {fmt(row['t_pix'], '.2f'):>5} {fmt(row['t_cls'], '.2f'):>5} {fmt(row['min_area'], 'd'):>8} "
            f"{fmt(row['max_area'], 'd'):>8} {fmt(row.get('min_component'), 'd'):>8}"
            + (f"  off: gains {row['gain_pairs']:.1f} image-class pairs" if row.get("off") else "")
        )
    mean = report["mean"]
    lines.append("-" * len(head))
    lines.append(
        f"{'mean':>5} {mean['dice_raw']:>7.4f} {mean['dice_default']:>7.4f} {mean['dice_tuned']:>7.4f}"
        + (f"   ({report['num_images']} images)" if "num_images" in report else "")
    )
    gate = report.get("image_gate")
    if gate is not None:
        chosen = gate.get("img_source") if gate.get("t_img") is not None else "none"
        lines.append("image gate (keep an image's masks only if p_img >= t_img), tuned with the rest:")
        lines.append(f"  {'p_img source':<12} {'t_img':>5} {'mean':>7}")
        rows = [("none", None, mean.get("dice_tuned_no_gate"))]
        rows += [(src, v["t_img"], v["dice"]) for src, v in gate.get("sources", {}).items()]
        for name, t, dice in rows:
            mark = "  <- chosen" if name == chosen else ""
            lines.append(f"  {name:<12} {fmt(t, '.2f'):>5} {fmt(dice, '.4f'):>7}{mark}")
    return "\n".join(lines)
