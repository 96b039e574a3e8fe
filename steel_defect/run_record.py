"""A training run's model, recorded in the run folder (``model.yaml``) and resolved from it.

``train.py`` writes ``RUN/model.yaml`` at the end: the checkpoint(s) that make the run's model (its best
checkpoint, or every fold's for a fold ensemble) and the thresholds tuned for exactly that model. Every
consumer (``predict.py ckpt=RUN``, ``task=evaluate``, the service, the Kaggle bundle) resolves a run folder
with :func:`resolve_model`, so ``ckpt=RUN`` means "this run's model with its thresholds". Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "RECORD_NAME",
    "is_run_record",
    "read_run_record",
    "resolve_ckpt_arg",
    "resolve_model",
    "write_run_record",
]

RECORD_NAME = "model.yaml"
_KINDS = ("single", "fold_ensemble")


def write_run_record(
    run_dir: str | os.PathLike,
    checkpoints: Sequence[str | os.PathLike],
    thresholds: str | os.PathLike | None,
    kind: str = "single",
    **extra: Any,
) -> Path:
    """Write ``run_dir/model.yaml`` (paths stored relative to ``run_dir``); returns its path."""
    from steel_defect.guard import refuse_unless_own
    from steel_defect.io import atomic_write

    if kind not in _KINDS:
        raise ValueError(f"run record kind={kind!r}; choose one of: {', '.join(_KINDS)}")
    run_dir = Path(run_dir)
    path = run_dir / RECORD_NAME
    refuse_unless_own(path, is_run_record, what="run record", kind="run record (model.yaml)")

    def rel(p: str | os.PathLike) -> str:
        return Path(os.path.relpath(Path(p).resolve(), run_dir.resolve())).as_posix()

    doc = {
        "kind": kind,
        "checkpoints": [rel(p) for p in checkpoints],
        "thresholds": None if thresholds is None else rel(thresholds),
        **extra,
    }
    with atomic_write(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    return path


def is_run_record(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``model.yaml`` that :func:`write_run_record` wrote."""
    try:
        read_run_record(path)
    except (OSError, ValueError):
        return False
    return True


def read_run_record(path: str | os.PathLike) -> tuple[list[Path], Path | None, dict[str, Any]]:
    """The checkpoints, thresholds file (None: none tuned) and the whole record of a ``model.yaml``."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    ckpts = doc.get("checkpoints") if isinstance(doc, dict) else None
    if not isinstance(ckpts, list) or not ckpts or not all(isinstance(c, str) for c in ckpts):
        raise ValueError(f"{path}: a run record needs 'checkpoints', a non-empty list of paths")
    if doc.get("kind") not in _KINDS:
        raise ValueError(f"{path}: kind {doc.get('kind')!r} is not one of {', '.join(_KINDS)}")
    thresholds = doc.get("thresholds")
    if thresholds is not None and not isinstance(thresholds, str):
        raise ValueError(f"{path}: 'thresholds' must be a path or null, got {thresholds!r}")
    base = path.parent
    return [base / c for c in ckpts], None if thresholds is None else base / thresholds, doc


def resolve_model(path: str | os.PathLike) -> tuple[list[Path], Path | None]:
    """A model file -> ``([it], None)``; a training run's folder -> the checkpoints and thresholds its
    ``model.yaml`` records. A run folder without one (older runs) resolves to its only checkpoint besides
    ``last.ckpt``; anything else raises, naming the folder and what it holds."""
    path = Path(path)
    if not path.is_dir():
        return [path], None
    record = path / RECORD_NAME
    if record.is_file():
        ckpts, thresholds, _ = read_run_record(record)
        missing = [str(c) for c in ckpts if not c.is_file()]
        if missing:
            raise FileNotFoundError(f"{record} names checkpoints that are missing: {missing}")
        if thresholds is not None and not thresholds.is_file():
            raise FileNotFoundError(f"{record} names a thresholds file that is missing: {thresholds}")
        return ckpts, thresholds
    found = sorted(p for p in (path / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    if len(found) == 1:
        return found, None
    raise ValueError(
        f"ckpt={path} is a folder without a {RECORD_NAME} (train.py writes one in its run folder) and "
        f"{'no' if not found else len(found)} checkpoint(s) in {path / 'checkpoints'} "
        f"({', '.join(p.name for p in found[:5])}): name the checkpoint file"
    )


def resolve_ckpt_arg(ckpts: Sequence[str | os.PathLike], thresholds: str = "auto") -> tuple[list[Path], str]:
    """``ckpt=`` and ``thresholds=`` as a user gives them -> model files and thresholds. A run folder (alone:
    its model may already be an ensemble) becomes its recorded checkpoints, and ``thresholds=auto`` its
    recorded thresholds; files pass through unchanged."""
    paths = [Path(os.path.expanduser(str(p))) for p in ckpts]
    folders = [p for p in paths if p.is_dir()]
    if not folders:
        return paths, thresholds
    if len(paths) > 1:
        raise ValueError(
            f"ckpt={[str(p) for p in paths]}: a run folder ({folders[0]}) stands for its whole model; give it "
            "alone, or list checkpoint files"
        )
    resolved, tuned = resolve_model(folders[0])
    if thresholds == "auto" and tuned is not None:
        thresholds = str(tuned)
    return resolved, thresholds
