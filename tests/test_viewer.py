"""The viewer page in a real browser: headless Chromium (Debian's package) loads ``GET /`` from the service,
which has an API key: the page asks for it (a wrong one is refused on the page), then a real Severstal test
image is uploaded through the page's file input, and the rendered result is checked against the Predictor:
the class table (areas, kept), the canvas (every shown mask pixel tinted, nothing tinted once the class
toggles are off) and the gallery. Driven over the DevTools protocol; skipped with the reason where Chromium
is not installed (``make test`` installs it with apt where it can)."""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from steel_defect.inference.predictor import Predictor
from tests.helpers import REAL_TEST, Service, tiny_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = "viewer-test-key-0123456789"
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (apt-get install chromium; make test does it where it can)",
)


class Page:
    """One page of a headless Chromium, driven over the DevTools protocol."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 2**20, open_timeout=30)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 90):
        """Poll ``expression`` until it is truthy; while a navigation is under way the old or a blank
        document may answer, so an exception counts as "not yet" (the last one is reported on timeout)."""
        deadline = time.monotonic() + seconds
        error = None
        while time.monotonic() < deadline:
            try:
                value = self.eval(expression)
            except AssertionError as err:
                value, error = None, err
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(
            f"timed out waiting for {expression} (last error: {error}); "
            f"page text: {self.eval('document.body ? document.body.innerText : null')!r:.500}"
        )

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    run = tiny_run(base / "tiny_run")
    folder = tmp_path_factory.mktemp("viewer_folder")
    images = sorted(REAL_TEST.glob("*.jpg"))[:2] if REAL_TEST.is_dir() else []
    images = images or sorted((run["data"] / "test_images").glob("*.jpg"))[:2]
    for p in images:
        shutil.copy(p, folder / p.name)
    svc = Service(
        [f"ckpt={run['a']}", "thresholds=raw", f"images={folder}"],
        base / "viewer_serve.log",
        env={"STEEL_DEFECT_API_KEY": KEY},
    )
    profile = tmp_path_factory.mktemp("chromium_profile")
    browser = None
    try:
        svc.wait_healthy()
        browser = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--window-size=1700,1100",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = browser.stderr.readline()
            if not line and browser.poll() is not None:
                raise AssertionError(f"chromium exited with {browser.returncode}")
            found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            port = int(found.group(1)) if found else None
        assert port is not None, "chromium did not print its DevTools port"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as resp:
            targets = [t for t in json.load(resp) if t["type"] == "page"]
        page = Page(targets[0]["webSocketDebuggerUrl"])
        predictor = Predictor.load(run["a"], thresholds="raw", device="cpu")
        yield {
            "svc": svc,
            "page": page,
            "folder": folder,
            "predictor": predictor,
            "images": images,
            "dir": profile,
        }
        page.close()
    finally:
        if browser is not None and browser.poll() is None:
            browser.terminate()
            try:
                browser.wait(20)
            except subprocess.TimeoutExpired:
                browser.kill()
                browser.wait(10)
        svc.stop()


CANVAS_CHECK = """(() => {
  const r = state.current, c = document.getElementById('view');
  const now = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const off = new OffscreenCanvas(c.width, c.height), o = off.getContext('2d');
  o.drawImage(r.bitmap, 0, 0);
  const raw = o.getImageData(0, 0, c.width, c.height).data;
  const union = new Uint8Array(c.width * c.height);
  r.masks.forEach((m, k) => { if (state.shown[k]) for (let i = 0; i < m.length; i++) if (m[i]) union[i] = 1; });
  let masked = 0, tinted = 0, changed = 0;
  for (let i = 0; i < union.length; i++) {
    const d = now[4*i] !== raw[4*i] || now[4*i+1] !== raw[4*i+1] || now[4*i+2] !== raw[4*i+2];
    if (d) changed++;
    if (union[i]) { masked++; if (d) tinted++; }
  }
  return {masked, tinted, changed, width: c.width, height: c.height};
})()"""


@pytest.mark.slow
def test_upload_a_real_image_through_the_page_and_check_what_it_renders(setup):
    page, svc, predictor = setup["page"], setup["svc"], setup["predictor"]
    path = setup["images"][0]
    page.call("Page.enable")
    page.call("Page.navigate", url=f"http://127.0.0.1:{svc.port}/")
    # the service has a key: the page asks for it; a wrong one is refused, the right one opens the viewer
    page.wait_for("document.body && document.body.dataset.login === '1'")
    page.eval(
        "document.getElementById('key').value = 'not-the-key-0123456789'; document.getElementById('login-go').click()"
    )
    assert "wrong API key" in page.wait_for("document.getElementById('login-error').textContent")
    page.eval(f"document.getElementById('key').value = '{KEY}'; document.getElementById('login-go').click()")
    page.wait_for("document.body && document.body.dataset.ready === '1'")
    assert page.eval("document.getElementById('model').textContent").startswith("classes 1, 2, 3, 4")
    # the upload: the file goes through the page's own <input type=file>, as a user picks it
    root = page.call("DOM.getDocument")["root"]["nodeId"]
    node = page.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    page.call("DOM.setFileInputFiles", nodeId=node, files=[str(path)])
    state = page.wait_for(
        "['done','error'].includes(document.getElementById('status').dataset.state) && "
        "document.getElementById('status').textContent"
    )
    assert state == f"done: {path.name}", state

    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    want = predictor.predict([image])[0]
    rows = page.eval("[...document.querySelectorAll('#classes tbody tr')].map(tr => ({...tr.dataset}))")
    assert [r["class"] for r in rows] == ["1", "2", "3", "4"]
    assert [int(r["area"]) for r in rows] == [int(m.sum()) for m in want.masks]
    assert [r["kept"] == "1" for r in rows] == [bool(m.any()) for m in want.masks]
    assert any(r["kept"] == "1" for r in rows)
    # the canvas: at the image's own size, every pixel of a shown mask tinted in its class colour ...
    check = page.eval(CANVAS_CHECK)
    assert (check["height"], check["width"]) == image.shape[:2]
    union = want.masks.any(axis=0)
    assert check["masked"] == int(union.sum()) > 0 and check["tinted"] == check["masked"]
    # ... and with every class toggled off, the image untouched
    page.eval("document.querySelectorAll('#toggles input').forEach(cb => cb.click())")
    off = page.eval(CANVAS_CHECK)
    assert off["masked"] == 0 and off["changed"] == 0
    page.eval("document.querySelectorAll('#toggles input').forEach(cb => cb.click())")
    assert page.eval(CANVAS_CHECK)["tinted"] == check["masked"]
    captions = page.eval("[...document.querySelectorAll('#gallery figcaption')].map(f => f.textContent)")
    assert len(captions) == 1 and captions[0].startswith(path.name)
    shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
    picture = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None and picture.shape[1] >= 1000 and picture.std() > 5
    (Path(setup["dir"]) / "viewer.png").write_bytes(shot)


@pytest.mark.slow
def test_pick_from_the_configured_folder_and_the_gallery_keeps_the_last_results(setup):
    page, svc = setup["page"], setup["svc"]
    first, second = (p.name for p in setup["images"])
    page.call("Page.navigate", url=f"http://127.0.0.1:{svc.port}/?pick={second}")
    page.wait_for(f"document.getElementById('status').textContent === 'done: {second}'")
    options = page.eval("[...document.querySelectorAll('#pick option')].map(o => o.value)")
    assert options == sorted([first, second])
    page.eval(
        f"document.getElementById('pick').value = '{first}'; document.getElementById('pick-go').click()"
    )
    page.wait_for(f"document.getElementById('status').textContent === 'done: {first}'")
    captions = page.eval("[...document.querySelectorAll('#gallery figcaption')].map(f => f.textContent)")
    assert [c.split(":")[0] for c in captions] == [first, second]
    # a bad upload is shown as an error on the page, not a broken page
    page.eval(
        "fetch('/predict', {method: 'POST', body: 'nope'}).then(r => r.json()).then(d => window._err = d.detail)"
    )
    assert "not an image" in page.wait_for("window._err")
