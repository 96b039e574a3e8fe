"""The decision layer: network probabilities -> final masks, and the thresholds that drive it (numpy + OpenCV).

* :mod:`~steel_defect.postprocess.params`: :class:`PostprocessParams`, defaults, grids, the thresholds YAML
* :mod:`~steel_defect.postprocess.apply`: :func:`postprocess` and the helpers tuning shares with it
* :mod:`~steel_defect.postprocess.tuning`: the count-based threshold search
* :mod:`~steel_defect.postprocess.thresholds`: which thresholds a prediction uses, bound to the weights

The names of the former ``steel_defect.postprocess`` module (``postprocess``, ``PostprocessParams``,
``load_thresholds``, ...) stay importable from this package for one release (re-export shim, lazy); new code
imports them from the submodule.
"""

from steel_defect._lazy import lazy_getattr

_EXPORTS = {
    "NOTEBOOK_T_PIX": "params",
    "NOTEBOOK_T_CLS": "params",
    "NOTEBOOK_MIN_AREA": "params",
    "NOTEBOOK_MAX_AREA": "params",
    "NOTEBOOK_REFERENCE_SHAPE": "params",
    "DEFAULT_T_PIX_GRID": "params",
    "DEFAULT_T_CLS_GRID": "params",
    "DEFAULT_T_IMG_GRID": "params",
    "IMG_SOURCES": "params",
    "PIX_MODES": "params",
    "DEFAULT_MIN_AREA_GRID": "params",
    "DEFAULT_MAX_AREA_GRID": "params",
    "is_seq": "params",
    "check_prob": "params",
    "MAX_AREA_VALUE": "params",
    "MAX_REFERENCE_SIDE": "params",
    "MAX_THRESHOLDS_BYTES": "params",
    "check_area": "params",
    "PER_CLASS_KEYS": "params",
    "PostprocessParams": "params",
    "save_thresholds": "params",
    "read_thresholds_yaml": "params",
    "is_thresholds_file": "params",
    "load_thresholds": "params",
    "to_numpy": "apply",
    "scale_area": "apply",
    "lower_bound": "apply",
    "upper_bound": "apply",
    "remove_small_components": "apply",
    "batch_inputs": "apply",
    "image_gate": "apply",
    "pixel_scores": "apply",
    "binarize": "apply",
    "postprocess": "apply",
}

__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
