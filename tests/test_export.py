"""ONNX export (steel_defect.export) and predict.py task=export / runtime=onnx, on a tiny U-Net at 64x320."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, SMALL_SHAPE, TINY_NET
from tests.helpers import make_tiny_checkpoint, separated_thresholds

pytest.importorskip("onnx", reason="the onnx extra is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from steel_defect.deploy.onnx_export import (
    PROB_TOLERANCE,
    compare_with_torch,
    export_onnx,
    read_onnx_metadata,
)
from steel_defect.inference.onnx_model import IMAGE_OUTPUT_NAME, INPUT_NAME, METADATA_KEY, OUTPUT_NAMES
from steel_defect.inference.onnx_net import OnnxNet

H, W = SMALL_SHAPE


# ------------------------------------------------------------------------------------------------ helpers
def run_predict(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "predict.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"predict.py {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def tiny_net():
    from steel_defect.models.factory import build_model

    torch.manual_seed(0)
    return build_model(TINY_NET).eval()


@pytest.fixture(scope="module")
def exported(tiny_net, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    return {
        # the tests below compare with torch themselves; the dynamic export also runs the built-in check
        "fixed": export_onnx(tiny_net, root / "fixed.onnx", height=H, width=W, verify=False),
        "dynamic": export_onnx(tiny_net, root / "dynamic.onnx", height=H, width=W, dynamic_width=True),
    }


@pytest.fixture(scope="module")
def head_net():
    from steel_defect.models.factory import build_model

    torch.manual_seed(1)
    return build_model({**TINY_NET, "image_head": True}).eval()


@pytest.fixture(scope="module")
def exported_head(head_net, tmp_path_factory) -> Path:
    # verify=True: the export itself checks mask, class and image probabilities at two widths
    return export_onnx(
        head_net, tmp_path_factory.mktemp("onnx_head") / "head.onnx", height=H, width=W, dynamic_width=True
    )


# ------------------------------------------------------------------------------------------------ export
@pytest.mark.slow
def test_onnx_file_is_valid_and_carries_metadata(exported, tiny_net):
    import onnx

    for kind, path in exported.items():
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert [i.name for i in model.graph.input] == [INPUT_NAME]
        assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and dims[2].dim_value == H
        assert (dims[3].dim_param == "width") if kind == "dynamic" else (dims[3].dim_value == W)
        assert METADATA_KEY in {p.key for p in model.metadata_props}
        meta = read_onnx_metadata(path)
        assert meta["net"] == tiny_net.config
        assert meta["classes"] == 4 and meta["height"] == H and meta["dynamic_width"] is (kind == "dynamic")
        assert meta["width"] == (None if kind == "dynamic" else W)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3])
def test_probabilities_match_torch_fixed_width(exported, tiny_net, batch):
    x = torch.rand(batch, 3, H, W, generator=torch.Generator().manual_seed(batch))
    gap = compare_with_torch(tiny_net, OnnxNet(exported["fixed"]), x)
    assert gap["mask"] < PROB_TOLERANCE and gap["class"] < PROB_TOLERANCE, gap


@pytest.mark.slow
@pytest.mark.parametrize("width", [W, 2 * W, W - 64])
def test_probabilities_match_torch_dynamic_width(exported, tiny_net, width):
    x = torch.rand(2, 3, H, width, generator=torch.Generator().manual_seed(width))
    onnx_net = OnnxNet(exported["dynamic"], intra_op_threads=1)
    mask, cls = onnx_net(x)
    assert mask.shape == (2, 4, H, width) and cls.shape == (2, 4) and mask.dtype == torch.float32
    gap = compare_with_torch(tiny_net, onnx_net, x)
    assert gap["mask"] < PROB_TOLERANCE and gap["class"] < PROB_TOLERANCE, gap


@pytest.mark.slow
def test_onnx_net_drops_into_predict_batch_with_tta(exported, tiny_net):
    """Padding, hflip TTA and averaging are torch code around the net: the same for both runtimes."""
    from steel_defect.inference.predictor import predict_batch

    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(7))
    t_mask, t_cls, _ = predict_batch(tiny_net, x, tta=["hflip"])
    o_mask, o_cls, _ = predict_batch(OnnxNet(exported["fixed"]), x, tta=["hflip"])
    assert (t_mask - o_mask).abs().max() < PROB_TOLERANCE and (t_cls - o_cls).abs().max() < PROB_TOLERANCE


@pytest.mark.slow
def test_image_head_is_a_third_onnx_output_matching_torch(exported_head, head_net, exported, tiny_net):
    import onnx

    model = onnx.load(str(exported_head))
    assert [o.name for o in model.graph.output] == [*OUTPUT_NAMES, IMAGE_OUTPUT_NAME]
    assert model.graph.output[2].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = read_onnx_metadata(exported_head)
    assert meta["image_head"] is True and meta["outputs"] == [*OUTPUT_NAMES, IMAGE_OUTPUT_NAME]
    assert meta["net"]["image_head"] is True
    assert read_onnx_metadata(exported["fixed"])["image_head"] is False
    onnx_net = OnnxNet(exported_head)
    assert onnx_net.image_head and not OnnxNet(exported["fixed"]).image_head
    for batch, width in ((1, W), (3, W + 64)):
        x = torch.rand(batch, 3, H, width, generator=torch.Generator().manual_seed(batch))
        mask, cls, img = onnx_net(x)
        assert mask.shape == (batch, 4, H, width) and cls.shape == (batch, 4) and img.shape == (batch,)
        gap = compare_with_torch(head_net, onnx_net, x)
        assert set(gap) == {"mask", "class", "image"} and max(gap.values()) < PROB_TOLERANCE, gap
    # Through predict_batch (padding, TTA, averaging): the image probabilities agree too.
    from steel_defect.inference.predictor import predict_batch

    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(9))
    t_mask, t_cls, t_img = predict_batch(head_net, x, tta=["hflip"])
    o_mask, o_cls, o_img = predict_batch(onnx_net, x, tta=["hflip"])
    assert (t_img - o_img).abs().max() < PROB_TOLERANCE and (t_mask - o_mask).abs().max() < PROB_TOLERANCE
    # A torch net and an ONNX model that disagree about the head are not compared silently.
    with pytest.raises(ValueError, match="image head mismatch: the torch net has image output"):
        compare_with_torch(head_net, OnnxNet(exported["fixed"]), x)
    with pytest.raises(ValueError, match="image head mismatch: the torch net has no image output"):
        compare_with_torch(tiny_net, onnx_net, x)


def test_export_leaves_the_net_as_it_was(tiny_net, tmp_path):
    tiny_net.train()
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    export_onnx(tiny_net, tmp_path / "m.onnx", height=H, width=W, verify=False)
    assert tiny_net.training
    tiny_net.eval()
    assert all(torch.equal(before[k], v) for k, v in tiny_net.state_dict().items())


def test_export_that_disagrees_with_torch_is_removed(tiny_net, tmp_path, monkeypatch):
    import steel_defect.deploy.onnx_export as export

    monkeypatch.setattr(export, "compare_with_torch", lambda *a: {"mask": 0.5, "class": 0.0})
    with pytest.raises(RuntimeError, match="disagrees with torch at width 320"):
        export_onnx(tiny_net, tmp_path / "bad.onnx", height=H, width=W)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.slow
def test_fixed_width_model_rejects_other_widths(exported):
    net = OnnxNet(exported["fixed"])
    with pytest.raises(ValueError, match=r"fixed width 320.*got input width 640.*dynamic_width=true"):
        net(torch.rand(1, 3, H, 2 * W))
    with pytest.raises(ValueError, match=r"exported for height 64.*input height 96"):
        net(torch.rand(1, 3, 96, W))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.rand(3, H, W))


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ONNX model not found: .*nope\.onnx.*task=export"):
        OnnxNet(tmp_path / "nope.onnx")


def test_foreign_onnx_model_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["image"], ["mask_logits"]),
            helper.make_node("Identity", ["image"], ["class_logits"]),
        ],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, H, W])],
        [
            helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, [1, 3, H, W]),
            helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, [1, 3, H, W]),
        ],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "foreign.onnx"
    )
    with pytest.raises(ValueError, match="no 'steel_defect' metadata"):
        OnnxNet(tmp_path / "foreign.onnx")


@pytest.mark.slow
def test_missing_extra_names_the_install_command(monkeypatch, exported, tiny_net, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r'pip install "steel-defect\[onnx\]"'):
        OnnxNet(exported["fixed"])
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r'pip install "steel-defect\[onnx\]"'):
        export_onnx(tiny_net, tmp_path / "x.onnx", height=H, width=W)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"height": 60}, "height must be a positive multiple of .* 32"),
        ({"width": 330}, "width must"),
        ({"opset": 9}, "opset"),
    ],
)
def test_bad_export_arguments(tiny_net, tmp_path, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        export_onnx(tiny_net, tmp_path / "bad.onnx", **{"height": H, "width": W, **kwargs})
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ predict.py
@pytest.mark.slow
@pytest.mark.parametrize("image_head", [False, True])
def test_predict_task_export_then_runtime_onnx_gives_the_same_submission(
    tmp_path, small_synthetic, image_head
):
    """With an image head the thresholds gate on it, so the ONNX image output is used by the submission."""
    from steel_defect.models.checkpoint import load_net_from_checkpoint
    from steel_defect.postprocess.params import load_thresholds
    from steel_defect.submission import read_submission
    from steel_defect.tasks.dispatch import run

    ckpt = make_tiny_checkpoint(tmp_path / "run" / "tiny.ckpt", image_head=image_head)
    images = small_synthetic / "test_images"
    net, _ = load_net_from_checkpoint(ckpt)
    separated_thresholds(net, images, ckpt.parent / "thresholds.yaml", tta=["hflip"])
    assert (load_thresholds(ckpt.parent / "thresholds.yaml").img_source == "image_head") is image_head
    onnx_path = tmp_path / "run" / "tiny.onnx"

    if image_head:  # the CLI is covered by the other case: in process here
        run({"task": "export", "ckpt": str(ckpt), "export": {"out": str(onnx_path), "height": H, "width": W}})
        assert OnnxNet(onnx_path).image_head
    else:
        run_predict(
            [
                f"ckpt={ckpt}",
                "task=export",
                f"export.out={onnx_path}",
                f"export.height={H}",
                f"export.width={W}",
            ],
            tmp_path,
        )
    assert read_onnx_metadata(onnx_path)["meta"]["net"] == net.config
    # The two predictions run in-process through predict.py's entry point (the CLI above covers Hydra).
    common = {"images": str(images), "device": "cpu", "num_workers": 0, "batch_size": 3, "tta": ["hflip"]}
    run({"ckpt": str(ckpt), "runtime": "torch", "out": str(tmp_path / "torch.csv"), **common})
    run({"ckpt": str(onnx_path), "runtime": "onnx", "out": str(tmp_path / "onnx.csv"), **common})

    torch_csv, onnx_csv = (tmp_path / "torch.csv").read_bytes(), (tmp_path / "onnx.csv").read_bytes()
    sub = read_submission(tmp_path / "torch.csv")
    assert len(sub) == 4 * len(list(images.glob("*.jpg")))
    assert (sub["EncodedPixels"] != "").sum() >= 4, "the comparison needs non-empty masks"
    assert torch_csv == onnx_csv


@pytest.mark.slow
def test_export_carries_the_tuned_thresholds_and_their_binding(tmp_path):
    from steel_defect.inference.onnx_net import OnnxNet
    from steel_defect.postprocess.thresholds import resolve_thresholds
    from steel_defect.tasks.dispatch import run
    from tests.helpers import config, isolated_ckpt, tiny_run

    files = tiny_run(tmp_path / "run")
    ckpt = isolated_ckpt(files, tmp_path)
    data = {"root": str(files["data"]), "split": str(files["run"] / "split.json")}
    tuned = run(config(task="tune", ckpt=str(ckpt), data=data, tta=["hflip"]))
    result = run(config(task="export", ckpt=str(ckpt), export={"height": 64, "width": 320}, tta=["hflip"]))
    assert result["thresholds"] == tuned["thresholds"]
    onnx_path = Path(result["onnx"])
    net = OnnxNet(onnx_path)
    assert net.tuned_thresholds["params"] == tuned["params"] and net.tuned_thresholds["tta"] == ["hflip"]
    # Alone in another folder, the ONNX model predicts with the thresholds it carries.
    lonely = tmp_path / "lonely" / "model.onnx"
    lonely.parent.mkdir()
    lonely.write_bytes(onnx_path.read_bytes())
    meta = dict(OnnxNet(lonely).meta["meta"])
    params, source = resolve_thresholds("auto", lonely, meta)
    assert params.to_dict() == tuned["params"] and source.startswith("tuned thresholds stored in")
    images = files["data"] / "test_images"
    # tta: null follows the TTA the carried thresholds were tuned with (no thresholds.yaml beside it);
    # otherwise the binding check would refuse this run ("tuned with tta=['hflip'], this run uses tta=[]")
    run(config(ckpt=str(lonely), runtime="onnx", images=str(images), out=str(tmp_path / "s.csv")))
    with pytest.raises(ValueError, match="tuned with tta"):
        run(
            config(
                ckpt=str(lonely),
                runtime="onnx",
                tta=["vflip"],
                images=str(images),
                out=str(tmp_path / "t.csv"),
            )
        )
