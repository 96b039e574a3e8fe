"""steel_defect.inference and steel_defect.report, in process: TTA, padding, ensembles, submission files,
checkpoint and threshold loading, corrupt and other-size images, evaluation report, tuning, overlays.

The tiny run (synthetic 64x320 data + a 1-step checkpoint) is built once per session by the `run_files`
fixture of tests/conftest.py (tests.helpers.tiny_run), which other test modules share.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from steel_defect.inference.predictor import TTA_TRANSFORMS, load_nets, pad_to_multiple, predict_batch
from steel_defect.postprocess.apply import postprocess
from steel_defect.postprocess.params import PostprocessParams
from steel_defect.postprocess.thresholds import resolve_thresholds
from steel_defect.report import (
    CLASS_COLORS,
    classification_table,
    confusion_matrix,
    evaluation_report,
    render_overlay,
)
from steel_defect.rle import rle_decode, rle_encode
from steel_defect.submission import read_submission, write_submission
from steel_defect.tasks.dispatch import run
from tests.conftest import SAMPLES, TINY_NET
from tests.helpers import SHAPE, config, isolated_ckpt

TINY_NET = {**TINY_NET, "classes": 4}


@pytest.fixture(scope="session")
def net(run_files):
    nets, _ = load_nets([run_files["a"]])
    return nets[0]


# ======================================================================================================
# TTA, padding, ensembles
# ======================================================================================================
@pytest.mark.parametrize("name", sorted(TTA_TRANSFORMS))
def test_each_tta_view_flips_the_axes_it_names_and_is_flipped_back(name):
    """The view named ``name`` is the flip a user expects (hflip: left-right, vflip: up-down, hvflip: both),
    written out here, not taken from TTA_FLIPS; the masks predicted under it are that flip undone."""
    flip = {
        "hflip": lambda t: t.flip(-1),
        "vflip": lambda t: t.flip(-2),
        "hvflip": lambda t: t.flip(-1).flip(-2),
    }
    assert set(flip) == set(TTA_TRANSFORMS)
    net = CornerRamp()
    x = torch.rand(1, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    masks, _, _ = predict_batch(net, x, tta=[name])
    expected = (net(x)[0].sigmoid() + flip[name](net(flip[name](x))[0].sigmoid())) / 2
    torch.testing.assert_close(masks, expected)
    for other in set(flip) - {name}:  # the ramp tells the three flips apart
        wrong = (net(x)[0].sigmoid() + flip[other](net(flip[other](x))[0].sigmoid())) / 2
        assert not torch.allclose(masks, wrong)


class CornerRamp(nn.Module):
    """Mask logits that grow along both the rows and the columns: no flip leaves them unchanged."""

    def forward(self, x):
        h, w = x.shape[-2:]
        ramp = torch.linspace(-3, 3, h)[:, None] + 2 * torch.linspace(-3, 3, w)[None, :]
        return (x[:, :1] + ramp).repeat(1, 4, 1, 1), x.mean(dim=(1, 2, 3))[:, None].repeat(1, 4)


class FlipEquivariant(nn.Module):
    """1x1 conv masks (commute with flips) and global-mean class logits (invariant to flips)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0, "input not padded to the stride"
        return self.conv(x), self.fc(x.mean(dim=(2, 3)))


class LeftRamp(nn.Module):
    """Mask logits that depend on the column: not flip-equivariant."""

    def forward(self, x):
        ramp = torch.linspace(-3, 3, x.shape[-1]).expand_as(x[:, :1])
        return (x[:, :1] + ramp).repeat(1, 4, 1, 1), x.mean(dim=(1, 2, 3))[:, None].repeat(1, 4)


