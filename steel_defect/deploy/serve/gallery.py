"""The viewer's ``images=DIR`` folder: only regular image files that really lie inside it.

A name is listed when it has an image suffix, is a regular file and its resolved path is inside the folder
(a symlink to ``/etc/passwd`` or anywhere else outside is never listed nor served). Serving opens the
resolved path without following a last symlink, checks again, on the open file, that it is a regular
file inside the folder (so a file swapped for a link meanwhile is refused too), that it is not over the
upload limit and that its first bytes are an allowed image format. Answers carry names only, never paths.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from steel_defect.deploy.serve.images import MEDIA_TYPES, sniff
from steel_defect.deploy.serve.settings import DEFAULT_FORMATS
from steel_defect.io import IMAGE_SUFFIXES


class GalleryError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _inside(path: Path, root: Path) -> bool:
    return path.parent == root or root in path.parents


def _head(path: Path, size: int = 16) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def gallery_files(
    folder: str | os.PathLike | None, formats: Sequence[str] = DEFAULT_FORMATS
) -> dict[str, Path]:
    """Name -> resolved path of the files the viewer may pick (sorted by name; none without a folder):
    image suffix, regular file, resolved inside the folder, first bytes of an allowed format."""
    if folder is None:
        return {}
    root = Path(folder).resolve()
    found: dict[str, Path] = {}
    with os.scandir(root) as entries:
        for entry in entries:
            if Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                real = Path(os.path.realpath(entry.path))
                if (
                    _inside(real, root)
                    and stat.S_ISREG(os.stat(real, follow_symlinks=False).st_mode)
                    and sniff(_head(real)) in formats
                ):
                    found[entry.name] = real
            except OSError:
                continue
    return dict(sorted(found.items()))


def read_gallery_image(
    folder: str | os.PathLike, name: str, max_bytes: int, formats: Sequence[str]
) -> tuple[bytes, str]:
    """The bytes and media type of the listed image ``name``; :class:`GalleryError` 404/413/415 otherwise."""
    files = gallery_files(folder, formats)
    if name not in files:
        raise GalleryError(404, f"no image {name!r} in the configured folder (images=...)")
    root = Path(folder).resolve()
    try:
        fd = os.open(files[name], os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise GalleryError(404, f"image {name!r} cannot be read: {err.strerror}") from err
    try:
        st = os.fstat(fd)
        opened = Path(f"/proc/self/fd/{fd}")
        real = Path(os.readlink(opened)) if opened.is_symlink() else files[name]
        if not stat.S_ISREG(st.st_mode) or not _inside(real, root):
            raise GalleryError(404, f"no image {name!r} in the configured folder (images=...)")
        if st.st_size > max_bytes:
            raise GalleryError(
                413, f"image {name!r} is {st.st_size} bytes, over the upload limit (max_upload_mb)"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise GalleryError(413, f"image {name!r} is over the upload limit (max_upload_mb)")
    kind = sniff(data)
    if kind not in formats:
        raise GalleryError(
            415, f"{name!r} is not an image this service reads ({', '.join(formats)} expected)"
        )
    return data, MEDIA_TYPES[kind]
