"""Request bodies of ``POST /predict`` -> checked image bytes, before anything reaches the model.

A client's mistake never reaches an inference worker (where, in a dynamic batch, it would fail the other
requests of the batch too) and never becomes a 500: :class:`UploadMiddleware` reads the body (413 over the
size limit before reading it all, 408 when it does not arrive within ``read_timeout``, 503 when
``max_uploads`` bodies are already being read), takes the image from raw bytes or a multipart upload,
checks it completely with :func:`steel_defect.deploy.serve.images.check_image` (format allowed by name, pixels
within ``max_pixels`` from the header, then decoded: each refusal a 4xx JSON ``{"detail": ...}``), and
hands the endpoint a small JSON body with the bytes base64-encoded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

from steel_defect.deploy.serve.images import UploadError, check_image, decode_image
from steel_defect.deploy.serve.settings import DEFAULT_FORMATS, DEFAULT_MAX_PIXELS

__all__ = ["FILE_FIELDS", "UploadError", "UploadMiddleware", "check_image", "decode_image"]

#: form field names taken as the image in a multipart upload (else the first file in the form)
FILE_FIELDS: tuple[str, ...] = ("image", "file")
#: seconds a request waits for one of the ``max_uploads`` slots before it gets 503
SLOT_WAIT = 1.0


def _flag(query: dict[str, list[str]], key: str) -> bool:
    value = (query.get(key) or ["0"])[-1].strip().lower()
    if value in ("1", "true", "yes", "on", ""):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise UploadError(400, f"query parameter {key}={value!r}: use 1 or 0")


def _too_large(declared: int | None, limit: int) -> str:
    size = f"upload of {declared} bytes" if declared is not None else "upload"
    return (
        f"{size} is over the limit of {limit} bytes (max_upload_mb={limit / 2**20:g}): send a smaller file, "
        "or start the service with a larger max_upload_mb="
    )


async def _read_body(receive: Any, limit: int, declared: int | None, timeout: float) -> bytes:
    if declared is not None and declared > limit:
        raise UploadError(413, _too_large(declared, limit))
    chunks, size = [], 0
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError as err:
            raise UploadError(
                408,
                f"the body did not arrive within {timeout:g} s ({size} bytes received"
                + (f" of {declared} declared" if declared is not None else "")
                + "): send it at once, or start the service with a larger read_timeout=",
            ) from err
        if message["type"] == "http.disconnect":
            raise UploadError(400, "the client disconnected before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise UploadError(413, _too_large(None, limit))
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

    def __init__(
        self,
        app: Any,
        path: str = "/predict",
        max_bytes: int = 20 * 1024 * 1024,
        formats: Sequence[str] = DEFAULT_FORMATS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        stride: int = 32,
        read_timeout: float = 30.0,
        max_uploads: int = 8,
    ) -> None:
        self.app = app
        self.path = path
        self.max_bytes = int(max_bytes)
        self.formats = tuple(formats)
        self.max_pixels = int(max_pixels)
        self.stride = int(stride)
        self.read_timeout = float(read_timeout)
        self.max_uploads = int(max_uploads)
        self.slots = asyncio.Semaphore(self.max_uploads)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        try:
            payload = await self._checked(scope, receive)
        except UploadError as err:
            # 408: the rest of the body is not coming, close. Otherwise uvicorn drains (discards) what the
            # client still sends, so an honest client reads its 413/503 instead of a broken pipe; the
            # request deadline (limits.py) bounds that.
            headers = {"connection": "close"} if err.status == 408 else {}
            if err.status == 503:
                headers["retry-after"] = "1"
            response = JSONResponse({"detail": err.detail}, status_code=err.status, headers=headers)
            await response(scope, receive, send)
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

    async def _checked(self, scope: dict, receive: Any) -> dict[str, Any]:
        """Read and check the upload while holding one of the ``max_uploads`` slots -> the JSON payload."""
        from starlette.concurrency import run_in_threadpool
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        try:
            declared = int(headers["content-length"]) if "content-length" in headers else None
        except ValueError as err:
            raise UploadError(400, f"bad Content-Length {headers['content-length']!r}") from err
        if declared is not None and declared > self.max_bytes:  # refused before waiting for a slot
            raise UploadError(413, _too_large(declared, self.max_bytes))
        try:
            await asyncio.wait_for(self.slots.acquire(), SLOT_WAIT)
        except asyncio.TimeoutError as err:
            raise UploadError(
                503,
                f"busy: {self.max_uploads} uploads are being received (max_uploads); retry in a moment",
            ) from err
        try:
            body = await _read_body(receive, self.max_bytes, declared, self.read_timeout)
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            name = (query.get("name") or [None])[-1]
            ctype = headers.get("content-type", "").lower()
            # Any other content type is the raw file (curl --data-binary sends it as a url-encoded form).
            if ctype.startswith("multipart/form-data"):
                body, filename = await _from_multipart(scope, body, self.max_bytes)
                name = name or filename
            overlay = _flag(query, "overlay") if "overlay" in query else False
            fmt, height, width = await run_in_threadpool(
                check_image, body, name or "the upload", self.formats, self.max_pixels, self.stride
            )
        finally:
            self.slots.release()
        return {
            "image": base64.b64encode(body).decode("ascii"),
            "name": name or f"upload.{fmt.lower()}",
            "overlay": overlay,
            "size": [height, width],
        }
