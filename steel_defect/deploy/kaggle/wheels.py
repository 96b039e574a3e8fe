"""Wheels for the offline Kaggle bundle: the project's own, and its dependencies rebuilt from this environment.

A dependency wheel is rebuilt offline from the installed files of its distribution (its RECORD, every hash
verified), or fetched with ``pip wheel --no-deps`` (network); torch and CUDA packages are never bundled.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from steel_defect.io import atomic_save

__all__ = [
    "NEVER_BUNDLE",
    "build_project_wheel",
    "canonical_name",
    "check_bundle_name",
    "download_wheel",
    "wheel_from_installed",
    "wheel_name_version",
]

#: Never bundled: Kaggle's own CUDA build of torch must stay in charge.
NEVER_BUNDLE: tuple[str, ...] = ("torch", "torchvision", "torchaudio", "triton")
NEVER_BUNDLE_PREFIXES: tuple[str, ...] = ("nvidia-", "cuda-")
_FIXED_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def canonical_name(name: str) -> str:
    """PEP 503 normalised project name (``Hydra_Core`` -> ``hydra-core``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def check_bundle_name(name: str) -> str:
    """Reject packages that must never be bundled (torch & co., CUDA wheels)."""
    canon = canonical_name(name)
    if canon in NEVER_BUNDLE or canon.startswith(NEVER_BUNDLE_PREFIXES):
        raise ValueError(
            f"wheels: {name!r} must not be bundled: the kernel uses Kaggle's own torch/CUDA stack "
            f"(never bundled: {', '.join(NEVER_BUNDLE)}, {', '.join(p + '*' for p in NEVER_BUNDLE_PREFIXES)})"
        )
    return canon


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wheel_tag(wheel_text: str, name: str) -> str:
    """Compressed tag (``py2.py3-none-any``) from the ``Tag:`` lines of a WHEEL file."""
    tags = [line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")]
    if not tags:
        raise ValueError(f"{name}: its installed WHEEL file has no Tag line; cannot rebuild a wheel")
    parts: list[list[str]] = [[], [], []]
    for tag in tags:
        pieces = tag.split("-")
        if len(pieces) != 3:
            raise ValueError(f"{name}: malformed wheel tag {tag!r} in its WHEEL file")
        for i, piece in enumerate(pieces):
            if piece not in parts[i]:
                parts[i].append(piece)
    return "-".join(".".join(p) for p in parts)


def _console_scripts(dist: metadata.Distribution) -> set[str]:
    return {ep.name for ep in dist.entry_points if ep.group in ("console_scripts", "gui_scripts")}


def wheel_from_installed(name: str, out_dir: str | os.PathLike) -> Path:
    """Rebuild the wheel of an installed distribution from its RECORD, offline; return the wheel path.

    Every recorded file is checked against its RECORD hash (a modified install raises). Scripts go to
    ``<name>.data/scripts`` with their shebang reset to ``#!python``; console scripts are left to the
    installer (they come from entry_points.txt); byte code and installer files (INSTALLER, REQUESTED,
    direct_url.json, RECORD) are not copied, RECORD is rewritten. Editable installs are refused.
    """
    dist, wheel_text = _installed_wheel_dist(name)
    real_name, version = dist.metadata["Name"], dist.version
    escaped = re.sub(r"[-_.]+", "_", real_name).lower()
    tag = _wheel_tag(wheel_text, real_name)
    info_dirs = {f.parts[0] for f in dist.files if f.parts and f.parts[0].endswith(".dist-info")}
    if len(info_dirs) != 1:
        raise ValueError(
            f"wheels: {name!r}: expected one .dist-info folder in RECORD, got {sorted(info_dirs)}"
        )
    info_dir = info_dirs.pop()
    data_dir = f"{escaped}-{version.replace('-', '_')}.data"
    skip_info = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}
    place = _WheelPlacement(
        name=name,
        root=Path(dist.locate_file("")).resolve(),
        scripts_dir=Path(sysconfig.get_path("scripts")).resolve(),
        data_dir=data_dir,
        console=_console_scripts(dist),
    )
    entries: list[tuple[str, bytes, int]] = []
    for file in dist.files:
        if "__pycache__" in file.parts or file.as_posix().endswith((".pyc", ".pyo")):
            continue
        if file.parts[0] == info_dir and len(file.parts) == 2 and file.parts[1] in skip_info:
            continue
        entry = place.entry(file, Path(dist.locate_file(file)).resolve())
        if entry is not None:
            entries.append(entry)
    entries = _with_record(entries, info_dir)

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for arc, data, mode in entries:
                info = zipfile.ZipInfo(arc, date_time=_FIXED_ZIP_DATE)
                info.external_attr = (0o100000 | mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)

    return atomic_save(Path(out_dir) / f"{escaped}-{version.replace('-', '_')}-{tag}.whl", write)


def _installed_wheel_dist(name: str) -> tuple[metadata.Distribution, str]:
    """The installed distribution ``name`` and its WHEEL text; refuses what cannot be rebuilt offline."""
    check_bundle_name(name)
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError as err:
        raise ValueError(
            f"wheels: {name!r} is not installed in this environment ({sys.prefix}); install it, drop it from "
            "wheels=, or pass download=true"
        ) from err
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        raise ValueError(f"wheels: {name!r} is an editable install; build its wheel with `pip wheel` instead")
    wheel_text = dist.read_text("WHEEL")
    if wheel_text is None:
        raise ValueError(
            f"wheels: {name!r} was not installed from a wheel (no WHEEL file); use download=true"
        )
    if not dist.files:
        raise ValueError(f"wheels: {name!r} has no RECORD file list; cannot rebuild its wheel")
    return dist, wheel_text


@dataclass(frozen=True)
class _WheelPlacement:
    """Where the installed files of distribution ``name`` go in its rebuilt wheel."""

    name: str
    root: Path
    scripts_dir: Path
    data_dir: str
    console: set[str]

    def entry(self, file: Any, path: Path) -> tuple[str, bytes, int] | None:
        """``(archive name, bytes, mode)`` of one recorded file (hash-checked), None for a console script."""
        name, rel = self.name, file.as_posix()
        if not path.is_file():
            raise ValueError(f"wheels: {name!r}: recorded file {rel} is missing at {path}; reinstall {name}")
        data = path.read_bytes()
        if file.hash is not None and _record_hash(data) != f"{file.hash.mode}={file.hash.value}":
            raise ValueError(
                f"wheels: {name!r}: {path} differs from its RECORD hash (modified after install); reinstall "
                f"{name} or pass download=true"
            )
        mode = path.stat().st_mode & 0o777
        if not rel.startswith("../"):
            if not path.is_relative_to(self.root):
                raise ValueError(f"wheels: {name!r}: {rel} resolves outside {self.root}")
            return rel, data, mode
        if path.parent != self.scripts_dir:
            raise ValueError(
                f"wheels: {name!r} installs {path} outside site-packages and scripts; not supported"
            )
        if path.name in self.console:
            return None
        if data.startswith(b"#!") and b"python" in data.split(b"\n", 1)[0]:
            data = b"#!python" + data[data.index(b"\n") :] if b"\n" in data else b"#!python"
        return f"{self.data_dir}/scripts/{path.name}", data, mode


def _with_record(entries: list[tuple[str, bytes, int]], info_dir: str) -> list[tuple[str, bytes, int]]:
    """``entries`` sorted (dist-info last) plus the RECORD listing them with their hashes."""
    entries = sorted(entries, key=lambda e: (e[0].startswith(info_dir + "/"), e[0]))
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for arc, data, _ in entries:
        writer.writerow((arc, _record_hash(data), len(data)))
    writer.writerow((f"{info_dir}/RECORD", "", ""))
    return [*entries, (f"{info_dir}/RECORD", record.getvalue().encode(), 0o644)]


def _pip(args: Sequence[str], what: str) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
        raise RuntimeError(f"{what} failed (pip {' '.join(args)}):\n" + "\n".join(tail))


def _single_new_wheel(folder: Path, prefix: str, what: str) -> Path:
    found = sorted(folder.glob("*.whl"))
    if len(found) != 1 or not found[0].name.lower().startswith(prefix):
        raise RuntimeError(f"{what}: expected one {prefix}*.whl in {folder}, got {[p.name for p in found]}")
    return found[0]


def project_root() -> Path:
    """The checkout this package was imported from (it must hold the steel-defect pyproject.toml)."""
    root = Path(__file__).resolve().parents[3]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or 'name = "steel-defect"' not in pyproject.read_text(encoding="utf-8"):
        raise FileNotFoundError(
            f"steel_defect is not imported from a source checkout ({root} has no steel-defect pyproject.toml); "
            "pass project_wheel=PATH to a built wheel"
        )
    return root


def build_project_wheel(out_dir: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Build the project's wheel offline (``pip wheel --no-deps --no-build-isolation --no-index``).

    The sources are copied to a temporary folder first, so the checkout gets no build/ or egg-info.
    """
    root = Path(root) if root is not None else project_root()
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="steel-defect-wheel-") as tmp:
        src, dist = Path(tmp) / "src", Path(tmp) / "dist"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        shutil.copytree(
            root / "steel_defect", src / "steel_defect", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        _pip(
            [
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "--quiet",
                "--wheel-dir",
                str(dist),
                str(src),
            ],
            "building the steel-defect wheel",
        )
        built = _single_new_wheel(dist, "steel_defect-", "building the steel-defect wheel")
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(built, out_dir / built.name))


def download_wheel(name: str, out_dir: str | os.PathLike) -> Path:
    """Fetch (or build from an sdist) the wheel of ``name`` at its installed version, if installed (network)."""
    canon = check_bundle_name(name)
    try:
        spec = f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        spec = name
    with tempfile.TemporaryDirectory(prefix="steel-defect-dl-") as tmp:
        _pip(["wheel", "--no-deps", "--quiet", "--wheel-dir", tmp, spec], f"downloading {spec}")
        built = _single_new_wheel(Path(tmp), canon.replace("-", "_"), f"downloading {spec}")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(built, Path(out_dir) / built.name))


def wheel_name_version(path: Path) -> tuple[str, str]:
    """(canonical name, version) from a wheel file name."""
    parts = path.name[: -len(".whl")].split("-")
    if len(parts) < 5 or not path.name.endswith(".whl"):
        raise ValueError(f"not a wheel file name: {path.name}")
    return canonical_name(parts[0]), parts[1]
