"""The one plain-value converter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from steel_defect.config import to_plain


def test_containers_numpy_and_paths_become_plain_python():
    cfg = OmegaConf.create({"a": [1, {"b": "${c}"}], "c": 2.5})
    out = to_plain(
        {"cfg": cfg, 3: (np.int64(4), np.float32(0.5), np.bool_(True)), "p": Path("x/y"), "arr": np.eye(2)}
    )
    assert out == {
        "cfg": {"a": [1, {"b": 2.5}], "c": 2.5},
        3: [4, 0.5, True],
        "p": "x/y",
        "arr": [[1.0, 0.0], [0.0, 1.0]],
    }
    assert type(out[3][0]) is int and type(out[3][1]) is float and type(out[3][2]) is bool


def test_strict_names_the_key_of_what_is_not_plain():
    assert to_plain({"x": object}, "k")["x"] is object  # passed through unless strict
    with pytest.raises(TypeError, match=r"model.net.layers\[1\] must hold plain values .* got object"):
        to_plain({"layers": [1, object()]}, "model.net", strict=True)
