"""Re-export shim, kept for one release: ``steel_defect.callbacks`` moved to ``steel_defect.training.callbacks``.
Import from the new module; this module will be removed."""

from steel_defect.training.callbacks import (  # noqa: F401
    EMA,
    ResumableSeed,
    TuneThresholds,
    format_holdout_table,
)
