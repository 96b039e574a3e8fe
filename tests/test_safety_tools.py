"""Never touch a user's data: the dataset converter, the Kaggle bundle, ``weights fetch`` and ``synthetic.params``
refuse, before their first write, an output that is one of their inputs, lies in an input folder, or is an
existing file (folder) of another kind; ``--overwrite``/``overwrite=true`` replaces only their own kind.

Every refusal is checked the same way: the sha256 of every file of the folders involved is identical before and
after, and the message names the offending path. The review's reproductions (security review 2026-12, H4 and
M6) are here verbatim, on small copies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from steel_defect.data.convert import (
    folder_to_kaggle,
    is_label_csv,
    is_mask_png,
    kaggle_to_folder,
    read_kaggle_csv,
)
from steel_defect.guard import UnsafeWriteError
from steel_defect.rle import rle_encode
from tests.conftest import REPO, TINY_NET

CONVERT = [sys.executable, "-m", "steel_defect.data.convert"]
MASK_SHAPE = (16, 24)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------ helpers
def snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every file below ``folders`` (symbolic links by their target's bytes), keyed by path."""
    out = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    assert out, f"nothing to compare under {folders}"
    return out


def run_convert(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CONVERT, *map(str, args)], cwd=REPO, capture_output=True, text=True, check=False)


def make_folder_set(root: Path, n: int = 3, seed: int = 0) -> list[Path]:
    """``root/images/*.jpg`` + hand-made non-zero ``root/masks/*.png`` (class-index masks)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    names = ["000a4bcdd", *(f"plate{i}" for i in range(1, n))]
    for i, stem in enumerate(names):
        h, w = MASK_SHAPE
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        mask = np.zeros((h, w), np.uint8)
        mask[2 + i : 6 + i, 3 : 9 + i] = 1 + i % 4
        cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
    return sorted((root / "images").iterdir())


def write_label_csv(path: Path, rows: int = 3) -> Path:
    """A real current-format label csv for ``make_folder_set``'s first image name."""
    mask = np.zeros(MASK_SHAPE, bool)
    lines = ["ImageId,ClassId,EncodedPixels"]
    for c in range(1, rows + 1):
        mask[:] = False
        mask[c, 2 : 2 + c] = True
        lines.append(f"000a4bcdd.jpg,{c},{rle_encode(mask)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def png_of(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# ================================================================================================ convert
def test_own_kind_predicates(tmp_path):
    """Mask PNGs are 8-bit greyscale PNGs; label csvs carry a Kaggle header (either format)."""
    make_folder_set(tmp_path / "f", n=1)
    mask = tmp_path / "f" / "masks" / "000a4bcdd.png"
    assert is_mask_png(mask)
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "deep.png"), np.zeros((4, 4), np.uint16))
    assert not is_mask_png(tmp_path / "rgb.png") and not is_mask_png(tmp_path / "deep.png")
    assert not is_mask_png(tmp_path / "f" / "images" / "000a4bcdd.jpg")
    assert is_label_csv(write_label_csv(tmp_path / "a.csv"))
    (tmp_path / "b.csv").write_text("ImageId_ClassId,EncodedPixels\n")
    (tmp_path / "c.csv").write_text("id,label\n1,2\n")
    assert is_label_csv(tmp_path / "b.csv") and not is_label_csv(tmp_path / "c.csv")
    assert not is_label_csv(tmp_path / "f" / "images" / "000a4bcdd.jpg")


