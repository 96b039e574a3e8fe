"""What a command may write: never onto its inputs, and an existing file only when it is of the command's own kind.

Every command that writes checks its outputs with these functions *before its first write*, so a refusal
leaves every file as it was (the rule table is in docs/ARCHITECTURE.md, "Where the project writes"):

* :func:`refuse_onto_inputs`: an output that is one of the run's input files, lies inside one of its input
  folders, or (an output folder) would hold an input, is refused;
* :func:`refuse_unless_own`: an existing file is replaced only when it is a regular file of the command's
  own kind (a submission by a submission, a thresholds file by a thresholds file, ...);
* :func:`refuse_broad_dir`: a folder that a command would replace wholesale is never ``/``, the home folder,
  the working directory or a folder above it.

Refusals raise :class:`UnsafeWriteError` (a ``ValueError``) naming the path, what was found and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "UnsafeWriteError",
    "csv_header",
    "is_within",
    "refuse_broad_dir",
    "refuse_onto_inputs",
    "refuse_unless_own",
]

PathLike = str | os.PathLike


class UnsafeWriteError(ValueError):
    """A write refused before anything was touched: it would overwrite data the project did not create."""


def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve(strict=False)


def is_within(path: PathLike, folder: PathLike) -> bool:
    """True when ``path`` is ``folder`` or lies below it (symbolic links resolved)."""
    p, f = _resolved(path), _resolved(folder)
    return p == f or f in p.parents


def refuse_onto_inputs(
    out: PathLike,
    *,
    what: str,
    inputs: Iterable[PathLike | None] = (),
    input_dirs: Iterable[PathLike | None] = (),
) -> None:
    """Refuse ``out`` (named ``what`` in the message, e.g. ``out``) when it is one of ``inputs``, lies in one
    of ``input_dirs``, or is a folder above an input (a folder output could then replace it)."""
    target = _resolved(out)
    for item in inputs:
        if item is None:
            continue
        source = _resolved(item)
        if target == source:
            raise UnsafeWriteError(
                f"{what}={out} is one of this command's inputs ({item}): refusing to overwrite it "
                "(nothing was written); choose another output path"
            )
        if target in source.parents:
            raise UnsafeWriteError(
                f"{what}={out} holds this command's input {item}: refusing to write there "
                "(nothing was written); choose another output path"
            )
    for folder in input_dirs:
        if folder is None:
            continue
        source = _resolved(folder)
        if target == source or source in target.parents or target in source.parents:
            raise UnsafeWriteError(
                f"{what}={out} {'is' if target == source else 'overlaps'} the input folder {folder}: "
                "refusing to write there (nothing was written); choose an output outside it"
            )


def refuse_unless_own(path: PathLike, is_own: Callable[[Path], bool], *, what: str, kind: str) -> None:
    """An existing ``path`` may be replaced only when it is a regular file and ``is_own(path)`` (a ``kind``)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink():
        raise UnsafeWriteError(
            f"{what}={path} is a symbolic link: refusing to replace it (nothing was written); "
            "choose another path"
        )
    if path.is_dir():
        raise UnsafeWriteError(f"{what}={path} is a directory: refusing to replace it; give a file path")
    if not path.is_file() or not is_own(path):
        raise UnsafeWriteError(
            f"{what}={path} exists and is not a {kind}: refusing to overwrite it (nothing was written); "
            "choose another path or move that file away"
        )


def refuse_broad_dir(out: PathLike, *, what: str) -> None:
    """Refuse a folder output that is ``/``, the home folder, the working directory or a folder above it."""
    target = _resolved(out)
    cwd = Path.cwd().resolve()
    broad = {Path(target.anchor), Path.home().resolve()}
    if target in broad or target == cwd or target in cwd.parents:
        raise UnsafeWriteError(
            f"{what}={out} resolves to {target}, a folder this command would replace wholesale: "
            "refusing (nothing was written); name a folder of its own"
        )


def csv_header(path: PathLike) -> tuple[str, ...] | None:
    """The first line of a text file split on commas (a UTF-8 BOM dropped); None when unreadable."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            line = fh.readline(4096)
    except (OSError, UnicodeDecodeError):
        return None
    return tuple(part.strip() for part in line.strip().split(","))
