"""M3: slow or lying clients are bounded. One service on 127.0.0.1 with small limits (read_timeout=2,
max_uploads=1, max_connections=8) so each holds within seconds: a body that does not come -> 408, headers
that do not come -> 408 and the connection closed, an idle connection closed, a full upload slot -> 503, a
full connection table -> 503, and the service answers again once they are gone."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.helpers import Service, request, tiny_run

READ_TIMEOUT = 2.0
#: the most a stalled client may be held: read_timeout, the protocol's grace (1 s), scheduling slack
HELD_AT_MOST = READ_TIMEOUT + 1.0 + 3.0


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    run = tiny_run(tmp_path_factory.getbasetemp() / "tiny_run")
    log = tmp_path_factory.mktemp("serve_limits") / "serve.log"
    svc = Service(
        [
            f"ckpt={run['a']}",
            "thresholds=raw",
            f"read_timeout={READ_TIMEOUT}",
            "max_uploads=1",
            "max_connections=8",
        ],
        log,
    )
    try:
        svc.wait_healthy()
        good = sorted((run["data"] / "test_images").glob("*.jpg"))[0].read_bytes()
        yield svc, good
    finally:
        svc.stop()


def wait_answer(s: socket.socket, seconds: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or ``seconds`` pass), and when it closed."""
    s.settimeout(seconds)
    start, data = time.monotonic(), b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except TimeoutError:
        pass
    return data, time.monotonic() - start


@pytest.mark.slow
def test_a_body_that_does_not_arrive_gets_408(limited):
    """A client declaring 1000 bytes and sending 10 was held for 150 s+; now 408 after read_timeout."""
    svc, _ = limited
    with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        data, seconds = wait_answer(s, HELD_AT_MOST + 5)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert READ_TIMEOUT - 0.5 <= seconds <= HELD_AT_MOST, seconds
    assert "read_timeout" in json.loads(data.split(b"\r\n\r\n", 1)[1])["detail"]
    assert request(svc.port, "GET", "/health")[0] == 200


@pytest.mark.slow
@pytest.mark.parametrize(
    "sent", [b"", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: a"], ids=["idle", "headers"]
)
def test_a_connection_that_sends_no_complete_request_is_closed(limited, sent):
    svc, _ = limited
    with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as s:
        s.sendall(sent)
        for _ in range(3 if sent else 0):  # trickling a header byte now and then no longer keeps it open
            time.sleep(0.5)
            try:
                s.sendall(b"b")
            except OSError:
                break
        data, seconds = wait_answer(s, HELD_AT_MOST + 5)
    assert seconds + 1.5 <= HELD_AT_MOST, seconds  # closed by the server, not by our timeout
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:200]


@pytest.mark.slow
def test_uploads_beyond_max_uploads_get_503_then_service_resumes(limited):
    svc, good = limited
    with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as slow:
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + good[:100])
        time.sleep(0.5)  # it holds the only upload slot until its 408
        start = time.monotonic()
        status, _, body = request(svc.port, "POST", "/predict", good)
        assert status == 503 and "max_uploads" in json.loads(body)["detail"], body
        assert time.monotonic() - start < READ_TIMEOUT + 1
        data, _ = wait_answer(slow, HELD_AT_MOST + 5)
        assert data.startswith(b"HTTP/1.1 408")
    status, _, body = request(svc.port, "POST", "/predict", good)
    assert status == 200 and json.loads(body)["classes"]


@pytest.mark.slow
def test_connections_beyond_max_connections_get_503_until_the_idle_ones_are_dropped(limited):
    svc, _ = limited
    idle = [socket.create_connection(("127.0.0.1", svc.port), timeout=10) for _ in range(8)]
    try:
        time.sleep(0.3)
        assert request(svc.port, "GET", "/health")[0] == 503
        time.sleep(HELD_AT_MOST)  # the request deadline drops the idle ones
        assert request(svc.port, "GET", "/health")[0] == 200
    finally:
        for s in idle:
            s.close()