@pytest.mark.slow
def test_to_folder_header_only_csv_over_existing_masks_is_refused(tmp_path):
    """Review H4: ``to-folder --csv empty.csv --images folder/images --out folder`` zeroed 18 hand-made masks."""
    folder = tmp_path / "folder"
    make_folder_set(folder)
    (folder / "masks" / "notes.txt").write_text("hand-labelled by the night shift\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("ImageId,ClassId,EncodedPixels\n")
    before = snapshot(tmp_path)
    res = run_convert("to-folder", "--csv", empty, "--images", folder / "images", "--out", folder)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert str(folder / "masks" / "000a4bcdd.png") in res.stderr and "--overwrite" in res.stderr
    assert "3 of the 3 masks already exist" in res.stderr
    assert snapshot(tmp_path) == before
    with pytest.raises(UnsafeWriteError, match=str(folder / "masks")):
        kaggle_to_folder(empty, folder / "images", folder)
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_to_folder_overwrite_replaces_only_the_masks_of_the_converted_images(tmp_path):
    folder = tmp_path / "folder"
    images = make_folder_set(folder)
    orphan = folder / "masks" / "orphan.png"  # a mask with no image in --images: not this run's
    shutil.copyfile(folder / "masks" / "plate1.png", orphan)
    notes = folder / "masks" / "notes.txt"
    notes.write_text("hand-labelled\n")
    keep = {p: p.read_bytes() for p in [*images, orphan, notes]}
    labels = write_label_csv(tmp_path / "labels.csv", rows=2)
    res = run_convert(
        "to-folder", "--csv", labels, "--images", folder / "images", "--out", folder, "--overwrite"
    )
    assert res.returncode == 0, res.stderr
    assert "images: 3" in res.stdout
    assert {p: p.read_bytes() for p in keep} == keep  # images in place, other files untouched
    assert not png_of(folder / "masks" / "plate1.png").any()  # no row in the csv: now defect-free
    first = png_of(folder / "masks" / "000a4bcdd.png")
    assert first[1, 2] == 1 and first[2, 2] == 2 and int((first > 0).sum()) == 3


def test_to_folder_overwrite_refuses_a_mask_path_of_another_kind(tmp_path):
    folder = tmp_path / "folder"
    make_folder_set(folder)
    intruder = folder / "masks" / "plate1.png"
    cv2.imwrite(str(intruder), np.full((*MASK_SHAPE, 3), 200, np.uint8))  # an RGB picture, not a mask
    labels = write_label_csv(tmp_path / "labels.csv")
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeWriteError, match=rf"{intruder} exists and is not a mask PNG"):
        kaggle_to_folder(labels, folder / "images", folder, overwrite=True)
    assert snapshot(tmp_path) == before
    intruder.unlink()
    intruder.mkdir()
    with pytest.raises(UnsafeWriteError, match=rf"{intruder} is a directory"):
        kaggle_to_folder(labels, folder / "images", folder, overwrite=True)
    assert snapshot(tmp_path) == {k: v for k, v in before.items() if k != str(intruder)}


