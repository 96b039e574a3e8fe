"""Tests for steel_defect.data.realism and the real-derived generator parameters (steel_defect.synthetic.params)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from steel_defect.synthetic.params import PARAMS_PATH, QUANTILES, derive_params, load_params, sample_quantiles
from steel_defect.synthetic.realism import (
    black_band,
    class_set_stats,
    classifier_accuracy,
    mask_objects,
    masks_from_csv,
    object_stats,
    spectral_features,
    texture_features,
    texture_summary,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "severstal-real"
needs_real = pytest.mark.skipif(
    not (REAL / "corpus" / "train_index.csv").is_file(),
    reason=f"real Severstal statistics not found at {REAL} (../shared is absent)",
)


def test_mask_objects_counts_components_and_boxes():
    m = np.zeros((20, 30), np.uint8)
    m[2:5, 3:10] = 1  # 3x7
    m[10:18, 20:22] = 1  # 8x2
    m[18, 22] = 1  # touches the second diagonally: 8-connected, so the same object
    objs = mask_objects(m)
    assert sorted(objs.tolist()) == [[17, 9, 3], [21, 3, 7]]
    assert mask_objects(np.zeros((4, 4))).shape == (0, 3)
    with pytest.raises(ValueError, match="mask must be"):
        mask_objects(np.zeros((2, 3, 4)))


def test_object_stats_and_class_set_stats():
    a = np.zeros((10, 10), np.uint8)
    a[1:3, 1:3] = 1
    a[6:9, 6:9] = 1
    b = np.zeros((10, 10), np.uint8)
    b[0:10, 4:5] = 1
    tables = object_stats([{1: a}, {1: b, 3: b}, {}], classes=(1, 2, 3))
    s1 = tables[1].summary()
    assert s1["objects_per_image"] == 1.5 and s1["area"] == 9 and s1["bbox_h"] == 3
    assert np.isnan(tables[2].summary()["area"])
    with pytest.raises(ValueError, match="class 5"):
        object_stats([{5: a}], classes=(1, 2))
    s = class_set_stats([set(), {3}, {3, 4}, {1, 3, 4}], classes=(1, 2, 3, 4))
    assert s["defect_free"] == 0.25 and s["multi"] == 0.5
    assert s["class_share"] == {1: 0.25, 2: 0.0, 3: 0.75, 4: 0.5}
    assert s["pairs"] == {(1, 3): 1, (1, 4): 1, (3, 4): 2}


def test_black_band_edges_and_dark_steel():
    rng = np.random.default_rng(0)
    img = (100 + 10 * rng.standard_normal((64, 320))).clip(0, 255)
    img[:, 250:] = rng.uniform(0, 3, (64, 70))  # off-steel on the right
    band = black_band(img)
    assert band[:, 252:].all() and not band[:, :248].any()
    bottom = img.copy()
    bottom[:, 250:] = 100
    bottom[50:] = 1.0
    assert black_band(bottom)[52:].all() and not black_band(bottom)[:48].any()
    # Dark but textured steel is not a band, nor is a dark strip in the middle.
    dark = (20 + 8 * rng.standard_normal((64, 320))).clip(0, 255)
    assert not black_band(dark).any()
    middle = img.copy()
    middle[:, 250:] = 100
    middle[:, 100:150] = 0
    assert not black_band(middle).any()


def test_texture_features_anisotropy_and_profiles():
    rng = np.random.default_rng(1)
    h, w = 128, 800
    x = np.arange(w)
    vertical = 100 + 20 * np.sin(x / 7.0)[None, :] + rng.standard_normal((h, w))  # streaks along the height
    horizontal = vertical[:, :h].T.repeat(w // h + 1, axis=1)[:, :w]  # the same streaks along the width
    fv, fh = texture_features(np.broadcast_to(vertical, (h, w))), texture_features(horizontal)
    assert fv["anisotropy"] > 3 and fh["anisotropy"] < 1 / 3
    assert fv["column_profile_std"] > 10 > fv["row_profile_std"]
    assert abs(fv["steel_mean"] - 100) < 2 and fv["band_fraction"] == 0
    rgb = np.repeat(vertical[..., None], 3, axis=2)
    assert texture_features(rgb)["anisotropy"] == pytest.approx(fv["anisotropy"])
    summary = texture_summary([fv, fh, {**fv, "band_fraction": 0.3}])
    assert summary["band_share"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        texture_summary([])


def test_classifier_accuracy_tells_apart_only_what_differs():
    rng = np.random.default_rng(2)

    def feats(n, shift):
        keys = ("anisotropy", "steel_mean", "steel_std", "grain_std", "column_profile_std", "row_profile_std")
        return [
            {**{k: float(rng.normal(10 + shift, 1)) for k in keys}, "band_fraction": 0.0} for _ in range(n)
        ]

    same_a, same_b = feats(60, 0), feats(60, 0)
    far = feats(60, 8)
    acc_same, _ = classifier_accuracy(same_a, same_b)
    acc_far, _ = classifier_accuracy(same_a, far)
    assert acc_far > 0.95 and acc_same < 0.75
    with pytest.raises(ValueError, match="at least 5"):
        classifier_accuracy(same_a[:3], same_b[:3])


def test_sample_quantiles_inverse_cdf():
    q = [float(v) for v in np.linspace(10, 30, len(QUANTILES))]
    rng = np.random.default_rng(0)
    assert sample_quantiles(rng, q, u=0.0) == 10 and sample_quantiles(rng, q, u=1.0) == 30
    assert sample_quantiles(rng, q, u=0.5) == pytest.approx(20)
    draws = [sample_quantiles(rng, q) for _ in range(2000)]
    assert abs(np.median(draws) - 20) < 1


def test_committed_params_are_complete_and_documented():
    p = load_params()
    assert set(p["objects"]) == {"1", "2", "3", "4"}
    assert abs(sum(p["class_sets"].values()) - 1) < 1e-3
    for obj in p["objects"].values():
        assert abs(sum(obj["count_probs"]) - 1) < 1e-3
        for key in ("height_q", "width_q", "fill_q"):
            assert len(obj[key]) == len(QUANTILES) and obj[key] == sorted(obj[key])
    assert set(p["sources"]) == {"class_sets", "objects", "texture", "band"}


def test_load_params_refuses_a_bad_file(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="p.json"):
        load_params(str(bad))
    partial = tmp_path / "q.json"
    partial.write_text(json.dumps({"class_sets": {}}), encoding="utf-8")
    with pytest.raises(ValueError, match="missing keys"):
        load_params(str(partial))


@pytest.mark.slow
@needs_real
def test_committed_params_are_reproduced_from_the_real_statistics():
    """params.json is exactly what the derivation gives on the real data (no hand-tuned numbers)."""
    derived = json.loads(json.dumps(derive_params(REAL)))
    committed = json.loads(PARAMS_PATH.read_text(encoding="utf-8"))
    assert derived == committed


@pytest.mark.slow
def test_spectral_features_see_streak_direction_and_classifier_takes_arrays():
    rng = np.random.default_rng(3)
    h, w = 64, 320
    x = np.arange(w)
    vertical = 100 + 15 * np.sin(x / 2.0)[None, :] + rng.standard_normal((h, w))  # fine streaks along y
    f = spectral_features(np.broadcast_to(vertical, (h, w)).copy())
    assert f.shape == (2 * 8 + 8,) and np.isfinite(f).all()
    fx, fy = f[:8], f[8:16]
    assert fx.max() > fy.max() + 3  # the x spectrum carries the streak power
    banded = vertical.copy()
    banded[:, :] = 0.5  # all off-steel: nothing to measure
    assert np.isnan(spectral_features(banded)).all()
    a = rng.normal(0, 1, (40, 5))
    b = rng.normal(3, 1, (40, 5))
    acc, _ = classifier_accuracy(a, b, model="forest")
    assert acc > 0.9
    with pytest.raises(ValueError, match="model must be"):
        classifier_accuracy(a, b, model="svm")


def test_masks_from_csv_decodes_both_formats(tmp_path):
    from steel_defect.rle import rle_encode

    m = np.zeros((8, 12), np.uint8)
    m[2:5, 3:6] = 1
    rle = rle_encode(m)
    current = tmp_path / "current.csv"
    current.write_text(f"ImageId,ClassId,EncodedPixels\na.jpg,3,{rle}\nb.jpg,1,{rle}\nb.jpg,2,{rle}\n")
    legacy = tmp_path / "legacy.csv"
    legacy.write_text(
        "ImageId_ClassId,EncodedPixels\n"
        + "".join(f"a.jpg_{c},{rle if c == 3 else ''}\n" for c in (1, 2, 3, 4))
    )
    got = dict(masks_from_csv(current, (1, 2, 3, 4), (8, 12)))
    assert sorted(got) == ["a.jpg", "b.jpg"] and sorted(got["b.jpg"]) == [1, 2]
    assert (got["a.jpg"][3] == m).all()
    assert list(dict(masks_from_csv(legacy, (1, 2, 3, 4), (8, 12)))["a.jpg"]) == [3]
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId,ClassId,EncodedPixels\na.jpg,3,5 x\n")
    with pytest.raises(ValueError, match="bad.csv"):
        list(masks_from_csv(bad, (1, 2, 3, 4), (8, 12)))
