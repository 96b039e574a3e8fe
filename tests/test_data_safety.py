"""A user's data is never touched: every command pointed at a real-layout data set in the plausible wrong
ways leaves every byte of it as it was, and refuses naming the path (security review C1, H3, M7, M8, L6, L7).

The data sets are built here (Kaggle layout without a synthetic.json stamp, as a download looks, and the
plant's folder layout), hashed file by file before and after. The same commands also run against a
read-only copy: a refusal must come from the project's own check, before any write, not from a permission
error (as root the permission bits stop nothing, so the message is what the test checks).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from steel_defect.guard import UnsafeWriteError
from tests.conftest import REPO, SMALL_SHAPE

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO)}


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest), hidden files included."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def _write_kaggle_layout(root: Path) -> None:
    """A small real-looking Kaggle download: images, train.csv, sample_submission.csv, no stamp."""
    rng = np.random.default_rng(0)
    h, w = SMALL_SHAPE
    for split, n in (("train_images", 12), ("test_images", 3)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            cv2.imwrite(str(root / split / f"{split[:2]}{i:07d}.jpg"), image)
    (root / "train.csv").write_text(
        "ImageId,ClassId,EncodedPixels\ntr0000000.jpg,3,1 64 129 64\ntr0000002.jpg,1,70 5\n"
    )
    (root / "sample_submission.csv").write_text(
        "ImageId,EncodedPixels,ClassId\n" + "".join(f"te{i:07d}.jpg,1 1,0\n" for i in range(3))
    )
    (root / "README.md").write_text("labelled by hand at the mill\n")


def _write_folder_layout(root: Path) -> None:
    """The plant's layout: images/ + masks/<stem>.png (class index per pixel)."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        cv2.imwrite(
            str(root / "images" / f"p{i}.png"), rng.integers(0, 255, (*SMALL_SHAPE, 3), dtype=np.uint8)
        )
        mask = np.zeros(SMALL_SHAPE, np.uint8)
        mask[10:20, 30 + i : 60 + i] = 1 + i % 2
        cv2.imwrite(str(root / "masks" / f"p{i}.png"), mask)


@pytest.fixture
def kaggle_data(tmp_path) -> Path:
    root = tmp_path / "kaggle"
    _write_kaggle_layout(root)
    return root


@pytest.fixture
def folder_data(tmp_path) -> Path:
    root = tmp_path / "plant"
    _write_folder_layout(root)
    return root


@pytest.fixture
def read_only_copy(tmp_path, kaggle_data) -> Path:
    """The Kaggle-layout set again, every file and folder without write permission."""
    root = tmp_path / "read_only"
    shutil.copytree(kaggle_data, root)
    for p in sorted(root.rglob("*"), reverse=True) + [root]:
        p.chmod(stat.S_IMODE(p.stat().st_mode) & ~0o222)
    yield root
    for p in [root, *root.rglob("*")]:
        p.chmod(stat.S_IMODE(p.stat().st_mode) | 0o200)


