"""Tests for steel_defect.postprocess: gates, limits, scaling, persistence and streaming threshold tuning."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from steel_defect.metrics import dice_per_pair, kaggle_dice, kaggle_dice_per_class
from steel_defect.postprocess.apply import postprocess
from steel_defect.postprocess.params import PostprocessParams, load_thresholds, save_thresholds
from steel_defect.postprocess.tuning import TuningStats, format_tuning_report, tune_thresholds

H, W = 32, 160


def ref_dice_per_class(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Independent Kaggle Dice per class: 2|A&B| / (|A|+|B|) per (image, class), both empty = 1."""
    p = pred.reshape(*pred.shape[:2], -1).sum(-1).astype(float)
    t = target.reshape(*target.shape[:2], -1).sum(-1).astype(float)
    i = (pred & target).reshape(*pred.shape[:2], -1).sum(-1).astype(float)
    d = np.ones_like(p)
    nz = (p + t) > 0
    d[nz] = 2 * i[nz] / (p + t)[nz]
    return d.mean(axis=0)


def params(**kw) -> PostprocessParams:
    """Everything disabled except what is passed."""
    d = PostprocessParams.disabled().to_dict()
    d.update(kw)
    return PostprocessParams.from_dict(d)


def blob_probs(areas: list[int], value: float = 0.9, h: int = H, w: int = W) -> np.ndarray:
    """(4, h, w) probabilities with one rectangular blob of ``areas[c]`` pixels (1 row high if needed)."""
    m = np.full((4, h, w), 0.05, dtype=np.float32)
    for c, a in enumerate(areas):
        rows, cols = divmod(a, w // 2)
        m[c, :rows, : w // 2] = value
        m[c, rows, :cols] = value
    return m


# ------------------------------------------------------------------------------------------------------
# Params
# ------------------------------------------------------------------------------------------------------
def test_notebook_defaults_and_disabled():
    p = PostprocessParams.notebook_defaults()
    assert p.t_img is None
    assert p.t_cls == [0.5] * 4 and p.t_pix == [0.5] * 4
    assert p.min_area == [500, 700, 1100, 2800]
    assert p.max_area == [15500, 10000, 160000, 127000]
    assert p.min_component == [None] * 4 and p.reference_shape == [256, 1600]
    d = PostprocessParams.disabled()
    assert d.t_pix == [0.5] * 4 and d.t_img is None
    assert d.t_cls == d.min_area == d.max_area == d.min_component == [None] * 4


def test_to_dict_from_dict_round_trip_is_yaml_safe():
    p = PostprocessParams(
        t_img=0.3,
        t_cls=[np.float32(0.25), None, 0.5, 1.0],
        t_pix=(0.4, 0.45, 0.5, 0.55),
        min_area=[np.int64(10), None, 0, 5],
        max_area=[100.0, 200, None, 5],
        min_component=[None, 3, None, None],
        reference_shape=(128, 800),
    )
    d = p.to_dict()
    text = yaml.safe_dump(d)  # raises on numpy scalars / tuples
    assert PostprocessParams.from_dict(yaml.safe_load(text)) == p
    assert d["t_cls"][0] == 0.25 and type(d["t_cls"][0]) is float and type(d["min_area"][0]) is int
    assert d["reference_shape"] == [128, 800]
    # Missing keys take the notebook defaults.
    assert PostprocessParams.from_dict({"t_img": 0.2}) == PostprocessParams(t_img=0.2)


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"t_pixel": [0.5] * 4}, r"'t_pixel'.*valid keys: t_img, img_source, t_cls, t_pix"),
        ({"img_source": "max"}, r"img_source must be one of max_cls, image_head, got 'max'"),
        ({"img_source": None}, r"img_source must be one of .*got None"),
        ({"t_pix": [0.5] * 3}, "t_pix must be a list of 4"),
        ({"t_pix": 0.5}, "t_pix must be a list of 4"),
        ({"t_cls": [0.5, 1.5, 0.5, 0.5]}, r"t_cls\[1\] must be in \[0, 1\]"),
        ({"t_pix": [0.5, None, 0.5, 0.5]}, r"t_pix\[1\]"),
        ({"t_img": -0.1}, "t_img"),
        ({"t_img": float("nan")}, "t_img"),
        ({"min_area": [20000, 700, 1100, 2800]}, r"min_area\[0\]=20000 is larger than max_area\[0\]=15500"),
        ({"min_area": [-1, 700, 1100, 2800]}, r"min_area\[0\]"),
        ({"min_component": [1.5, None, None, None]}, r"min_component\[0\]"),
        ({"reference_shape": [256]}, "reference_shape"),
        ({"reference_shape": [256, 0]}, "reference_shape"),
    ],
)
def test_from_dict_validation(d, match):
    with pytest.raises(ValueError, match=match):
        PostprocessParams.from_dict(d)


def test_from_dict_num_classes():
    p = PostprocessParams.from_dict(
        {k: [None] * 2 for k in ("t_cls", "min_area", "max_area", "min_component")} | {"t_pix": [0.5, 0.5]},
        num_classes=2,
    )
    assert p.num_classes == 2
    with pytest.raises(ValueError, match="list of 2"):
        PostprocessParams.from_dict({"t_pix": [0.5] * 4}, num_classes=2)


# ------------------------------------------------------------------------------------------------------
# postprocess: gates and limits
# ------------------------------------------------------------------------------------------------------
def test_disabled_is_plain_threshold():
    rng = np.random.default_rng(0)
    m = rng.random((4, H, W), dtype=np.float32)
    out = postprocess(m, None, PostprocessParams.disabled())
    assert out.dtype == bool and out.shape == (4, H, W)
    np.testing.assert_array_equal(out, m >= 0.5)


def test_pixel_threshold_per_class():
    rng = np.random.default_rng(1)
    m = rng.random((4, H, W), dtype=np.float32)
    t = [0.2, 0.4, 0.6, 0.8]
    out = postprocess(m, None, params(t_pix=t))
    for c in range(4):
        np.testing.assert_array_equal(out[c], m[c] >= t[c])
    # The threshold itself is kept (>=).
    out = postprocess(np.full((4, 2, 2), 0.25, np.float32), None, params(t_pix=[0.25] * 4))
    assert out.all()


