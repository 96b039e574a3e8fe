"""Re-export shim, kept for one release: ``steel_defect.kaggle (and python -m steel_defect.kaggle)`` moved to ``steel_defect.deploy.kaggle.bundle``.
Import from the new module; this module will be removed.
``python -m steel_defect.kaggle bundle ...`` still works; the new form is ``python -m steel_defect.deploy.kaggle``."""

import sys

from steel_defect.deploy.kaggle.bundle import (  # noqa: F401
    BUNDLE_DEFAULTS,
    DEFAULT_INPUT,
    DEFAULT_OUTPUT,
    DEFAULT_WHEELS,
    FORMAT_VERSION,
    KERNEL_NAME,
    MANIFEST_NAME,
    NOTEBOOK_NAME,
    ONNX_RUNTIME_PACKAGES,
    ONNX_WHEELS,
    PROJECT,
    RUNTIME_PACKAGES,
    RUNTIMES,
    SLIM_KEYS,
    THRESHOLDS_NAME,
    USAGE,
    build_bundle,
    check_bundle_out,
    export_for_kernel,
    is_bundle,
    kernel_source,
    main,
    notebook_json,
    parse_args,
    run_kernel,
    runtime_requirements,
    slim_checkpoint,
)

if __name__ == "__main__":
    sys.exit(main())