def test_tta_of_a_flip_equivariant_net_equals_the_plain_prediction():
    x = torch.rand(2, 3, 64, 96)
    net = FlipEquivariant().eval()
    plain = predict_batch(net, x)
    for tta in (["hflip"], ["vflip"], ["hflip", "vflip", "hvflip"]):
        masks, cls, _ = predict_batch(net, x, tta=tta)
        torch.testing.assert_close(masks, plain[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(cls, plain[1], rtol=0, atol=1e-6)


def test_tta_de_augments_the_views():
    x = torch.rand(1, 3, 32, 64)
    net = LeftRamp()
    masks, _, _ = predict_batch(net, x, tta=["hflip"])
    expected = (net(x)[0].sigmoid() + net(x.flip(-1))[0].sigmoid().flip(-1)) / 2
    torch.testing.assert_close(masks, expected)
    assert not torch.allclose(masks, net(x)[0].sigmoid())


def test_unknown_tta_is_refused():
    with pytest.raises(ValueError, match="hflip"):
        predict_batch(FlipEquivariant(), torch.rand(1, 3, 32, 32), tta=["rot90"])


def test_padding_to_the_stride_and_cropping_back():
    x = torch.rand(2, 3, 50, 70)
    padded, size = pad_to_multiple(x, 32)
    assert padded.shape[-2:] == (64, 96) and size == (50, 70)
    assert torch.equal(padded[..., :50, :70], x) and padded[..., 50:, :].abs().sum() == 0
    masks, cls, _ = predict_batch(FlipEquivariant(), x)  # the net asserts its input is padded
    assert masks.shape == (2, 4, 50, 70) and cls.shape == (2, 4)


def test_ensemble_averages_probabilities():
    x = torch.rand(2, 3, 32, 64)
    a, b = FlipEquivariant(), LeftRamp()
    masks, cls, _ = predict_batch([a, b], x)
    torch.testing.assert_close(masks, (predict_batch(a, x)[0] + predict_batch(b, x)[0]) / 2)
    torch.testing.assert_close(cls, (predict_batch(a, x)[1] + predict_batch(b, x)[1]) / 2)


class WithImageHead(FlipEquivariant):
    """FlipEquivariant plus a third output: an image logit that is the mean of the image."""

    def forward(self, x):
        mask, cls = super().forward(x)
        return mask, cls, 4 * x.mean(dim=(1, 2, 3)) - 2


def test_image_head_probabilities_through_tta_and_ensembles():
    from steel_defect.models.factory import split_outputs

    x = torch.rand(2, 3, 50, 70)
    head = WithImageHead().eval()
    masks, cls, img = predict_batch(head, x, tta=["hflip", "vflip"])
    assert masks.shape == (2, 4, 50, 70) and cls.shape == (2, 4) and img.shape == (2,)
    padded, _ = pad_to_multiple(x, 32)  # the net sees the zero-padded image, as in SteelNet
    torch.testing.assert_close(img, (4 * padded.mean(dim=(1, 2, 3)) - 2).sigmoid(), rtol=0, atol=1e-6)
    # Mask and class probabilities are those of the same net without the head.
    plain = predict_batch(FlipEquivariant().eval(), x, tta=["hflip", "vflip"])
    assert plain[2] is None
    torch.testing.assert_close(masks, plain[0], rtol=0, atol=0)
    # An ensemble averages the image probabilities too; one member without a head -> None.
    other = WithImageHead().eval()
    with torch.no_grad():
        other.conv.weight.mul_(-1)
    _, _, both = predict_batch([head, other], x)
    torch.testing.assert_close(both, img, rtol=0, atol=1e-6)  # the image logit ignores the weights
    assert predict_batch([head, FlipEquivariant()], x)[2] is None
    with pytest.raises(
        ValueError, match=r"must return \(mask_logits, class_logits\[, image_logits\]\), got a 4-tuple"
    ):
        split_outputs((x, x, x, x))
    with pytest.raises(ValueError, match="got Tensor"):
        split_outputs(x)


# ======================================================================================================
# Submission files
# ======================================================================================================
ROWS = [("a.jpg", ["1 3", "", "", "10 2"]), ("b.jpg", ["", "", "", ""])]


def test_write_submission_current_format_exactly(tmp_path):
    path = tmp_path / "submission.csv"
    assert write_submission(ROWS, path) == 2
    assert path.read_text() == (
        "ImageId,EncodedPixels,ClassId\n"
        "a.jpg,1 3,1\na.jpg,,2\na.jpg,,3\na.jpg,10 2,4\n"
        "b.jpg,,1\nb.jpg,,2\nb.jpg,,3\nb.jpg,,4\n"
    )


def test_write_submission_legacy_format_exactly(tmp_path):
    path = tmp_path / "submission.csv"
    write_submission(ROWS, path, fmt="legacy")
    assert path.read_text() == (
        "ImageId_ClassId,EncodedPixels\n"
        "a.jpg_1,1 3\na.jpg_2,\na.jpg_3,\na.jpg_4,10 2\n"
        "b.jpg_1,\nb.jpg_2,\nb.jpg_3,\nb.jpg_4,\n"
    )


@pytest.mark.parametrize("fmt", ["current", "legacy"])
def test_read_submission_round_trips(tmp_path, fmt):
    path = tmp_path / "s.csv"
    write_submission(ROWS, path, fmt=fmt)
    frame = read_submission(path)
    assert frame["ImageId"].tolist() == ["a.jpg"] * 4 + ["b.jpg"] * 4
    assert frame["ClassId"].tolist() == [1, 2, 3, 4] * 2
    assert frame["EncodedPixels"].tolist() == ["1 3", "", "", "10 2", "", "", "", ""]


def test_write_submission_refuses_unsorted_rows_and_bad_format(tmp_path):
    with pytest.raises(ValueError, match="sorted"):
        write_submission(ROWS[::-1], tmp_path / "s.csv")
    with pytest.raises(ValueError, match="4 RLE"):
        write_submission([("a.jpg", ["", ""])], tmp_path / "s.csv")
    with pytest.raises(ValueError, match="current, legacy"):
        write_submission(ROWS, tmp_path / "s.csv", fmt="kaggle")
    assert not any(tmp_path.iterdir())


def test_a_crash_mid_way_leaves_the_existing_submission_intact(tmp_path):
    path = tmp_path / "submission.csv"
    write_submission(ROWS, path)
    before = path.read_bytes()

    def crashing():
        yield ROWS[0]
        raise RuntimeError("killed mid-way")

    with pytest.raises(RuntimeError, match="killed"):
        write_submission(crashing(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]  # no temp file left behind


def test_read_submission_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("ImageId_ClassId,EncodedPixels\na.jpg_1,\nnoclass,1 2\n")
    with pytest.raises(ValueError, match=r"bad\.csv: line 3: 'noclass'"):
        read_submission(path)
    path.write_text("Foo,Bar\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        read_submission(path)


@pytest.mark.slow
def test_real_legacy_kernel_submission_converts_to_current_format(tmp_path):
    legacy = SAMPLES / "public-kernel-submission-legacy.csv"
    if not legacy.is_file():
        pytest.skip(f"real Kaggle sample files not found at {SAMPLES}")
    frame = read_submission(legacy)
    assert len(frame) == 22_024 and (frame.groupby("ImageId").size() == 4).all()
    assert (frame["EncodedPixels"] != "").sum() == 1_793
    rows = [
        (image_id, group.sort_values("ClassId")["EncodedPixels"].tolist())
        for image_id, group in frame.groupby("ImageId", sort=True)
    ]
    write_submission(rows, tmp_path / "current.csv")
    again = read_submission(tmp_path / "current.csv")
    key = ["ImageId", "ClassId"]
    assert again.sort_values(key).reset_index(drop=True).equals(frame.sort_values(key).reset_index(drop=True))


# ======================================================================================================
# Checkpoints and thresholds
# ======================================================================================================
def test_missing_and_foreign_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.ckpt"):
        load_nets([tmp_path / "nope.ckpt"])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {}}, foreign)
    with pytest.raises(ValueError, match="not a steel-defect checkpoint"):
        load_nets([foreign])
    text = tmp_path / "train.csv"
    text.write_text("ImageId,ClassId,EncodedPixels\n")
    with pytest.raises(ValueError, match="not a steel-defect checkpoint .*train.csv"):
        load_nets([text])


def test_a_checkpoint_carrying_a_pickled_object_is_refused(run_files, tmp_path):
    ckpt = torch.load(run_files["a"], weights_only=True)
    ckpt["hyper_parameters"]["callback"] = functools.partial(print, "code ran")
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    with pytest.raises(ValueError, match="refused to load .*evil.ckpt: it holds pickled objects") as err:
        load_nets([evil])
    assert "functools.partial" in str(err.value) and "weights_only=True" in str(err.value)
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)


def test_ensemble_checkpoints_must_share_classes(run_files, tmp_path):
    ckpt = torch.load(run_files["a"], weights_only=True)
    ckpt["steel_defect"]["classes"] = ["1", "2", "3", "5"]
    odd = tmp_path / "odd.ckpt"
    torch.save(ckpt, odd)
    with pytest.raises(ValueError, match="different classes"):
        load_nets([run_files["a"], odd])


def test_threshold_resolution(run_files, tmp_path):
    ckpt = isolated_ckpt(run_files, tmp_path)
    meta = torch.load(ckpt, weights_only=True)["steel_defect"]
    params, source = resolve_thresholds("auto", ckpt, meta)
    assert params == PostprocessParams.from_dict(meta["postprocess"]) and "stored in" in source
    assert resolve_thresholds("raw", ckpt, meta)[0] == PostprocessParams.disabled()
    assert resolve_thresholds("defaults", ckpt, meta)[0] == PostprocessParams.notebook_defaults()
    tuned = PostprocessParams(t_cls=[0.1, 0.2, 0.3, 0.4])
    from steel_defect.postprocess.params import save_thresholds

    save_thresholds(tuned, ckpt.parent / "thresholds.yaml")
    assert resolve_thresholds("auto", ckpt, meta) == (tuned, str(ckpt.parent / "thresholds.yaml"))
    other = save_thresholds(PostprocessParams(t_cls=[0.9] * 4), tmp_path / "mine.yaml")
    assert resolve_thresholds(str(other), ckpt, meta)[0].t_cls == [0.9] * 4
    with pytest.raises(FileNotFoundError, match="thresholds='nothing.yaml'"):
        resolve_thresholds("nothing.yaml", ckpt, meta)


@pytest.mark.slow
def test_thresholds_yaml_beside_the_checkpoint_is_used_by_default_and_raw_ignores_it(run_files, tmp_path):
    from steel_defect.postprocess.params import save_thresholds

    ckpt = isolated_ckpt(run_files, tmp_path)
    images = run_files["data"] / "test_images"
    huge = PostprocessParams.disabled()
    huge.min_area = [10**9] * 4
    save_thresholds(huge, ckpt.parent / "thresholds.yaml")
    summary = run(config(ckpt=str(ckpt), images=str(images), out=str(tmp_path / "auto.csv")))
    assert summary["thresholds"] == str(ckpt.parent / "thresholds.yaml")
    auto = read_submission(tmp_path / "auto.csv")
    assert len(auto) == 4 * 4 and (auto["EncodedPixels"] == "").all()
    run(config(ckpt=str(ckpt), images=str(images), thresholds="raw", out=str(tmp_path / "raw.csv")))
    raw = read_submission(tmp_path / "raw.csv")
    assert (raw["EncodedPixels"] != "").any()  # an untrained net under raw thresholds finds "defects"


# ======================================================================================================
# Prediction: corrupt images, other sizes, streaming order
# ======================================================================================================
@pytest.mark.slow
def test_corrupt_and_other_size_images(run_files, net, tmp_path, caplog):
    from steel_defect.data.dataset import read_image

    folder = tmp_path / "images"
    folder.mkdir()
    tests = sorted((run_files["data"] / "test_images").glob("*.jpg"))[:3]
    for p in tests:
        shutil.copy(p, folder / p.name)
    (folder / "0_truncated.jpg").write_bytes((tests[0]).read_bytes()[:200])
    (folder / "zz_garbage.jpg").write_bytes(os.urandom(512))
    big = cv2.resize(cv2.imread(str(tests[1])), (200, 80))  # 80x200: other size, not a multiple of 32
    cv2.imwrite(str(folder / "m_other.png"), big)
    out = tmp_path / "submission.csv"
    with caplog.at_level(logging.WARNING):
        summary = run(config(ckpt=str(run_files["a"]), images=str(folder), thresholds="raw", out=str(out)))
    assert summary["unreadable"] == ["0_truncated.jpg", "zz_garbage.jpg"]
    assert "0_truncated.jpg" in caplog.text and "zz_garbage.jpg" in caplog.text
    frame = read_submission(out)
    names = sorted(p.name for p in folder.iterdir())
    assert frame["ImageId"].tolist() == [n for n in names for _ in range(4)]
    assert frame["ClassId"].tolist() == [1, 2, 3, 4] * len(names)
    by_id = {i: g["EncodedPixels"].tolist() for i, g in frame.groupby("ImageId")}
    assert by_id["0_truncated.jpg"] == [""] * 4 and by_id["zz_garbage.jpg"] == [""] * 4
    # The other-size image was predicted at its own size: its RLE decodes at 80x200 and equals a direct run.
    image = torch.from_numpy(read_image(folder / "m_other.png")).permute(2, 0, 1)[None].float() / 255
    mask_probs, class_probs, _ = predict_batch(net, image)
    expected = postprocess(mask_probs.numpy(), class_probs.numpy(), PostprocessParams.disabled())[0]
    decoded = np.stack([rle_decode(r, (80, 200)) for r in by_id["m_other.png"]]).astype(bool)
    assert decoded.any() and np.array_equal(decoded, expected)
    # The other images match a plain run too (batches split by size keep the sorted order).
    for p in tests:
        image = torch.from_numpy(read_image(p)).permute(2, 0, 1)[None].float() / 255
        mp, cp, _ = predict_batch(net, image)
        want = [rle_encode(m) for m in postprocess(mp.numpy(), cp.numpy(), PostprocessParams.disabled())[0]]
        assert by_id[p.name] == want


@pytest.mark.slow
def test_ensemble_and_tta_through_run(run_files, net, tmp_path):
    from steel_defect.data.dataset import read_image

    first = sorted((run_files["data"] / "test_images").glob("*.jpg"))[0]
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(first, folder / first.name)
    b = load_nets([run_files["b"]])[0][0]
    image = torch.from_numpy(read_image(first)).permute(2, 0, 1)[None].float() / 255
    for ckpts, tta, nets in (
        ([run_files["a"], run_files["b"]], [], [net, b]),
        ([run_files["a"]], ["hflip", "vflip"], [net]),
    ):
        out = tmp_path / "s.csv"
        run(config(ckpt=[str(p) for p in ckpts], tta=tta, images=str(folder), thresholds="raw", out=str(out)))
        mp, cp, _ = predict_batch(nets, image, tta=tta)
        want = [rle_encode(m) for m in postprocess(mp.numpy(), cp.numpy(), PostprocessParams.disabled())[0]]
        plain = predict_batch(net, image)
        assert not torch.allclose(mp, plain[0])  # the ensemble / TTA changes the probabilities ...
        assert read_submission(out)["EncodedPixels"].tolist() == want  # ... and run() applies them


# ======================================================================================================
# Evaluation report
# ======================================================================================================
def test_classification_table_matches_sklearn():
    from sklearn.metrics import classification_report

    rng = np.random.default_rng(0)
    true = rng.random((60, 4)) < 0.3
    pred = rng.random((60, 4)) < 0.3
    pred[:5] = False  # some NoDefect predictions
    rows = {r["label"]: r for r in classification_table(pred, true)}
    ind = lambda f: np.concatenate([f, ~f.any(axis=1, keepdims=True)], axis=1).astype(int)  # noqa: E731
    names = ["1", "2", "3", "4", "NoDefect"]
    ref = classification_report(ind(true), ind(pred), target_names=names, output_dict=True, zero_division=0)
    for label in [*names, "micro avg", "macro avg", "weighted avg"]:
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert rows[label][ours] == pytest.approx(ref[label][theirs]), (label, ours)
        assert rows[label]["support"] == ref[label]["support"]


def test_confusion_matrix_counts_multi_label_images_per_label():
    true = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]], bool)
    pred = np.array([[0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]], bool)
    cm = confusion_matrix(pred, true)
    expected = np.zeros((5, 5), int)
    expected[0, 2] = expected[2, 2] = 1  # true {1, 3} predicted {3}
    expected[4, 4] = 1  # true none predicted none
    expected[3, 4] = 1  # true {4} predicted none
    expected[4, 0] = expected[4, 1] = 1  # true none predicted {1, 2}
    assert np.array_equal(cm, expected)


