"""Config helpers shared by every entry point.

* the validators of every config (predict.py's, the data module's, the service's): ``choice``, ``integer``,
  ``optional_integer``, ``number``, ``fraction``, ``boolean``, ``path``, ``keys``; each raises ``ValueError``
  naming the key and what is valid;
* :func:`to_plain`, the one converter to plain python values;
* :func:`parse_key_values`, the ``key=value`` command-line parser of the two non-Hydra CLIs (the Kaggle bundle
  and the inspection service).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The checkout's Hydra config folder (conf/ beside the steel_defect package; not packaged): train.py's and
#: predict.py's configs, read by Hydra and by :func:`steel_defect.tasks.config.predict_defaults`.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def choice(key: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")
    return value


def _span(minimum: float, maximum: float | None) -> str:
    return f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")


def integer(key: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """An int (not a bool, not a float) in ``[minimum, maximum]``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        raise ValueError(f"{key} must be an integer {_span(minimum, maximum)}, got {value!r}")
    return int(value)


def number(key: str, value: Any, minimum: float, maximum: float | None = None) -> float:
    """An int or float (not a bool) in ``[minimum, maximum]``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        raise ValueError(f"{key} must be a number {_span(minimum, maximum)}, got {value!r}")
    return float(value)


def fraction(key: str, value: Any) -> float:
    """An int or float (not a bool) strictly between 0 and 1 (a share, a confidence)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{key} must be in (0, 1), got {value!r}")
    return float(value)


def optional_integer(key: str, value: Any, minimum: int) -> int | None:
    """None, or an int (not a bool) ``>= minimum``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum} or null, got {value!r}")
    return int(value)


def keys(key: str, value: Any, valid: Sequence[str]) -> dict[str, Any]:
    """A mapping (None: empty) that uses only ``valid`` keys, as a plain dict."""
    value = to_plain(value)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be a mapping with keys {list(valid)}, got {value!r}")
    unknown = sorted(map(str, set(value) - set(valid)))
    if unknown:
        raise ValueError(f"{key}: unknown keys {unknown}; valid keys: {list(valid)}")
    return dict(value)


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def path(key: str, value: Any) -> Path | None:
    """A path (``~`` expanded), or None for a missing/blank value."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"{key} must be a path, got {value!r}")
    return Path(os.path.expanduser(str(value)))


# Hydra hands the datamodule and the LightningModule OmegaConf containers; tuning reports hold numpy numbers;
# YAML, JSON and ``save_hyperparameters`` (loaded back with ``weights_only=True``) want neither.
def to_plain(value: Any, key: str = "value", strict: bool = False) -> Any:
    """``value`` with OmegaConf containers (resolved), mappings, tuples, numpy arrays and scalars and paths
    turned into plain python, recursively. Mapping keys stay ints or strings (others become strings).

    Anything else is returned as it is, or with ``strict`` raises ``TypeError`` naming ``key`` (the config
    key, extended with ``.name`` / ``[i]`` on the way down).
    """
    if type(value).__name__ in ("DictConfig", "ListConfig"):
        from omegaconf import OmegaConf

        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {
            (k if isinstance(k, int | str) else str(k)): to_plain(v, f"{key}.{k}", strict)
            for k, v in value.items()
        }
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [to_plain(v, f"{key}[{i}]", strict) for i, v in enumerate(value)]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if strict and not (value is None or isinstance(value, bool | int | float | str)):
        raise TypeError(
            f"{key} must hold plain values (dict/list/str/number/bool/None), got {type(value).__name__}"
        )
    return value


def parse_key_values(
    argv: Sequence[str],
    valid: Sequence[str] | None = None,
    *,
    flags: Mapping[str, tuple[str, str]] | None = None,
    strip_plus: bool = False,
    repeat: bool = True,
) -> dict[str, str]:
    """``key=value`` command-line arguments -> ``{key: value}`` (values stay text; the caller converts them).

    ``valid``: the accepted keys (others raise naming them), or None for any key. ``flags``: bare arguments
    that stand for a pair (``{"--online": ("download", "true")}``). ``strip_plus``: Hydra's ``+key=`` spelling
    is accepted as ``key=``. ``repeat``: a key given twice keeps its last value, else it raises.
    """
    flags = flags or {}
    out: dict[str, str] = {}
    for arg in argv:
        if arg in flags:
            key, value = flags[arg]
            out[key] = value
            continue
        key, sep, value = arg.partition("=")
        if strip_plus:
            key = key.lstrip("+")
        if not sep or not key:
            raise ValueError(f"arguments are key=value, got {arg!r}")
        if valid is not None and key not in valid:
            raise ValueError(f"bad argument {arg!r}: expected key=value with key in: {', '.join(valid)}")
        if key in out and not repeat:
            raise ValueError(f"{key} given twice")
        out[key] = value
    return out
