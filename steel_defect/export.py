"""Re-export shim, kept for one release: ``steel_defect.export`` moved to ``steel_defect.deploy.onnx_export``, ``steel_defect.inference.onnx_net``.
Import from the new modules; this module will be removed."""

from steel_defect.deploy.onnx_export import (  # noqa: F401
    PROB_TOLERANCE,
    compare_with_torch,
    export_onnx,
    read_onnx_metadata,
)
from steel_defect.inference.onnx_net import (  # noqa: F401
    OnnxNet,
)
