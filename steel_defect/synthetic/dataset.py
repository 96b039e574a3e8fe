"""Writing a synthetic Severstal-like data set in Kaggle's layout (the images come from :mod:`.render`).

``python -m steel_defect.synthetic --out DIR --n-train N --n-test M --seed S`` writes::

    DIR/train_images/<9 hex>.jpg   DIR/train.csv            (ImageId,ClassId,EncodedPixels)
    DIR/test_images/<9 hex>.jpg    DIR/sample_submission.csv (ImageId,EncodedPixels,ClassId)
                                   DIR/test_labels.csv       (like train.csv; for evaluation only)

Every image is rendered from its own RNG, derived from ``(seed, split, index)`` with
:class:`numpy.random.SeedSequence`, so the bytes do not depend on ``workers`` or on the other split's size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from steel_defect import DEFAULT_SHAPE
from steel_defect.io import atomic_save, atomic_write, current_umask, pid_alive
from steel_defect.rle import rle_encode
from steel_defect.synthetic.render import CLASS_MIXES, check_shape, render_sample

__all__ = [
    "GENERATOR_VERSION",
    "STAMP_NAME",
    "NotSyntheticError",
    "check_out",
    "format_summary",
    "generate_dataset",
    "image_ids",
    "main",
    "owned_files",
    "read_stamp",
    "stamp_files",
]

log = logging.getLogger(__name__)

_SPLITS = {"train": 0, "test": 1}
_JPEG_QUALITY = 90
#: Written last (after the CSVs): which generator made the set, and with which arguments.
STAMP_NAME = "synthetic.json"
#: Bumped whenever the images change for the same arguments (2: the realism-driven generator; 3: class-1
#: specks that fill their box, class-2 marks in relief; 4: unlabelled look-alikes, ``synthetic/clutter.py``).
GENERATOR_VERSION = 4
_CSV_NAMES = ("train.csv", "test_labels.csv", "sample_submission.csv", STAMP_NAME)

# ---------------------------------------------------------------------------------------------- dataset


def image_ids(seed: int, n_train: int, n_test: int) -> tuple[list[str], list[str]]:
    """Kaggle-like ids (9 lowercase hex chars + ".jpg"), deterministic in ``seed``, unique across both splits.

    Id ``i`` of a split depends only on ``(seed, split, i)`` (plus, on a 36-bit collision, on the ids
    before it), so a larger set extends a smaller one with the same seed.
    """
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        ids = []
        for i in range(n):
            attempt = 0
            while True:
                ss = np.random.SeedSequence(seed, spawn_key=(_SPLITS[split], i, 1, attempt))
                name = f"{int(ss.generate_state(1, np.uint64)[0]) >> 28:09x}.jpg"
                if name not in seen:
                    break
                attempt += 1
            seen.add(name)
            ids.append(name)
        out[split] = ids
    return out["train"], out["test"]


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLITS[split], index, 0)))


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    def writer(tmp: str) -> None:
        if not cv2.imwrite(tmp, image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
            raise OSError(f"cv2.imwrite could not write {path}")

    atomic_save(path, writer)


def _render_chunk(
    args: tuple[str, int, str, list[tuple[int, str]], tuple[int, int], str],
) -> list[tuple[str, list[tuple[int, str]]]]:
    """Render and write the images of one chunk; return ``(image_id, [(class, rle), ...])`` per image."""
    out, seed, split, items, shape, class_mix = args
    folder = Path(out) / f"{split}_images"
    rows = []
    for index, image_id in items:
        image, masks = render_sample(_sample_rng(seed, split, index), shape, class_mix=class_mix)
        _write_jpeg(folder / image_id, image)  # grey in all channels, so RGB/BGR order does not matter
        labels = [(c + 1, rle_encode(masks[c])) for c in range(len(masks)) if masks[c].any()]
        rows.append((image_id, labels))
    return rows


def _worker_init() -> None:
    cv2.setNumThreads(1)


class NotSyntheticError(FileExistsError):
    """The output folder holds files the generator did not write: it is left exactly as it is."""


def stamp_files(stamp: dict) -> set[str]:
    """The files (relative paths) of the set a ``synthetic.json`` stamp describes, the stamp included.

    Stamps list them (``files``); for stamps written before they did, they are derived from the stamp's own arguments
    (the image ids are a function of ``seed``, ``n_train`` and ``n_test``), so a set is provably the
    generator's either way. A stamp without those arguments owns nothing but itself.
    """
    if isinstance(stamp.get("files"), list):
        return {str(f) for f in stamp["files"]} | {STAMP_NAME}
    try:
        seed, n_train, n_test = (int(stamp[k]) for k in ("seed", "n_train", "n_test"))
    except (KeyError, TypeError, ValueError):
        return {STAMP_NAME}
    if min(seed, n_train, n_test) < 0 or n_train + n_test > 10_000_000:
        return {STAMP_NAME}
    train_ids, test_ids = image_ids(seed, n_train, n_test)
    return set(_CSV_NAMES) | {f"train_images/{i}" for i in train_ids} | {f"test_images/{i}" for i in test_ids}


def _tree(out: Path) -> tuple[list[str], list[str]]:
    """Every file (and link, or other non-directory) and every folder under ``out``, as relative paths."""
    files, dirs = [], []
    for dirpath, dirnames, filenames in os.walk(out):
        base = Path(dirpath).relative_to(out)
        for d in list(dirnames):
            if (Path(dirpath) / d).is_symlink():  # a link is an entry of its own, never followed
                dirnames.remove(d)
                filenames.append(d)
            else:
                dirs.append((base / d).as_posix())
        files.extend((base / f).as_posix() for f in filenames)
    return sorted(files), sorted(dirs)


def owned_files(out: Path) -> list[str] | None:
    """The files of ``out`` when every one is the generator's (listed by its stamp); None when ``out`` holds
    anything else. An empty or missing folder owns nothing: ``[]``."""
    if not out.exists():
        return []
    files, dirs = _tree(out)
    stamp = read_stamp(out)
    owned = stamp_files(stamp) if stamp is not None else set()
    folders = {f"{split}_images" for split in _SPLITS}
    if set(files) - owned or set(dirs) - folders:
        return None
    return files


def check_out(out: Path, overwrite: bool) -> list[str]:
    """Refuse, before anything is written, an ``out`` that is not new, empty or a stamped synthetic set
    (made by this generator, holding only the files its stamp lists); returns the files it would replace.

    A stamped set is replaced only with ``overwrite``; nothing else ever is, with or without it.
    """
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output path {out} exists and is not a directory")
    files = owned_files(out)
    if files is None:
        all_files, _ = _tree(out)
        stamp = read_stamp(out)
        foreign = sorted(set(all_files) - (stamp_files(stamp) if stamp is not None else set()))
        what = "carries no synthetic.json stamp and" if stamp is None else "is stamped, but also"
        raise NotSyntheticError(
            f"refusing to write a synthetic data set into {out}: it {what} holds {len(foreign)} file(s) the "
            f"synthetic generator did not write (e.g. {', '.join(foreign[:3])}), so it looks like your data. "
            "Nothing was changed. To train on it, say what it is: data=severstal (Kaggle layout: train.csv + "
            "train_images/) or data=folder (images/ + masks/); for synthetic data, point data.root (or --out) "
            "at a new or empty directory."
        )
    if files and not overwrite:
        raise FileExistsError(
            f"output directory {out} holds a synthetic data set made with other arguments "
            f"({ {k: v for k, v in (read_stamp(out) or {}).items() if k != 'files'} }); pass --overwrite "
            "(overwrite=True) to replace it"
        )
    return files


def _remove_owned(folder: Path, files: Sequence[str]) -> None:
    """Delete exactly ``files`` (relative to ``folder``), then the image folders and ``folder`` if empty."""
    for name in files:
        (folder / name).unlink(missing_ok=True)
    for split in _SPLITS:
        with contextlib.suppress(FileNotFoundError, OSError):
            (folder / f"{split}_images").rmdir()
    with contextlib.suppress(FileNotFoundError, OSError):
        folder.rmdir()


#: In a folder being written, until the set is complete: proof that the generator made the folder.
_WORK_MARKER = ".synthetic-unfinished"
_WORK_RE = re.compile(r"^\.(?P<name>.+)\.synthetic-(?P<kind>new|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _clean_interrupted(out: Path) -> None:
    """Tidy what a killed earlier run left beside ``out``: an unfinished new set is deleted (its own files
    only); a set moved aside for replacement is moved back if ``out`` is missing, else deleted likewise."""
    if not out.parent.is_dir():
        return
    for entry in sorted(out.parent.iterdir()):
        match = _WORK_RE.match(entry.name)
        if not match or match["name"] != out.name or not entry.is_dir() or entry.is_symlink():
            continue
        if int(match["pid"]) == os.getpid() or pid_alive(int(match["pid"])):
            continue
        if match["kind"] == "new" and (entry / _WORK_MARKER).is_file():
            shutil.rmtree(entry)  # an unfinished set: made by the generator, from its marker on
            continue
        files = owned_files(entry)
        if match["kind"] == "old" and not out.exists() and files is not None:
            log.warning("restoring the synthetic set %s that an interrupted run had moved aside", out)
            os.rename(entry, out)
        elif match["kind"] == "old" and files is not None:
            _remove_owned(entry, files)
        else:
            log.warning("left %s alone: it holds files the generator did not write", entry)


def _work_dir(out: Path, kind: str) -> Path:
    """A new hidden folder beside ``out`` for the set being written (``new``, holding the :data:`_WORK_MARKER`
    until it is complete) or for the set being replaced (``old``)."""
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.synthetic-{kind}-{os.getpid()}-", dir=out.parent))
    if kind == "new":
        (folder / _WORK_MARKER).touch()
    return folder


def _swap_in(tmp: Path, out: Path, old_files: list[str]) -> None:
    """Move the finished set ``tmp`` to ``out``; the set it replaces is moved aside first, then deleted
    (only its stamped files), so at any moment ``out`` is the old set, the new set, or briefly absent
    (restored by the next run)."""
    os.chmod(tmp, 0o777 & ~current_umask())
    if not out.exists():
        os.rename(tmp, out)
        return
    if not old_files:
        out.rmdir()  # empty: nothing of the user's is in it
        os.rename(tmp, out)
        return
    aside = _work_dir(out, "old")
    os.rename(out, aside)  # onto the empty folder just made: POSIX replaces it
    os.rename(tmp, out)
    _remove_owned(aside, old_files)


def _write_labels(path: Path, rows: list[tuple[str, list[tuple[int, str]]]]) -> None:
    lines = ["ImageId,ClassId,EncodedPixels\n"]
    for image_id, labels in sorted(rows):
        lines.extend(f"{image_id},{c},{rle}\n" for c, rle in sorted(labels))
    with atomic_write(path, newline="") as fh:
        fh.writelines(lines)


def _split_summary(rows: list[tuple[str, list[tuple[int, str]]]]) -> dict:
    n_labels = [len(labels) for _, labels in rows]
    classes = range(1, max([4] + [c for _, labels in rows for c, _ in labels]) + 1)
    per_class = {c: sum(any(lc == c for lc, _ in labels) for _, labels in rows) for c in classes}
    return {
        "images": len(rows),
        "defect_free": sum(k == 0 for k in n_labels),
        "multi_label": sum(k >= 2 for k in n_labels),
        "class_images": per_class,
    }


def generate_dataset(
    out: str | Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    workers: int = 1,
    overwrite: bool = False,
    chunk_size: int = 16,
    class_mix: str = "real",
) -> dict:
    """Write a synthetic data set in Kaggle's layout under ``out`` and return a summary dict.

    The summary has ``out, shape, seed, seconds, images_per_s`` and, per split (``train``, ``test``),
    ``images, defect_free, multi_label, class_images {1..4: images with that class}``.
    The bytes written depend only on ``(seed, n_train, n_test, shape, class_mix)``, not on ``workers``.
    ``class_mix``: ``real`` (the real class frequencies) or ``balanced`` (every class equally often among
    the defect images).
    """
    t0 = time.perf_counter()
    if class_mix not in CLASS_MIXES:
        raise ValueError(f"class_mix must be one of {', '.join(CLASS_MIXES)}, got {class_mix!r}")
    out = Path(out)
    h, w = check_shape(shape)
    for name, value in (("n_train", n_train), ("n_test", n_test), ("seed", seed), ("workers", workers)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if workers < 1 or chunk_size < 1:
        raise ValueError(f"workers and chunk_size must be >= 1, got {workers} and {chunk_size}")
    _clean_interrupted(out)
    old_files = check_out(out, overwrite)  # before the first write: refuses anything not the generator's
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _work_dir(out, "new")  # written beside out, then renamed into place: out is never half-written
    try:
        rows = _write_set(tmp, seed, n_train, n_test, (h, w), class_mix, workers, chunk_size)
        (tmp / _WORK_MARKER).unlink()
        _swap_in(tmp, out, old_files)
    except BaseException:
        if (tmp / _WORK_MARKER).exists():  # the folder this call made, with nothing but what it wrote
            shutil.rmtree(tmp)
        raise
    seconds = time.perf_counter() - t0
    n = n_train + n_test
    return {
        "out": str(out),
        "shape": [h, w],
        "seed": int(seed),
        "train": _split_summary(rows["train"]),
        "test": _split_summary(rows["test"]),
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else float("inf"),
    }


def _write_set(
    out: Path,
    seed: int,
    n_train: int,
    n_test: int,
    shape: tuple[int, int],
    class_mix: str,
    workers: int,
    chunk_size: int,
) -> dict[str, list]:
    """Render the set into the (new, empty) folder ``out``; the stamp, listing every file, comes last."""
    h, w = shape
    for split in _SPLITS:
        (out / f"{split}_images").mkdir()
    train_ids, test_ids = image_ids(seed, n_train, n_test)
    tasks = []
    for split, ids in (("train", train_ids), ("test", test_ids)):
        items = list(enumerate(ids))
        for i in range(0, len(items), chunk_size):
            tasks.append((str(out), seed, split, items[i : i + chunk_size], (h, w), class_mix))
    if workers == 1 or len(tasks) <= 1:
        results = [_render_chunk(t) for t in tasks]
    else:
        ctx = get_context("spawn")  # no fork of a possibly multi-threaded parent (OpenCV, torch)
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx, initializer=_worker_init) as ex:
            results = list(ex.map(_render_chunk, tasks))
    rows: dict[str, list] = {"train": [], "test": []}
    for task, res in zip(tasks, results, strict=True):
        rows[task[2]].extend(res)
    # CSVs last: every image they name is already on disk.
    _write_labels(out / "test_labels.csv", rows["test"])
    with atomic_write(out / "sample_submission.csv", newline="") as fh:
        fh.write("ImageId,EncodedPixels,ClassId\n")
        fh.writelines(f"{i},1 {h * w},0\n" for i in sorted(test_ids))
    _write_labels(out / "train.csv", rows["train"])
    stamp = {
        "generator_version": GENERATOR_VERSION,
        "n_train": n_train,
        "n_test": n_test,
        "seed": int(seed),
        "class_mix": class_mix,
    }
    files = [
        *_CSV_NAMES[:3],
        *(f"train_images/{i}" for i in train_ids),
        *(f"test_images/{i}" for i in test_ids),
    ]
    with atomic_write(out / STAMP_NAME, "w", encoding="utf-8") as fh:
        json.dump({**stamp, "shape": [h, w], "files": files}, fh)
    return rows


def read_stamp(out: str | Path) -> dict | None:
    """The ``synthetic.json`` stamp of a generated set (None when absent or unreadable: an older set)."""
    path = Path(out) / STAMP_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def format_summary(summary: dict) -> str:
    """Short human-readable summary of :func:`generate_dataset`'s result."""
    h, w = summary["shape"]
    tr, te = summary["train"], summary["test"]
    lines = [
        f"Wrote {tr['images']} train + {te['images']} test images ({h}x{w}) to {summary['out']} "
        f"in {summary['seconds']:.1f} s ({summary['images_per_s']:.1f} images/s)"
    ]
    for name, s in (("train", tr), ("test", te)):
        n = s["images"]
        share = s["defect_free"] / n if n else 0.0
        per_class = ", ".join(f"class {c}: {k}" for c, k in s["class_images"].items())
        lines.append(
            f"  {name:5s}: defect-free {s['defect_free']}/{n} ({share:.1%}); images with {per_class}; "
            f"two or more classes: {s['multi_label']}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m steel_defect.synthetic",
        description="Write a synthetic Severstal-like data set (train/test images, train.csv, "
        "sample_submission.csv, test_labels.csv) in Kaggle's layout.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (must be empty or new)")
    parser.add_argument("--n-train", type=int, required=True, help="number of train images")
    parser.add_argument("--n-test", type=int, default=0, help="number of test images (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")
    parser.add_argument("--height", type=int, default=DEFAULT_SHAPE[0], help="image height (default 256)")
    parser.add_argument("--width", type=int, default=DEFAULT_SHAPE[1], help="image width (default 1600)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a synthetic set this generator made in OUT (its synthetic.json stamp lists every file); a folder holding anything else is always refused",
    )
    parser.add_argument(
        "--class-mix",
        choices=CLASS_MIXES,
        default="real",
        help="real: the real class frequencies (default); balanced: every class equally often among defect images",
    )
    args = parser.parse_args(argv)
    try:
        summary = generate_dataset(
            args.out,
            args.n_train,
            args.n_test,
            seed=args.seed,
            shape=(args.height, args.width),
            workers=args.workers,
            overwrite=args.overwrite,
            class_mix=args.class_mix,
        )
    except (FileExistsError, NotADirectoryError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(format_summary(summary))
    return summary


if __name__ == "__main__":
    main()