def test_evaluation_report_and_empty_baseline():
    true = np.array([[1, 0, 0, 0], [0, 0, 0, 0]], bool)
    dice = np.array([[0.5, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]])
    report = evaluation_report(dice, np.array([[1, 0, 0, 0], [0, 0, 1, 0]], bool), true, unreadable=1)
    assert report["dice"]["per_class"] == [0.75, 1.0, 0.5, 1.0] and report["dice"]["mean"] == 0.8125
    assert report["baseline_empty"]["per_class"] == [0.5, 1.0, 1.0, 1.0]
    assert report["baseline_empty"]["mean"] == 0.875 and report["unreadable"] == 1
    with pytest.raises(ValueError, match="must be equal"):
        evaluation_report(dice[:1], true, true)


def test_task_evaluate_report_agrees_with_the_submission(run_files, tmp_path):
    from steel_defect.data.annotations import RLE_COLUMNS, read_train_csv
    from steel_defect.metrics import kaggle_dice_per_class

    out = tmp_path / "sub.csv"
    summary = run(
        config(task="evaluate", ckpt=str(run_files["a"]), data={"root": str(run_files["data"])}, out=str(out))
    )
    doc = json.loads((tmp_path / "evaluation.json").read_text())
    assert doc["num_images"] == 4 and doc["confusion_matrix"]["labels"][-1] == "NoDefect"
    assert doc["dice"] == summary["evaluation"]["dice"]
    pred = read_submission(out)
    truth = read_train_csv(run_files["data"] / "test_labels.csv").set_index("ImageId")
    ids = sorted(pred["ImageId"].unique())
    p = np.stack([[rle_decode(r, SHAPE) for r in pred[pred.ImageId == i]["EncodedPixels"]] for i in ids])
    t = np.stack(
        [
            [rle_decode(truth.loc[i, c], SHAPE) if i in truth.index else np.zeros(SHAPE) for c in RLE_COLUMNS]
            for i in ids
        ]
    )
    assert doc["dice"]["per_class"] == pytest.approx(kaggle_dice_per_class(p.astype(bool), t.astype(bool)))
    labels = (t.reshape(len(ids), 4, -1).any(axis=2)).astype(bool)
    assert doc["baseline_empty"]["per_class"] == pytest.approx((~labels).mean(axis=0).tolist())