def test_image_gate():
    m = blob_probs([100] * 4)
    on = postprocess(m, np.array([0.1, 0.3, 0.2, 0.29]), params(t_img=0.3))
    assert on.sum(axis=(1, 2)).tolist() == [100] * 4  # max = 0.3 >= t_img keeps every class
    off = postprocess(m, np.array([0.1, 0.29, 0.2, 0.2]), params(t_img=0.3))
    assert not off.any()
    assert postprocess(m, np.zeros(4), params(t_img=None)).sum() == 400


def test_class_gate_per_class_and_none_disables():
    m = blob_probs([100] * 4)
    cls = np.array([0.6, 0.4, 0.5, 0.1])
    out = postprocess(m, cls, params(t_cls=[0.5, 0.5, 0.5, None]))
    assert out.sum(axis=(1, 2)).tolist() == [100, 0, 100, 100]


def test_gates_need_class_probs():
    with pytest.raises(ValueError, match="class_probs is None"):
        postprocess(blob_probs([1] * 4), None, PostprocessParams.notebook_defaults())


@pytest.mark.parametrize("limit", ["min", "max"])
def test_area_limits_inclusive_and_none_disables(limit):
    m = blob_probs([99, 100, 101, 100])
    if limit == "min":
        p = params(min_area=[100, 100, 100, None])
        expected = [0, 100, 101, 100]
    else:
        p = params(max_area=[100, 100, 100, None])
        expected = [99, 100, 0, 100]
    assert postprocess(m, None, p).sum(axis=(1, 2)).tolist() == expected


def test_area_measured_after_pixel_threshold():
    m = blob_probs([100] * 4, value=0.6)
    m[:, -1, :] = 0.4  # 160 pixels that only a low threshold keeps
    p = params(t_pix=[0.5, 0.3, 0.5, 0.3], max_area=[150] * 4)
    assert postprocess(m, None, p).sum(axis=(1, 2)).tolist() == [100, 0, 100, 0]


def test_reference_shape_scaling_same_decisions_on_downscaled_image():
    rng = np.random.default_rng(2)
    big_h, big_w = 2 * H, 2 * W
    # Blocks of 2x2 pixels, so a 2x nearest downscale has exactly a quarter of every area.
    small_probs = np.full((3, 4, H, W), 0.05, np.float32)
    for n, c in itertools.product(range(3), range(4)):
        area = int(rng.integers(1, 40)) * 10
        flat = small_probs[n, c].reshape(-1)
        flat[rng.choice(H * W, size=area, replace=False)] = 0.9
    big_probs = small_probs.repeat(2, axis=2).repeat(2, axis=3)
    cls = rng.random((3, 4))
    p_big = PostprocessParams(
        t_cls=[0.2] * 4,
        min_area=[400, 800, 1200, 100],
        max_area=[1200, 1400, 1600, 1000],
        min_component=[None, None, 8, None],
        reference_shape=[big_h, big_w],
    )
    out_big = postprocess(big_probs, cls, p_big)
    out_small = postprocess(small_probs, cls, p_big)  # limits scaled by 1/4
    keep_big, keep_small = out_big.any(axis=(2, 3)), out_small.any(axis=(2, 3))
    np.testing.assert_array_equal(keep_big, keep_small)
    assert keep_big.any() and not keep_big.all()
    np.testing.assert_array_equal(out_big[:, :, ::2, ::2], out_small)
    # The same limits divided by 4 and applied as-is give the same decisions.
    p_quarter = dataclasses_replace(
        p_big,
        min_area=[100, 200, 300, 25],
        max_area=[300, 350, 400, 250],
        min_component=[None, None, 2, None],
        reference_shape=None,
    )
    np.testing.assert_array_equal(postprocess(small_probs, cls, p_quarter), out_small)
    # Without scaling the big limits on the small image, decisions differ.
    p_raw = dataclasses_replace(p_big, reference_shape=None)
    assert not np.array_equal(postprocess(small_probs, cls, p_raw).any(axis=(2, 3)), keep_big)


def dataclasses_replace(p: PostprocessParams, **kw) -> PostprocessParams:
    d = p.to_dict()
    d.update(kw)
    return PostprocessParams.from_dict(d)


def test_min_component_removes_small_blobs_only():
    m = np.full((4, H, W), 0.05, np.float32)
    m[:, 2:12, 2:12] = 0.9  # 100-pixel blob
    m[:, 20:22, 50:52] = 0.9  # 4-pixel blob
    m[:, 25, 100] = m[:, 26, 101] = m[:, 27, 102] = 0.9  # 3 pixels touching diagonally: one component
    m[:, 30, 140] = 0.9  # 1 pixel
    p = params(min_component=[3, 4, 5, None])
    out = postprocess(m, None, p)
    assert out.sum(axis=(1, 2)).tolist() == [107, 104, 100, 108]
    assert out[:, 2:12, 2:12].all()  # the big blob is untouched
    assert out[0, 25, 100] and out[0, 27, 102] and not out[0, 30, 140]
    assert not out[2, 20:22, 50:52].any()
    # The area limit applies after removal: 108 pixels > 104 kept after removing components < 5.
    p = params(min_component=[5, None, 5, None], max_area=[104] * 4)
    assert postprocess(m, None, p).sum(axis=(1, 2)).tolist() == [100, 0, 100, 0]


def test_batched_equals_per_image_and_torch_inputs():
    rng = np.random.default_rng(3)
    raw = rng.random((5, 4, H, W)).astype(np.float32)
    m = np.stack([cv2.GaussianBlur(x, (0, 0), 3) for x in raw.reshape(-1, H, W)]).reshape(raw.shape)
    m = (m - m.min()) / (m.max() - m.min())
    cls = rng.random((5, 4))
    p = PostprocessParams(
        t_img=0.4,
        t_cls=[0.3, None, 0.5, 0.2],
        t_pix=[0.5, 0.55, 0.45, 0.6],
        min_area=[50, 0, None, 10],
        max_area=[2000, None, 3000, 4000],
        min_component=[None, 20, 5, None],
        reference_shape=None,
    )
    batched = postprocess(m, cls, p)
    assert batched.shape == (5, 4, H, W) and batched.dtype == bool
    singles = np.stack([postprocess(m[i], cls[i], p) for i in range(5)])
    np.testing.assert_array_equal(batched, singles)
    assert batched.any() and not batched.all(axis=(2, 3)).any()
    torch_out = postprocess(torch.from_numpy(m).requires_grad_(), torch.from_numpy(cls), p)
    np.testing.assert_array_equal(torch_out, batched)