def test_to_folder_never_replaces_an_image_and_skips_identical_copies(tmp_path):
    src = tmp_path / "src"
    images = make_folder_set(src)
    shutil.rmtree(src / "masks")
    labels = write_label_csv(tmp_path / "labels.csv")
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    other = out / "images" / images[1].name
    other.write_bytes(b"another plate's picture")
    before = snapshot(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(UnsafeWriteError, match=rf"{other} exists and is not a copy of {images[1]}"):
            kaggle_to_folder(labels, src / "images", out, overwrite=overwrite)
        assert snapshot(tmp_path) == before
    assert not (out / "masks").exists()
    shutil.copyfile(images[1], other)  # an identical copy (a re-run after a partial one): skipped
    counts = kaggle_to_folder(labels, src / "images", out)
    assert counts == {"images": 3, "with_defects": 1}
    for p in images:
        assert (out / "images" / p.name).read_bytes() == p.read_bytes()
        assert is_mask_png(out / "masks" / f"{p.stem}.png")


@pytest.mark.slow
def test_to_folder_in_place_still_works(tmp_path):
    """``--images ROOT/images --out ROOT`` (no masks yet): the images stay as they are, masks are added."""
    root = tmp_path / "root"
    images = make_folder_set(root)
    shutil.rmtree(root / "masks")
    labels = write_label_csv(tmp_path / "train.csv")
    before = snapshot(root)
    res = run_convert("to-folder", "--csv", labels, "--images", root / "images", "--out", root)
    assert res.returncode == 0, res.stderr
    assert snapshot(root / "images") == before
    assert sorted(p.name for p in (root / "masks").iterdir()) == sorted(f"{p.stem}.png" for p in images)
    assert png_of(root / "masks" / "000a4bcdd.png").max() == 3


@pytest.mark.parametrize("case", ["out_is_images", "masks_are_images", "csv_in_masks", "out_is_csv"])
def test_to_folder_refuses_outputs_onto_its_inputs(tmp_path, case):
    base = tmp_path / "set"
    make_folder_set(base)
    shutil.rmtree(base / "masks")
    images, csv_path = base / "images", write_label_csv(tmp_path / "labels.csv")
    if case == "out_is_images":  # masks would go into the image folder: images/masks
        out, offending = images, images / "masks"
    elif case == "masks_are_images":  # out/masks IS the image folder
        out = tmp_path / "ds"
        (out / "masks").mkdir(parents=True)
        shutil.copytree(images, out / "masks", dirs_exist_ok=True)
        images, offending = out / "masks", out / "masks"
    elif case == "csv_in_masks":
        out = tmp_path / "ds"
        csv_path = write_label_csv(out / "masks" / "labels.csv")
        offending = out / "masks"
    else:
        out, offending = csv_path, csv_path
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeWriteError, match=str(offending)) as info:
        kaggle_to_folder(csv_path, images, out, overwrite=True)
    assert "nothing was written" in str(info.value)
    assert snapshot(tmp_path) == before
    assert not (out / "images").exists() or case == "masks_are_images"


@pytest.mark.slow
def test_to_kaggle_refuses_an_existing_train_csv_unless_overwrite(tmp_path):
    """Review H4: ``to-kaggle --root folder --out kag/train.csv`` replaced a real 20-row train.csv."""
    folder = tmp_path / "folder"
    make_folder_set(folder)
    train = write_label_csv(tmp_path / "kag" / "train.csv")
    before = snapshot(tmp_path)
    res = run_convert("to-kaggle", "--root", folder, "--out", train)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert f"--out={train} exists" in res.stderr and "--overwrite" in res.stderr
    assert snapshot(tmp_path) == before
    res = run_convert("to-kaggle", "--root", folder, "--out", train, "--overwrite")
    assert res.returncode == 0, res.stderr
    labels = read_kaggle_csv(train)
    assert labels["plate1.jpg"] == {2: labels["plate1.jpg"][2]} and len(labels) == 3


@pytest.mark.slow
def test_to_kaggle_refuses_an_input_jpeg_even_with_overwrite(tmp_path):
    """Review H4: ``to-kaggle --root folder --out folder/images/000a4bcdd.jpg`` turned the JPEG into csv text."""
    folder = tmp_path / "folder"
    make_folder_set(folder)
    jpeg = folder / "images" / "000a4bcdd.jpg"
    before = snapshot(tmp_path)
    for extra in ((), ("--overwrite",)):
        res = run_convert("to-kaggle", "--root", folder, "--out", jpeg, *extra)
        assert res.returncode == 2 and res.stderr.startswith("error: "), res.stderr
        assert f"--out={jpeg} overlaps the input folder {folder}" in res.stderr
        assert snapshot(tmp_path) == before
    assert jpeg.read_bytes()[:2] == b"\xff\xd8"  # still a JPEG


