"""The generator's unlabelled look-alikes (synthetic/clutter.py): drawn, unlabelled, unlike the defects."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from steel_defect.synthetic import clutter as clutter_mod
from steel_defect.synthetic.clutter import SHARES, clutter
from steel_defect.synthetic.render import render_sample

FULL = (256, 1600)


def _plain(shape=FULL, level=100.0) -> np.ndarray:
    return np.full(shape, level, np.float32)


_NONE = {k: 0.0 for k in SHARES}


def _only(name: str) -> dict[str, float]:
    return {k: float(k == name) for k in SHARES}


@pytest.mark.parametrize("name", sorted(SHARES))
@pytest.mark.parametrize("shape", [FULL, (64, 320)])
def test_each_look_alike_changes_the_steel(name, shape):
    """Forced alone, every look-alike visibly changes a flat sheet (beyond the stains drawn on every sheet)."""
    changed = []
    for seed in range(4):
        base, img = _plain(shape), _plain(shape)
        clutter(np.random.default_rng(seed), shape[0] / 256, shape[1] / 1600, base, 20.0, _NONE)
        clutter(np.random.default_rng(seed), shape[0] / 256, shape[1] / 1600, img, 20.0, _only(name))
        assert np.isfinite(img).all()
        changed.append(float(np.mean(np.abs(img - base) > 3.0)))
    assert np.median(changed) > 0.0005, (name, changed)


def test_marks_are_smaller_than_a_class1_speck():
    """Scattered marks stay a few pixels wide: every mark component is far below a real class-1 object
    (median bbox 26x43 px at 256x1600), so they teach "small marks are steel", not "specks are steel"."""
    areas = []
    for seed in range(6):
        base, img = _plain(), _plain()
        clutter(np.random.default_rng(seed), 1.0, 1.0, base, 20.0, _NONE)
        clutter(np.random.default_rng(seed), 1.0, 1.0, img, 20.0, _only("marks"))
        n, _, stats, _ = cv2.connectedComponentsWithStats((np.abs(img - base) > 3.0).astype(np.uint8))
        areas += stats[1:, cv2.CC_STAT_AREA].tolist()
    assert len(areas) >= 20
    assert max(areas) < 26 * 43 / 4, max(areas)


def test_patterns_cover_the_sheet():
    """Patterned plates and scale are sheet-wide (a defect is local): every tenth of the width is changed."""
    for name in ("pattern", "scale"):
        base, img = _plain(), _plain()
        clutter(np.random.default_rng(1), 1.0, 1.0, base, 20.0, _NONE)
        clutter(np.random.default_rng(1), 1.0, 1.0, img, 20.0, _only(name))
        changed = np.abs(img - base) > 3.0
        per_tenth = changed.reshape(256, 10, 160).mean(axis=(0, 2))
        assert (per_tenth > 0.01).all(), (name, per_tenth.round(3).tolist())


def test_look_alikes_are_never_labelled(monkeypatch):
    """With every look-alike forced on, a defect-free render has no mask and a forced class only its own."""
    monkeypatch.setattr(clutter_mod, "SHARES", {k: 1.0 for k in SHARES})
    img, masks = render_sample(5, FULL, classes=())
    assert not masks.any()
    assert img.std() > 5.0
    _, masks = render_sample(5, FULL, classes=(2,))
    assert masks[1].any() and not masks[[0, 2, 3]].any()


def test_bad_shares_name_the_keys():
    with pytest.raises(ValueError, match="shares: need exactly the keys"):
        clutter(np.random.default_rng(0), 1.0, 1.0, _plain(), 20.0, {"glare": 1.0})