@pytest.mark.parametrize(
    ("mask_shape", "cls_shape", "match"),
    [
        ((2, 4, 8, 8), (3, 4), r"\(3, 4\).*\(2, 4, 8, 8\)"),
        ((4, 8, 8), (2, 4), r"\(2, 4\).*\(4, 8, 8\)"),
        ((2, 3, 8, 8), (2, 3), r"\(2, 3, 8, 8\).*3 classes"),
        ((8, 8), (4,), r"\(8, 8\)"),
    ],
)
def test_shape_errors_name_both_shapes(mask_shape, cls_shape, match):
    with pytest.raises(ValueError, match=match):
        postprocess(np.zeros(mask_shape, np.float32), np.zeros(cls_shape), PostprocessParams())


def test_logits_are_rejected():
    with pytest.raises(ValueError, match="sigmoid"):
        postprocess(np.full((4, 2, 2), 3.0), np.zeros(4), PostprocessParams())
    with pytest.raises(ValueError, match="class_probs"):
        postprocess(np.zeros((4, 2, 2)), np.full(4, -1.0), PostprocessParams())


# ------------------------------------------------------------------------------------------------------
# Persistence
# ------------------------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path: Path):
    p = PostprocessParams(t_img=0.35, t_cls=[0.4, None, 0.6, 0.7], min_component=[None, 10, None, None])
    report = {
        "classes": [{"class": 1, "dice_tuned": np.float64(0.75)}],
        "mean": {"dice_tuned": np.float32(0.5)},
    }
    path = save_thresholds(p, tmp_path / "sub" / "thresholds.yaml", report=report, meta={"ckpt": "a.ckpt"})
    assert load_thresholds(path) == p
    doc = yaml.safe_load(path.read_text())
    assert doc["report"]["classes"][0]["dice_tuned"] == 0.75 and doc["meta"] == {"ckpt": "a.ckpt"}
    # A bare params mapping is accepted too.
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(p.to_dict()))
    assert load_thresholds(bare) == p