def test_to_kaggle_refuses_a_new_csv_inside_the_root_and_files_of_another_kind(tmp_path):
    folder = tmp_path / "folder"
    make_folder_set(folder)
    photo = tmp_path / "photo.csv"
    shutil.copyfile(folder / "images" / "plate1.jpg", photo)  # a JPEG named .csv outside the root
    (tmp_path / "notes.csv").write_text("id,comment\n1,keep me\n")
    (tmp_path / "adir.csv").mkdir()
    before = snapshot(tmp_path)
    for out, message in (
        (folder / "labels.csv", "overlaps the input folder"),
        (folder / "masks" / "labels.csv", "overlaps the input folder"),
        (photo, "exists and is not a label csv"),
        (tmp_path / "notes.csv", "exists and is not a label csv"),
        (tmp_path / "adir.csv", "is a directory"),
    ):
        with pytest.raises(UnsafeWriteError, match=rf"--out={out} {message}"):
            folder_to_kaggle(folder, out, overwrite=True)
        assert snapshot(tmp_path) == before
    assert not (folder / "labels.csv").exists()
    legacy = tmp_path / "legacy.csv"
    legacy.write_text("ImageId_ClassId,EncodedPixels\nx.jpg_1,1 2\n")
    assert folder_to_kaggle(folder, legacy, overwrite=True) == {"images": 3, "rows": 3}
    assert legacy.read_text().startswith("ImageId,ClassId,EncodedPixels\n")


# ================================================================================================ bundle
@pytest.fixture(scope="module")
def ckpt_bytes(tmp_path_factory) -> bytes:
    """A tiny steel-defect training checkpoint (the net's state_dict, its meta and a fake optimizer state)."""
    from steel_defect.models.checkpoint import FORMAT_VERSION
    from steel_defect.models.factory import SteelNet

    torch.manual_seed(0)
    net = SteelNet.from_config(TINY_NET, weights=False)
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "steel_defect": {
            "format_version": FORMAT_VERSION,
            "net": {**TINY_NET},
            "classes": ["1", "2", "3", "4"],
        },
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(8)}}}],
        "epoch": 0,
        "global_step": 1,
    }
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save(ckpt, path)
    return path.read_bytes()


@pytest.fixture
def run_dir(tmp_path, ckpt_bytes) -> dict[str, Path]:
    """A training run folder (checkpoints, tuned thresholds, logs) and a prebuilt project wheel beside it."""
    from steel_defect.postprocess.params import PostprocessParams, save_thresholds

    run = tmp_path / "runcopy"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "epoch_000.ckpt"
    ckpt.write_bytes(ckpt_bytes)
    (run / "checkpoints" / "last.ckpt").write_bytes(ckpt_bytes)
    thresholds = save_thresholds(PostprocessParams(), run / "checkpoints" / "thresholds.yaml")
    (run / "split.json").write_text('{"train": [], "val": []}\n')
    (run / "train.log").write_text("epoch 0 done\n")
    (run / "csv").mkdir()
    (run / "csv" / "metrics.csv").write_text("step,loss\n1,0.5\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = wheels / "steel_defect-0.0.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x05\x06" + bytes(18))  # never installed by these tests, only copied
    return {"run": run, "ckpt": ckpt, "thresholds": thresholds, "wheel": wheel}


def bundle_to(run: dict[str, Path], out: Path | str, **options) -> Path:
    from steel_defect.deploy.kaggle.bundle import build_bundle

    opts = {"wheels": [], "project_wheel": str(run["wheel"]), "num_workers": 0, **options}
    return build_bundle(str(run["ckpt"]), out, **opts)


def test_bundle_overwrite_onto_the_run_dir_holding_the_ckpt_is_refused(run_dir, capsys):
    """Review M6: ``kaggle bundle ckpt=RUN/checkpoints/epoch_000.ckpt out=RUN overwrite=true`` deleted the run."""
    from steel_defect.deploy.kaggle import bundle as kaggle

    run = run_dir["run"]
    before = snapshot(run.parent)
    argv = ["bundle", f"ckpt={run_dir['ckpt']}", f"out={run}", "overwrite=true"]
    assert kaggle.main([*argv, "wheels=", f"project_wheel={run_dir['wheel']}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: out={run} holds this command's input {run_dir['ckpt']}"), err
    assert snapshot(run.parent) == before
    assert sorted(p.name for p in run.parent.iterdir()) == ["runcopy", "wheels"]  # no temp folder left


@pytest.mark.parametrize("which", ["ckpt", "checkpoints_dir", "thresholds_dir", "wheel_dir"])
def test_bundle_refuses_an_out_that_is_or_holds_an_input(run_dir, tmp_path, which):
    thresholds = run_dir["thresholds"]
    options = {"overwrite": True}
    if which == "ckpt":
        out, offending = run_dir["ckpt"], run_dir["ckpt"]
    elif which == "checkpoints_dir":
        out, offending = run_dir["ckpt"].parent, run_dir["ckpt"]
    elif which == "thresholds_dir":
        tuned = tmp_path / "tuned"
        tuned.mkdir()
        options["thresholds"] = str(shutil.copy(thresholds, tuned / "thresholds.yaml"))
        out, offending = tuned, tuned / "thresholds.yaml"
    else:
        out, offending = run_dir["wheel"].parent, run_dir["wheel"]
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeWriteError, match=rf"out={out} .*{offending}"):
        bundle_to(run_dir, out, **options)
    assert snapshot(tmp_path) == before


def test_bundle_overwrite_onto_a_folder_that_is_not_a_bundle_is_refused(run_dir, tmp_path):
    data = tmp_path / "mydata"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "photo.jpg").write_bytes(b"\xff\xd8 a picture")
    (data / "notes.txt").write_text("keep\n")
    a_file = tmp_path / "report.pdf"
    a_file.write_bytes(b"%PDF-1.7")
    before = snapshot(tmp_path)
    with pytest.raises(
        UnsafeWriteError, match=rf"out={data} is a non-empty folder that is not a Kaggle bundle"
    ):
        bundle_to(run_dir, data, overwrite=True)
    with pytest.raises(UnsafeWriteError, match=rf"out={a_file} exists and is not a folder"):
        bundle_to(run_dir, a_file, overwrite=True)
    assert snapshot(tmp_path) == before
    (data / "steel_defect_bundle.json").write_text('["not", "a", "manifest"]\n')  # not a JSON object
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeWriteError, match=rf"out={data} is a non-empty folder"):
        bundle_to(run_dir, data, overwrite=True)
    assert snapshot(tmp_path) == before


