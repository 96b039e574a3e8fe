"""Re-export shim, kept for one release: ``steel_defect.predictor`` moved to ``steel_defect.inference.predictor``, ``steel_defect.inference.calibrate``, ``steel_defect.models.factory``.
Import from the new modules; this module will be removed."""

from steel_defect.inference.calibrate import (  # noqa: F401
    collect_tuning_stats,
)
from steel_defect.inference.predictor import (  # noqa: F401
    RUNTIMES,
    TTA_TRANSFORMS,
    ImagePrediction,
    Predictor,
    image_tensor,
    iter_predictions,
    iter_probabilities,
    load_nets,
    net_stride,
    pad_to_multiple,
    predict_batch,
    prediction_loader,
    resolve_device,
    runtime_kind,
)
from steel_defect.models.factory import (  # noqa: F401
    split_outputs,
)
