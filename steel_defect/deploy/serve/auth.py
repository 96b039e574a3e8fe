"""The API key: ``Authorization: Bearer <key>`` on every route but ``/health``, checked before the body is read.

:class:`BearerAuth` is an ASGI middleware outside the upload middleware, so an unauthenticated upload is
answered 401 without being read or decoded (and its connection closed). A browser cannot add a header to a
page load, so the viewer works with a cookie: an unauthenticated ``GET /`` answers 401 with a small page
that asks for the key and sends it once as a Bearer header to ``POST /api/login``, which sets an HttpOnly,
SameSite=Strict cookie holding an HMAC of the key (never the key itself); the viewer's own requests then
carry it. Changing the key invalidates every cookie. Without a key (only allowed on 127.0.0.1, or with
``allow_unauthenticated=true``) the middleware lets everything through.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from importlib import resources
from typing import Any

from steel_defect.deploy.serve.settings import API_KEY_ENV

#: routes answered without a key (what Docker's HEALTHCHECK and a load balancer call)
OPEN_PATHS: frozenset[str] = frozenset({"/health"})
LOGIN_PATH = "/api/login"
LOGOUT_PATH = "/api/logout"
COOKIE = "steel_defect_session"


def session_token(key: str) -> str:
    """The viewer's cookie value for ``key``: an HMAC of it, so the browser never stores the key itself."""
    return hmac.new(key.encode(), b"steel-defect viewer session v1", hashlib.sha256).hexdigest()


def _header(scope: dict, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v
    return None


def _cookie(scope: dict, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if raw is None:
        return None
    for part in raw.decode("latin-1").split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k == name:
            return v
    return None


def bearer(scope: dict) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when there is none)."""
    raw = _header(scope, b"authorization")
    if raw is None:
        return None
    scheme, _, token = raw.decode("latin-1").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def _respond(
    send: Any, status: int, body: bytes, ctype: bytes, extra: list[tuple[bytes, bytes]] = ()
) -> None:
    headers = [
        (b"content-type", ctype),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        *extra,
    ]
    # The request's body, if any, is never read: uvicorn discards what still arrives (bounded by the request
    # deadline of limits.py), so an honest client without the key reads its 401 rather than a broken pipe.
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """ASGI middleware: without a valid key (Bearer header, or the viewer's cookie) -> 401, body unread."""

    def __init__(self, app: Any, key: str | None = None) -> None:
        self.app = app
        self.key = key
        self.token = session_token(key) if key else None
        self._login_page: bytes | None = None

    def _valid_bearer(self, scope: dict) -> bool | None:
        """True/False for a Bearer header with the right/wrong key, None for no Bearer header."""
        token = bearer(scope)
        if token is None:
            return None
        return hmac.compare_digest(token.encode(), self.key.encode())

    def _valid_cookie(self, scope: dict) -> bool:
        value = _cookie(scope, COOKIE)
        return value is not None and hmac.compare_digest(value.encode(), self.token.encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.key is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        by_header = self._valid_bearer(scope)
        path, method = scope["path"], scope.get("method", "GET")
        if path == LOGIN_PATH and method == "POST":
            await self._login(scope, send, by_header)
            return
        if path == LOGOUT_PATH and method == "POST":
            await _respond(send, 204, b"", b"text/plain", [(b"set-cookie", self._cookie_header(scope, ""))])
            return
        if by_header or (by_header is None and self._valid_cookie(scope)):
            await self.app(scope, receive, send)
            return
        await self._refuse(scope, send, wrong=by_header is False)

    def _cookie_header(self, scope: dict, value: str) -> bytes:
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        expiry = "" if value else "; Max-Age=0"
        return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{expiry}".encode()

    async def _login(self, scope: dict, send: Any, by_header: bool | None) -> None:
        if by_header:
            await _respond(
                send, 204, b"", b"text/plain", [(b"set-cookie", self._cookie_header(scope, self.token))]
            )
        else:
            await self._refuse(scope, send, wrong=by_header is False)

    async def _refuse(self, scope: dict, send: Any, wrong: bool) -> None:
        challenge = [(b"www-authenticate", b'Bearer realm="steel-defect"')]
        accept = (_header(scope, b"accept") or b"").decode("latin-1")
        if scope["path"] == "/" and scope.get("method") in ("GET", "HEAD") and "text/html" in accept:
            await _respond(send, 401, self.login_page(), b"text/html; charset=utf-8", challenge)
            return
        if wrong:
            detail = (
                "wrong API key: the Bearer token must equal the key the service was started with "
                f"({API_KEY_ENV} or api_key=)"
            )
        else:
            detail = (
                "authentication required: send the header 'Authorization: Bearer <key>' with the key the "
                f"service was started with ({API_KEY_ENV} or api_key=); in a browser, open / and enter it"
            )
        body = json.dumps({"detail": detail}).encode()
        await _respond(send, 401, body, b"application/json", challenge)

    def login_page(self) -> bytes:
        if self._login_page is None:
            static = resources.files("steel_defect.deploy.serve") / "static"
            self._login_page = (static / "login.html").read_bytes()
        return self._login_page
