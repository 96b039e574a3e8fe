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
import json
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from steel_defect import DEFAULT_SHAPE
from steel_defect.io import atomic_save, atomic_write
from steel_defect.rle import rle_encode
from steel_defect.synthetic.render import CLASS_MIXES, check_shape, render_sample

__all__ = [
    "GENERATOR_VERSION",
    "STAMP_NAME",
    "format_summary",
    "generate_dataset",
    "image_ids",
    "main",
    "read_stamp",
]

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


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``; then remove the previous outputs (CSVs first)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output directory {out} is not empty; pass --overwrite (overwrite=True)")
        for name in _CSV_NAMES:  # CSVs go first: no csv may ever name an image that is gone
            (out / name).unlink(missing_ok=True)
        for split in _SPLITS:
            folder = out / f"{split}_images"
            if folder.is_dir():
                for f in folder.glob("*.jpg"):
                    f.unlink()
                left = sorted(p.name for p in folder.iterdir())
                if left:  # another image there would pass for a defect-free one: refuse rather than delete it
                    raise FileExistsError(
                        f"{folder} still holds files that are not generated images after --overwrite: "
                        f"{left[:5]}; move them away"
                    )
    out.mkdir(parents=True, exist_ok=True)
    for split in _SPLITS:
        (out / f"{split}_images").mkdir(exist_ok=True)


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
    _prepare_out(out, overwrite)
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
    with atomic_write(out / STAMP_NAME, "w", encoding="utf-8") as fh:
        json.dump({**stamp, "shape": [h, w]}, fh)
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
        "--overwrite", action="store_true", help="replace the outputs of a previous run in OUT"
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