def test_evaluate_needs_labels(run_files, tmp_path):
    with pytest.raises(ValueError, match="data.labels"):
        run(config(task="evaluate", ckpt=str(run_files["a"]), images=str(run_files["data"] / "test_images")))


# ======================================================================================================
# Tuning
# ======================================================================================================
def test_task_tune_writes_thresholds_beside_the_checkpoint(run_files, tmp_path, capsys):
    ckpt = isolated_ckpt(run_files, tmp_path)
    split = run_files["run"] / "split.json"
    result = run(
        config(task="tune", ckpt=str(ckpt), data={"root": str(run_files["data"]), "split": str(split)})
    )
    path = ckpt.parent / "thresholds.yaml"
    assert result["thresholds"] == str(path)
    doc = yaml.safe_load(path.read_text())
    assert doc["report"]["num_images"] == 4 and doc["meta"]["split"] == str(split)
    assert PostprocessParams.from_dict(doc["params"]) == resolve_thresholds("auto", ckpt)[0]
    for row in doc["report"]["classes"]:
        assert (
            row["dice_tuned"] >= row["dice_default"] - 1e-12 and row["dice_tuned"] >= row["dice_raw"] - 1e-12
        )
    assert "default" in capsys.readouterr().out
    # Without data.split the run's own split.json (<ckpt>/../../split.json) is needed.
    with pytest.raises(FileNotFoundError, match="split file not found"):
        run(config(task="tune", ckpt=str(ckpt), data={"root": str(run_files["data"])}))


