"""Re-export shim, kept for one release: ``steel_defect.weights (and python -m steel_defect.weights)`` moved to ``steel_defect.models.fetch_weights``.
Import from the new module; this module will be removed."""

import sys

from steel_defect.models.fetch_weights import (  # noqa: F401
    CONF_MODELS,
    MAX_SAFETENSORS_HEADER,
    WEIGHT_SUFFIXES,
    encoder_state_dict,
    fetch,
    is_weights_file,
    main,
    model_net_config,
)

if __name__ == "__main__":
    sys.exit(main())
