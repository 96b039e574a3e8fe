"""The service's parts without a server: the pixel limit is checked from the header (H1), a failing batch answers each request on its own (H2), the metrics
are shared with a spawned worker and render as Prometheus text, the gallery's file rules (M2), paths cut
from the thresholds source (L2), the request-deadline protocol (M3)."""

from __future__ import annotations

import base64
import multiprocessing as mp
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from steel_defect.deploy.serve.app import SteelDefectAPI, public_source
from steel_defect.deploy.serve.gallery import GalleryError, gallery_files, read_gallery_image
from steel_defect.deploy.serve.images import UploadError, check_image
from steel_defect.deploy.serve.limits import deadline_protocol, uvicorn_options
from steel_defect.deploy.serve.metrics import Metrics
from steel_defect.deploy.serve.settings import DEFAULT_FORMATS, ServeSettings
from steel_defect.inference.predictor import ImagePrediction
from tests.helpers import pil_bytes


class FakePredictor:
    """Fails any batch holding an image whose first pixel is 255 (as a bad item could make a real one)."""

    classes = ["1", "2"]

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, images, ids):
        self.calls.append(len(images))
        if any(int(im[0, 0, 0]) == 255 for im in images):
            raise RuntimeError("boom")
        masks = np.zeros((2, *images[0].shape[:2]), bool)
        masks[0, 0, 0] = True
        return [ImagePrediction(i, True, masks, np.array([0.9, 0.1]), None) for i in ids]


def api_with_fake(metrics: Metrics | None = None) -> SteelDefectAPI:
    api = SteelDefectAPI(ServeSettings(ckpt=("x.ckpt",), max_batch_size=4), metrics)
    api.predictor = FakePredictor()
    api.model = {"checkpoints": ["x.ckpt"], "fingerprints": ["f"]}
    api.thresholds = {"source": "raw", "params": {}}
    return api


def request_of(value: int, name: str) -> dict:
    ok, png = cv2.imencode(".png", np.full((4, 6, 3), value, np.uint8))
    return {"image": base64.b64encode(png.tobytes()).decode(), "name": name, "overlay": False}


def test_a_failing_batch_answers_each_request_on_its_own():
    metrics = Metrics(4, {"checkpoints": ["x.ckpt"], "fingerprints": ["f"]})
    api = api_with_fake(metrics)
    items = [api.decode_request(request_of(v, n)) for v, n in ((10, "a"), (255, "bad"), (20, "b"))]
    items.append(api.decode_request({"image": base64.b64encode(b"junk").decode(), "name": "junk"}))
    out = api.predict(items)
    assert api.predictor.calls == [3, 1, 1, 1]  # the batch, then each image alone
    answers = [api.encode_response(o) for o in out]
    assert answers[0]["image"]["name"] == "a" and answers[2]["image"]["name"] == "b"
    assert answers[0]["classes"][0]["kept"] and answers[2]["classes"][0]["area"] == 1
    assert answers[1].status_code == 500 and b"inference failed for bad" in answers[1].body
    assert answers[3].status_code == 415 and b"junk could not be decoded" in answers[3].body
    text = metrics.render()
    assert "steel_defect_batch_size_count 1" in text and "steel_defect_inference_errors_total 2" in text
    # a batch without a culprit runs once
    api.predictor.calls.clear()
    out = api.predict([api.decode_request(request_of(v, str(v))) for v in (1, 2)])
    assert api.predictor.calls == [2] and all("classes" in o for o in out)


def _worker(metrics: Metrics) -> None:
    metrics.observe_batch(3, 0.2)
    metrics.observe_request("/predict", 200, 0.3)