def test_bundle_overwrite_replaces_a_previous_bundle(run_dir, tmp_path):
    from steel_defect.deploy.kaggle.bundle import MANIFEST_NAME

    out = tmp_path / "bundle"
    bundle_to(run_dir, out, batch_size=2)
    first = snapshot(out)
    assert json.loads((out / MANIFEST_NAME).read_text())["settings"]["batch_size"] == 2
    with pytest.raises(FileExistsError, match=rf"out={out} is an existing bundle; pass overwrite=true"):
        bundle_to(run_dir, out, batch_size=3)
    assert snapshot(out) == first
    run_before = snapshot(run_dir["run"])
    bundle_to(run_dir, out, batch_size=3, overwrite=True)
    assert json.loads((out / MANIFEST_NAME).read_text())["settings"]["batch_size"] == 3
    assert snapshot(run_dir["run"]) == run_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "runcopy", "wheels"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (bundle_to(run_dir, empty) / MANIFEST_NAME).is_file()  # an empty folder is used as is


def test_bundle_refuses_broad_out_folders_even_when_they_are_bundles(run_dir, tmp_path, monkeypatch):
    """``out=.``, ``out=~``, a folder above the working directory, ``out=/``: never replaced wholesale."""
    prev = bundle_to(run_dir, tmp_path / "prev")
    work = prev / "checkpoints"
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(prev))
    before = snapshot(tmp_path)
    for out in (".", "~", "..", str(prev), "/"):
        with pytest.raises(UnsafeWriteError, match=r"a folder this command would replace wholesale") as info:
            bundle_to(run_dir, out, overwrite=True)
        assert str(info.value).startswith(f"out={out} resolves to ")
        assert snapshot(tmp_path) == before