def test_failed_save_leaves_existing_file_intact(tmp_path: Path, monkeypatch):
    path = tmp_path / "thresholds.yaml"
    save_thresholds(PostprocessParams(), path)
    before = path.read_bytes()
    with pytest.raises(yaml.representer.RepresenterError):
        save_thresholds(PostprocessParams(t_img=0.9), path, report={"bad": object()})
    assert path.read_bytes() == before

    import steel_defect.io as sio

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sio.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_thresholds(PostprocessParams(t_img=0.9), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["thresholds.yaml"]  # no temp files left


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[1, 2, 3]\n", "expected a YAML mapping"),
        ("params: {t_pix: [0.5, 0.5]}\n", "t_pix must be a list of 4"),
        ("params: {bogus: 1}\n", "unknown post-processing key 'bogus'"),
        ("params: [\n", "not valid YAML"),
    ],
)
def test_load_bad_content_names_file(tmp_path: Path, text, match):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_thresholds(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------------------
# Tuning
# ------------------------------------------------------------------------------------------------------
REF = [2 * H, 2 * W]  # area grids are in reference pixels: 4x the image pixels


def synthetic_validation(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probability maps whose best thresholds are known.

    Class 1: a 10x10 target whose 1-pixel border has probability 0.42 (target) and is surrounded by a
      0.32 ring (not target) -> best t_pix in (0.32, 0.42]: grid 0.35/0.4, tie -> 0.4. Negative images have
      a 36-pixel (144 reference px) noise blob at 0.8 -> best min_area in (144, 400]: 200/300 -> 300.
    Class 2: true and spurious blobs look the same; the classifier separates them (positives >= 0.65,
      negatives <= 0.55) -> t_cls in {0.6, 0.65} -> 0.65.
    Class 3: nothing anywhere -> every candidate ties -> the base values.
    Class 4: positives whose classifier probability is as low as 0.3 -> t_cls 0.3 (lower than the 0.5 default).
    """
    rng = np.random.default_rng(seed)
    probs = np.full((n, 4, H, W), 0.05, np.float32)
    target = np.zeros((n, 4, H, W), bool)
    cls = np.full((n, 4), 0.1)
    for i in range(n):
        # class 1
        cls[i, 0] = 0.9
        if i % 2 == 0:
            probs[i, 0, 7:19, 19:31] = 0.32
            probs[i, 0, 8:18, 20:30] = 0.42
            probs[i, 0, 9:17, 21:29] = 0.9
            target[i, 0, 8:18, 20:30] = True
        elif i % 4 == 1:
            probs[i, 0, 20:26, 100:106] = 0.8
        # class 2
        probs[i, 1, 10:22, 60:90] = 0.9
        if i % 3 == 0:
            target[i, 1, 10:22, 60:90] = True
            cls[i, 1] = [0.65, 0.7, 0.8][i % 9 // 3]
        else:
            cls[i, 1] = [0.3, 0.5, 0.55][i % 3]
        # class 4
        if i % 2 == 1:
            probs[i, 3, 0:16, 0:100] = 0.9
            target[i, 3, 0:16, 0:100] = True
            cls[i, 3] = [0.3, 0.6, 0.9][i % 3]
        else:
            cls[i, 3] = rng.uniform(0, 0.3)
    return probs, cls, target


def base_params(**kw) -> PostprocessParams:
    return dataclasses_replace(PostprocessParams.notebook_defaults(), reference_shape=REF, **kw)


def fill(probs, cls, target, batch: int = 5, **kw) -> TuningStats:
    stats = TuningStats(reference_shape=REF, **kw)
    for s in range(0, len(probs), batch):
        stats.update(probs[s : s + batch], cls[s : s + batch], target[s : s + batch])
    return stats


def test_tuning_finds_known_thresholds_and_agrees_with_pixel_evaluation():
    probs, cls, target = synthetic_validation()
    base = base_params()
    stats = fill(probs, cls, target)
    assert len(stats) == len(probs)
    tuned, report = tune_thresholds(stats, base=base)

    assert tuned.t_img is None and tuned.reference_shape == REF
    assert tuned.t_pix == pytest.approx([0.4, 0.5, 0.5, 0.5])
    assert tuned.t_cls == pytest.approx([0.5, 0.65, 0.5, 0.3])
    assert tuned.min_area == [300, 700, 1100, 2800]
    assert tuned.max_area == base.max_area
    rows = report["classes"]
    assert [r["dice_tuned"] for r in rows] == pytest.approx([1.0] * 4, abs=1e-12)

    # The count-based report equals the pixel-level evaluation, for raw, default and tuned params.
    for key, p in (("dice_raw", PostprocessParams.disabled()), ("dice_default", base), ("dice_tuned", tuned)):
        pred = postprocess(probs, cls, p)
        assert [r[key] for r in rows] == pytest.approx(kaggle_dice_per_class(pred, target), abs=1e-12)
        assert [r[key] for r in rows] == pytest.approx(ref_dice_per_class(pred, target), abs=1e-12)
        assert report["mean"][key] == pytest.approx(kaggle_dice(pred, target), abs=1e-12)
    for r in rows:
        assert r["dice_tuned"] >= r["dice_default"] - 1e-12 and r["dice_tuned"] >= r["dice_raw"] - 1e-12
    for k in (0, 1, 3):
        assert rows[k]["dice_tuned"] > rows[k]["dice_default"]
    assert rows[0]["dice_tuned"] > rows[0]["dice_raw"]

    # Batching does not change anything; the report is YAML-safe and printable.
    tuned_one, report_one = tune_thresholds(fill(probs, cls, target, batch=len(probs)), base=base)
    assert tuned_one == tuned and report_one == report
    yaml.safe_dump(report)
    text = format_tuning_report(report)
    assert "0.65" in text and "300" in text and "mean" in text and len(text.splitlines()) == 12
    assert "none             -  1.0000  <- chosen" in text and "max_cls" in text and "image_head" not in text


def test_tuning_max_area():
    probs, cls, target = synthetic_validation()
    # Class 3: a huge false positive (the whole image) in a few images, a 200-pixel true blob elsewhere.
    probs[::4, 2] = 0.9
    probs[1::4, 2, :10, :20] = 0.9
    target[1::4, 2, :10, :20] = True
    cls[:, 2] = 0.9
    stats = fill(probs, cls, target)
    base = base_params(min_area=[500, 700, 0, 2800])
    tuned, report = tune_thresholds(stats, base=base, tune_max_area=False)
    assert tuned.max_area[2] == base.max_area[2] and report["classes"][2]["dice_tuned"] < 1
    grid = [400, 800, 1000, 5000, 20000]
    tuned, report = tune_thresholds(stats, base=base, tune_max_area=True, max_area_grid=grid)
    # 200 px = 800 reference px must pass, 5120 px = 20480 must not: 800 (inclusive) ... 20000 tie -> lowest.
    assert tuned.max_area[2] == 800
    assert report["classes"][2]["dice_tuned"] == pytest.approx(1.0)
    pred = postprocess(probs, cls, tuned)
    assert report["mean"]["dice_tuned"] == pytest.approx(kaggle_dice(pred, target), abs=1e-12)


def test_tuning_inclusive_min_area_and_no_inverted_window():
    probs, cls, target = synthetic_validation()
    # Class 1 at t_pix 0.4: true blobs are 400 reference px, noise blobs 144: min_area 400 (inclusive) is
    # the only grid value that keeps the first and drops the second.
    stats = fill(probs, cls, target)
    tuned, report = tune_thresholds(stats, min_area_grid=(0, 144, 400, 404), base=base_params())
    assert tuned.min_area[0] == 400 and report["classes"][0]["dice_tuned"] == pytest.approx(1.0)
    # Class 3: only false positives (800 reference px) that no t_pix/t_cls can drop; base max_area 1000.
    probs[:, 2, :10, :20] = 0.9
    cls[:, 2] = 1.0
    stats = fill(probs, cls, target)
    base = base_params(min_area=[500, 700, 500, 2800], max_area=[15500, 10000, 1000, 127000])
    tuned, report = tune_thresholds(
        stats, min_area_grid=(0, 6000), base=base, tune_max_area=True, max_area_grid=[400, 5000, 20000]
    )
    # Dropping them needs max_area 400 (< the base min_area 500: an invalid window) or min_area 6000 with a
    # max_area >= 6000; the tie-break prefers the base min_area, but only among valid windows.
    assert (tuned.min_area[2], tuned.max_area[2]) == (6000, 20000)
    assert report["classes"][2]["dice_tuned"] == 1.0


def test_tuning_min_component():
    probs, cls, target = synthetic_validation()
    # Class 4 positives also get 2-pixel speckles that only component removal can drop.
    probs[1::2, 3, 25, 120:122] = 0.9
    probs[1::2, 3, 30, 150:152] = 0.9
    stats_plain = fill(probs, cls, target)
    stats = fill(probs, cls, target, min_component=[None, None, None, 12])
    base = base_params()
    tuned_plain, report_plain = tune_thresholds(stats_plain, base=base)
    tuned, report = tune_thresholds(stats, base=base)
    assert tuned_plain.min_component == [None] * 4
    assert tuned.min_component == [None, None, None, 12]  # 12 reference px = 3 image px > 2
    assert report["classes"][3]["dice_tuned"] == pytest.approx(1.0)
    assert report_plain["classes"][3]["dice_tuned"] < 1
    for p in (tuned, base):
        pred = postprocess(probs, cls, p)
        assert stats.dice_per_class(p) == pytest.approx(kaggle_dice_per_class(pred, target), abs=1e-12)
    assert report["mean"]["dice_tuned"] == pytest.approx(kaggle_dice(postprocess(probs, cls, tuned), target))
    with pytest.raises(ValueError, match="min_component"):
        stats.dice_per_class(base_params(min_component=[5, None, None, None]))


def test_tuning_is_the_exhaustive_optimum_on_random_data():
    """Brute force over the same (small) grid with pixel-level postprocess + an explicit Dice."""
    rng = np.random.default_rng(5)
    n, h, w = 6, 16, 64
    raw = rng.random((2, n * 4, h, w)).astype(np.float32)
    smooth = np.stack([[cv2.GaussianBlur(x, (0, 0), 2) for x in r] for r in raw]).reshape(2, n, 4, h, w)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    probs = np.clip(0.6 * smooth[0] + 0.4 * smooth[1] + rng.normal(0, 0.05, smooth[0].shape), 0, 1)
    target = smooth[1] > 0.55
    cls = np.clip(target.mean(axis=(2, 3)) * 8 + rng.normal(0, 0.2, (n, 4)), 0, 1)
    t_pix_grid, t_cls_grid, min_grid = (0.4, 0.5, 0.6), (0.0, 0.3, 0.6), (0, 40, 100, 200)
    base = PostprocessParams(min_area=[40] * 4, max_area=[None] * 4, reference_shape=None)
    stats = TuningStats(t_pix_grid=t_pix_grid, reference_shape=None, min_component=[None, 6, None, None])
    stats.update(probs, cls, target)
    tuned, report = tune_thresholds(stats, t_cls_grid=t_cls_grid, min_area_grid=min_grid, base=base)

    best = np.full(4, -1.0)
    for tp, tc, ma, mc in itertools.product(t_pix_grid, (*t_cls_grid, 0.5), min_grid, (None, 6)):
        p = PostprocessParams(
            t_pix=[tp] * 4,
            t_cls=[tc] * 4,
            min_area=[ma] * 4,
            max_area=[None] * 4,
            min_component=[None, mc, None, None],
            reference_shape=None,
        )
        best = np.maximum(best, ref_dice_per_class(postprocess(probs, cls, p), target))
    got = [r["dice_tuned"] for r in report["classes"]]
    assert got == pytest.approx(best.tolist(), abs=1e-12)
    assert got == pytest.approx(
        ref_dice_per_class(postprocess(probs, cls, tuned), target).tolist(), abs=1e-12
    )
    assert 0 < min(got) < 1  # a non-trivial problem
    assert report["mean"]["dice_tuned"] >= report["mean"]["dice_default"] >= 0
    assert report["mean"]["dice_tuned"] >= report["mean"]["dice_raw"]


def test_tuning_errors():
    stats = TuningStats(t_pix_grid=(0.4, 0.6))
    assert 0.5 in stats.t_pix_grid  # always evaluable at the raw / notebook threshold
    with pytest.raises(ValueError, match="empty"):
        tune_thresholds(stats)
    with pytest.raises(ValueError, match=r"targets shape \(1, 4, 8, 8\).*\(1, 4, 8, 9\)"):
        stats.update(np.zeros((1, 4, 8, 9)), np.zeros((1, 4)), np.zeros((1, 4, 8, 8), bool))
    stats.update(np.zeros((1, 4, 8, 8)), np.zeros((1, 4)), np.zeros((1, 4, 8, 8), bool))
    with pytest.raises(
        ValueError, match=r"base.t_pix\[0\]=0.45 with pix_mode .plain. is not in the TuningStats grid"
    ):
        tune_thresholds(stats, base=PostprocessParams(t_pix=[0.45, 0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match=r"reference_shape"):
        tune_thresholds(
            TuningStats(min_component=3, reference_shape=[8, 8]),
            base=PostprocessParams(reference_shape=[256, 1600]),
        )


def test_count_evaluation_matches_pixel_evaluation_including_boundaries():
    probs, cls, target = synthetic_validation()
    probs[::3, 1, 0, :7] = 0.9  # some noise so areas differ between images
    stats = fill(probs, cls, target, min_component=[None, 8, None, None])
    rng = np.random.default_rng(7)
    candidates = [
        # Class 1 blob at t_pix 0.4 is exactly 100 px = 400 reference px: both limits are inclusive
        # (404 and 396 reference px scale to 101 and 99 image px; 401 would round to 100).
        base_params(t_pix=[0.4, 0.5, 0.5, 0.5], min_area=[400, 0, 0, 0], max_area=[400, None, None, None]),
        base_params(t_pix=[0.4, 0.5, 0.5, 0.5], min_area=[404, 0, 0, 0]),
        base_params(t_pix=[0.4, 0.5, 0.5, 0.5], min_area=[0] * 4, max_area=[396, None, None, None]),
        base_params(t_img=0.85, t_cls=[None, 0.55, None, 0.3], min_component=[None, 8, None, None]),
    ]
    for _ in range(6):
        candidates.append(
            base_params(
                t_img=[None, 0.5][int(rng.integers(2))],
                t_pix=rng.choice(stats.t_pix_grid, 4).tolist(),
                t_cls=rng.choice([0.0, 0.3, 0.5, 0.7], 4).tolist(),
                min_area=rng.choice([0, 144, 400, 1440, 6400], 4).tolist(),
                max_area=[None, 6400, None, 6400],
                min_component=[None, [None, 8][int(rng.integers(2))], None, None],
            )
        )
    for p in candidates:
        pred = postprocess(probs, cls, p)
        assert stats.dice_per_class(p) == pytest.approx(ref_dice_per_class(pred, target).tolist(), abs=1e-12)
        np.testing.assert_allclose(stats.dice_per_pair(p), dice_per_pair(pred, target), atol=1e-12)
    assert stats.dice_per_class(candidates[0])[0] == 1.0
    assert stats.dice_per_class(candidates[1])[0] < 1.0 and stats.dice_per_class(candidates[2])[0] < 1.0


# ------------------------------------------------------------------------------------------------------
# Image gate: sources, count path == pixel path, tuning jointly with the per-class parameters
# ------------------------------------------------------------------------------------------------------
def test_image_gate_sources_in_postprocess():
    m = blob_probs([100] * 4)
    cls = np.array([0.1, 0.3, 0.2, 0.29])
    head = params(t_img=0.5, img_source="image_head")
    assert postprocess(m, cls, head, image_probs=np.float32(0.5)).sum() == 400  # >= t_img keeps
    assert not postprocess(m, cls, head, image_probs=0.49).any()
    assert postprocess(m, cls, head, image_probs=np.array([0.7])).sum() == 400  # (1,) for one image
    # max_cls ignores the image head: max(cls) = 0.3 < 0.5 drops every mask whatever image_probs says.
    assert not postprocess(m, cls, params(t_img=0.5), image_probs=1.0).any()
    # Batched: one decision per image; the class probabilities are not needed by the image-head gate.
    batch = np.stack([m, m, m])
    out = postprocess(batch, None, head, image_probs=np.array([0.9, 0.1, 0.5]))
    assert out.any(axis=(1, 2, 3)).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="img_source='image_head'.*needs image_probs.*img_source='max_cls'"):
        postprocess(m, cls, head)
    with pytest.raises(ValueError, match=r"image_probs shape \(2,\).*expected \(3,\)"):
        postprocess(batch, None, head, image_probs=np.array([0.9, 0.1]))
    with pytest.raises(ValueError, match="image_probs must be probabilities"):
        postprocess(m, cls, head, image_probs=3.0)
    # With t_img None the gate is off whatever the source, and image_probs may be absent.
    assert postprocess(m, cls, params(img_source="image_head")).sum() == 400


def gate_validation(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Defect-free images with spurious high-probability blobs that no per-class parameter can remove.

    Every odd image is defect-free, but has a 0.9 blob in class 2 of the same size as the true ones and
    the same class-2 probability (0.3), so only an image-level gate separates them. Even images have a true
    class-1 and class-2 defect with class probabilities [0.9, 0.3, ...] (max 0.9); odd images [0.2, 0.3, ...]
    (max 0.3). The image head sees the same separation (0.8 vs 0.35) on even/odd images.
    """
    rng = np.random.default_rng(seed)
    probs = np.full((n, 4, H, W), 0.05, np.float32)
    target = np.zeros((n, 4, H, W), bool)
    cls = np.full((n, 4), 0.1)
    image = np.empty(n)
    for i in range(n):
        probs[i, 1, 10:22, 60:90] = 0.9
        cls[i, 1] = 0.3
        if i % 2 == 0:
            probs[i, 0, 2:10, 2:40] = 0.9
            target[i, 0, 2:10, 2:40] = True
            target[i, 1, 10:22, 60:90] = True
            cls[i, 0] = 0.9
            image[i] = rng.uniform(0.8, 0.95)
        else:
            cls[i, 0] = 0.2
            image[i] = rng.uniform(0.2, 0.35)
    return probs, cls, target, image


def fill_img(probs, cls, target, image, batch: int = 5, **kw) -> TuningStats:
    stats = TuningStats(reference_shape=REF, **kw)
    for s in range(0, len(probs), batch):
        stats.update(probs[s : s + batch], cls[s : s + batch], target[s : s + batch], image[s : s + batch])
    return stats


def test_tuning_finds_an_image_gate_that_beats_no_gate_max_cls():
    probs, cls, target, _ = gate_validation()
    stats = fill(probs, cls, target)  # no image head: only max_cls is available
    assert not stats.has_image_probs
    tuned, report = tune_thresholds(stats, base=base_params())
    # max(cls) is 0.9 on defective images and 0.3 on clean ones: every t_img in (0.3, 0.9] is perfect; the
    # tie-break takes the highest.
    assert (tuned.t_img, tuned.img_source) == (0.9, "max_cls")
    assert report["mean"]["dice_tuned"] == pytest.approx(1.0, abs=1e-12)
    # Class 2 without a gate: keep everything or drop everything, half the images right either way.
    assert report["mean"]["dice_tuned_no_gate"] == pytest.approx((1 + 0.5 + 1 + 1) / 4, abs=1e-12)
    assert report["image_gate"] == {
        "t_img": 0.9,
        "img_source": "max_cls",
        "sources": {
            "max_cls": {"t_img": 0.9, "dice": report["mean"]["dice_tuned"], "dice_per_class": [1.0] * 4}
        },
    }
    # Without the gate the spurious class-2 blobs cannot be removed: the class-2 gate cannot separate them.
    assert report["classes"][1]["dice_tuned_no_gate"] < 1.0
    pred = postprocess(probs, cls, tuned)
    assert kaggle_dice(pred, target) == pytest.approx(1.0)
    # A t_img grid without values in (0.3, 0.9] cannot help: 0.95 drops everything, 0.2 keeps everything
    # (a tie with no gate, which the tie-break prefers).
    tuned, report = tune_thresholds(stats, base=base_params(), t_img_grid=[None, 0.2, 0.95])
    assert tuned.t_img is None and report["image_gate"]["t_img"] is None
    assert report["image_gate"]["sources"]["max_cls"]["t_img"] == 0.2
    assert report["image_gate"]["sources"]["max_cls"]["dice"] == report["mean"]["dice_tuned_no_gate"]
    assert report["mean"]["dice_tuned"] == report["mean"]["dice_tuned_no_gate"]


def test_tuning_measures_both_sources_and_picks_the_image_head_when_it_is_better():
    probs, cls, target, image = gate_validation()
    cls[:, 0] = 0.9  # the class head no longer separates clean images: max(cls) = 0.9 everywhere
    target[:, 0] = False
    probs[:, 0] = 0.05
    target[::2, 0, 2:10, 2:40] = True  # class 1 stays a true defect on even images only ...
    probs[:, 0, 2:10, 2:40] = 0.9  # ... but looks the same everywhere
    stats = fill_img(probs, cls, target, image)
    assert stats.has_image_probs
    tuned, report = tune_thresholds(stats, base=base_params())
    # image in [0.8, 0.95] vs [0.2, 0.35]: t_img in (0.35, 0.8] separates; the highest such grid value is 0.8.
    assert (tuned.t_img, tuned.img_source) == (0.8, "image_head")
    gate = report["image_gate"]
    assert set(gate["sources"]) == {"max_cls", "image_head"}
    assert gate["sources"]["image_head"] == {"t_img": 0.8, "dice": 1.0, "dice_per_class": [1.0] * 4}
    assert gate["sources"]["max_cls"]["dice"] < 1.0 and report["mean"]["dice_tuned_no_gate"] < 1.0
    assert report["mean"]["dice_tuned"] == pytest.approx(1.0)
    pred = postprocess(probs, cls, tuned, image_probs=image)
    assert kaggle_dice(pred, target) == pytest.approx(1.0)
    # Restricting the sources measures only the class head.
    tuned_cls, report_cls = tune_thresholds(stats, base=base_params(), img_sources=["max_cls"])
    assert tuned_cls.img_source == "max_cls" and set(report_cls["image_gate"]["sources"]) == {"max_cls"}
    assert report_cls["mean"]["dice_tuned"] < 1.0
    text = format_tuning_report(report)
    assert "image_head    0.80  1.0000  <- chosen" in text and "max_cls" in text and "none" in text


def test_tuning_prefers_max_cls_on_a_tie_and_none_where_the_gate_cannot_help():
    probs, cls, target, image = gate_validation()
    stats = fill_img(probs, cls, target, image)
    tuned, report = tune_thresholds(stats, base=base_params())
    # Both sources separate perfectly: the tie goes to max_cls (it needs no image head).
    assert (tuned.t_img, tuned.img_source) == (0.9, "max_cls")
    assert report["image_gate"]["sources"]["image_head"]["dice"] == pytest.approx(1.0)
    # The original validation set has no spurious blobs the gate could remove: no gate, whatever the source.
    probs, cls, target = synthetic_validation()
    image = np.random.default_rng(1).random(len(probs))
    tuned, report = tune_thresholds(fill_img(probs, cls, target, image), base=base_params())
    assert tuned.t_img is None and tuned.img_source == "max_cls"
    assert report["image_gate"]["img_source"] is None
    assert report["mean"]["dice_tuned"] == report["mean"]["dice_tuned_no_gate"] == pytest.approx(1.0)
    assert report["image_gate"]["sources"]["image_head"]["dice"] < 1.0  # a random image head only hurts


def test_tuning_with_the_gate_is_the_exhaustive_optimum_on_random_data():
    """Brute force over gates x per-class parameters with the pixel path and an explicit Dice."""
    rng = np.random.default_rng(11)
    n, h, w = 8, 16, 64
    raw = rng.random((2, n * 4, h, w)).astype(np.float32)
    smooth = np.stack([[cv2.GaussianBlur(x, (0, 0), 2) for x in r] for r in raw]).reshape(2, n, 4, h, w)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    probs = np.clip(0.6 * smooth[0] + 0.4 * smooth[1] + rng.normal(0, 0.05, smooth[0].shape), 0, 1)
    target = smooth[1] > 0.55
    target[: n // 2] = False  # half the images are defect-free: a gate can matter
    # An uninformative class head, a useful image head.
    cls = rng.uniform(0.2, 1.0, (n, 4)).astype(np.float32)
    image = np.clip(target.any(axis=(1, 2, 3)) * 0.5 + rng.normal(0.25, 0.1, n), 0, 1).astype(np.float32)
    t_pix_grid, t_cls_grid, min_grid, t_img_grid = (
        (0.4, 0.5, 0.6),
        (0.0, 0.3, 0.6),
        (0, 40, 200),
        (None, 0.3, 0.5, 0.7),
    )
    base = PostprocessParams(min_area=[40] * 4, max_area=[None] * 4, reference_shape=None)
    stats = TuningStats(t_pix_grid=t_pix_grid, reference_shape=None)
    stats.update(probs, cls, target, image)
    tuned, report = tune_thresholds(
        stats, t_cls_grid=t_cls_grid, min_area_grid=min_grid, base=base, t_img_grid=t_img_grid
    )

    def brute(t_img, source) -> np.ndarray:
        best = np.full(4, -1.0)
        for tp, tc, ma in itertools.product(t_pix_grid, (*t_cls_grid, 0.5), min_grid):
            p = PostprocessParams(
                t_img=t_img,
                img_source=source,
                t_pix=[tp] * 4,
                t_cls=[tc] * 4,
                min_area=[ma] * 4,
                max_area=[None] * 4,
                reference_shape=None,
            )
            best = np.maximum(best, ref_dice_per_class(postprocess(probs, cls, p, image_probs=image), target))
        return best

    no_gate = brute(None, "max_cls")
    per_source = {
        s: max(brute(t, s).mean() for t in t_img_grid if t is not None) for s in ("max_cls", "image_head")
    }
    assert report["mean"]["dice_tuned_no_gate"] == pytest.approx(no_gate.mean(), abs=1e-12)
    for source, best in per_source.items():
        assert report["image_gate"]["sources"][source]["dice"] == pytest.approx(best, abs=1e-12)
    assert report["mean"]["dice_tuned"] == pytest.approx(max(no_gate.mean(), *per_source.values()), abs=1e-12)
    pred = postprocess(probs, cls, tuned, image_probs=image)
    assert report["mean"]["dice_tuned"] == pytest.approx(kaggle_dice(pred, target), abs=1e-12)
    assert report["mean"]["dice_tuned"] > no_gate.mean()  # the gate matters on this data
    assert tuned.t_img is not None


def test_count_evaluation_matches_pixel_evaluation_with_the_image_gate():
    probs, cls, target, image = gate_validation()
    rng = np.random.default_rng(3)
    image = image.astype(np.float32)
    cls = cls.astype(np.float32)
    # float32 probabilities exactly at float32(t_img): compared in float64 on both paths.
    image[:4] = np.float32(0.35)
    cls[4:8, 0] = np.float32(0.35)
    stats = fill_img(probs, cls, target, image, min_component=[None, 8, None, None])
    candidates = [
        base_params(t_img=0.35, img_source=src, t_cls=[None] * 4) for src in ("max_cls", "image_head")
    ]
    for _ in range(8):
        candidates.append(
            base_params(
                t_img=[None, 0.3, 0.35, 0.5, 0.85][int(rng.integers(5))],
                img_source=["max_cls", "image_head"][int(rng.integers(2))],
                t_pix=rng.choice(stats.t_pix_grid, 4).tolist(),
                t_cls=rng.choice([0.0, 0.3, 0.5], 4).tolist(),
                min_area=rng.choice([0, 144, 1440], 4).tolist(),
                min_component=[None, [None, 8][int(rng.integers(2))], None, None],
            )
        )
    gated = 0
    for p in candidates:
        pred = postprocess(probs, cls, p, image_probs=image)
        np.testing.assert_allclose(stats.dice_per_pair(p), dice_per_pair(pred, target), atol=1e-12)
        gated += p.t_img is not None and not np.array_equal(
            pred, postprocess(probs, cls, dataclasses_replace(p, t_img=None), image_probs=image)
        )
    assert gated >= 3  # the gate changed the masks for several candidates
    # The boundary images pass a 0.35 gate (float64: float32(0.35) = 0.3499999940 < 0.35 does NOT pass).
    for src, rows in (("image_head", slice(0, 4)), ("max_cls", slice(4, 8))):
        p = base_params(
            t_img=0.35, img_source=src, t_cls=[None] * 4, min_area=[None] * 4, max_area=[None] * 4
        )
        assert not postprocess(probs[rows], cls[rows], p, image_probs=image[rows]).any()
        p = dataclasses_replace(p, t_img=float(np.float32(0.35)))
        assert postprocess(probs[rows], cls[rows], p, image_probs=image[rows]).any()


def test_image_probs_in_tuning_stats_errors():
    probs, cls, target, image = gate_validation(n=4)
    stats = fill(probs, cls, target)
    with pytest.raises(ValueError, match="img_source='image_head'.*needs image_probs"):
        stats.dice_per_class(base_params(t_img=0.5, img_source="image_head"))
    with pytest.raises(
        ValueError, match="img_sources includes 'image_head' but TuningStats has no image-head"
    ):
        tune_thresholds(stats, base=base_params(), img_sources=["image_head"])
    with pytest.raises(ValueError, match=r"img_sources: unknown \['head'\]"):
        tune_thresholds(stats, base=base_params(), img_sources=["head"])
    with pytest.raises(ValueError, match="image_probs must be given to every TuningStats.update or to none"):
        stats.update(probs, cls, target, image)
    mixed = TuningStats(reference_shape=REF)
    mixed.update(probs[:2], cls[:2], target[:2], image[:2])
    with pytest.raises(ValueError, match="earlier batches had some, this one has none"):
        mixed.update(probs[2:], cls[2:], target[2:])
    assert len(mixed) == 2 and mixed.arrays()["image_probs"].tolist() == image[:2].tolist()
    with pytest.raises(ValueError, match="t_img_grid value"):
        tune_thresholds(mixed, base=base_params(), t_img_grid=[None, 1.5])


def test_image_gate_params_yaml_round_trip_and_old_files(tmp_path: Path):
    p = PostprocessParams(t_img=0.45, img_source="image_head", t_cls=[0.4, None, 0.6, 0.7])
    path = save_thresholds(p, tmp_path / "thresholds.yaml")
    doc = yaml.safe_load(path.read_text())
    assert doc["params"]["t_img"] == 0.45 and doc["params"]["img_source"] == "image_head"
    assert load_thresholds(path) == p
    # A thresholds.yaml written before the image gate was tuned has no img_source: the class head's max.
    old = {k: v for k, v in PostprocessParams(t_img=0.3).to_dict().items() if k != "img_source"}
    (tmp_path / "old.yaml").write_text(
        yaml.safe_dump({"params": old, "report": {"mean": {"dice_tuned": 0.5}}})
    )
    loaded = load_thresholds(tmp_path / "old.yaml")
    assert loaded.img_source == "max_cls" and loaded.t_img == 0.3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"params": {**old, "img_source": "both"}}))
    with pytest.raises(ValueError, match=r"bad\.yaml.*img_source must be one of max_cls, image_head"):
        load_thresholds(tmp_path / "bad.yaml")
    # A tuned result round-trips with its report; an old report (no image_gate block) still prints.
    probs, cls, target, image = gate_validation()
    tuned, report = tune_thresholds(fill_img(probs, cls, target, image), base=base_params())
    path = save_thresholds(tuned, tmp_path / "tuned.yaml", report=report)
    assert load_thresholds(path) == tuned
    assert yaml.safe_load(path.read_text())["report"]["image_gate"]["img_source"] == "max_cls"
    old_report = {k: v for k, v in report.items() if k != "image_gate"}
    assert len(format_tuning_report(old_report).splitlines()) == 8


