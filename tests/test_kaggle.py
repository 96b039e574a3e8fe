"""Kaggle offline bundle (steel_defect.kaggle), tested for real.

The end-to-end test builds a bundle for a tiny checkpoint, creates a FRESH virtual environment, installs the
bundle into it with ``pip install --no-index`` and runs ``kernel.py`` with the network disabled for the
process (``unshare -rn``, else a socket guard); the submission must equal the one ``predict.py`` writes.

Emulating Kaggle's image: torch (huge) is never bundled, so the fresh venv gets the packages Kaggle's image
provides (torch, numpy, timm, lightning, albumentations, ...) from this project's .venv through a ``.pth``
file that ``site.addsitedir``s a folder of symlinks to the .venv's site-packages, MINUS every distribution the
bundle ships (steel-defect, segmentation-models-pytorch, hydra-core, omegaconf, antlr4). Those therefore
exist nowhere but in the bundle: pip cannot consider them "already satisfied", and the test asserts that
they are imported from the fresh venv while torch comes from the emulated image.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import pytest
import torch

from steel_defect.deploy.kaggle import bundle as kaggle
from steel_defect.deploy.kaggle import wheels
from steel_defect.deploy.kaggle.bundle import (
    MANIFEST_NAME,
    build_bundle,
    check_bundle_name,
    kernel_source,
    notebook_json,
    parse_args,
    slim_checkpoint,
    wheel_from_installed,
)
from tests.conftest import REPO, SMALL_SHAPE
from tests.helpers import make_tiny_checkpoint, separated_thresholds

H, W = SMALL_SHAPE
#: Same prediction settings for kernel.py and predict.py.
PREDICT = {"batch_size": 3, "num_workers": 0, "tta": ["hflip"], "device": "cpu"}


# ------------------------------------------------------------------------------------------------ helpers
def network_isolation(tmp: Path) -> tuple[list[str], dict[str, str], str]:
    """(command prefix, extra env, description): ``unshare -rn`` / ``unshare -n`` (a network namespace with
    no interfaces) when the kernel allows it, else a sitecustomize socket guard on PYTHONPATH."""
    if shutil.which("unshare"):
        for prefix in (["unshare", "-rn"], ["unshare", "-n"]):
            if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
                return prefix, {}, f"`{' '.join(prefix)}` (empty network namespace)"
    guard = tmp / "socket_guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(
        "import socket\n"
        "def _blocked(*args, **kwargs):\n"
        "    raise OSError('network disabled by the test socket guard')\n"
        "socket.socket.connect = socket.socket.connect_ex = _blocked\n"
        "socket.create_connection = socket.getaddrinfo = _blocked\n"
    )
    return [], {"PYTHONPATH": str(guard)}, "sitecustomize socket guard (unshare unavailable)"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        NO_ALBUMENTATIONS_UPDATE="1",
        HF_HUB_OFFLINE="1",
        PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_CONFIG_FILE=os.devnull,
    )
    env.update(extra)
    return env


def emulate_kaggle_image(venv_python: Path, image_dir: Path, bundled: list[str]) -> None:
    """Make this environment's packages, except the ``bundled`` distributions, importable in the venv."""
    excluded: set[str] = set()
    for name in bundled:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        excluded |= {f.parts[0] for f in dist.files or [] if not f.as_posix().startswith("..")}
    image_dir.mkdir()
    site_dirs = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    for site in map(Path, site_dirs):
        for entry in site.iterdir():
            if entry.name in excluded or entry.name == "__pycache__" or (image_dir / entry.name).exists():
                continue
            if entry.name.startswith("__editable__") or entry.name.startswith(
                ("steel_defect", "steel-defect")
            ):
                continue
            (image_dir / entry.name).symlink_to(entry)
    venv_site = subprocess.run(
        [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(venv_site) / "_kaggle_image.pth").write_text(f"import site; site.addsitedir({str(image_dir)!r})\n")


def run_kernel_offline(bundle: Path, tmp_path: Path, hidden: Sequence[str] = ()):
    """``kernel.py`` of ``bundle`` in a fresh venv over an emulated Kaggle image (this environment minus the
    bundled and the ``hidden`` distributions), from a folder outside the repo, with the network off (checked).
    Returns (venv python, work folder, the finished kernel process, how the network was disabled)."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, env=clean_env()
    )
    python = venv / "bin" / "python"
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    emulate_kaggle_image(
        python, tmp_path / "kaggle_image", [w["name"] for w in manifest["wheels"]] + list(hidden)
    )
    work = tmp_path / "cwd"  # not the repo: its steel_defect/ must not be importable
    work.mkdir()
    prefix, guard_env, how = network_isolation(tmp_path)
    env = clean_env(**guard_env)
    probe = "import socket\ntry:\n    socket.create_connection(('192.0.2.1', 9), timeout=2)\nexcept OSError:\n    print('offline')\n"
    offline = subprocess.run(
        [*prefix, str(python), "-c", probe], cwd=work, env=env, capture_output=True, text=True
    )
    assert offline.stdout.strip() == "offline", f"network isolation via {how} failed: {offline.stderr}"
    kernel = subprocess.run(
        [*prefix, str(python), str(bundle / "kernel.py")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert kernel.returncode == 0, (
        f"kernel.py failed ({how}):\n{kernel.stdout[-4000:]}\n{kernel.stderr[-4000:]}"
    )
    return python, work, kernel, how


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def gated_run(tmp_path_factory, small_synthetic) -> dict[str, Path]:
    """A tiny checkpoint (with an image head) with a thresholds.yaml beside it that gates on the image head,
    and the synthetic test images."""
    from steel_defect.models.checkpoint import load_net_from_checkpoint

    root = tmp_path_factory.mktemp("kaggle_run")
    ckpt = make_tiny_checkpoint(root / "run" / "checkpoints" / "tiny.ckpt", image_head=True)
    images = small_synthetic / "test_images"
    net, _ = load_net_from_checkpoint(ckpt)
    thresholds = separated_thresholds(net, images, ckpt.parent / "thresholds.yaml", tta=PREDICT["tta"])
    return {"root": root, "ckpt": ckpt, "images": images, "thresholds": thresholds}


@pytest.fixture(scope="module")
def bundle(gated_run) -> Path:
    root = gated_run["root"]
    return build_bundle(
        str(gated_run["ckpt"]),
        root / "bundle",
        input=str(gated_run["images"]),
        output=str(root / "kaggle" / "working" / "submission.csv"),
        **PREDICT,
    )


# ------------------------------------------------------------------------------------------------ CLI
def test_parse_args_key_value_style():
    cmd, args = parse_args(
        ["bundle", "ckpt=[a.ckpt,b.ckpt]", "out=D", "wheels=x,y", "overwrite=true", "--online"]
    )
    assert cmd == "bundle" and args["ckpt"] == "[a.ckpt,b.ckpt]" and args["download"] == "true"
    assert kaggle._as_list("ckpt", args["ckpt"]) == ["a.ckpt", "b.ckpt"]
    assert kaggle._as_list("ckpt", "a.ckpt,b.ckpt") == ["a.ckpt", "b.ckpt"]
    with pytest.raises(ValueError, match="bad argument 'colour=red'.*ckpt, out"):
        parse_args(["bundle", "ckpt=a", "out=b", "colour=red"])
    with pytest.raises(ValueError, match="out= is required"):
        parse_args(["bundle", "ckpt=a"])
    with pytest.raises(ValueError, match="unknown command 'bundel'"):
        parse_args(["bundel", "ckpt=a", "out=b"])


@pytest.mark.parametrize("name", ["torch", "TorchVision", "nvidia-cublas", "nvidia_cudnn_cu13", "triton"])
def test_torch_and_cuda_are_never_bundled(name, tmp_path):
    with pytest.raises(ValueError, match="must not be bundled"):
        check_bundle_name(name)
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    with pytest.raises(ValueError, match="must not be bundled"):
        build_bundle(str(ckpt), tmp_path / "out", extra_wheels=[name])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ wheels
def _check_wheel(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    record_name = next(n for n in files if n.endswith(".dist-info/RECORD"))
    rows = list(csv.reader(files[record_name].decode().splitlines()))
    assert {r[0] for r in rows} == set(files)
    for name, digest, size in rows:
        if name == record_name:
            continue
        assert int(size) == len(files[name])
        assert digest == wheels._record_hash(files[name]), name
    assert not [n for n in files if n.endswith((".pyc", "INSTALLER", "REQUESTED", "direct_url.json"))]
    return files


def test_wheel_rebuilt_from_installed_files(tmp_path):
    path = wheel_from_installed("omegaconf", tmp_path)
    version = metadata.version("omegaconf")
    assert path.name == f"omegaconf-{version}-py3-none-any.whl"
    files = _check_wheel(path)
    dist = metadata.distribution("omegaconf")
    init = Path(dist.locate_file("omegaconf/__init__.py"))
    assert files["omegaconf/__init__.py"] == init.read_bytes()
    assert "pydevd_plugins/__init__.py" in files  # omegaconf's second top-level package
    assert f"omegaconf-{version}.dist-info/METADATA" in files


def test_wheel_scripts_get_a_portable_shebang(tmp_path):
    try:
        metadata.version("antlr4-python3-runtime")
    except metadata.PackageNotFoundError:
        pytest.skip("antlr4-python3-runtime (a script-installing package) is not installed")
    files = _check_wheel(wheel_from_installed("antlr4-python3-runtime", tmp_path))
    scripts = [n for n in files if ".data/scripts/" in n]
    assert scripts and all(files[n].startswith(b"#!python\n") for n in scripts)


def _fake_dist(site: Path, content: bytes, recorded: bytes) -> None:
    """A minimal installed distribution 'fakepkg' whose RECORD hash is that of ``recorded``."""
    (site / "fakepkg").mkdir(parents=True)
    (site / "fakepkg" / "__init__.py").write_bytes(content)
    info = site / "fakepkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
    (info / "WHEEL").write_text(
        "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py2-none-any\nTag: py3-none-any\n"
    )
    (info / "INSTALLER").write_text("pip\n")
    rows = [
        f"fakepkg/__init__.py,{wheels._record_hash(recorded)},{len(recorded)}",
        "fakepkg/__pycache__/__init__.cpython-311.pyc,,",
        "fakepkg-1.0.dist-info/METADATA,,",
        "fakepkg-1.0.dist-info/WHEEL,,",
        "fakepkg-1.0.dist-info/INSTALLER,,",
        "fakepkg-1.0.dist-info/RECORD,,",
    ]
    (info / "RECORD").write_text("\n".join(rows) + "\n")


def test_wheel_from_a_fake_dist_and_a_modified_install(tmp_path, monkeypatch):
    good, bad = tmp_path / "good", tmp_path / "bad"
    _fake_dist(good, b"x = 1\n", b"x = 1\n")
    _fake_dist(bad, b"x = 2\n", b"x = 1\n")
    monkeypatch.syspath_prepend(str(good))
    files = _check_wheel(wheel_from_installed("fakepkg", tmp_path / "w"))
    assert (tmp_path / "w" / "fakepkg-1.0-py2.py3-none-any.whl").is_file()
    assert files["fakepkg/__init__.py"] == b"x = 1\n"
    monkeypatch.syspath_prepend(str(bad))
    with pytest.raises(ValueError, match=r"fakepkg/__init__\.py differs from its RECORD hash"):
        wheel_from_installed("fakepkg", tmp_path / "w2")
    with pytest.raises(ValueError, match="'no-such-package-xyz' is not installed.*download=true"):
        wheel_from_installed("no-such-package-xyz", tmp_path / "w3")


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.slow
def test_slim_checkpoint_keeps_only_what_loads_the_net(gated_run, tmp_path):
    from steel_defect.models.checkpoint import load_net_from_checkpoint

    src = gated_run["ckpt"]
    dst = slim_checkpoint(src, tmp_path / "slim.ckpt")
    slim = torch.load(dst, weights_only=True)
    assert "optimizer_states" in torch.load(src, weights_only=True)
    assert set(slim) <= set(kaggle.SLIM_KEYS) and {"state_dict", "steel_defect", "hyper_parameters"} <= set(
        slim
    )
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    a, meta_a = load_net_from_checkpoint(src)
    b, meta_b = load_net_from_checkpoint(dst)
    assert meta_a == meta_b
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a steel-defect training checkpoint"):
        slim_checkpoint(tmp_path / "other.ckpt", tmp_path / "x.ckpt")


# ------------------------------------------------------------------------------------------------ kernel text
def test_kernel_source_embeds_the_settings_and_the_notebook_holds_it():
    settings = {
        "input": "/in",
        "output": "/out.csv",
        "checkpoints": ["checkpoints/a.ckpt"],
        "thresholds": None,
    }
    source = kernel_source(settings)
    tree = ast.parse(source)
    assigned = [n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "SETTINGS"]
    assert len(assigned) == 1 and ast.literal_eval(assigned[0].value) == settings
    nb = notebook_json(source)
    assert nb["nbformat"] == 4 and len(nb["cells"]) == 1 and "".join(nb["cells"][0]["source"]) == source
    try:
        import nbformat
    except ImportError:
        nbformat = None
    if nbformat is not None:
        nbformat.validate(nbformat.from_dict(nb))


@pytest.mark.slow
@pytest.mark.parametrize("image_head", [False, True])
def test_run_kernel_passes_its_settings_through_like_predict_py_with_and_without_image_head(
    image_head, small_synthetic, tmp_path
):
    """run_kernel (what kernel.py calls after installing) == predict.py's run() on the same bundle files.

    Both end in load_predictor + predict_images, so for the torch engine the submissions agree by
    construction: what this checks is the settings plumbing (bundle-relative checkpoints and thresholds,
    tta, batch size, the image gate) from the kernel's settings to the predictor."""
    from steel_defect.models.checkpoint import load_net_from_checkpoint
    from steel_defect.postprocess.params import load_thresholds
    from steel_defect.tasks.dispatch import run

    bundle = tmp_path / "bundle"
    ckpt = make_tiny_checkpoint(bundle / "checkpoints" / "tiny.ckpt", image_head=image_head)
    images = small_synthetic / "test_images"
    net, _ = load_net_from_checkpoint(ckpt)
    assert net.image_head is image_head
    thresholds = separated_thresholds(net, images, bundle / "thresholds.yaml", tta=PREDICT["tta"])
    params = load_thresholds(thresholds)
    assert (params.t_img is not None, params.img_source) == (
        (True, "image_head") if image_head else (False, "max_cls")
    )
    settings = {
        "input": str(images),
        "output": str(tmp_path / "kernel.csv"),
        "checkpoints": ["checkpoints/tiny.ckpt"],
        "thresholds": "thresholds.yaml",
        "amp": False,
        **PREDICT,
    }
    summary = kaggle.run_kernel(settings, bundle)
    assert summary["thresholds"] == str(thresholds)
    out = tmp_path / "predict.csv"
    run({"ckpt": str(ckpt), "images": str(images), "thresholds": str(thresholds), "out": str(out), **PREDICT})
    assert (tmp_path / "kernel.csv").read_bytes() == (tmp_path / "predict.csv").read_bytes()
    rows = list(csv.reader((tmp_path / "kernel.csv").read_text().splitlines()))[1:]
    assert sum(bool(r[1]) for r in rows) >= 4, "the comparison needs non-empty masks"
    if image_head:  # the image gate dropped at least one image that the other thresholds would keep
        from steel_defect.data.dataset import PredictDataset
        from steel_defect.inference.predictor import predict_batch

        ds = PredictDataset(images)
        _, _, image_probs = predict_batch(net, torch.stack([ds[i]["image"] for i in range(len(ds))]))
        assert (image_probs.numpy() < params.t_img).any()


def test_run_kernel_names_a_missing_input_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="test image folder not found: .*nowhere"):
        kaggle.run_kernel({"input": str(tmp_path / "nowhere")}, tmp_path)