def test_bundle_checks_happen_before_any_work(run_dir, tmp_path, monkeypatch):
    from steel_defect.deploy.kaggle import bundle as kaggle

    def boom(*args, **kwargs):
        raise AssertionError("build_bundle started writing before checking out=")

    monkeypatch.setattr(kaggle, "slim_checkpoint", boom)
    monkeypatch.setattr(kaggle.tempfile, "mkdtemp", boom)
    with pytest.raises(UnsafeWriteError, match=str(run_dir["run"])):
        bundle_to(run_dir, run_dir["run"], overwrite=True)


# ================================================================================================ weights
@pytest.fixture
def encoder_file(tmp_path) -> Path:
    """The tiny net's encoder weights as a .safetensors file: a source that ``fetch`` reads with no network."""
    from safetensors.torch import save_file

    from steel_defect.models.factory import build_model
    from steel_defect.models.fetch_weights import encoder_state_dict

    torch.manual_seed(1)
    path = tmp_path / "source" / "enc.safetensors"
    path.parent.mkdir()
    save_file(encoder_state_dict(build_model({**TINY_NET, "image_head": False})), str(path))
    return path


def test_weights_fetch_refuses_an_out_of_another_kind_before_building_anything(tmp_path, monkeypatch):
    import steel_defect.models.factory as factory
    from steel_defect.models.fetch_weights import fetch, main

    def no_build(*args, **kwargs):
        raise AssertionError("fetch built (downloaded) the model before checking --out")

    monkeypatch.setattr(factory, "build_model", no_build)
    files = tmp_path / "files"
    files.mkdir()
    (files / "notes.pth").write_text("my notes, not weights\n")
    torch.save({"w": torch.zeros(2)}, files / "torch.safetensors")  # a torch file under another suffix
    (files / "model.bin").write_bytes(b"\x00" * 64)
    (files / "adir.pt").mkdir()
    torch.save({"w": torch.zeros(2)}, files / "real.pth")
    (files / "link.pth").symlink_to(files / "real.pth")
    before = snapshot(files)
    for name, message in (
        ("notes.pth", "exists and is not a .pth weights file"),
        ("torch.safetensors", "exists and is not a .safetensors weights file"),
        ("model.bin", "exists and is not a .bin weights file"),
        ("adir.pt", "is a directory"),
        ("link.pth", "is a symbolic link"),
    ):
        out = files / name
        with pytest.raises(UnsafeWriteError, match=rf"--out={out} {message}"):
            fetch({**TINY_NET, "encoder_weights": "imagenet"}, out)
        assert main(["fetch", "--encoder", "tu-test_efficientnet", "--out", str(out)]) == 2
        assert snapshot(files) == before


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_fetch_replaces_an_existing_weights_file(tmp_path, encoder_file, suffix):
    from safetensors.torch import load_file, save_file

    from steel_defect.models.fetch_weights import fetch, is_weights_file

    out = tmp_path / f"enc{suffix}"
    old = {"stale": torch.ones(3)}
    save_file(old, str(out)) if suffix == ".safetensors" else torch.save(old, out)
    assert is_weights_file(out)
    info = fetch({**TINY_NET, "encoder_weights": str(encoder_file)}, out)
    assert info["tensors"] > 0 and info["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    got = load_file(str(out)) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    want = load_file(str(encoder_file))
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["source", out.name])  # no temp file left


def test_weights_fetch_keeps_the_old_file_when_the_new_one_does_not_load_back(
    tmp_path, encoder_file, monkeypatch
):
    from safetensors.torch import save_file

    import steel_defect.models.fetch_weights as weights

    out = tmp_path / "enc.safetensors"
    save_file({"stale": torch.ones(3)}, str(out))
    before = snapshot(tmp_path)
    real, calls = weights.encoder_state_dict, []

    def corrupt_second_read(net):
        calls.append(1)
        state = real(net)
        return state if len(calls) == 1 else {k: v + 1 for k, v in state.items()}

    monkeypatch.setattr(weights, "encoder_state_dict", corrupt_second_read)
    with pytest.raises(RuntimeError, match=rf"{out}: the written weights did not load back identically"):
        weights.fetch({**TINY_NET, "encoder_weights": str(encoder_file)}, out)
    assert snapshot(tmp_path) == before and len(calls) == 2


