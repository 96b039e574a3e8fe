"""Pixel modes (plain / soft / scaled gating) in post-processing and in the count-based tuning."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from steel_defect.metrics import dice_per_pair
from steel_defect.postprocess.apply import postprocess
from steel_defect.postprocess.params import PostprocessParams, load_thresholds, save_thresholds
from steel_defect.postprocess.tuning import TuningStats, format_tuning_report, tune_thresholds

H, W = 16, 40


def one_class(**kw) -> PostprocessParams:
    """One class, every gate and limit off unless given."""
    base = dict(
        t_img=None,
        t_cls=[None],
        t_pix=[0.5],
        pix_mode=["plain"],
        min_area=[None],
        max_area=[None],
        min_component=[None],
        reference_shape=None,
    )
    base.update(kw)
    return PostprocessParams(**base)


def test_soft_and_scaled_modes_follow_their_formulas():
    rng = np.random.default_rng(0)
    mask = rng.random((3, 2, H, W)).astype(np.float32)
    cls = rng.random((3, 2))
    p = PostprocessParams(
        t_img=None,
        t_cls=[None, None],
        t_pix=[0.4, 0.3],
        pix_mode=["soft", "scaled"],
        min_area=[None, None],
        max_area=[None, None],
        min_component=[None, None],
        reference_shape=None,
    )
    out = postprocess(mask, cls, p)
    assert np.array_equal(out[:, 0], mask[:, 0] * cls[:, 0, None, None] >= 0.4)
    assert np.array_equal(out[:, 1], mask[:, 1] / (1.5 - cls[:, 1, None, None]) >= 0.3)
    plain = postprocess(mask, cls, PostprocessParams.disabled(2))
    assert np.array_equal(plain, mask >= 0.5)


def test_soft_modes_need_class_probabilities_and_bad_modes_are_named():
    mask = np.zeros((1, H, W), np.float32)
    with pytest.raises(ValueError, match="soft pix_mode"):
        postprocess(mask, None, one_class(pix_mode=["soft"]))
    with pytest.raises(ValueError, match=r"pix_mode\[0\] must be one of plain, soft, scaled, got 'hard'"):
        one_class(pix_mode=["hard"])


def test_yaml_without_pix_mode_reads_as_plain(tmp_path):
    path = tmp_path / "t.yaml"
    params = PostprocessParams.notebook_defaults().to_dict()
    params.pop("pix_mode")
    path.write_text(yaml.safe_dump({"params": params}))
    assert load_thresholds(path).pix_mode == ["plain"] * 4


def test_counts_reproduce_postprocess_exactly_for_every_mode():
    rng = np.random.default_rng(1)
    n, c = 12, 3
    mask = rng.random((n, c, H, W)).astype(np.float32)
    cls = rng.random((n, c)).astype(np.float32)
    cls[0] = 0.5  # scaled: mask / 1.0 - exactly the plain values
    cls[1] = 1.0  # soft: mask x 1.0
    # Pixels exactly on a grid threshold and one float32 step either side of it, for every mode.
    for j, t in enumerate((0.3, 0.45, 0.6)):
        t32 = np.float32(t)
        mask[:, :, j, :3] = [np.nextafter(t32, np.float32(0)), t32, np.nextafter(t32, np.float32(1))]
    target = rng.random((n, c, H, W)) > 0.7
    target[: n // 2] = False
    stats = TuningStats(num_classes=c, reference_shape=None, pix_modes=["soft", "scaled"])
    stats.update(mask[:5], cls[:5], target[:5])
    stats.update(mask[5:], cls[5:], target[5:])
    assert stats.pix_modes == ["plain", "soft", "scaled"]
    for modes in (["plain", "soft", "scaled"], ["scaled", "scaled", "soft"]):
        p = PostprocessParams(
            t_img=None,
            t_cls=[0.2, None, 0.5],
            t_pix=[0.45, 0.3, 0.6],
            pix_mode=modes,
            min_area=[10, None, 0],
            max_area=[None, 300, None],
            min_component=[None] * c,
            reference_shape=None,
        )
        expected = dice_per_pair(postprocess(mask, cls, p), target)
        np.testing.assert_allclose(stats.dice_per_pair(p), expected, rtol=0, atol=1e-12)
    plain_only = TuningStats(num_classes=c, reference_shape=None)
    plain_only.update(mask, cls, target)
    soft = PostprocessParams(
        t_img=None,
        t_cls=[None] * c,
        t_pix=[0.5] * c,
        pix_mode=["soft"] * c,
        min_area=[None] * c,
        max_area=[None] * c,
        min_component=[None] * c,
        reference_shape=None,
    )
    with pytest.raises(ValueError, match="pix_mode 'soft' is not in the TuningStats grid"):
        plain_only.dice_per_pair(soft)


def soft_gate_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three images whose defects only the soft gate separates from the false alarm (equal areas):
    A true, mask 0.5, class 0.95 (soft 0.475); B false, mask 0.7, class 0.6 (soft 0.42);
    C true, mask 0.8, class 0.6 (soft 0.48). A plain threshold keeping A keeps B; a class gate keeping C
    keeps B; soft at 0.45 keeps A and C only."""
    mask = np.zeros((3, 1, H, W), np.float32)
    target = np.zeros((3, 1, H, W), bool)
    for i, (level, true) in enumerate(((0.5, True), (0.7, False), (0.8, True))):
        mask[i, 0, 4:8, 10:20] = level
        target[i, 0, 4:8, 10:20] = true
    return mask, np.array([[0.95], [0.6], [0.6]]), target


