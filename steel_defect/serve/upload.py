"""Request bodies of ``POST /predict`` -> validated image bytes, before anything reaches the model.

A client's mistake never reaches an inference worker (where, in a dynamic batch, it would fail the other
requests of the batch too) and never becomes a 500: :class:`UploadMiddleware` reads the body (refusing one
over the size limit with 413 before reading it all), takes the image from raw bytes or a multipart
upload, checks that it decodes completely (:func:`check_image`: empty, not an image, truncated each get a
4xx JSON ``{"detail": ...}``), and hands the endpoint a small JSON body with the bytes base64-encoded.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any
from urllib.parse import parse_qs

import numpy as np

#: form field names taken as the image in a multipart upload (else the first file in the form)
FILE_FIELDS: tuple[str, ...] = ("image", "file")


#: file signatures: bytes that start like one of these but do not decode are a corrupt image, not a non-image
SIGNATURES: dict[bytes, str] = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"BM": "BMP"}


class UploadError(Exception):
    """A client mistake: HTTP ``status`` and a message for the JSON ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def check_image(data: bytes, name: str = "the upload") -> tuple[str, int, int]:
    """Verify that ``data`` is a complete image file; returns ``(format, height, width)``.

    Raises :class:`UploadError`: 400 for an empty body or a truncated/corrupt image, 415 for bytes that are
    not an image format, 413 for an image with more pixels than a decompression-bomb limit.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UploadError(400, f"{name} is empty: send the image's bytes (JPEG or PNG) as the request body")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "image"
            width, height = im.size
            im.load()
    except UnidentifiedImageError as err:
        kind = next((k for sig, k in SIGNATURES.items() if data.startswith(sig)), None)
        if kind is not None:
            raise UploadError(400, f"{name} starts like a {kind} file but is truncated or corrupt") from err
        head = data[:8].hex()
        raise UploadError(415, f"{name} is not an image (JPEG or PNG expected; first bytes {head})") from err
    except Image.DecompressionBombError as err:
        raise UploadError(413, f"{name} has too many pixels: {err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise UploadError(400, f"{name} is a truncated or corrupt image: {err}") from err
    if width < 1 or height < 1:
        raise UploadError(400, f"{name} has no pixels ({width}x{height})")
    return fmt, height, width


def decode_image(data: bytes) -> np.ndarray:
    """Image bytes -> RGB uint8 (H, W, 3), decoded exactly as ``predict.py`` reads files (OpenCV)."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or bgr.size == 0:
        raise UploadError(400, "the image could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _flag(query: dict[str, list[str]], key: str) -> bool:
    value = (query.get(key) or ["0"])[-1].strip().lower()
    if value in ("1", "true", "yes", "on", ""):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise UploadError(400, f"query parameter {key}={value!r}: use 1 or 0")


async def _read_body(receive: Any, limit: int, declared: int | None) -> bytes:
    if declared is not None and declared > limit:
        raise UploadError(
            413, f"upload of {declared} bytes is over the limit of {limit} bytes (max_upload_mb)"
        )
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise UploadError(400, "the client disconnected before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"upload is over the limit of {limit} bytes (max_upload_mb)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _from_multipart(scope: dict, body: bytes, limit: int) -> tuple[bytes, str | None]:
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    try:
        form = await Request(scope, replay).form(max_part_size=limit)
    except MultiPartException as err:
        raise UploadError(400, f"malformed multipart form: {err.message}") from err
    except HTTPException as err:  # what starlette raises for a MultiPartException inside an app
        raise UploadError(400, f"malformed multipart form: {err.detail}") from err
    try:
        files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise UploadError(
                400, f"the multipart form has no file; send the image as field {FILE_FIELDS[0]!r}"
            )
        chosen = next((v for k, v in files if k in FILE_FIELDS), files[0][1])
        return await chosen.read(), chosen.filename
    finally:
        await form.close()


class UploadMiddleware:
    """ASGI middleware for ``POST path``: the body -> ``{"image": base64, "name", "overlay"}`` JSON, or a 4xx.

    ``?overlay=1`` asks for the overlay PNG; ``?name=...`` (or the multipart filename) names the image in
    the answer.
    """

    def __init__(self, app: Any, path: str = "/predict", max_bytes: int = 20 * 1024 * 1024) -> None:
        self.app = app
        self.path = path
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        from starlette.concurrency import run_in_threadpool
        from starlette.datastructures import Headers
        from starlette.responses import JSONResponse

        headers = Headers(scope=scope)
        try:
            try:
                declared = int(headers["content-length"]) if "content-length" in headers else None
            except ValueError as err:
                raise UploadError(400, f"bad Content-Length {headers['content-length']!r}") from err
            body = await _read_body(receive, self.max_bytes, declared)
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            name = (query.get("name") or [None])[-1]
            ctype = headers.get("content-type", "").lower()
            # Any other content type is the raw file (curl --data-binary sends it as a url-encoded form).
            if ctype.startswith("multipart/form-data"):
                body, filename = await _from_multipart(scope, body, self.max_bytes)
                name = name or filename
            fmt, height, width = await run_in_threadpool(check_image, body, name or "the upload")
            payload = {
                "image": base64.b64encode(body).decode("ascii"),
                "name": name or f"upload.{fmt.lower()}",
                "overlay": _flag(query, "overlay") if "overlay" in query else False,
                "size": [height, width],
            }
        except UploadError as err:
            await JSONResponse({"detail": err.detail}, status_code=err.status)(scope, receive, send)
            return
        data = json.dumps(payload).encode("ascii")
        rest = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
        scope = dict(
            scope,
            headers=[
                *rest,
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        )
        done = False

        async def replay() -> dict:
            nonlocal done
            if done:
                return await receive()
            done = True
            return {"type": "http.request", "body": data, "more_body": False}

        await self.app(scope, replay, send)