# ================================================================================================ params
@pytest.fixture
def real_dir(tmp_path) -> Path:
    """A miniature ``severstal-real`` folder: corpus/train_index.csv, corpus/train_masks.csv, train_images."""
    real = tmp_path / "real"
    (real / "corpus").mkdir(parents=True)
    (real / "train_images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(
            str(real / "train_images" / f"img{i}.jpg"), rng.integers(60, 120, (64, 160), dtype=np.uint8)
        )
    rows = ["ImageId,ClassId,EncodedPixels"]
    for c in range(1, 5):
        mask = np.zeros((256, 1600), bool)
        for k in range(3):  # three objects of different heights and widths per class
            mask[10 + 60 * k : 14 + 60 * k + c + k, 20 + 300 * k : 29 + 300 * k + c + 2 * k] = True
        rows.append(f"img{c % 2}.jpg,{c},{rle_encode(mask)}")
    (real / "corpus" / "train_masks.csv").write_text("\n".join(rows) + "\n")
    (real / "corpus" / "train_index.csv").write_text(
        "image_id,class_ids\nimg0.jpg,2|4\nimg1.jpg,1|3\nimg2.jpg,\n"
    )
    return real


def test_params_refuses_an_out_inside_real_or_of_another_kind_before_deriving(
    real_dir, tmp_path, monkeypatch, capsys
):
    import steel_defect.synthetic.params as params

    def no_derive(*args, **kwargs):
        raise AssertionError("params derived before checking --out")

    monkeypatch.setattr(params, "derive_params", no_derive)
    (tmp_path / "config.json").write_text('{"lr": 0.1, "class_sets": {}}\n')
    (tmp_path / "list.json").write_text('["class_sets", "objects", "texture", "band"]\n')
    (tmp_path / "notes.txt").write_text("keep\n")
    (tmp_path / "adir").mkdir()
    before = snapshot(tmp_path)
    for out, message in (
        (real_dir / "params.json", f"overlaps the input folder {real_dir}"),
        (real_dir / "corpus" / "train_index.csv", f"overlaps the input folder {real_dir}"),
        (tmp_path / "config.json", "exists and is not a synthetic-generator parameters JSON"),
        (tmp_path / "list.json", "exists and is not a synthetic-generator parameters JSON"),
        (tmp_path / "notes.txt", "exists and is not a synthetic-generator parameters JSON"),
        (tmp_path / "adir", "is a directory"),
    ):
        with pytest.raises(SystemExit) as info:
            params.main(["--real", str(real_dir), "--out", str(out)])
        assert info.value.code == 2
        assert capsys.readouterr().err.startswith(f"error: --out={out} {message}")
        assert snapshot(tmp_path) == before


def test_params_writes_and_replaces_a_parameters_file(real_dir, tmp_path):
    from steel_defect.synthetic.params import PARAM_KEYS, PARAMS_PATH, is_params_file, load_params, main

    assert is_params_file(PARAMS_PATH)  # the committed file is of the kind main replaces
    out = tmp_path / "params.json"
    shutil.copyfile(PARAMS_PATH, out)
    before = snapshot(real_dir)
    derived = main(["--real", str(real_dir), "--out", str(out)])
    assert set(derived) == PARAM_KEYS and json.loads(out.read_text()) == json.loads(json.dumps(derived))
    assert load_params(str(out))["band"]["images"] == 2
    assert snapshot(real_dir) == before
    new = tmp_path / "new" / "p.json"
    main(["--real", str(real_dir), "--out", str(new)])
    assert new.read_bytes() == out.read_bytes()


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_params_refuses_a_symlinked_out(real_dir, tmp_path):
    import steel_defect.synthetic.params as params

    target = tmp_path / "elsewhere.json"
    shutil.copyfile(params.PARAMS_PATH, target)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeWriteError, match=rf"--out={link} is a symbolic link"):
        params.check_out(link, real_dir)
    assert snapshot(tmp_path) == before