@pytest.mark.slow
def test_metrics_are_shared_with_a_spawned_process_and_render_as_prometheus_text():
    metrics = Metrics(4, {"checkpoints": ['we"ird.onnx'], "weights_fingerprints": ["abc"], "runtime": "onnx"})
    proc = mp.get_context("spawn").Process(target=_worker, args=(metrics,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    metrics.observe_request("/api/images/../../etc/passwd", 404, 0.001)
    metrics.observe_request("/wp-login.php", 418, 0.001)
    text = metrics.render()
    lines = set(text.splitlines())
    assert (
        'steel_defect_batch_size_bucket{le="2"} 0' in lines
        and 'steel_defect_batch_size_bucket{le="3"} 1' in lines
    )
    assert 'steel_defect_http_requests_total{route="/predict",code="200"} 1' in lines
    assert 'steel_defect_http_requests_total{route="/api/images/{name}",code="404"} 1' in lines
    assert 'steel_defect_http_requests_total{route="other",code="other"} 1' in lines  # no label explosion
    assert 'steel_defect_http_errors_total{code="404"} 1' in lines
    assert 'steel_defect_model_info{checkpoint="we\\"ird.onnx",fingerprint="abc",runtime="onnx"} 1' in lines
    for line in text.splitlines():  # every sample line is NAME{labels} VALUE
        if not line.startswith("#"):
            float(line.rpartition(" ")[2])


def test_the_gallery_serves_regular_image_files_inside_its_folder_only(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    ok, jpg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    (root / "a.jpg").write_bytes(jpg.tobytes())
    (root / "inside.jpg").symlink_to(root / "a.jpg")  # a link that stays inside: fine
    (tmp_path / "secret.jpg").write_bytes(jpg.tobytes())
    (root / "outside.jpg").symlink_to(tmp_path / "secret.jpg")  # an image, but outside
    (root / "sub").mkdir()
    (root / "dir.jpg").mkdir()
    (root / "text.png").write_text("hello")
    os.mkfifo(root / "fifo.jpg")
    assert list(gallery_files(root)) == ["a.jpg", "inside.jpg"]
    assert gallery_files(None) == {}
    data, media = read_gallery_image(root, "inside.jpg", 10**6, DEFAULT_FORMATS)
    assert data == jpg.tobytes() and media == "image/jpeg"
    for name, status in (("outside.jpg", 404), ("fifo.jpg", 404), ("text.png", 404), ("../secret.jpg", 404)):
        with pytest.raises(GalleryError) as info:
            read_gallery_image(root, name, 10**6, DEFAULT_FORMATS)
        assert info.value.status == status
    with pytest.raises(GalleryError) as info:
        read_gallery_image(root, "a.jpg", 10, DEFAULT_FORMATS)
    assert info.value.status == 413 and "max_upload_mb" in info.value.detail


def test_the_thresholds_source_names_files_not_paths():
    assert public_source("/srv/model/run 1/thresholds.yaml") == "thresholds.yaml"
    assert (
        public_source("tuned thresholds stored in /srv/m/model.onnx")
        == "tuned thresholds stored in model.onnx"
    )
    assert public_source("stored in /a b/c/m.ckpt", [Path("/a b/c")]) == "stored in m.ckpt"
    assert public_source("raw (no gates, pixel threshold 0.5)") == "raw (no gates, pixel threshold 0.5)"


def test_uvicorn_gets_the_deadline_protocol_and_the_connection_cap():
    options = uvicorn_options(7.0, 50)
    assert options["limit_concurrency"] == 50 and options["timeout_keep_alive"] == 5
    protocol = deadline_protocol(7.0)
    assert options["http"].deadline == protocol.deadline == 8.0
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert issubclass(protocol, HttpToolsProtocol)


def test_max_pixels_counts_the_padding_and_is_checked_before_decoding(monkeypatch):
    """H1: the limit applies to the padded size (a 1-pixel-high strip is padded to 32 rows), from the
    header: with max_pixels exceeded, no decoder runs at all."""
    from steel_defect.deploy.serve import images

    strip = pil_bytes("PNG", (204_800, 1), "L")  # 204,800 pixels, 6,553,600 once padded
    assert check_image(strip, max_pixels=204_800 * 32) == ("PNG", 1, 204_800)
    with pytest.raises(UploadError) as info:
        check_image(strip, max_pixels=204_800 * 32 - 1)
    assert info.value.status == 413 and "padded to the network stride 32" in info.value.detail

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded an image over max_pixels")

    monkeypatch.setattr(images, "_opencv_decode", no_decode)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decode)
    with pytest.raises(UploadError) as info:
        check_image(pil_bytes("PNG", (3000, 3000), "L"), max_pixels=1000 * 1000)
    assert info.value.status == 413 and "max_pixels=1,000,000" in info.value.detail
    with pytest.raises(UploadError) as info:
        check_image(pil_bytes("TIFF", (100, 100)), formats=("JPEG", "PNG"))
    assert info.value.status == 415 and "TIFF format" in info.value.detail and "formats=" in info.value.detail