def test_thresholds_files_with_absurd_values_or_alias_bombs_are_refused_naming_file_and_key(tmp_path):
    """Security review L8: well-typed but absurd areas and reference shapes, aliases and huge files."""
    from steel_defect.postprocess.params import MAX_THRESHOLDS_BYTES, load_thresholds

    cases = {
        "huge_area.yaml": (
            "params: {max_area: [100000000000000000000000000000000000000, null, null, null]}\n",
            "max_area",
        ),
        "huge_ref.yaml": ("params: {reference_shape: [100000000000000000000000, 1]}\n", "reference_shape"),
        "wide_ref.yaml": ("params: {reference_shape: [256, 70000]}\n", "reference_shape=[256, 70000]"),
        "alias.yaml": ("a: &a [1, 1]\nb: [*a, *a]\nparams: {}\n", "aliases are not allowed"),
    }
    for name, (text, needle) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(needle)) as err:
            load_thresholds(path)
        assert str(path) in str(err.value)
    big = tmp_path / "big.yaml"
    big.write_text("params: {}\n" + "#" * MAX_THRESHOLDS_BYTES)
    with pytest.raises(ValueError, match="too large for a thresholds file"):
        load_thresholds(big)
    fine = tmp_path / "fine.yaml"
    fine.write_text("params: {reference_shape: [256, 1600], max_area: [15500, 10000, 160000, 127000]}\n")
    assert load_thresholds(fine).max_area == [15500, 10000, 160000, 127000]
