"""Tests for steel_defect.metrics: the Dice rule, numpy/torch agreement, KaggleDice streaming and real DDP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from steel_defect.metrics import (
    KaggleDice,
    dice_from_counts,
    dice_per_pair,
    kaggle_dice,
    kaggle_dice_per_class,
)


def _masks(n: int = 5, c: int = 4, h: int = 8, w: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random masks with some empty (image, class) pairs on either side, so every branch of the rule is hit."""
    rng = np.random.default_rng(seed)
    pred = rng.random((n, c, h, w)) < 0.3
    target = rng.random((n, c, h, w)) < 0.3
    pred[0, 0] = target[0, 0] = False  # both empty
    pred[1, 1] = False  # only target non-empty
    target[2, c - 1] = False  # only pred non-empty
    return pred, target


def _naive_dice(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    out = np.zeros(pred.shape[:2])
    for i in range(pred.shape[0]):
        for c in range(pred.shape[1]):
            p, t = pred[i, c].astype(bool), target[i, c].astype(bool)
            total = p.sum() + t.sum()
            out[i, c] = 1.0 if total == 0 else 2.0 * (p & t).sum() / total
    return out


def test_edge_cases_and_exact_partial_overlap() -> None:
    pred = np.zeros((1, 4, 3, 3), bool)
    target = np.zeros((1, 4, 3, 3), bool)
    # class 1: both empty -> 1; class 2: only target -> 0; class 3: only pred -> 0
    target[0, 1, 0, 0] = True
    pred[0, 2, 1, 1] = True
    # class 4: pred 3 pixels, target 2 pixels, 1 shared -> 2 * 1 / 5
    pred[0, 3, 0, :] = True
    target[0, 3, 0, 0] = target[0, 3, 2, 2] = True
    np.testing.assert_array_equal(dice_per_pair(pred, target), [[1.0, 0.0, 0.0, 0.4]])
    assert kaggle_dice(pred, target) == pytest.approx(1.4 / 4, abs=1e-15)
    assert kaggle_dice_per_class(pred, target) == [1.0, 0.0, 0.0, 0.4]
    assert kaggle_dice(pred, pred) == 1.0


def test_per_class_means_over_images() -> None:
    pred, target = _masks()
    per_pair = _naive_dice(pred, target)
    assert dice_per_pair(pred, target).dtype == np.float64
    np.testing.assert_allclose(dice_per_pair(pred, target), per_pair, rtol=0, atol=1e-15)
    np.testing.assert_allclose(kaggle_dice_per_class(pred, target), per_pair.mean(axis=0), rtol=0, atol=1e-15)
    assert kaggle_dice(pred, target) == pytest.approx(per_pair.mean(), abs=1e-15)
    assert per_pair[0, 0] == 1.0 and per_pair[1, 1] == 0.0 and per_pair[2, 3] == 0.0


def test_numpy_and_torch_agree_for_every_input_type() -> None:
    pred, target = _masks(seed=3)
    expected = dice_per_pair(pred, target)
    variants = [
        (pred.astype(np.uint8), target.astype(np.uint8)),
        (pred.astype(np.float32), target.astype(np.int64)),
        (torch.from_numpy(pred), torch.from_numpy(target)),
        (torch.from_numpy(pred).to(torch.uint8), torch.from_numpy(target).float()),
        (torch.from_numpy(pred), target),  # mixed
    ]
    for p, t in variants:
        got = dice_per_pair(p, t)
        assert isinstance(got, np.ndarray) and got.dtype == np.float64
        np.testing.assert_array_equal(got, expected)
    assert kaggle_dice(torch.from_numpy(pred), torch.from_numpy(target)) == kaggle_dice(pred, target)


def test_dice_from_counts_broadcasts_and_checks() -> None:
    got = dice_from_counts(np.array([[0], [3], [4]]), np.array([0, 2]), 0)
    np.testing.assert_array_equal(got, [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(dice_from_counts([3, 10], [2, 10], [1, 10]), [0.4, 1.0])
    pred, target = _masks(seed=5)
    counts = (pred.sum((2, 3)), target.sum((2, 3)), (pred & target).sum((2, 3)))
    np.testing.assert_array_equal(dice_from_counts(*counts), dice_per_pair(pred, target))
    with pytest.raises(ValueError, match="larger"):
        dice_from_counts(2, 5, 3)
    with pytest.raises(ValueError, match="non-negative"):
        dice_from_counts(-1, 5, 0)


def test_bad_inputs_raise_clear_errors() -> None:
    a = np.zeros((2, 4, 5, 6), bool)
    with pytest.raises(ValueError, match=r"\(2, 4, 5, 6\).*\(2, 4, 6, 5\)"):
        dice_per_pair(a, np.zeros((2, 4, 6, 5), bool))
    with pytest.raises(ValueError, match=r"\(2, 4, 5, 6\).*\(2, 4, 6, 5\)"):
        dice_per_pair(torch.zeros(2, 4, 5, 6), torch.zeros(2, 4, 6, 5))
    with pytest.raises(ValueError, match="0 and 1"):
        dice_per_pair(np.full((1, 1, 2, 2), 0.5), np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="0 and 1"):
        dice_per_pair(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 255, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        dice_per_pair(np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool))
    with pytest.raises(ValueError, match="zero images"):
        kaggle_dice(np.zeros((0, 4, 2, 2), bool), np.zeros((0, 4, 2, 2), bool))
    with pytest.raises(ValueError, match="4 classes"):
        KaggleDice().update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="num_classes"):
        KaggleDice(num_classes=0)


def test_kaggle_dice_metric_over_batches_equals_concatenation() -> None:
    pred, target = _masks(n=7, seed=11)
    metric = KaggleDice(num_classes=4)
    assert metric.higher_is_better is True and metric.full_state_update is False
    for lo, hi in [(0, 3), (3, 4), (4, 7)]:  # uneven batches
        metric.update(torch.from_numpy(pred[lo:hi]), torch.from_numpy(target[lo:hi]).float())
    out = metric.compute()
    assert set(out) == {"dice", "dice_1", "dice_2", "dice_3", "dice_4"}
    assert out["dice"].item() == pytest.approx(kaggle_dice(pred, target), abs=1e-12)
    per_class = kaggle_dice_per_class(pred, target)
    for c in range(4):
        assert out[f"dice_{c + 1}"].item() == pytest.approx(per_class[c], abs=1e-12)
    assert metric.count.item() == 7 and metric.dice_sum.dtype == torch.float64
    metric.reset()
    metric.update(torch.ones(2, 4, 3, 3, dtype=torch.bool), torch.ones(2, 4, 3, 3, dtype=torch.bool))
    assert metric.compute()["dice"].item() == 1.0


def test_kaggle_dice_metric_other_class_count() -> None:
    pred, target = _masks(n=3, c=2, seed=2)
    metric = KaggleDice(num_classes=2)
    metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    out = metric.compute()
    assert set(out) == {"dice", "dice_1", "dice_2"}
    assert out["dice"].item() == pytest.approx(kaggle_dice(pred, target), abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_kaggle_dice_on_cuda_matches_cpu() -> None:
    pred, target = _masks(n=6, seed=4)
    metric = KaggleDice().to("cuda")
    metric.update(torch.from_numpy(pred).cuda(), torch.from_numpy(target).cuda().float())
    out = metric.compute()
    assert out["dice"].device.type == "cuda"
    assert out["dice"].item() == pytest.approx(kaggle_dice(pred, target), abs=1e-12)
    np.testing.assert_array_equal(
        dice_per_pair(torch.from_numpy(pred).cuda(), torch.from_numpy(target).cuda()),
        dice_per_pair(pred, target),
    )


# --------------------------------------------------------------------------- real multi-process DDP
WORLD = 2


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    """One DDP rank: update KaggleDice with this rank's share of the data, then compute (which syncs)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        pred, target = _masks(n=7, seed=21)
        share = slice(0, 3) if rank == 0 else slice(3, 7)  # uneven shares, two batches on rank 1
        metric = KaggleDice()
        p, t = torch.from_numpy(pred[share]), torch.from_numpy(target[share])
        for lo in range(0, p.shape[0], 2):
            metric.update(p[lo : lo + 2], t[lo : lo + 2])
        local_count = int(metric.count)
        out = {k: v.item() for k, v in metric.compute().items()}
        with metric.sync_context():
            synced_count = int(metric.count)
        result = {"out": out, "local_count": local_count, "synced_count": synced_count}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_kaggle_dice_is_ddp_correct(tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    pred, target = _masks(n=7, seed=21)
    expected = {"dice": kaggle_dice(pred, target)}
    expected |= {f"dice_{c + 1}": v for c, v in enumerate(kaggle_dice_per_class(pred, target))}
    for rank, local in enumerate([3, 4]):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["local_count"] == local and result["synced_count"] == 7
        assert result["out"] == pytest.approx(expected, abs=1e-12)
    # the two halves score differently, so a rank that did not sync would fail the check above
    assert kaggle_dice(pred[:3], target[:3]) != pytest.approx(expected["dice"], abs=1e-6)
