"""steel-defect Kaggle kernel: offline install from the attached bundle dataset, then one network -> submission.

Template: ``python -m steel_defect.kaggle bundle ...`` copies this file into the bundle as ``kernel.py`` (and
as the single cell of ``kernel.ipynb``) with ``SETTINGS`` filled in. Standard library only until the bundled
wheels are installed. Environment overrides: STEEL_DEFECT_BUNDLE (the dataset folder), STEEL_DEFECT_INPUT
(test images), STEEL_DEFECT_OUTPUT (submission csv), STEEL_DEFECT_DEVICE (auto, cpu, cuda).
"""

import glob
import hashlib
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# >>> settings
SETTINGS = {
    "input": "/kaggle/input/severstal-steel-defect-detection/test_images",
    "output": "/kaggle/working/submission.csv",
    "checkpoints": [],
    "engine": "torch",
    "thresholds": None,
    "wheels_dir": "wheels",
    "requirements": [],
    "runtime": {"python": "", "packages": {}},
    "batch_size": 4,
    "num_workers": 2,
    "tta": [],
    "device": "auto",
    "amp": True,
    "manifest": "steel_defect_bundle.json",
}
# <<< settings

ENV_OVERRIDES = {
    "input": "STEEL_DEFECT_INPUT",
    "output": "STEEL_DEFECT_OUTPUT",
    "device": "STEEL_DEFECT_DEVICE",
}


def find_bundle(manifest_name):
    """The bundle folder: $STEEL_DEFECT_BUNDLE, this script's folder, or the /kaggle/input dataset holding it."""
    env = os.environ.get("STEEL_DEFECT_BUNDLE")
    if env:
        if not (Path(env) / manifest_name).is_file():
            raise FileNotFoundError(f"STEEL_DEFECT_BUNDLE={env} holds no {manifest_name}")
        return Path(env)
    here = globals().get("__file__")
    if here and (Path(here).resolve().parent / manifest_name).is_file():
        return Path(here).resolve().parent
    hits = []
    for depth in ("*", "*/*", "*/*/*"):
        hits += sorted(glob.glob(f"/kaggle/input/{depth}/{manifest_name}"))
    if not hits:
        raise FileNotFoundError(
            f"no {manifest_name} under /kaggle/input: attach the steel-defect bundle dataset to this notebook "
            "(or set STEEL_DEFECT_BUNDLE)"
        )
    return Path(hits[0]).parent


def verify_files(bundle, manifest):
    """Every bundled file must match the manifest's size and sha256 (a truncated upload fails here)."""
    for rel, info in manifest["files"].items():
        path = bundle / rel
        if not path.is_file():
            raise FileNotFoundError(f"bundle file missing: {path}")
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023
                digest.update(chunk)
        if path.stat().st_size != info["size"] or digest.hexdigest() != info["sha256"]:
            raise ValueError(
                f"bundle file {path} does not match {bundle / SETTINGS['manifest']} (corrupt upload?)"
            )


def _version_tuple(text):
    """Leading numeric release of a version string: '2.15.0+cu121' -> (2, 15, 0)."""
    parts = []
    for piece in str(text).split("+")[0].split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def satisfies(version, spec):
    """Whether ``version`` meets a comma-separated specifier such as '>=2.15,<3' (>=, >, <=, <, ==, !=)."""
    ops = {
        ">=": lambda a, b: a >= b,
        "<=": lambda a, b: a <= b,
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        ">": lambda a, b: a > b,
        "<": lambda a, b: a < b,
    }
    have = _version_tuple(version)
    for clause in filter(None, (c.strip() for c in str(spec).split(","))):
        op = next(o for o in (">=", "<=", "==", "!=", ">", "<") if clause.startswith(o))
        want = _version_tuple(clause[len(op) :].strip())
        width = max(len(have), len(want))
        if not ops[op](have + (0,) * (width - len(have)), want + (0,) * (width - len(want))):
            return False
    return True