@pytest.mark.slow
def test_image_head_checkpoint_tunes_both_sources_and_predicts_with_the_image_gate(
    run_files, tmp_path, capsys
):
    """task=tune with an image-head net measures both gate sources; predict applies the image-head gate."""
    from steel_defect.data.dataset import read_image
    from steel_defect.postprocess.params import load_thresholds, save_thresholds

    ckpt = isolated_ckpt(run_files, tmp_path, "head")
    split = run_files["run"] / "split.json"
    result = run(
        config(task="tune", ckpt=str(ckpt), data={"root": str(run_files["data"]), "split": str(split)})
    )
    report = result["report"]
    assert set(report["image_gate"]["sources"]) == {"max_cls", "image_head"}
    assert (
        report["mean"]["dice_tuned"]
        >= max(
            report["mean"]["dice_tuned_no_gate"],
            *(v["dice"] for v in report["image_gate"]["sources"].values()),
        )
        - 1e-12
    )
    out = capsys.readouterr().out
    assert "image_head" in out and "max_cls" in out and "p_img source" in out
    # A thresholds.yaml gating on the image head: run() must give exactly postprocess(..., image_probs).
    nets, _ = load_nets([ckpt])
    images = sorted((run_files["data"] / "test_images").glob("*.jpg"))
    batch = torch.stack([torch.from_numpy(read_image(p)).permute(2, 0, 1).float() / 255 for p in images])
    mp, cp, ip = predict_batch(nets, batch)
    assert ip is not None and ip.shape == (len(images),)
    t_img = float(ip.median())
    gate = PostprocessParams.from_dict(
        {**PostprocessParams.disabled().to_dict(), "t_img": t_img, "img_source": "image_head"}
    )
    save_thresholds(gate, ckpt.parent / "thresholds.yaml")
    assert load_thresholds(ckpt.parent / "thresholds.yaml") == gate
    run(config(ckpt=str(ckpt), images=str(run_files["data"] / "test_images"), out=str(tmp_path / "s.csv")))
    frame = read_submission(tmp_path / "s.csv")
    want = postprocess(mp.numpy(), cp.numpy(), gate, image_probs=ip.numpy())
    assert frame["EncodedPixels"].tolist() == [rle_encode(m) for image in want for m in image]
    kept = want.any(axis=(1, 2, 3))
    assert kept.any() and not kept.all()  # the gate dropped some images and kept others
    # The same thresholds with a checkpoint that has no image head: a clear error before any prediction.
    plain = isolated_ckpt(run_files, tmp_path, "a")
    shutil.copy(ckpt.parent / "thresholds.yaml", plain.parent / "thresholds.yaml")
    with pytest.raises(
        ValueError, match=r"img_source='image_head'.*needs the image head.*model\.ckpt has none"
    ):
        run(
            config(
                ckpt=str(plain), images=str(run_files["data"] / "test_images"), out=str(tmp_path / "x.csv")
            )
        )
    assert not (tmp_path / "x.csv").exists()


