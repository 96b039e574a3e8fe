"""``task=predict`` and ``task=evaluate``: a folder of images -> ``submission.csv`` (streamed: probabilities
live one batch at a time), and on a labelled folder the notebook's report too (``evaluation.json``). On top of
the inference core (:mod:`steel_defect.inference.predictor`, :mod:`steel_defect.inference.folder`).

The other tasks: :mod:`.tune` (tune, tune_oof), :mod:`.pseudo`, :mod:`.export` (export, quantize); the
dispatcher :mod:`.dispatch` runs them by ``task``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from steel_defect.guard import refuse_unless_own
from steel_defect.inference.folder import predict_images
from steel_defect.io import atomic_write
from steel_defect.submission import format_summary
from steel_defect.tasks.common import images_dir, load_predictor
from steel_defect.tasks.config import PredictConfig
from steel_defect.tasks.outputs import is_evaluation_file

log = logging.getLogger(__name__)


# ======================================================================================================
# Tasks
# ======================================================================================================


def run_predict(c: PredictConfig) -> dict[str, Any]:
    """task=predict / task=evaluate."""
    from rich.console import Console

    from steel_defect.report import print_evaluation_report

    console = Console()
    images = images_dir(c, "test_images")
    labels = None
    if c.task == "evaluate":
        labels = c.labels
        if labels is None:
            default = c.root / "test_labels.csv" if c.root is not None else None
            if default is None or not default.is_file():
                raise ValueError(
                    f"task=evaluate needs labels: set data.labels=CSV (no {default or 'data.root/test_labels.csv'})"
                )
            labels = default
    predictor = load_predictor(c, engine="auto")
    source, params = predictor.source, predictor.params
    log.info(
        "%s %s with %d checkpoint(s), engine %s on %s%s%s; thresholds: %s",
        c.task,
        images,
        len(predictor.ckpts),
        predictor.engine,
        predictor.device,
        f", tta {list(c.tta)}" if c.tta else "",
        ", amp" if getattr(predictor, "amp", False) else "",
        source,
    )
    summary = predict_images(
        predictor,
        images,
        c.out,
        fmt=c.format,
        batch_size=c.batch_size,
        num_workers=c.num_workers,
        labels=labels,
        overlays=c.overlays,
        overlays_dir=c.overlays_dir,
    )
    console.print(format_summary(summary), highlight=False, soft_wrap=True)
    if "evaluation" in summary:
        print_evaluation_report(summary["evaluation"], console)
        path = c.out.with_name("evaluation.json")
        doc = {
            "images": str(images),
            "labels": str(labels),
            "checkpoints": [str(p) for p in c.ckpt],
            "tta": list(c.tta),
            "thresholds": source,
            "params": params.to_dict(),
            **summary["evaluation"],
        }
        refuse_unless_own(path, is_evaluation_file, what="out", kind="task=evaluate report (evaluation.json)")
        with atomic_write(path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")
        summary["evaluation_json"] = str(path)
        console.print(f"evaluation written to {path}", highlight=False, soft_wrap=True)
    return summary