def _train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    tiny = ["model=tiny", "data.shape=[64,320]", "data.num_workers=0", "trainer.accelerator=cpu"]
    cmd = [sys.executable, str(REPO / "train.py"), *tiny, f"hydra.run.dir={cwd / 'run'}", *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------------------------------ C1: train.py
@pytest.mark.slow
@pytest.mark.parametrize("which", ["kaggle_data", "read_only_copy"])
def test_train_with_the_default_synthetic_data_refuses_a_real_data_set(which, request, tmp_path):
    """`python train.py data.root=REAL` (data=synthetic by default) deleted the real set; now it refuses,
    naming the folder and the fix, and every byte stays."""
    root = request.getfixturevalue(which)
    before = tree_hashes(root)
    proc = _train([f"data.root={root}", "trainer.max_steps=1"], tmp_path)
    assert proc.returncode != 0
    message = proc.stderr + proc.stdout
    assert f"refusing to write a synthetic data set into {root}" in message
    assert "data=severstal" in message and "data=folder" in message
    assert "PermissionError" not in message and "Permission denied" not in message
    assert tree_hashes(root) == before
    assert not [p for p in root.parent.iterdir() if ".synthetic-" in p.name]  # no work folder beside it


@pytest.mark.slow
def test_the_demo_settings_on_real_data_train_on_it_and_write_nothing_there(kaggle_data, tmp_path):
    """`python train.py experiment=demo_cpu data=severstal data.root=REAL` trains on the real images with
    the demo's other settings (no generation: the demo's synthetic set lives in its data config)."""
    before = tree_hashes(kaggle_data)
    proc = _train(
        [
            "experiment=demo_cpu",
            "data=severstal",
            f"data.root={kaggle_data}",
            "model=tiny",  # after the experiment, which sets its own model
            "data.shape=[64,320]",
            "data.num_workers=0",
            "data.split.test_size=0.2",
            "data.split.val_size=0.2",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=1",
            "+trainer.limit_val_batches=1",
            "+trainer.limit_test_batches=1",
            "callbacks.tune_thresholds=null",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert tree_hashes(kaggle_data) == before
    split = (tmp_path / "run" / "split.json").read_text()
    assert "tr0000000.jpg" in split  # it trained on the real images' ids, not generated ones
    assert "generating" not in proc.stderr + proc.stdout


def test_real_data_configs_cannot_switch_generation_on(kaggle_data, tmp_path):
    """data=severstal with data.synthetic set is refused at start, naming the key; synthetic.yaml extends
    severstal.yaml, never the other way."""
    from omegaconf import OmegaConf

    from steel_defect.training.instantiate import validate_config

    conf = REPO / "conf" / "data"
    assert "synthetic" not in OmegaConf.load(conf / "severstal.yaml")
    assert "synthetic" not in OmegaConf.load(conf / "folder.yaml")
    cfg = OmegaConf.create(
        {
            "data": {
                "_target_": "steel_defect.data.SteelDataModule",
                "layout": "kaggle",
                "root": str(kaggle_data),
                "train_csv": "train.csv",
                "train_images": "train_images",
                "synthetic": {"n_train": 4, "n_test": 1},
            }
        }
    )
    with pytest.raises(ValueError, match=r"data\.synthetic is set, but data=severstal"):
        validate_config(cfg)


# ------------------------------------------------------------------------------------ M8: the generator CLI
@pytest.mark.slow
@pytest.mark.parametrize("which", ["kaggle_data", "folder_data", "read_only_copy"])
def test_synthetic_cli_overwrite_refuses_a_real_set(which, request):
    root = request.getfixturevalue(which)
    before = tree_hashes(root)
    for flags in ([], ["--overwrite"]):
        proc = subprocess.run(
            [sys.executable, "-m", "steel_defect.synthetic", "--out", str(root), "--n-train", "2", *flags],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert str(root) in proc.stderr and "did not write" in proc.stderr
        assert "pass --overwrite" not in proc.stderr  # the flag is never suggested for someone's data
        assert tree_hashes(root) == before


# ------------------------------------------------------------------------------------ H3, M7: predict.py
def _predict(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "predict.py"), "device=cpu", *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_predict_out_onto_the_data_sets_train_csv_is_refused(
    run_files, read_only_copy, kaggle_data, tmp_path
):
    """The review's H3: `predict.py ckpt=CK data.root=R out=R/train.csv` replaced the labels."""
    for root in (kaggle_data, read_only_copy):
        before = tree_hashes(root)
        proc = _predict(
            [f"ckpt={run_files['a']}", f"data.root={root}", f"out={root / 'train.csv'}"], tmp_path
        )
        assert proc.returncode != 0
        assert f"out={root / 'train.csv'}" in proc.stderr and "refusing" in proc.stderr
        assert "Permission" not in proc.stderr
        assert tree_hashes(root) == before


def _config(run_files: dict[str, Path], **kwargs):
    from steel_defect.tasks.config import parse_config

    return parse_config({"ckpt": str(run_files["a"]), "device": "cpu", **kwargs})


def test_every_predict_output_onto_an_input_is_refused_before_anything_runs(run_files, kaggle_data, tmp_path):
    """Outputs equal to an input, inside an input folder, or replacing another kind of file (M7, H3)."""
    from steel_defect.tasks.dispatch import run

    ckpt = run_files["a"]
    labels = kaggle_data / "train.csv"
    images = kaggle_data / "train_images"
    first = next(images.iterdir())
    cases = [
        ({"data": {"root": str(kaggle_data)}, "out": str(labels)}, "is one of this command's inputs"),
        ({"data": {"root": str(kaggle_data)}, "out": str(kaggle_data / "new.csv")}, "the input folder"),
        ({"data": {"images": str(images)}, "out": str(first)}, "the input folder"),
        ({"images": str(images), "overlays": 2, "overlays_dir": str(images)}, "the input folder"),
        (
            {"task": "evaluate", "images": str(images), "data": {"labels": str(labels)}, "out": str(labels)},
            "inputs",
        ),
        ({"task": "export", "export": {"out": str(ckpt)}}, "is one of this command's inputs"),
        ({"task": "export", "export": {"out": str(tmp_path / "model.ckpt")}}, "must end in .onnx"),
        ({"task": "pseudo", "images": str(images), "out": str(labels)}, "is not a pseudo-label csv"),
        (
            {"task": "pseudo", "data": {"root": str(kaggle_data)}, "out": str(kaggle_data / "p.csv")},
            "input folder",
        ),
        ({"images": str(images), "out": str(ckpt.with_name("thresholds.yaml"))}, "inputs"),
    ]
    before = tree_hashes(kaggle_data), tree_hashes(ckpt.parent)
    for overrides, needle in cases:
        c = {"ckpt": str(ckpt), "device": "cpu", **overrides}
        with pytest.raises(ValueError, match=needle) as err:  # UnsafeWriteError is a ValueError
            run(c)
        key = next(k for k in ("export", "overlays_dir", "out") if k in overrides)
        value = overrides[key]["out"] if key == "export" else overrides[key]
        assert str(value) in str(err.value), (overrides, str(err.value))
    assert (tree_hashes(kaggle_data), tree_hashes(ckpt.parent)) == before


@pytest.mark.slow
def test_existing_outputs_are_replaced_only_by_their_own_kind(run_files, tmp_path):
    """out= may replace a submission, never a label csv or a picture; overlays replace only overlays."""
    from steel_defect.tasks.dispatch import run

    images = run_files["data"] / "test_images"
    out = tmp_path / "out"
    out.mkdir()
    labels = out / "labels.csv"
    labels.write_text("ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\n")
    photo = out / "photo.png"
    cv2.imwrite(str(photo), np.zeros((8, 8, 3), np.uint8))
    before = tree_hashes(out)
    for target in (labels, photo):
        with pytest.raises(UnsafeWriteError, match="exists and is not a submission csv") as err:
            run({"ckpt": str(run_files["a"]), "device": "cpu", "images": str(images), "out": str(target)})
        assert str(target) in str(err.value)
    assert tree_hashes(out) == before
    # a submission is replaced by a submission
    sub = out / "submission.csv"
    run({"ckpt": str(run_files["a"]), "device": "cpu", "images": str(images), "out": str(sub)})
    run({"ckpt": str(run_files["a"]), "device": "cpu", "images": str(images), "out": str(sub)})
    # overlays: a picture of the user's with an overlay's name is kept, the run refused at that file
    overlays = tmp_path / "overlays"
    overlays.mkdir()
    stem = sorted(images.iterdir())[0].stem
    mine = overlays / f"{stem}.png"
    cv2.imwrite(str(mine), np.full((8, 8, 3), 7, np.uint8))
    kept = mine.read_bytes()
    args = {"ckpt": str(run_files["a"]), "device": "cpu", "images": str(images), "out": str(sub)}
    with pytest.raises(UnsafeWriteError, match=r"is not a picture this project drew \(overlay PNG\)"):
        run({**args, "overlays": 1, "overlays_dir": str(overlays)})
    assert mine.read_bytes() == kept
    mine.unlink()
    run({**args, "overlays": 1, "overlays_dir": str(overlays)})
    run({**args, "overlays": 1, "overlays_dir": str(overlays)})  # its own overlay: replaced
    from steel_defect.report import is_overlay_file

    assert is_overlay_file(mine)


def test_distributed_parts_folder_keeps_files_it_did_not_write(tmp_path):
    from steel_defect.tasks.distributed import remove_parts

    parts = tmp_path / "submission.csv.parts"
    parts.mkdir()
    (parts / "rank0.json").write_text("[]")
    (parts / "notes.txt").write_text("mine")
    remove_parts(parts, world_size=1)
    assert sorted(p.name for p in parts.iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------------------------ L6, L7: atomic writes
DEAD_PID = 2**22 + 4321  # above Linux's largest pid_max: no such process


def test_a_killed_writes_temporary_file_is_removed_by_the_next_write(tmp_path):
    from steel_defect.io import atomic_save, atomic_write

    out = tmp_path / "submission.csv"
    stale = tmp_path / f".submission.csv.{DEAD_PID}.abcd_123.tmp"
    stale.write_bytes(b"")
    live = tmp_path / f".submission.csv.{os.getppid()}.zzzz_999.tmp"  # a running process's: kept
    live.write_bytes(b"")
    other = tmp_path / f".submission.csv.{DEAD_PID}.notes.txt"  # not the temporary files' form: kept
    other.write_bytes(b"mine")
    with atomic_write(out) as fh:
        fh.write("ImageId,EncodedPixels,ClassId\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, live.name, other.name])
    model = tmp_path / "m.onnx"
    stale_save = tmp_path / f".m.onnx.{DEAD_PID}.q1w2e3r4.tmp.onnx"
    stale_save.write_bytes(b"")
    atomic_save(model, lambda tmp: Path(tmp).write_bytes(b"x"))
    assert not stale_save.exists() and model.read_bytes() == b"x"


def test_atomic_outputs_honour_the_umask_and_keep_a_replaced_files_mode(tmp_path):
    from steel_defect.io import atomic_save, atomic_write

    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.txt") as fh:
            fh.write("a")
        atomic_save(tmp_path / "b.bin", lambda tmp: Path(tmp).write_bytes(b"b"))
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o644
        os.umask(0o007)
        with atomic_write(tmp_path / "c.txt") as fh:
            fh.write("c")
        assert stat.S_IMODE((tmp_path / "c.txt").stat().st_mode) == 0o660
        (tmp_path / "a.txt").chmod(0o600)
        with atomic_write(tmp_path / "a.txt") as fh:
            fh.write("again")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_thresholds_evaluation_and_onnx_outputs_replace_only_their_own_kind(run_files, tmp_path):
    """thresholds.yaml (end of training, task=tune, tune_oof all go through save_thresholds), evaluation.json
    and export/quantize outputs: an existing file of another kind is refused, naming it, and kept."""
    from steel_defect.postprocess.params import PostprocessParams, save_thresholds
    from steel_defect.tasks.dispatch import run

    notes = tmp_path / "thresholds.yaml"
    notes.write_text("my: notes\n")
    with pytest.raises(UnsafeWriteError, match="not a thresholds file") as err:
        save_thresholds(PostprocessParams(), notes)
    assert str(notes) in str(err.value) and notes.read_text() == "my: notes\n"
    ours = tmp_path / "tuned.yaml"
    save_thresholds(PostprocessParams(), ours)
    save_thresholds(PostprocessParams(t_img=0.5), ours)  # its own kind: replaced
    assert "t_img: 0.5" in ours.read_text()

    data = run_files["data"]
    report = tmp_path / "evaluation.json"
    report.write_text('{"mine": 1}')
    base = {"ckpt": str(run_files["a"]), "device": "cpu", "images": str(data / "test_images")}
    with pytest.raises(UnsafeWriteError, match="is not a task=evaluate report"):
        run(
            {
                **base,
                "task": "evaluate",
                "data": {"labels": str(data / "test_labels.csv")},
                "out": str(tmp_path / "s.csv"),
            }
        )
    assert report.read_text() == '{"mine": 1}' and not (tmp_path / "s.csv").exists()

    for task, key in (("export", "export"), ("quantize", "quantize")):
        target = tmp_path / "holiday.jpg"
        target.write_bytes(b"jpeg")
        with pytest.raises(ValueError, match=str(target)):
            run({**base, "task": task, key: {"out": str(target)}})
        assert target.read_bytes() == b"jpeg"
