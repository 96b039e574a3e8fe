"""Where each ``predict.py`` task writes, checked before the task starts (nothing is written on a refusal).

Each output must not be one of the run's inputs (checkpoints, thresholds file, label csv, split file, the
data set's own csv) nor lie inside an input folder (``data.root``, the image folder); an existing output is
replaced only when it is of the task's own kind (a submission by a submission, ...). The submission,
evaluation, thresholds and overlay writers repeat the own-kind check at the moment they write
(:func:`steel_defect.guard.refuse_unless_own`), so a file that appears during the run is not overwritten.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from steel_defect.data.convert import CURRENT_HEADER
from steel_defect.data.pseudo_labels import empty_list_path
from steel_defect.guard import csv_header, refuse_onto_inputs, refuse_unless_own
from steel_defect.postprocess.params import is_thresholds_file
from steel_defect.postprocess.thresholds import THRESHOLD_MODES
from steel_defect.report import is_overlay_file
from steel_defect.submission import is_submission_file
from steel_defect.tasks.config import PredictConfig
from steel_defect.tasks.tune import oof_output_path

__all__ = ["check_task_outputs", "is_evaluation_file", "is_onnx_file", "is_pseudo_file", "task_outputs"]

#: (key the user set, path, is it of the task's own kind, that kind in words)
Output = tuple[str, Path, Callable[[Path], bool], str]


def is_evaluation_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ``evaluation.json`` that task=evaluate wrote."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and {"images", "labels", "checkpoints"} <= set(doc)


def is_onnx_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ONNX model (by its ``.onnx`` name: the only files export/quantize write)."""
    return Path(path).suffix.lower() == ".onnx"


def is_pseudo_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is half of a pseudo-label pair that task=pseudo wrote: a label csv with its
    ``<stem>_empty.txt`` beside it, or that list with its csv beside it."""
    path = Path(path)
    if path.name.endswith("_empty.txt"):
        csv_path = path.with_name(path.name[: -len("_empty.txt")] + ".csv")
        return csv_path.is_file() and csv_header(csv_path) == CURRENT_HEADER
    return csv_header(path) == CURRENT_HEADER and empty_list_path(path).is_file()


def _inputs(c: PredictConfig) -> tuple[list[Path], list[Path]]:
    """The run's input files and input folders."""
    files = [*c.ckpt, c.labels, c.split]
    if c.root is not None:
        files.append(c.root / "train.csv")
    if c.task not in ("tune", "tune_oof"):  # the thresholds those tasks write are theirs to replace
        if c.thresholds not in THRESHOLD_MODES:
            files.append(Path(c.thresholds))
        files.extend(p.with_name("thresholds.yaml") for p in c.ckpt)
    folders = [c.root, c.images]
    return [p for p in files if p is not None], [p for p in folders if p is not None]


def task_outputs(c: PredictConfig) -> list[Output]:
    """Every file the task will write (the overlays' folder as one entry, its files checked as written)."""

    if c.task in ("predict", "evaluate"):
        outputs: list[Output] = [("out", c.out, is_submission_file, "submission csv")]
        if c.task == "evaluate":
            outputs.append(
                (
                    "out",
                    c.out.with_name("evaluation.json"),
                    is_evaluation_file,
                    "task=evaluate report (evaluation.json)",
                )
            )
        if c.overlays:
            outputs.append(("overlays_dir", c.overlays_dir, is_overlay_file, "overlay folder"))
        return outputs
    if c.task == "tune":
        return [("ckpt", c.ckpt[0].parent / "thresholds.yaml", is_thresholds_file, "thresholds file")]
    if c.task == "tune_oof":
        return [("out", oof_output_path(Path(c.out), c.ckpt), is_thresholds_file, "thresholds file")]
    if c.task == "pseudo":
        return [
            ("out", c.out, is_pseudo_file, "pseudo-label csv (with its _empty.txt)"),
            ("out", empty_list_path(c.out), is_pseudo_file, "pseudo-label empty list"),
        ]
    if c.task == "export":
        out = c.export["out"] or c.ckpt[0].with_suffix(".onnx")
        return [("export.out", out, is_onnx_file, "ONNX model (.onnx)")]
    src = c.ckpt[0]  # quantize
    out = c.quantize["out"] or src.with_name(src.stem + ".int8.onnx")
    return [("quantize.out", out, is_onnx_file, "ONNX model (.onnx)")]


def check_task_outputs(c: PredictConfig) -> None:
    """Refuse, before the task starts, an output that is an input, lies in an input folder, or would
    replace a file of another kind (:class:`steel_defect.guard.UnsafeWriteError`, naming the path)."""
    files, folders = _inputs(c)
    for what, path, is_own, kind in task_outputs(c):
        refuse_onto_inputs(path, what=what, inputs=files, input_dirs=folders)
        if what == "overlays_dir":
            if path.exists() and not path.is_dir():
                refuse_unless_own(path, lambda _: False, what=what, kind="folder")
            continue  # each overlay is checked as it is written (its name depends on the image read)
        if what in ("export.out", "quantize.out") and not is_onnx_file(path):
            refuse_unless_own(path, is_onnx_file, what=what, kind=kind)  # refuses an existing non-.onnx
            raise ValueError(f"{what}={path}: an ONNX model's path must end in .onnx")
        refuse_unless_own(path, is_own, what=what, kind=kind)