# ======================================================================================================
# Overlays
# ======================================================================================================
def test_render_overlay_draws_classes_legend_and_truth():
    image = np.full((64, 320, 3), 128, np.uint8)
    masks = np.zeros((4, 64, 320), bool)
    masks[2, 20:40, 100:200] = True
    truth = np.zeros_like(masks)
    truth[0, 5:15, 10:30] = True
    single = render_overlay(image, masks, [0.1, 0.2, 0.9, 0.3], "x.jpg")
    both = render_overlay(image, masks, [0.1, 0.2, 0.9, 0.3], "x.jpg", true_masks=truth)
    assert single.dtype == np.uint8 and single.shape[2] == 3 and single.shape[1] >= 960
    assert both.shape[0] > single.shape[0] and both.shape[1] >= single.shape[1]
    scale = single.shape[1] // 320
    top = single.shape[0] - 64 * scale  # the image panel is at the bottom
    inside = single[top + 30 * scale, 150 * scale].astype(int)
    outside = single[top + 50 * scale, 50 * scale].astype(int)
    red = np.array(CLASS_COLORS[2])
    assert np.abs(inside - red).sum() < np.abs(outside - red).sum()  # class 3 is tinted red
    assert (outside == 128).all()  # no mask: the image as it is
    with pytest.raises(ValueError, match=r"masks must be \(4, 64, 320\)"):
        render_overlay(image, masks[:, :32], [0.1] * 4, "x.jpg")


