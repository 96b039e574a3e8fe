"""The config validators shared by predict.py's and the service's settings: each error names the key and
what is valid."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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
