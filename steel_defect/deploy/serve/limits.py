"""Connection limits the HTTP server (uvicorn, started by LitServe) applies before our code sees a request.

uvicorn has no timeout for receiving a request: its keep-alive timer only runs between requests and every
received byte resets it, so a client trickling a header byte now and then held a connection for ever.
:func:`deadline_protocol` wraps uvicorn's HTTP protocol so that a request (headers and body) must arrive
within ``read_timeout`` (plus a second's grace, so the upload middleware's own 408 answer comes first for a
slow body) of the connection opening or of the request's first byte; otherwise it answers 408 when it can
and closes the connection. :func:`uvicorn_options` adds uvicorn's own cap on open connections
(``max_connections``: further requests get 503) and keeps its 5 s keep-alive.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: seconds the protocol's deadline waits beyond read_timeout (the middleware's 408 comes first)
GRACE = 1.0
KEEP_ALIVE = 5
RAW_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


class _DeadlineMixin:
    """A deadline for receiving a whole request; armed on connect and at a request's first byte."""

    deadline: float = 30.0
    _deadline_handle: asyncio.TimerHandle | None = None

    def _deadline_arm(self) -> None:
        if self._deadline_handle is None:
            loop = asyncio.get_event_loop()
            self._deadline_handle = loop.call_later(self.deadline, self._deadline_expired)

    def _deadline_cancel(self) -> None:
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None

    def _deadline_expired(self) -> None:
        self._deadline_handle = None
        transport = getattr(self, "transport", None)
        if transport is None or transport.is_closing():
            return
        cycle = getattr(self, "cycle", None)
        if cycle is None or getattr(cycle, "response_complete", False):  # no answer under way: say why
            detail = (
                b'{"detail":"the request did not arrive within read_timeout=%g s; send it at once, or start '
                b'the service with a larger read_timeout="}' % (self.deadline - GRACE)
            )
            transport.write(RAW_408 % (len(detail), detail))
        transport.close()


def deadline_protocol(read_timeout: float) -> type | None:
    """uvicorn's HTTP protocol class (httptools, else h11) with the request deadline; None if neither
    can be imported (uvicorn then runs its default, without the deadline)."""
    deadline = float(read_timeout) + GRACE
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        HttpToolsProtocol = None  # noqa: N806
    if HttpToolsProtocol is not None:

        class DeadlineHttpToolsProtocol(_DeadlineMixin, HttpToolsProtocol):
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                self._deadline_arm()

            def on_message_begin(self) -> None:
                super().on_message_begin()
                self._deadline_arm()

            def on_message_complete(self) -> None:
                self._deadline_cancel()
                super().on_message_complete()

            def connection_lost(self, exc: Exception | None) -> None:
                self._deadline_cancel()
                super().connection_lost(exc)

        DeadlineHttpToolsProtocol.deadline = deadline
        return DeadlineHttpToolsProtocol
    try:
        import h11
        from uvicorn.protocols.http.h11_impl import H11Protocol
    except ImportError:
        return None

    class DeadlineH11Protocol(_DeadlineMixin, H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._deadline_arm()

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
                self._deadline_arm()
            super().data_received(data)
            if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
                self._deadline_cancel()

        def connection_lost(self, exc: Exception | None) -> None:
            self._deadline_cancel()
            super().connection_lost(exc)

    DeadlineH11Protocol.deadline = deadline
    return DeadlineH11Protocol


def uvicorn_options(read_timeout: float, max_connections: int) -> dict[str, Any]:
    """Keyword arguments for ``LitServer.run`` (passed on to ``uvicorn.Config``)."""
    options: dict[str, Any] = {"limit_concurrency": int(max_connections), "timeout_keep_alive": KEEP_ALIVE}
    protocol = deadline_protocol(read_timeout)
    if protocol is not None:
        options["http"] = protocol
    return options
