"""Upload bytes -> a checked image, before anything reaches the model (pure functions, no server needed).

The order matters: the format is named from the file's first bytes and must be one of the allowed ones
(``formats=``: JPEG, PNG, BMP, TIFF by default; nothing else ever reaches a decoder, so no PostScript for
Ghostscript, no ICO or PCX that OpenCV cannot read), then Pillow reads only the header of that one format
for the size, the size is checked against ``max_pixels`` (after padding to the network stride, what the
model really allocates), and only then is the image decoded, by OpenCV exactly as ``predict.py`` reads files.
Every refusal is an :class:`UploadError` (a 4xx with a message naming the setting or the fix).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence

import numpy as np

from steel_defect.deploy.serve.settings import DEFAULT_FORMATS, DEFAULT_MAX_PIXELS

#: first bytes -> format, for the formats the service may decode
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
)
#: first bytes of formats it never decodes, only to name them in the refusal
OTHER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"icns", "ICNS"),
    (b"\x59\xa6\x6a\x95", "Sun raster"),
    (b"\x0a", "PCX"),
    (b"P1", "PNM"),
    (b"P2", "PNM"),
    (b"P3", "PNM"),
    (b"P4", "PNM"),
    (b"P5", "PNM"),
    (b"P6", "PNM"),
)
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "WEBP": "image/webp",
}


class UploadError(Exception):
    """A client mistake: HTTP ``status`` and a message for the JSON ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def sniff(data: bytes) -> str | None:
    """The format named by the first bytes (decodable ones first), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for table in (SIGNATURES, OTHER_SIGNATURES):
        for sig, kind in table:
            if data.startswith(sig):
                return kind
    return None


def padded_pixels(height: int, width: int, stride: int = 32) -> int:
    """What the model allocates per channel for an image: each side padded up to a multiple of ``stride``."""
    return math.ceil(height / stride) * stride * math.ceil(width / stride) * stride


def read_header(
    data: bytes,
    name: str = "the upload",
    formats: Sequence[str] = DEFAULT_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    stride: int = 32,
    load: bool = False,
) -> tuple[str, int, int]:
    """``(format, height, width)`` from the header (with ``load``, then a complete, strict decode by Pillow,
    only once the size is known to be within the limit); raises :class:`UploadError`: 400 empty, truncated
    or corrupt, 415 a format that is not allowed, 413 more than ``max_pixels``."""
    from PIL import Image, UnidentifiedImageError

    allowed = ", ".join(formats)
    if not data:
        raise UploadError(400, f"{name} is empty: send the image's bytes ({allowed}) as the request body")
    kind = sniff(data)
    if kind is None:
        head = data[:8].hex()
        raise UploadError(415, f"{name} is not an image ({allowed} expected; first bytes {head})")
    if kind not in formats:
        raise UploadError(
            415,
            f"{name} is in {kind} format; this service takes {allowed} (setting formats=...): convert "
            "it, e.g. to PNG",
        )
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: the limit below is the one that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[kind]) as im:
                width, height = im.size
                if width < 1 or height < 1:
                    raise UploadError(400, f"{name} has no pixels ({width}x{height})")
                check_pixels(name, height, width, max_pixels, stride)
                if load:
                    im.load()
    except Image.DecompressionBombError as err:
        raise UploadError(413, f"{name} has too many pixels for max_pixels={max_pixels}: {err}") from err
    except UnidentifiedImageError as err:
        raise UploadError(400, f"{name} starts like {kind} but is truncated or corrupt") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise UploadError(400, f"{name} is a truncated or corrupt image ({kind}): {err}") from err
    return kind, height, width


def check_pixels(name: str, height: int, width: int, max_pixels: int, stride: int = 32) -> None:
    """413 when the image, padded to the network stride (what the model allocates), exceeds max_pixels."""
    padded = padded_pixels(height, width, stride)
    if padded > max_pixels:
        raise UploadError(
            413,
            f"{name} is {width}x{height} pixels ({padded:,} once padded to the network stride {stride}), over "
            f"the limit max_pixels={max_pixels:,}: send a smaller image or tiles of it (a Severstal image "
            "is 1600x256), or start the service with a larger max_pixels= (memory grows with it)",
        )


def decode_image(data: bytes, name: str = "the upload") -> np.ndarray:
    """Image bytes -> RGB uint8 (H, W, 3), decoded exactly as ``predict.py`` reads files (OpenCV)."""
    import cv2

    return cv2.cvtColor(_opencv_decode(data, name), cv2.COLOR_BGR2RGB)


def _opencv_decode(data: bytes, name: str) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or bgr.size == 0:
        raise UploadError(
            415, f"{name} could not be decoded by OpenCV (the model's decoder): re-save it as PNG or JPEG"
        )
    return bgr


def check_image(
    data: bytes,
    name: str = "the upload",
    formats: Sequence[str] = DEFAULT_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    stride: int = 32,
) -> tuple[str, int, int]:
    """The whole check of an upload, in the request handler: :func:`read_header` (format allowed by name,
    size within ``max_pixels``, a complete strict decode), then a decode with the decoder the model's worker
    uses, which must give the header's size. A bad image is refused here, with its own 4xx, and never
    reaches a dynamic batch. Returns ``(format, height, width)``."""
    kind, height, width = read_header(data, name, formats, max_pixels, stride, load=True)
    image = _opencv_decode(data, name)
    if image.shape[:2] != (height, width):
        raise UploadError(
            400,
            f"{name}: its {kind} header says {width}x{height} but it decodes to "
            f"{image.shape[1]}x{image.shape[0]}: a damaged or unusual file; re-save it",
        )
    return kind, height, width
