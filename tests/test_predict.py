"""predict.py end to end, in subprocesses, as a user runs it (tiny checkpoint, 64x320 synthetic images)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import yaml

from steel_defect.submission import read_submission
from tests.conftest import REPO


def predict(args: list[str], cwd: Path, ok: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python predict.py ARGS` in ``cwd``; check the exit status."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "predict.py"), "device=cpu", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    if not ok:
        assert proc.returncode != 0, f"{' '.join(cmd)} should have failed:\n{proc.stdout[-2000:]}"
    return proc


def image_ids(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.slow
def test_predict_writes_a_kaggle_submission_and_nothing_else(run_files, tmp_path):
    proc = predict([f"ckpt={run_files['a']}", f"data.root={run_files['data']}", "num_workers=0"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]  # no Hydra folders or log files
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    ids = image_ids(run_files["data"] / "test_images")
    assert lines[0] == "ImageId,EncodedPixels,ClassId" and len(lines) == 1 + 4 * len(ids)
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == [i for i in ids for _ in range(4)]
    assert [r[2] for r in rows] == ["1", "2", "3", "4"] * len(ids)
    assert all(r[1] == "" or all(t.isdigit() for t in r[1].split(" ")) for r in rows)
    assert "unreadable images: 0" in proc.stdout and "images/s" in proc.stdout
    assert "predict" in proc.stderr  # the progress bar goes to stderr


@pytest.mark.slow
def test_ensemble_tta_legacy_format_and_overlays(run_files, tmp_path):
    images = tmp_path / "two"  # 2 models x 3 views: keep the folder small
    images.mkdir()
    for src in sorted((run_files["data"] / "test_images").iterdir())[:2]:
        shutil.copy(src, images / src.name)
    args = [
        f"ckpt=[{run_files['a']},{run_files['b']}]",
        f"images={images}",
        "format=legacy",
        "tta=[hflip,vflip]",
        "overlays=2",
        "out=legacy.csv",
        "num_workers=1",
    ]
    proc = predict(args, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legacy.csv", "overlays", "two"]
    lines = (tmp_path / "legacy.csv").read_text().splitlines()
    ids = image_ids(images)
    assert lines[0] == "ImageId_ClassId,EncodedPixels" and len(lines) == 1 + 4 * len(ids)
    assert [line.split(",")[0] for line in lines[1:]] == [f"{i}_{c}" for i in ids for c in (1, 2, 3, 4)]
    pngs = sorted((tmp_path / "overlays").glob("*.png"))
    assert [p.stem for p in pngs] == [Path(i).stem for i in ids[:2]]
    assert all(cv2.imread(str(p)) is not None for p in pngs)
    assert "overlays: 2 PNGs" in proc.stdout
    assert read_submission(tmp_path / "legacy.csv")["ImageId"].nunique() == len(ids)


@pytest.mark.slow
def test_evaluate_prints_the_notebook_report(run_files, tmp_path):
    proc = predict(
        [
            "task=evaluate",
            f"ckpt={run_files['a']}",
            f"data.root={run_files['data']}",
            "out=out/sub.csv",
            "num_workers=0",
        ],
        tmp_path,
    )
    for text in ("Kaggle Dice", "all-empty baseline", "precision", "recall", "NoDefect", "Confusion matrix"):
        assert text in proc.stdout, text
    doc = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert doc["num_images"] == len(image_ids(run_files["data"] / "test_images"))
    assert len(doc["confusion_matrix"]["matrix"]) == 5 and (tmp_path / "out" / "sub.csv").is_file()


@pytest.mark.slow
def test_tune_writes_thresholds_beside_the_checkpoint_and_predict_picks_them_up(run_files, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    ckpt = Path(shutil.copy(run_files["a"], run_dir / "checkpoints" / "best.ckpt"))
    shutil.copy(run_files["run"] / "split.json", run_dir / "split.json")  # found as <ckpt>/../../split.json
    proc = predict(["task=tune", f"ckpt={ckpt}", f"data.root={run_files['data']}", "num_workers=0"], tmp_path)
    header = proc.stdout.splitlines()[0].split()
    assert header[:4] == ["class", "raw", "default", "tuned"]
    doc = yaml.safe_load((ckpt.parent / "thresholds.yaml").read_text())
    assert set(doc["params"]) >= {"t_cls", "t_pix", "min_area"} and doc["report"]["num_images"] == 4
    proc = predict([f"ckpt={ckpt}", f"data.root={run_files['data']}", "num_workers=0"], tmp_path)
    assert f"thresholds: {ckpt.parent / 'thresholds.yaml'}" in proc.stderr


@pytest.mark.slow
def test_missing_checkpoint_and_bad_values_are_clear_errors(tmp_path):
    (tmp_path / "images").mkdir()
    proc = predict([f"ckpt={tmp_path / 'nope.ckpt'}", f"images={tmp_path / 'images'}"], tmp_path, ok=False)
    assert f"checkpoint not found: {tmp_path / 'nope.ckpt'}" in proc.stderr
    proc = predict(["ckpt=x.ckpt", "task=train"], tmp_path, ok=False)
    assert "Could not find 'task/train'" in proc.stderr  # Hydra's task group, listing the tasks
    assert all(f"\t{task}\n" in proc.stderr for task in ("predict", "evaluate", "tune_oof", "quantize"))


@pytest.mark.slow
def test_two_ddp_cpu_processes_write_the_same_bytes_as_one(run_files, tmp_path):
    """trainer=ddp_cpu trainer.devices=2: Lightning's Trainer.predict in 2 processes (gloo); 5 images so
    that the distributed sampler pads one rank with a repeated image, which the merge must drop."""
    images = tmp_path / "five"
    images.mkdir()
    for name in image_ids(run_files["data"] / "test_images")[:4]:
        shutil.copy(run_files["data"] / "test_images" / name, images / name)
    shutil.copy(images / sorted(os.listdir(images))[0], images / "zzz_extra.jpg")
    common = [f"ckpt={run_files['a']}", f"images={images}", "thresholds=raw", "batch_size=1", "num_workers=0"]
    predict([*common, "out=one.csv"], tmp_path)
    proc = predict([*common, "out=two.csv", "trainer=ddp_cpu", "trainer.devices=2"], tmp_path, timeout=600)
    assert "from 2 processes" in proc.stdout
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["five", "one.csv", "two.csv"]  # parts cleaned up
    bad = predict([*common, "task=evaluate", "out=x.csv", "trainer=ddp_cpu"], tmp_path, ok=False)
    assert "runs task=predict only" in bad.stderr