@pytest.mark.slow
def test_overlays_written_by_run(run_files, tmp_path):
    folder = tmp_path / "ov"
    summary = run(
        config(
            ckpt=str(run_files["a"]),
            images=str(run_files["data"] / "test_images"),
            out=str(tmp_path / "s.csv"),
            overlays=2,
            overlays_dir=str(folder),
        )
    )
    files = sorted(folder.glob("*.png"))
    assert len(files) == 2 and [str(f) for f in files] == sorted(summary["overlays"])
    first = sorted((run_files["data"] / "test_images").glob("*.jpg"))[0]
    assert files[0].stem == first.stem
    picture = cv2.imread(str(files[0]))
    assert picture is not None and picture.shape[1] >= 960


# ======================================================================================================
# Thresholds bound to the weights and TTA they were tuned for
# ======================================================================================================
@pytest.mark.slow
def test_thresholds_are_refused_for_other_weights_or_another_tta(run_files, tmp_path):
    from steel_defect.fingerprint import net_fingerprint, weights_fingerprint

    ckpt_a, ckpt_b = isolated_ckpt(run_files, tmp_path, "a"), isolated_ckpt(run_files, tmp_path, "b")
    split, images = run_files["run"] / "split.json", run_files["data"] / "test_images"
    data = {"root": str(run_files["data"]), "split": str(split)}
    tuned = run(config(task="tune", ckpt=str(ckpt_a), data=data))["thresholds"]
    doc = yaml.safe_load(Path(tuned).read_text())
    (net_a,), _ = load_nets([ckpt_a])
    assert doc["meta"]["fingerprints"] == [net_fingerprint(net_a)] and doc["meta"]["tta"] == []
    # A re-saved copy of the same weights is the same model; a perturbed copy is not.
    assert weights_fingerprint({k: v.clone() for k, v in net_a.state_dict().items()}) == net_fingerprint(
        net_a
    )
    out = str(tmp_path / "s.csv")
    run(config(ckpt=str(ckpt_a), images=str(images), out=out))  # auto: the yaml beside, same weights
    with pytest.raises(ValueError, match=r"tuned for weights .* are .*task=tune"):
        run(config(ckpt=str(ckpt_b), thresholds=tuned, images=str(images), out=out))
    with pytest.raises(ValueError, match=r"tuned with tta=\[\], this run uses tta=\['hflip'\]"):
        run(config(ckpt=str(ckpt_a), tta=["hflip"], images=str(images), out=out))
    with pytest.raises(ValueError, match="tuned for weights"):  # an ensemble is other weights too
        run(config(ckpt=[str(ckpt_a), str(ckpt_b)], images=str(images), out=out))
    run(config(ckpt=str(ckpt_b), thresholds=tuned, check_thresholds=False, images=str(images), out=out))
    # Files written before fingerprints existed are accepted as they are.
    doc["meta"].pop("fingerprints")
    Path(tuned).write_text(yaml.safe_dump(doc))
    run(config(ckpt=str(ckpt_b), thresholds=tuned, images=str(images), out=out))


@pytest.mark.slow
def test_runtime_auto_is_faithful_to_the_eager_reference(run_files, tmp_path):
    """auto (channels_last weights) against eager fp32: the same probabilities to float noise, and the same
    submission and Dice on the tiny synthetic set."""
    images = run_files["data"] / "test_images"
    ref, _ = load_nets([run_files["a"]], runtime="torch")
    fast, _ = load_nets([run_files["a"]], runtime="auto")
    assert fast[0].model.encoder.model.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(predict_batch(ref, x)[:2], predict_batch(fast, x)[:2], strict=True):
            assert (a - b).abs().max() < 1e-4
    labels = run_files["data"] / "test_labels.csv"
    scores = {}
    for runtime in ("torch", "auto"):
        out = tmp_path / f"{runtime}.csv"
        summary = run(
            config(
                task="evaluate",
                ckpt=str(run_files["a"]),
                thresholds="raw",
                runtime=runtime,
                images=str(images),
                data={"labels": str(labels)},
                out=str(out),
            )
        )
        scores[runtime] = summary["evaluation"]["dice"]["mean"]
    assert abs(scores["auto"] - scores["torch"]) <= 0.002
    assert (tmp_path / "auto.csv").read_text() == (tmp_path / "torch.csv").read_text()