def test_tuning_finds_the_soft_gate_where_hard_gates_cannot_separate():
    mask, cls, target = soft_gate_case()
    base = one_class()
    plain = TuningStats(num_classes=1, reference_shape=None)
    plain.update(mask, cls, target)
    p_plain, _ = tune_thresholds(plain, base=base, t_img_grid=[None])
    both = TuningStats(num_classes=1, reference_shape=None, pix_modes=["soft"])
    both.update(mask, cls, target)
    p_soft, report = tune_thresholds(both, base=base, t_img_grid=[None])
    assert np.mean(plain.dice_per_class(p_plain)) < 0.7
    assert p_soft.pix_mode == ["soft"] and report["classes"][0]["pix_mode"] == "soft"
    assert report["mean"]["dice_tuned"] == pytest.approx(1.0)
    final = postprocess(mask, cls, p_soft)
    assert np.array_equal(final, target)


def test_ties_keep_the_base_mode_then_plain():
    """Where every mode gives the same Dice, the base pair wins; failing that plain before soft/scaled."""
    mask, cls, target = soft_gate_case()
    cls = np.ones_like(cls)  # p_cls = 1: soft = plain, so plain and soft tie everywhere
    stats = TuningStats(num_classes=1, reference_shape=None, pix_modes=["soft", "scaled"])
    stats.update(mask, cls, target)
    p, _ = tune_thresholds(stats, base=one_class(), t_img_grid=[None])
    assert p.pix_mode == ["plain"]
    p, _ = tune_thresholds(stats, base=one_class(pix_mode=["soft"], t_pix=[0.45]), t_img_grid=[None])
    assert (p.pix_mode, p.t_pix) == (["soft"], [0.45])


def test_the_base_modes_are_always_counted():
    from steel_defect.postprocess.tuning import search_modes

    assert search_modes(["plain"], one_class(pix_mode=["scaled"])) == ["plain", "scaled"]
    assert search_modes(["soft"], None) == ["soft"]
    with pytest.raises(ValueError, match="pix_modes: unknown"):
        search_modes(["hard"])


def test_a_winners_base_with_min_component_and_soft_mode_is_tunable():
    from steel_defect.postprocess.tuning import stats_for

    base = PostprocessParams(
        t_cls=[0.7, 0.7, 0.6, 0.6],
        t_pix=[0.55] * 4,
        pix_mode=["soft", "plain", "plain", "plain"],
        min_area=[600, 600, 900, 2000],
        min_component=[150] * 4,
    )
    rng = np.random.default_rng(3)
    mask = rng.random((6, 4, 64, 320)).astype(np.float32) ** 3
    cls = rng.random((6, 4))
    target = mask > 0.6
    stats = TuningStats(**stats_for(base))
    stats.update(mask, cls, target)
    assert stats.min_component == [150] * 4 and "soft" in stats.pix_modes
    np.testing.assert_allclose(stats.dice_per_pair(base), dice_per_pair(postprocess(mask, cls, base), target))
    tuned, _ = tune_thresholds(stats, base=base, t_img_grid=[None])
    assert np.mean(stats.dice_per_class(tuned)) >= np.mean(stats.dice_per_class(base))


