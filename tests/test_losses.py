"""Lovasz hinge (per image and class) and its place in SegClsLoss."""

from __future__ import annotations

import math

import pytest
import torch

from steel_defect.models import losses
from steel_defect.models.losses import SegClsLoss, lovasz_grad, lovasz_hinge_per_pair


def _reference_lovasz_hinge(logits: list[float], target: list[int]) -> float:
    """The Lovasz hinge straight from its definition, for one binary problem (pure Python).

    Hinge errors ``e_i = 1 - z_i * s_i`` (``s_i = +-1``), sorted decreasingly; ``M_k`` = the ``k`` pixels with
    the largest errors; Jaccard loss of mispredicting ``M``: ``D(M) = |M| / |{y = 1} u M|`` (``D({}) = 0``);
    loss = ``sum_k max(e_(k), 0) * (D(M_k) - D(M_{k-1}))``.
    """
    errors = [1.0 - z * (1.0 if t else -1.0) for z, t in zip(logits, target, strict=True)]
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    positives = {i for i, t in enumerate(target) if t}

    def jaccard_loss(mispredicted: set[int]) -> float:
        return len(mispredicted) / len(positives | mispredicted) if mispredicted else 0.0

    total, previous = 0.0, 0.0
    for k in range(1, len(order) + 1):
        current = jaccard_loss(set(order[:k]))
        total += max(errors[order[k - 1]], 0.0) * (current - previous)
        previous = current
    return total


def _loss_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2, 4, 8, 12)
    mask[0, 0, 2:5, 3:9] = 1
    mask[1, 2] = 1  # a full pair; the others are empty
    mask_logits = torch.randn(2, 4, 8, 12, generator=g) * 2
    class_logits = torch.randn(2, 4, generator=g)
    return mask_logits, class_logits, mask


# ------------------------------------------------------------------------------------------------------
# lovasz_grad / lovasz_hinge_per_pair
# ------------------------------------------------------------------------------------------------------
def test_lovasz_grad_of_empty_and_full_targets_and_sums_to_one():
    assert lovasz_grad(torch.zeros(5)).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert lovasz_grad(torch.ones(4)).tolist() == pytest.approx([0.25] * 4)
    # J(all mispredicted) = 1 whatever the target: the weights telescope to 1 (batched over rows).
    gt = (torch.rand(3, 2, 10, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    assert torch.allclose(lovasz_grad(gt).sum(-1), torch.ones(3, 2))
    assert lovasz_grad(gt).shape == gt.shape


def test_perfect_prediction_with_margin_has_zero_loss():
    target = torch.zeros(2, 4, 8, 12)
    target[0, 0, 2:5, 3:9] = 1
    target[1, 2] = 1  # full pair; the rest are empty pairs
    logits = torch.where(target > 0, 5.0, -5.0)
    loss = lovasz_hinge_per_pair(logits, target)
    assert loss.shape == (2, 4) and torch.equal(loss, torch.zeros(2, 4))


def test_hand_computed_case():
    # logits z = [2, -1, 0.5, -3], target y = [1, 0, 0, 1], signs s = 2y - 1 = [1, -1, -1, 1].
    # errors e = 1 - z * s = [-1, 0, 1.5, 4]; decreasing: 4 (y=1), 1.5 (y=0), 0 (y=0), -1 (y=1).
    # gt_sorted = [1, 0, 0, 1], gts = 2: intersection = gts - cumsum(gt) = [1, 1, 1, 0],
    # union = gts + cumsum(1 - gt) = [2, 3, 4, 4]; J = 1 - I/U = [1/2, 2/3, 3/4, 1];
    # lovasz_grad = differences = [1/2, 1/6, 1/12, 1/4] (sum 1).
    # loss = relu(e_sorted) . grad = 4 * 1/2 + 1.5 * 1/6 + 0 * 1/12 + 0 * 1/4 = 2 + 0.25 = 2.25.
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0]).view(1, 1, 1, 4)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 1, 4)
    assert lovasz_grad(torch.tensor([1.0, 0.0, 0.0, 1.0])).tolist() == pytest.approx(
        [1 / 2, 1 / 6, 1 / 12, 1 / 4]
    )
    assert lovasz_hinge_per_pair(logits, target).item() == pytest.approx(2.25)
    assert _reference_lovasz_hinge([2.0, -1.0, 0.5, -3.0], [1, 0, 0, 1]) == pytest.approx(2.25)