def wheel_fits(tag, python_version, machine, glibc):
    """Whether a wheel tag 'cp311-cp311-manylinux_2_28_x86_64' (python-abi-platform) installs here: its
    CPython version, its CPU architecture and, for manylinux, the minimum glibc. Pure wheels always do."""
    py, _, plat = tag.split("-", 2)
    major_minor = "".join(str(python_version).split(".")[:2])
    if py.startswith("cp") and not any(p == f"cp{major_minor}" for p in py.split(".")):
        return False
    if plat == "any":
        return True
    for option in plat.split("."):
        if not option.endswith(machine):
            continue
        if option.startswith("manylinux_"):
            need = _version_tuple(".".join(option.split("_")[1:3]))
            if glibc is not None and _version_tuple(glibc) < need:
                continue
        return True
    return False


def _glibc():
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").split()[-1]
    except (AttributeError, ValueError, OSError):
        return None


def check_runtime(settings, python_version=None, version_of=None, machine=None, glibc=None):
    """Stop at start, with one error naming every problem, when this environment's Python or an unbundled
    package (torch, timm, ...) does not meet the bundle's requirements, or a bundled binary wheel (e.g.
    onnxruntime) was built for another Python, CPU or glibc."""
    from importlib import metadata

    def installed(name):
        for candidate in (name, "opencv-python") if name == "opencv-python-headless" else (name,):
            try:
                return metadata.version(candidate)
            except metadata.PackageNotFoundError:
                continue
        return None

    version_of = version_of or installed
    python_version = python_version or ".".join(map(str, sys.version_info[:3]))
    runtime = settings.get("runtime") or {}
    problems = []
    if runtime.get("python") and not satisfies(python_version, runtime["python"]):
        problems.append(f"Python {python_version} (needs {runtime['python']})")
    for name, spec in sorted((runtime.get("packages") or {}).items()):
        version = version_of(name)
        if version is None:
            problems.append(f"{name} is not installed (needs {spec or 'any version'})")
        elif spec and not satisfies(version, spec):
            problems.append(f"{name} {version} (needs {spec})")
    machine = machine or platform.machine()
    glibc = glibc or _glibc()
    for name, tag in sorted((runtime.get("wheel_tags") or {}).items()):
        if not wheel_fits(tag, python_version, machine, glibc):
            problems.append(
                f"the bundled {name} wheel is built for {tag}, this is Python {python_version} on {machine}"
                + (f" with glibc {glibc}" if glibc else "")
            )
    if problems:
        raise RuntimeError(
            "this environment cannot run the bundle: " + "; ".join(problems) + ". Pick a Kaggle environment "
            "that has them (notebook settings: 'Environment: latest'), or rebuild the bundle with the missing "
            "packages as wheels (python -m steel_defect.kaggle bundle ... extra_wheels=NAME)"
        )


def install(bundle, settings):
    """pip install the pinned bundled wheels with no index and no dependency resolution."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--find-links",
        str(bundle / settings["wheels_dir"]),
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        *settings["requirements"],
    ]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    importlib.invalidate_caches()
    from importlib import metadata

    for requirement in settings["requirements"]:
        name, _, version = requirement.partition("==")
        installed = metadata.version(name)
        if installed != version:
            raise RuntimeError(f"{name}: expected {version} from the bundle, but {installed} is importable")


def main():
    start = time.perf_counter()
    settings = dict(SETTINGS)
    for key, env in ENV_OVERRIDES.items():
        if os.environ.get(env):
            settings[key] = os.environ[env]
    check_runtime(settings)
    bundle = find_bundle(settings["manifest"])
    manifest = json.loads((bundle / settings["manifest"]).read_text(encoding="utf-8"))
    verify_files(bundle, manifest)
    install(bundle, settings)
    import steel_defect
    from steel_defect.deploy.kaggle.bundle import run_kernel

    print(f"steel_defect {steel_defect.__version__} from {Path(steel_defect.__file__).parent}", flush=True)

    summary = run_kernel(settings, bundle)
    print(f"kernel finished in {time.perf_counter() - start:.1f} s: {summary['out']}", flush=True)
    return summary


if __name__ == "__main__":
    main()