# --- min_gain: a class that does not beat keeping nothing by enough is switched off --------------------
def _two_class_stats(n: int = 10) -> tuple[TuningStats, np.ndarray, np.ndarray, np.ndarray]:
    """Class 1 has one defect image, class 2 three, each predicted exactly: tuning gains one pair on
    class 1 and three on class 2 over keeping nothing; every other image is empty and predicted empty."""
    mask = np.zeros((n, 2, H, W), np.float32)
    target = np.zeros((n, 2, H, W), bool)
    target[0, 0, 2:6, 3:9] = True
    for i in (1, 2, 3):
        target[i, 1, 4:10, 10:20] = True
    mask[target] = 0.9
    cls = np.where(target.any(axis=(2, 3)), 0.9, 0.1)
    stats = TuningStats(num_classes=2, reference_shape=None)
    stats.update(mask, cls, target)
    return stats, mask, cls, target


def _tune(stats: TuningStats, min_gain: float = 0.0):
    base = PostprocessParams.disabled(2)
    grids = dict(t_cls_grid=[None], min_area_grid=[None], t_img_grid=[None])
    return tune_thresholds(stats, base=base, min_gain=min_gain, **grids)


def test_min_gain_switches_off_a_class_that_gains_fewer_pairs_than_asked():
    stats, mask, cls, target = _two_class_stats()
    n = len(stats)
    kept, report0 = _tune(stats)  # min_gain 0: today's result, no class is off
    assert [r["off"] for r in report0["classes"]] == [False, False]
    assert [r["gain_pairs"] for r in report0["classes"]] == pytest.approx([1.0, 3.0])
    same, _ = _tune(stats, min_gain=1 / n)  # one pair is enough for a gain of exactly one pair
    assert same == kept
    off, report = _tune(stats, min_gain=2 / n)  # at least two pairs: class 1 is off, class 2 stays
    assert [r["off"] for r in report["classes"]] == [True, False] and report["min_gain"] == 2 / n
    assert off.max_area[0] == 0 and off.min_area[0] is None
    assert (off.t_pix[1], off.max_area[1], off.min_area[1]) == (
        kept.t_pix[1],
        kept.max_area[1],
        kept.min_area[1],
    )
    # "off" keeps nothing of the class in post-processing, and the report's Dice is exactly that.
    final = postprocess(mask, cls, off)
    assert not final[:, 0].any() and np.array_equal(final[:, 1], target[:, 1])
    assert report["classes"][0]["dice_tuned"] == pytest.approx(1 - 1 / n)
    assert report["classes"][1]["dice_tuned"] == pytest.approx(1.0)
    assert stats.dice_per_class(off) == pytest.approx(dice_per_pair(final, target).mean(axis=0).tolist())
    assert "off: gains 1.0 image-class pairs" in format_tuning_report(report)


def test_switched_off_params_are_valid_and_survive_a_thresholds_file(tmp_path):
    p = one_class(max_area=[0], min_area=[None])
    mask = np.ones((2, 1, H, W), np.float32)
    assert not postprocess(mask, np.ones((2, 1)), p).any()
    save_thresholds(p, tmp_path / "t.yaml")
    assert load_thresholds(tmp_path / "t.yaml", num_classes=1) == p


def test_min_gain_must_be_a_non_negative_number():
    stats = _two_class_stats()[0]
    for bad in (-0.1, True, "2"):
        with pytest.raises(ValueError, match="min_gain must be a number >= 0"):
            _tune(stats, min_gain=bad)


def test_tune_and_save_converts_min_gain_pairs_with_the_number_of_images(tmp_path):
    from steel_defect.inference.calibrate import TuneOptions, tune_and_save

    stats = _two_class_stats()[0]
    base = PostprocessParams.disabled(2)
    grids = {"t_cls_grid": [None], "min_area_grid": [None], "t_img_grid": [None]}
    results = {}
    for pairs in (0, 2):
        out = tmp_path / f"t{pairs}.yaml"
        options = TuneOptions(min_gain_pairs=pairs, grids=grids)
        params, report = tune_and_save(
            out, "tune", ["a.ckpt"], ["f"], stats=stats, base=base, options=options
        )
        doc = yaml.safe_load(out.read_text())
        assert doc["meta"]["min_gain_pairs"] == pairs and doc["report"]["min_gain_pairs"] == pairs
        assert load_thresholds(out, num_classes=2) == params
        results[pairs] = [r["off"] for r in report["classes"]]
    assert results == {0: [False, False], 2: [True, False]}
    with pytest.raises(ValueError, match="min_gain_pairs must be an integer >= 0"):
        TuneOptions(min_gain_pairs=-1)
    with pytest.raises(ValueError, match="grids: unknown keys"):
        TuneOptions(grids={"t_pix_grid": [0.5]})