def test_each_pair_is_its_own_binary_problem_and_matches_the_definition():
    mask_logits, _, mask = _loss_inputs(seed=1)
    mask[1, 3, :4] = 1  # a half-full pair too
    loss = lovasz_hinge_per_pair(mask_logits, mask)
    assert loss.shape == (2, 4) and loss.dtype == torch.float32
    for i in range(2):
        for c in range(4):
            z, y = mask_logits[i, c].flatten().tolist(), mask[i, c].flatten().int().tolist()
            assert loss[i, c].item() == pytest.approx(_reference_lovasz_hinge(z, y), rel=1e-5, abs=1e-6)


def test_empty_and_full_targets():
    logits = torch.tensor([-2.0, 0.3, -1.5, -4.0]).view(1, 1, 2, 2)
    empty = lovasz_hinge_per_pair(logits, torch.zeros_like(logits))
    assert torch.isfinite(empty).all() and empty.item() == pytest.approx(1.3)  # relu(1 + max logit)
    full = lovasz_hinge_per_pair(logits, torch.ones_like(logits))
    assert full.item() == pytest.approx((3.0 + 0.7 + 2.5 + 5.0) / 4)  # mean(relu(1 - logit))
    assert lovasz_hinge_per_pair(torch.full((1, 1, 2, 2), -3.0), torch.zeros(1, 1, 2, 2)).item() == 0.0


def test_gradient_flows_for_a_wrong_prediction():
    target = torch.zeros(2, 3, 4, 5)
    target[0, 1, 1:3, 1:4] = 1
    logits = torch.where(target > 0, -2.0, 2.0).requires_grad_(True)  # every pixel wrong
    loss = lovasz_hinge_per_pair(logits, target).mean()
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # Pushing a wrong positive logit down (a wrong negative one up) lowers the loss.
    assert (logits.grad[0, 1][target[0, 1] > 0] <= 0).all() and logits.grad[0, 1][target[0, 1] > 0].min() < 0
    assert (logits.grad[target == 0] >= 0).all()


def test_half_precision_inputs_are_computed_in_float32():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0], dtype=torch.bfloat16).view(1, 1, 1, 4)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 1, 4)
    loss = lovasz_hinge_per_pair(logits, target)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(2.25)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"must be equal"):
        lovasz_hinge_per_pair(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 5))


# ------------------------------------------------------------------------------------------------------
# SegClsLoss(lovasz_weight=...)
# ------------------------------------------------------------------------------------------------------
def test_lovasz_weight_adds_the_mean_over_pairs_to_the_total():
    mask_logits, class_logits, mask = _loss_inputs()
    image_logits = torch.tensor([0.5, -1.0])
    for image in (None, image_logits):
        base = SegClsLoss()(mask_logits, class_logits, mask, image_logits=image)
        out = SegClsLoss(lovasz_weight=0.5)(mask_logits, class_logits, mask, image_logits=image)
        expected = lovasz_hinge_per_pair(mask_logits, mask).mean()
        assert torch.allclose(out["loss_lovasz"], expected)
        assert out["loss"].item() == pytest.approx(base["loss"].item() + 0.5 * expected.item(), rel=1e-6)
        for key in base:
            if key != "loss":
                assert torch.equal(out[key], base[key]), key


def test_lovasz_term_trains_through_the_loss():
    mask_logits, class_logits, mask = _loss_inputs()
    mask_logits.requires_grad_(True)
    out = SegClsLoss(bce_weight=0.0, dice_weight=0.0, cls_weight=0.0, lovasz_weight=1.0)(
        mask_logits, class_logits, mask
    )
    out["loss"].backward()
    assert torch.isfinite(mask_logits.grad).all() and mask_logits.grad.abs().sum() > 0


def test_zero_lovasz_weight_is_not_computed_and_changes_nothing(monkeypatch):
    mask_logits, class_logits, mask = _loss_inputs()
    before = SegClsLoss()(mask_logits, class_logits, mask)

    def boom(*args, **kwargs):
        raise AssertionError("the Lovasz hinge must not be computed with lovasz_weight=0")

    monkeypatch.setattr(losses, "lovasz_hinge_per_pair", boom)
    out = SegClsLoss(lovasz_weight=0.0)(mask_logits, class_logits, mask)
    assert "loss_lovasz" not in out and set(out) == set(before)
    assert torch.equal(out["loss"], before["loss"])


@pytest.mark.parametrize("weight", [-0.1, math.nan, math.inf, "1", True])
def test_bad_lovasz_weight_names_the_key(weight):
    with pytest.raises(ValueError, match=r"model\.loss\.lovasz_weight"):
        SegClsLoss(lovasz_weight=weight)
