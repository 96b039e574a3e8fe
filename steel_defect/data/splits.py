"""Reproducible train/val(/test) splits stratified on the defect-class combination.

``notebook_split`` reproduces the original notebook exactly (two stratified ``train_test_split`` calls with
``random_state=42``); ``kfold_split`` is a ``StratifiedKFold`` alternative. On tiny data sets where sklearn
cannot stratify, rare strata are merged (into their most frequent single class, then into ``"rare"``) and,
as a last resort, the split is unstratified; every such step is logged as a warning. All of it is
deterministic: the same frame and configuration always give the same split.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from steel_defect.data.annotations import stratify_key
from steel_defect.io import atomic_write

__all__ = [
    "SPLIT_KINDS",
    "DEFAULT_SPLIT",
    "notebook_split",
    "kfold_split",
    "make_split",
    "save_split",
    "load_split",
    "split_parts",
    "normalise_split_cfg",
]

log = logging.getLogger(__name__)

SPLIT_KINDS: dict[str, dict[str, Any]] = {
    "notebook": {"test_size": 0.1, "val_size": 0.2, "seed": 42},
    "kfold": {"n_splits": 5, "fold": 0, "seed": 42},
}
DEFAULT_SPLIT: dict[str, Any] = {"kind": "notebook", **SPLIT_KINDS["notebook"]}
_FORMAT_VERSION = 1


def _class_frequency(key: pd.Series) -> dict[str, int]:
    """How many images contain each single class, counted from the combination keys."""
    counts: dict[str, int] = {}
    for combo, n in key.value_counts().items():
        for c in str(combo).split("+"):
            counts[c] = counts.get(c, 0) + int(n)
    return counts


def _feasible_key(key: pd.Series, min_count: int, max_strata: int | None, what: str) -> pd.Series | None:
    """A stratification key sklearn accepts, derived from ``key`` by merging rare strata; ``None`` if none.

    Every stratum needs ``min_count`` members and there may be at most ``max_strata`` strata. Rare
    combinations (``"1+3"``) go to their most frequent single class, remaining rare strata to ``"rare"``,
    and a still-too-small ``"rare"`` to the largest stratum. ``None`` means: split without stratification.
    """
    key = key.astype(str)

    def rare_of(k: pd.Series) -> list[str]:
        counts = k.value_counts()
        return sorted(str(s) for s in counts.index[counts < min_count])

    def fits(k: pd.Series) -> bool:
        return not rare_of(k) and (max_strata is None or k.nunique() <= max_strata)

    if fits(key):
        return key
    freq = _class_frequency(key)
    rare = rare_of(key)
    if rare:
        mapping = {
            s: max(s.split("+"), key=lambda c: (freq.get(c, 0), -int(c) if c.isdigit() else 0))
            for s in rare
            if "+" in s
        }
        if mapping:
            log.warning("%s: merging rare strata into their most frequent single class: %s", what, mapping)
            key = key.replace(mapping)
        rare = rare_of(key)
        if rare:
            log.warning("%s: merging rare strata %s into 'rare'", what, rare)
            key = key.where(~key.isin(rare), "rare")
        if rare_of(key) == ["rare"] and key.nunique() > 1:
            largest = sorted(key.value_counts().items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            log.warning("%s: 'rare' stratum is still too small; merging it into %r", what, largest)
            key = key.replace({"rare": largest})
    if fits(key):
        return key
    log.warning(
        "%s: cannot stratify %d images (strata %s; need >= %d per stratum%s); splitting without stratification",
        what,
        len(key),
        {str(k): int(v) for k, v in key.value_counts().items()},
        min_count,
        "" if max_strata is None else f" and at most {max_strata} strata",
    )
    return None


def _stratified_train_test(ids: pd.Series, key: pd.Series, test_size: float, seed: int, what: str):
    """``train_test_split(ids, test_size, stratify=key, random_state=seed)`` with the rare-strata fallback."""
    n = len(ids)
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"{what}: test size must be in (0, 1), got {test_size}")
    n_test = math.ceil(test_size * n)
    n_train = n - n_test
    if n_test < 1 or n_train < 1:
        raise ValueError(f"{what}: cannot split {n} images with test size {test_size}")
    strat = _feasible_key(key, min_count=2, max_strata=min(n_test, n_train), what=what)
    return train_test_split(
        ids, test_size=test_size, stratify=None if strat is None else strat, random_state=seed
    )


def _ids(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """``ImageId`` column and stratification key of ``df`` (checked for duplicates)."""
    if "ImageId" not in df.columns:
        raise KeyError(f"split needs an 'ImageId' column; got {list(df.columns)}")
    ids = df["ImageId"].astype(str).reset_index(drop=True)
    if ids.duplicated().any():
        raise ValueError(f"duplicated ImageId in split input: {sorted(set(ids[ids.duplicated()]))[:5]}")
    return ids, stratify_key(df).reset_index(drop=True)


def notebook_split(
    df: pd.DataFrame, test_size: float = 0.1, val_size: float = 0.2, seed: int = 42
) -> dict[str, list[str]]:
    """The original notebook's split: 10% test, then 20% of the rest as validation, both stratified.

    Returns ``{"train": [...], "val": [...], "test": [...]}`` lists of ImageIds (in sklearn's order).
    """
    ids, key = _ids(df)
    rest, test = _stratified_train_test(ids, key, test_size, seed, "notebook split (test)")
    train, val = _stratified_train_test(rest, key.loc[rest.index], val_size, seed, "notebook split (val)")
    return {"train": train.tolist(), "val": val.tolist(), "test": test.tolist()}


def kfold_split(df: pd.DataFrame, n_splits: int = 5, fold: int = 0, seed: int = 42) -> dict[str, list[str]]:
    """Fold ``fold`` of a shuffled ``StratifiedKFold(n_splits, random_state=seed)``: ``{"train", "val"}``."""
    if isinstance(n_splits, bool) or not isinstance(n_splits, int | np.integer) or n_splits < 2:
        raise ValueError(f"kfold split: n_splits must be an integer >= 2, got {n_splits!r}")
    if isinstance(fold, bool) or not isinstance(fold, int | np.integer) or not 0 <= fold < n_splits:
        raise ValueError(f"kfold split: fold must be an integer in 0..{n_splits - 1}, got {fold!r}")
    ids, key = _ids(df)
    if len(ids) < n_splits:
        raise ValueError(f"kfold split: cannot make {n_splits} folds of {len(ids)} images")
    strat = _feasible_key(key, min_count=n_splits, max_strata=None, what="kfold split")
    y = np.zeros(len(ids), dtype=np.int64) if strat is None else strat.to_numpy()
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = list(splitter.split(np.zeros(len(ids)), y))[fold]
    return {"train": ids.iloc[train_idx].tolist(), "val": ids.iloc[val_idx].tolist()}


def normalise_split_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Fill defaults and reject unknown kinds/keys; the result is a plain JSON-able dict."""
    if not isinstance(cfg, Mapping):
        raise TypeError(f"split config must be a mapping, got {type(cfg).__name__}")
    kind = cfg.get("kind", "notebook")
    if kind not in SPLIT_KINDS:
        raise ValueError(f"unknown split kind {kind!r}; valid kinds: {sorted(SPLIT_KINDS)}")
    defaults = SPLIT_KINDS[kind]
    unknown = sorted(set(cfg) - set(defaults) - {"kind"})
    if unknown:
        raise ValueError(f"unknown keys {unknown} for split kind {kind!r}; valid keys: {['kind', *defaults]}")
    out: dict[str, Any] = {"kind": kind}
    for name, default in defaults.items():
        value = cfg.get(name, default)
        if value is None:
            value = default
        try:
            ok = not isinstance(value, bool) and (not isinstance(default, int) or float(value) == int(value))
            converted = type(default)(value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            expected = "an integer" if isinstance(default, int) else "a number"
            raise ValueError(f"split {kind!r}: {name} must be {expected}, got {value!r}")
        out[name] = converted
    return out


def make_split(df: pd.DataFrame, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Split ``df`` according to ``cfg`` (``{"kind": "notebook"|"kfold", ...}``).

    Returns the parts (``train``, ``val`` and, for ``notebook``, ``test``: lists of ImageIds) plus ``cfg``,
    the normalised configuration (all defaults filled in), so that :func:`save_split` can record it.
    """
    norm = normalise_split_cfg(cfg)
    params = {k: v for k, v in norm.items() if k != "kind"}
    parts = notebook_split(df, **params) if norm["kind"] == "notebook" else kfold_split(df, **params)
    return {**parts, "cfg": norm}


def split_parts(split: Mapping[str, Any]) -> dict[str, list[str]]:
    """The parts of a split (every key except ``cfg``)."""
    return {k: list(v) for k, v in split.items() if k != "cfg"}


def _check_split(split: Mapping[str, Any], where: str) -> None:
    """Parts must be lists of strings, include train and val, and be disjoint."""
    parts = split_parts(split)
    for required in ("train", "val"):
        if required not in parts:
            raise ValueError(f"{where}: split has no {required!r} part (parts: {sorted(parts)})")
    seen: dict[str, str] = {}
    for name, ids in parts.items():
        if not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{where}: split part {name!r} must be a list of ImageId strings")
        for i in ids:
            if i in seen:
                raise ValueError(f"{where}: ImageId {i!r} is in both {seen[i]!r} and {name!r}")
            seen[i] = name


def save_split(
    split: Mapping[str, Any], path: str | os.PathLike, cfg: Mapping[str, Any] | None = None
) -> Path:
    """Write ``split`` (parts + ``cfg``; ``cfg`` overrides ``split["cfg"]``) as JSON, atomically."""
    path = Path(path)
    _check_split(split, str(path))
    record_cfg = dict(cfg) if cfg is not None else dict(split.get("cfg") or {})
    payload = {"version": _FORMAT_VERSION, "cfg": record_cfg, **split_parts(split)}
    with atomic_write(path) as fh:
        json.dump(payload, fh, indent=1)
        fh.write("\n")
    return path


def load_split(path: str | os.PathLike) -> dict[str, Any]:
    """Read a split written by :func:`save_split`: the parts plus ``cfg``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a valid split JSON file: {err}") from err
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: a split file must hold a JSON object")
    version = payload.pop("version", _FORMAT_VERSION)
    if version != _FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported split file version {version!r} (expected {_FORMAT_VERSION})")
    cfg = payload.pop("cfg", {}) or {}
    for name, ids in payload.items():
        if not isinstance(ids, list):
            raise ValueError(f"{path}: split part {name!r} must be a list of ImageIds")
    split = {**payload, "cfg": cfg}
    _check_split(split, str(path))
    return split
