"""thresholds.yaml's one ``meta`` schema (and the older layouts still read and bound), and the one
image-head gate check."""

from __future__ import annotations

import pytest
import yaml

from steel_defect.postprocess.params import PostprocessParams, load_thresholds, save_thresholds
from steel_defect.postprocess.thresholds import (
    META_SCHEMA,
    check_fingerprints,
    check_image_head_gate,
    read_thresholds_meta,
    resolve_thresholds,
    thresholds_binding,
    thresholds_meta,
)

PARAMS = PostprocessParams.notebook_defaults()

#: The three meta layouts written before the schema (task=tune, task=tune_oof, the end-of-training callback).
OLD_LAYOUTS = {
    "tune": {
        "checkpoint": "best.ckpt",
        "checkpoints": ["run/checkpoints/best.ckpt"],
        "fingerprints": ["abc"],
        "tta": ["hflip"],
        "pix_modes": ["plain", "soft"],
        "split": "run/split.json",
        "labels": "data/train.csv",
    },
    "tune_oof": {
        "checkpoints": ["m/0/best.ckpt", "m/1/best.ckpt"],
        "fingerprints": ["abc"],
        "tta": ["hflip"],
        "pix_modes": ["plain"],
        "oof": True,
        "folds": [{"checkpoint": "m/0/best.ckpt", "fold": 0, "val_images": 4}],
        "labels": "data/train.csv",
    },
    "end_of_training": {"checkpoint": "best.ckpt", "fingerprints": ["abc"], "tta": ["hflip"]},
}


def test_the_one_schema_has_every_key_whatever_the_source():
    keys = None
    for source in ("end_of_training", "tune", "tune_oof"):
        meta = thresholds_meta(source, ["a.ckpt"], ["abc"], ["hflip"], ["plain"])
        assert meta["schema"] == META_SCHEMA and meta["source"] == source
        assert keys is None or list(meta) == keys
        keys = list(meta)
    assert keys == [
        "schema", "source", "checkpoints", "fingerprints", "tta", "pix_modes", "labels", "split", "folds",
        "min_gain_pairs",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="source must be one of end_of_training, tune, tune_oof"):
        thresholds_meta("train", [], [])
    assert read_thresholds_meta(thresholds_meta("tune", ["a"], ["f"])) == thresholds_meta(
        "tune", ["a"], ["f"]
    )
    assert read_thresholds_meta(None) is None and read_thresholds_meta([1]) is None


@pytest.mark.parametrize("layout", sorted(OLD_LAYOUTS))
def test_old_layouts_still_load_and_bind(tmp_path, layout):
    old = OLD_LAYOUTS[layout]
    path = tmp_path / "thresholds.yaml"
    save_thresholds(PARAMS, path, report={"num_images": 4}, meta=old)
    assert load_thresholds(path) == PARAMS
    assert resolve_thresholds("auto", tmp_path / "best.ckpt")[0] == PARAMS
    # Read in the one schema: the source guessed from the layout, every key present.
    meta = read_thresholds_meta(yaml.safe_load(path.read_text())["meta"])
    assert meta["source"] == layout and meta["schema"] == 0
    assert set(meta) == set(thresholds_meta("tune", [], []))
    assert meta["checkpoints"] == old.get("checkpoints", ["best.ckpt"])
    assert meta["pix_modes"] == old.get("pix_modes", ["plain"]) and meta["fingerprints"] == ["abc"]
    # Still bound to the weights and the TTA they were tuned for.
    assert thresholds_binding(str(path)) == {"fingerprints": ["abc"], "tta": ["hflip"]}
    check_fingerprints(str(path), None, ["abc"], ["hflip"])
    with pytest.raises(ValueError, match="tuned for weights"):
        check_fingerprints(str(path), None, ["other"], ["hflip"])
    with pytest.raises(ValueError, match=r"tuned with tta=\['hflip'\], this run uses tta=\[\]"):
        check_fingerprints(str(path), None, ["abc"], [])


def test_the_new_layout_binds_too_and_a_file_without_fingerprints_binds_nothing(tmp_path):
    path = tmp_path / "thresholds.yaml"
    save_thresholds(PARAMS, path, meta=thresholds_meta("tune_oof", ["a", "b"], ["f1", "f2"], ["vflip"]))
    assert thresholds_binding(str(path)) == {"fingerprints": ["f1", "f2"], "tta": ["vflip"]}
    check_fingerprints(str(path), None, ["f2", "f1"], ["vflip"])
    with pytest.raises(ValueError, match="tuned for weights"):
        check_fingerprints(str(path), None, ["f1"], ["vflip"])
    doc = yaml.safe_load(path.read_text())
    doc["meta"].pop("fingerprints")
    path.write_text(yaml.safe_dump(doc))
    assert thresholds_binding(str(path)) is None
    check_fingerprints(str(path), None, ["x"], [])


def test_check_image_head_gate_names_the_models_without_the_head():
    gate = PostprocessParams(t_img=0.5, img_source="image_head")
    check_image_head_gate(gate, [True, True], ["a.ckpt", "b.ckpt"], "t.yaml")
    check_image_head_gate(PostprocessParams(t_img=0.5), [False], ["a.ckpt"])  # max_cls needs no head
    check_image_head_gate(PostprocessParams(img_source="image_head"), [False], ["a.ckpt"])  # no gate
    with pytest.raises(
        ValueError, match=r"t\.yaml: img_source='image_head' needs the image head .*but b\.ckpt has none"
    ):
        check_image_head_gate(gate, [True, False], ["a.ckpt", "b.ckpt"], "t.yaml")


def test_the_onnx_predictor_refuses_an_image_head_gate_through_the_same_check(tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from steel_defect.deploy.onnx_export import export_onnx
    from steel_defect.inference.ort_predictor import OrtPredictor
    from steel_defect.models.factory import build_model
    from tests.conftest import TINY_NET

    path = export_onnx(
        build_model({**TINY_NET, "classes": 3}).eval(), tmp_path / "m.onnx", 64, 128, meta=None
    )
    gate = PostprocessParams(**{**PostprocessParams.for_classes(3).to_dict(), "t_img": 0.5})
    save_thresholds(PostprocessParams(**{**gate.to_dict(), "img_source": "image_head"}), tmp_path / "g.yaml")
    with pytest.raises(
        ValueError, match=r"g\.yaml: img_source='image_head' needs the image head .*m\.onnx has none"
    ):
        OrtPredictor.load([path], thresholds=str(tmp_path / "g.yaml"))
    save_thresholds(gate, tmp_path / "g.yaml")  # the max_cls gate needs no image head
    assert OrtPredictor.load([path], thresholds=str(tmp_path / "g.yaml")).params == gate
