"""M1: the API key covers every route but /health, is checked before an upload's body is read, and the
viewer gets in with it (a key prompt, then a session cookie); binding beyond loopback without a key is
refused. One service on 127.0.0.1 with STEEL_DEFECT_API_KEY set (and docs=true: /openapi.json answers)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from steel_defect.deploy.serve.__main__ import auth_line
from steel_defect.deploy.serve.auth import session_token
from steel_defect.deploy.serve.settings import parse_args
from tests.helpers import Service, regular_images, request, tiny_run

KEY = "plant-key-0123456789abcdef"
ROUTES = (
    "/",
    "/viewer.js",
    "/api/model",
    "/api/images",
    "/api/images/{image}",
    "/info",
    "/metrics",
    "/docs",
    "/openapi.json",
)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    run = tiny_run(tmp_path_factory.getbasetemp() / "tiny_run")
    folder = tmp_path_factory.mktemp("auth_images")
    for p in sorted((run["data"] / "test_images").glob("*.jpg"))[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    log = tmp_path_factory.mktemp("serve_auth") / "serve.log"
    svc = Service(
        [f"ckpt={run['a']}", "thresholds=raw", f"images={folder}", "docs=true"],
        log,
        env={"STEEL_DEFECT_API_KEY": KEY},
    )
    try:
        svc.wait_healthy()
        yield svc, folder
    finally:
        svc.stop()


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.slow
def test_every_route_but_health_needs_the_key(keyed):
    svc, folder = keyed
    image = regular_images(folder)[0]
    good = (folder / image).read_bytes()
    assert request(svc.port, "GET", "/health")[0] == 200  # open: Docker's HEALTHCHECK, load balancers
    for route in ROUTES:
        path = route.format(image=image)
        status, _, body = request(svc.port, "GET", path)
        assert status == 401, (path, body)
        assert (
            "Authorization: Bearer" in json.loads(body)["detail"] and "STEEL_DEFECT_API_KEY" in body.decode()
        )
        status, _, body = request(svc.port, "GET", path, headers=bearer("x" * 20))
        assert status == 401 and "wrong API key" in json.loads(body)["detail"], path
        status, _, body = request(svc.port, "GET", path, headers=bearer())
        assert status == 200, (path, body[:200])  # /openapi.json included (it answered 500 before: L2)
    status, _, body = request(svc.port, "POST", "/predict", good)
    assert status == 401
    status, _, body = request(svc.port, "POST", "/predict", good, {**bearer(), "Content-Type": "image/jpeg"})
    assert status == 200 and json.loads(body)["classes"]
    assert "auth: API key required" in svc.log.read_text()


@pytest.mark.slow
def test_an_upload_without_the_key_is_refused_before_its_body_is_read(keyed):
    """The 401 comes at once for a client that announces 10 MB and sends 10 bytes: nothing waits for,
    reads or decodes the body (it did before: the upload middleware ran before LitServe's key check)."""
    svc, _ = keyed
    with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n0123456789")
        start = time.monotonic()
        head = s.recv(200)
    assert head.startswith(b"HTTP/1.1 401") and time.monotonic() - start < 5, head


@pytest.mark.slow
def test_the_viewer_asks_for_the_key_then_uses_a_session_cookie(keyed):
    svc, folder = keyed
    status, ctype, page = request(svc.port, "GET", "/", headers={"Accept": "text/html"})
    assert status == 401 and "text/html" in ctype and b'id="login"' in page and b"/api/login" in page
    assert request(svc.port, "POST", "/api/login")[0] == 401
    assert request(svc.port, "POST", "/api/login", headers=bearer("y" * 20))[0] == 401
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
    conn.request("POST", "/api/login", headers=bearer())
    resp = conn.getresponse()
    resp.read()
    cookie = resp.getheader("set-cookie")
    conn.close()
    assert resp.status == 204 and "HttpOnly" in cookie and "SameSite=Strict" in cookie and KEY not in cookie
    value = cookie.split(";")[0]
    assert value.split("=", 1)[1] == session_token(KEY)
    assert request(svc.port, "GET", "/", headers={"Cookie": value})[0] == 200
    assert request(svc.port, "GET", "/api/images", headers={"Cookie": value})[0] == 200
    good = (folder / regular_images(folder)[0]).read_bytes()
    assert request(svc.port, "POST", "/predict", good, {"Cookie": value})[0] == 200
    assert request(svc.port, "GET", "/api/model", headers={"Cookie": value[:-1] + "x"})[0] == 401


# ------------------------------------------------------------------------------------------------------
# the settings (no server)
# ------------------------------------------------------------------------------------------------------
def test_binding_beyond_loopback_needs_a_key_or_an_explicit_allow(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"x")
    for host in ("0.0.0.0", "::"):
        with pytest.raises(ValueError, match="STEEL_DEFECT_API_KEY=KEY.*allow_unauthenticated=true"):
            parse_args([f"ckpt={ckpt}", f"host={host}"], env={})
    s = parse_args([f"ckpt={ckpt}", "host=0.0.0.0", "allow_unauthenticated=true"], env={})
    assert s.api_key is None and "WARNING auth: NONE on host=0.0.0.0" in auth_line(s)
    s = parse_args([f"ckpt={ckpt}", "host=0.0.0.0"], env={"STEEL_DEFECT_API_KEY": KEY})
    assert s.api_key == KEY and "API key required" in auth_line(s)
    assert KEY not in repr(s) and s.to_dict()["api_key"] == "***"
    s = parse_args([f"ckpt={ckpt}", f"api_key={KEY}!&*"], env={})  # verbatim, never parsed as YAML
    assert s.api_key == KEY + "!&*"
    assert "only this machine" in auth_line(parse_args([f"ckpt={ckpt}"], env={}))
    for args, env, message in (
        ([f"ckpt={ckpt}", "api_key=short"], {}, "too short"),
        ([f"ckpt={ckpt}"], {"STEEL_DEFECT_API_KEY": "has a space in it, long enough"}, "without spaces"),
        ([f"ckpt={ckpt}"], {"LIT_SERVER_API_KEY": KEY}, "Unset it"),
        ([f"ckpt={ckpt}", "allow_unauthenticated=maybe"], {}, "allow_unauthenticated must be"),
    ):
        with pytest.raises(ValueError, match=message) as info:
            parse_args(args, env=env)
        assert KEY not in str(info.value) and "has a space" not in str(info.value)  # a key is never echoed