# ------------------------------------------------------------------------------------------------ bundle
@pytest.mark.slow
def test_bundle_layout_and_manifest(bundle, gated_run):
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    names = {w["name"] for w in manifest["wheels"]}
    assert names == {"steel-defect", *kaggle.DEFAULT_WHEELS}
    assert not any(n.startswith(("torch", "nvidia")) for n in names)
    for rel, info in manifest["files"].items():
        assert hashlib.sha256((bundle / rel).read_bytes()).hexdigest() == info["sha256"], rel
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert on_disk == set(manifest["files"]) | {MANIFEST_NAME}
    assert (bundle / "thresholds.yaml").read_bytes() == gated_run["thresholds"].read_bytes()
    assert manifest["settings"]["checkpoints"] == ["checkpoints/tiny.ckpt"]
    nb = json.loads((bundle / "kernel.ipynb").read_text())
    assert "".join(nb["cells"][0]["source"]) == (bundle / "kernel.py").read_text()
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".bundle")], (
        "temp folders left behind"
    )


@pytest.mark.slow
def test_bundle_refuses_to_overwrite_unless_asked(bundle, gated_run, tmp_path):
    with pytest.raises(FileExistsError, match="overwrite=true"):
        build_bundle(str(gated_run["ckpt"]), bundle)
    wheel = shutil.copy2(next((bundle / "wheels").glob("steel_defect-*.whl")), tmp_path)
    out = tmp_path / "b"
    build_bundle(str(gated_run["ckpt"]), out, wheels=[], project_wheel=wheel, thresholds="defaults")
    first = json.loads((out / MANIFEST_NAME).read_text())
    assert first["settings"]["thresholds"] == "defaults" and len(first["wheels"]) == 1
    assert not (out / "thresholds.yaml").exists()
    build_bundle(str(gated_run["ckpt"]), out, wheels="omegaconf", project_wheel=wheel, overwrite=True)
    second = json.loads((out / MANIFEST_NAME).read_text())
    assert {w["name"] for w in second["wheels"]} == {"steel-defect", "omegaconf"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", Path(wheel).name]


@pytest.mark.slow
def test_bundle_without_tuned_thresholds_is_refused_unless_told(gated_run, tmp_path):
    lonely = tmp_path / "lonely" / "model.ckpt"
    lonely.parent.mkdir()
    shutil.copy(gated_run["ckpt"], lonely)
    with pytest.raises(FileNotFoundError, match="no tuned thresholds.yaml beside .*thresholds=defaults"):
        build_bundle(str(lonely), tmp_path / "out", wheels=[])
    with pytest.raises(ValueError, match="say which post-processing"):
        build_bundle(str(lonely), tmp_path / "out", wheels=[], thresholds="none")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_failed_bundle_leaves_nothing_behind(gated_run, tmp_path):
    with pytest.raises(ValueError, match="no-such-package-xyz"):
        build_bundle(str(gated_run["ckpt"]), tmp_path / "out", wheels=["no-such-package-xyz"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_bundle_refuses_image_head_thresholds_for_a_checkpoint_without_the_head(tmp_path):
    from steel_defect.postprocess.params import PostprocessParams, save_thresholds

    ckpt = make_tiny_checkpoint(tmp_path / "run" / "plain.ckpt", image_head=False)
    gate = save_thresholds(PostprocessParams(t_img=0.5, img_source="image_head"), tmp_path / "gate.yaml")
    with pytest.raises(
        ValueError, match=r"gate\.yaml: img_source='image_head' needs the image head.*plain\.ckpt"
    ):
        build_bundle(str(ckpt), tmp_path / "out", thresholds=str(gate), wheels=[])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_kernel_in_fresh_venv_offline_matches_predict_py(bundle, gated_run, tmp_path):
    """The real thing: fresh venv, --no-index install from the bundle, no network, same submission."""
    python, work, kernel, how = run_kernel_offline(bundle, tmp_path)
    venv = tmp_path / "venv"
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    print(f"kernel.py ran with the network disabled by {how}")
    assert "--no-index" in kernel.stdout

    where = subprocess.run(
        [
            str(python),
            "-c",
            "import json, steel_defect, segmentation_models_pytorch, hydra, omegaconf, antlr4, torch\n"
            "print(json.dumps({m.__name__: m.__file__ for m in "
            "(steel_defect, segmentation_models_pytorch, hydra, omegaconf, antlr4, torch)}))",
        ],
        cwd=work,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr
    files = json.loads(where.stdout)
    for name in ("steel_defect", "segmentation_models_pytorch", "hydra", "omegaconf", "antlr4"):
        assert Path(files[name]).is_relative_to(venv), (
            f"{name} imported from {files[name]}, not the fresh venv"
        )
    assert Path(files["torch"]).is_relative_to(tmp_path / "kaggle_image"), files["torch"]

    expected = tmp_path / "predict.csv"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "predict.py"),
            f"ckpt={gated_run['ckpt']}",
            f"images={gated_run['images']}",
            f"out={expected}",
            f"batch_size={PREDICT['batch_size']}",
            f"num_workers={PREDICT['num_workers']}",
            f"device={PREDICT['device']}",
            "tta=[" + ",".join(PREDICT["tta"]) + "]",
        ],
        cwd=tmp_path,
        env={**clean_env(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    submission = Path(manifest["settings"]["output"])
    rows = list(csv.reader(submission.read_text().splitlines()))
    assert rows[0] == ["ImageId", "EncodedPixels", "ClassId"]
    assert len(rows) - 1 == 4 * len(list(gated_run["images"].glob("*.jpg")))
    assert sum(bool(r[1]) for r in rows[1:]) >= 4, "the comparison needs non-empty masks"
    assert submission.read_bytes() == expected.read_bytes()
    # The bundled checkpoint carries the image head, and the bundled thresholds gate on it.
    bundled = torch.load(bundle / manifest["settings"]["checkpoints"][0], weights_only=True)
    assert bundled["steel_defect"]["net"]["image_head"] is True
    assert "img_source: image_head" in (bundle / "thresholds.yaml").read_text()


def test_kernel_stops_at_start_naming_every_runtime_mismatch():
    from steel_defect.deploy.kaggle.bundle import runtime_requirements
    from steel_defect.deploy.kaggle.kernel_template import check_runtime, satisfies

    assert satisfies("2.15.0+cu121", ">=2.15") and not satisfies("2.14.9", ">=2.15")
    assert (
        satisfies("1.0.31", ">=1.0.31,<2")
        and not satisfies("2.0", ">=1.0.31,<2")
        and satisfies("3.11.7", ">=3.10")
    )
    runtime = runtime_requirements(["segmentation-models-pytorch"])
    assert "segmentation-models-pytorch" not in runtime["packages"] and "torch" in runtime["packages"]
    check_runtime({"runtime": runtime})  # this environment meets the project's own requirements
    versions = {"torch": "2.4.0", "timm": None, "numpy": "2.0.0", "opencv-python-headless": "4.10.0"}
    with pytest.raises(RuntimeError) as info:
        check_runtime({"runtime": runtime}, python_version="3.9.18", version_of=versions.get)
    message = str(info.value)
    assert "Python 3.9.18 (needs >=3.10)" in message and "torch 2.4.0 (needs >=2.15)" in message
    assert "timm is not installed" in message and "numpy" not in message


def test_kernel_refuses_a_bundled_binary_wheel_built_for_another_python_or_cpu():
    from steel_defect.deploy.kaggle.kernel_template import check_runtime, wheel_fits

    tag = "cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64"
    assert wheel_fits(tag, "3.11.9", "x86_64", "2.36") and wheel_fits("py3-none-any", "3.9.0", "arm64", None)
    assert not wheel_fits(tag, "3.12.1", "x86_64", "2.36")  # another CPython
    assert not wheel_fits(tag, "3.11.9", "aarch64", "2.36")  # another CPU
    assert not wheel_fits(tag, "3.11.9", "x86_64", "2.17")  # too old a glibc
    settings = {"runtime": {"wheel_tags": {"onnxruntime": tag}}}
    check_runtime(settings, python_version="3.11.9", machine="x86_64", glibc="2.36")
    with pytest.raises(
        RuntimeError, match=r"the bundled onnxruntime wheel is built for cp311-.* this is Python 3.12.1"
    ):
        check_runtime(settings, python_version="3.12.1", machine="x86_64", glibc="2.36")


# ------------------------------------------------------------------------------------------------ runtime=onnx
@pytest.fixture(scope="module")
def onnx_bundle(bundle, gated_run) -> Path:
    """The same checkpoint bundled for the torch-free kernel (the project wheel reused from ``bundle``)."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    wheel = next((bundle / "wheels").glob("steel_defect-*.whl"))
    root = gated_run["root"]
    return build_bundle(
        str(gated_run["ckpt"]),
        root / "onnx_bundle",
        runtime="onnx",
        height=H,
        project_wheel=str(wheel),
        input=str(gated_run["images"]),
        output=str(root / "kaggle_onnx" / "working" / "submission.csv"),
        **PREDICT,
    )


@pytest.mark.slow
def test_onnx_bundle_ships_models_and_onnxruntime_not_torch(onnx_bundle):
    manifest = json.loads((onnx_bundle / MANIFEST_NAME).read_text())
    settings = manifest["settings"]
    assert settings["engine"] == "onnx" and settings["checkpoints"] == ["models/tiny.onnx"]
    assert not (onnx_bundle / "checkpoints").exists()
    assert sorted(w["name"] for w in manifest["wheels"]) == ["onnxruntime", "steel-defect"]
    # what the kernel checks on Kaggle's side at start: no torch, timm or smp among them
    assert set(settings["runtime"]["packages"]) == {"numpy", "opencv-python-headless", "pyyaml"}
    # the onnxruntime wheel is binary: the kernel checks its tag at start, the pure project wheel has none
    assert list(settings["runtime"]["wheel_tags"]) == ["onnxruntime"]
    assert settings["runtime"]["wheel_tags"]["onnxruntime"].startswith("cp3")


@pytest.mark.slow
def test_onnx_kernel_in_fresh_venv_without_torch_matches_predict_py(onnx_bundle, gated_run, tmp_path):
    """Fresh venv whose emulated Kaggle image has no torch, timm, smp, Lightning or Hydra; offline; the
    kernel installs the bundled onnxruntime and writes the same submission as predict.py on the model."""
    hidden = ["torch", "timm", "segmentation-models-pytorch", "lightning", "hydra-core", "torchmetrics"]
    python, work, kernel, _ = run_kernel_offline(onnx_bundle, tmp_path, hidden)
    manifest = json.loads((onnx_bundle / MANIFEST_NAME).read_text())
    assert "onnxruntime engine" in kernel.stdout
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u; print([m for m in ('torch', 'timm', 'hydra') if u.find_spec(m)])",
        ],
        cwd=work,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == "[]", "the emulated image must not offer torch"
    expected = tmp_path / "predict.csv"
    from steel_defect.tasks.dispatch import run

    run(
        {
            "ckpt": str(onnx_bundle / "models" / "tiny.onnx"),
            "images": str(gated_run["images"]),
            "thresholds": str(onnx_bundle / "thresholds.yaml"),
            "out": str(expected),
            **PREDICT,
        }
    )
    submission = Path(manifest["settings"]["output"])
    assert submission.read_bytes() == expected.read_bytes()
    rows = list(csv.reader(submission.read_text().splitlines()))[1:]
    assert sum(bool(r[1]) for r in rows) >= 4, "the comparison needs non-empty masks"
