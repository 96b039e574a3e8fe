"""The inspection service, run as a user runs it (``python -m steel_defect.serve``) on 127.0.0.1: answers
equal the Predictor's, every client mistake is a 4xx JSON error after which the next request is served,
dynamic batches of mixed sizes stay correct (hostile uploads in the same batch included), the gallery
serves only regular files inside its folder, answers carry no filesystem paths, /metrics counts; and its
pure parts (settings, upload checks, result JSON). Auth, limits, stopping, load and deployment:
tests/test_serve_*.py."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from steel_defect.deploy.serve.result import components, prediction_json
from steel_defect.deploy.serve.settings import parse_args
from steel_defect.deploy.serve.upload import UploadError, check_image
from steel_defect.inference.predictor import ImagePrediction, Predictor
from steel_defect.rle import rle_decode
from tests.conftest import REPO
from tests.helpers import EPS, REAL_TEST, Service, multipart, pil_bytes, regular_images, request


#: hostile or refused uploads: (bytes, status, words of the detail)
@pytest.fixture(scope="module")
def folder(run_files, tmp_path_factory) -> Path:
    """The viewer's folder: real Severstal test images where ../shared is present, else synthetic ones; plus
    what must never be served (M2): symlinks to a secret outside it and to /etc/passwd, a fifo."""
    out = tmp_path_factory.mktemp("viewer_images")
    source = sorted(REAL_TEST.glob("*.jpg"))[:3] if REAL_TEST.is_dir() else []
    source = source or sorted((run_files["data"] / "test_images").glob("*.jpg"))[:3]
    for p in source:
        shutil.copy(p, out / p.name)
    secret = out.parent / "secret.txt"
    secret.write_text("secret\n")
    (out / "leak.jpg").symlink_to(secret)
    (out / "passwd.png").symlink_to("/etc/passwd")
    os.mkfifo(out / "pipe.jpg")
    (out / "notes.png").write_text("not an image")
    return out


def image_paths(folder: Path) -> list[Path]:
    return [folder / name for name in regular_images(folder)]


@pytest.fixture(scope="module")
def service(run_files, folder, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    svc = Service(
        [
            f"ckpt={run_files['a']}",
            "thresholds=raw",
            f"images={folder}",
            "max_upload_mb=1",
            "max_batch_size=4",
            "batch_timeout=0.05",
        ],
        log,
    )
    try:
        svc.wait_healthy()
        yield svc
    finally:
        svc.stop()
    assert svc.proc.returncode is not None


@pytest.fixture(scope="module")
def predictor(run_files):
    return Predictor.load(run_files["a"], thresholds="raw", device="cpu")


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def assert_same_as_predictor(doc: dict, image: np.ndarray, predictor: Predictor, exact: bool = True) -> None:
    """``doc`` is the Predictor's answer for ``image`` alone; with ``exact=False`` (the image was part of a
    dynamic batch, whose float sums differ in the last bits) up to 0.1% of pixels sitting at the threshold
    may flip."""
    want = predictor.predict([image])[0]
    h, w = image.shape[:2]
    assert doc["image"]["height"] == h and doc["image"]["width"] == w
    assert [c["name"] for c in doc["classes"]] == predictor.classes
    for k, c in enumerate(doc["classes"]):
        got = rle_decode(c["rle"], (h, w)).astype(bool)
        assert c["area"] == int(got.sum()) and c["kept"] == bool(got.any())
        if exact:
            assert np.array_equal(got, want.masks[k])
            assert c["probability"] == pytest.approx(float(want.class_probs[k]), abs=1e-6)
        else:
            assert (got != want.masks[k]).mean() <= 1e-3
            assert c["probability"] == pytest.approx(float(want.class_probs[k]), abs=1e-4)
    assert any(c["kept"] for c in doc["classes"])  # not a comparison of empty answers


@pytest.mark.slow
def test_health_model_and_viewer_page(service, predictor):
    assert request(service.port, "GET", "/health")[0] == 200
    status, ctype, body = request(service.port, "GET", "/api/model")
    info = json.loads(body)
    assert status == 200 and info["classes"] == ["1", "2", "3", "4"]
    assert info["fingerprints"] == predictor.fingerprints() and info["thresholds"]["source"].startswith("raw")
    status, ctype, body = request(service.port, "GET", "/")
    assert status == 200 and "text/html" in ctype and b'<script src="/viewer.js">' in body
    status, ctype, body = request(service.port, "GET", "/viewer.js")
    assert status == 200 and "javascript" in ctype and b"decodeRle" in body


@pytest.mark.slow
def test_raw_bytes_and_multipart_answer_what_the_predictor_predicts(service, folder, predictor, run_files):
    path = image_paths(folder)[0]
    data = path.read_bytes()
    status, _, body = request(
        service.port, "POST", "/predict?name=a.jpg", data, {"Content-Type": "image/jpeg"}
    )
    assert status == 200, body
    doc = json.loads(body)
    assert doc["image"]["name"] == "a.jpg" and doc["model"]["fingerprints"] == predictor.fingerprints()
    assert doc["thresholds"]["params"]["t_pix"] == [0.5] * 4
    assert_same_as_predictor(doc, rgb(path), predictor)
    body, headers = multipart("image", path.name, data)
    status, _, answer = request(service.port, "POST", "/predict", body, headers)
    assert status == 200, answer
    multi = json.loads(answer)
    assert multi["image"]["name"] == path.name and multi["classes"] == doc["classes"]
    # another size (not a multiple of 32), PNG, processed at its own size
    odd = cv2.resize(rgb(path), (200, 72))
    ok, png = cv2.imencode(".png", cv2.cvtColor(odd, cv2.COLOR_RGB2BGR))
    status, _, answer = request(service.port, "POST", "/predict", png.tobytes())
    assert status == 200, answer
    assert_same_as_predictor(json.loads(answer), odd, predictor)


@pytest.mark.slow
def test_overlay_png_on_request(service, folder):
    path = image_paths(folder)[1]
    status, _, body = request(service.port, "POST", "/predict?overlay=1", path.read_bytes())
    doc = json.loads(body)
    assert status == 200 and "overlay_png" in doc
    picture = cv2.imdecode(np.frombuffer(base64.b64decode(doc["overlay_png"]), np.uint8), cv2.IMREAD_COLOR)
    h, w = doc["image"]["height"], doc["image"]["width"]
    assert picture is not None and picture.shape[0] > h and picture.shape[1] >= w
    status, _, body = request(service.port, "POST", "/predict", path.read_bytes())
    assert "overlay_png" not in json.loads(body)
    status, _, body = request(service.port, "POST", "/predict?overlay=maybe", path.read_bytes())
    assert status == 400 and "overlay" in json.loads(body)["detail"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "status", "words"),
    [
        (lambda good: (b"", {}), 400, "empty"),
        (lambda good: (b"hello, this is not an image", {}), 415, "not an image"),
        (lambda good: (good[: len(good) // 2], {"Content-Type": "image/jpeg"}), 400, "truncated"),
        (lambda good: (good[:8] + os.urandom(4000), {}), 400, "truncated or corrupt"),
        (lambda good: (b"\xff" * (1024 * 1024 + 10), {}), 413, "over the limit"),
        (
            lambda good: (b"--x\r\nbroken", {"Content-Type": "multipart/form-data; boundary=x"}),
            400,
            "multipart",
        ),
        # H2 + M5: formats Pillow knows but the service does not take, refused by name before any decoder
        (lambda good: (pil_bytes("ICO", (32, 32)), {}), 415, "ICO format"),
        (lambda good: (pil_bytes("PCX"), {}), 415, "PCX format"),
        (lambda good: (pil_bytes("GIF"), {"Content-Type": "image/jpeg"}), 415, "GIF format"),
        (lambda good: (EPS, {}), 415, "PostScript/EPS format"),
        (lambda good: (pil_bytes("WEBP"), {}), 415, "formats="),
        # H1: pixel bombs, refused from the header (97 KB and 25 KB PNGs)
        (lambda good: (pil_bytes("PNG", (10000, 10000), "L"), {}), 413, "max_pixels=6,553,600"),
        (lambda good: (pil_bytes("PNG", (100000, 256), "L"), {}), 413, "100000x256 pixels"),
    ],
    ids=[
        "empty",
        "not-an-image",
        "truncated-jpeg",
        "corrupt",
        "too-large",
        "bad-multipart",
        "ico",
        "pcx",
        "gif",
        "eps",
        "webp",
        "bomb-10000x10000",
        "wide-100000x256",
    ],
)
def test_client_mistakes_get_a_4xx_json_error_and_the_next_request_is_served(
    service, folder, make, status, words
):
    good = image_paths(folder)[0].read_bytes()
    body, headers = make(good)
    got, ctype, answer = request(service.port, "POST", "/predict", body, headers)
    assert got == status and "application/json" in ctype, answer
    assert words in json.loads(answer)["detail"]
    got, _, answer = request(service.port, "POST", "/predict", good)
    assert got == 200 and json.loads(answer)["classes"]


@pytest.mark.slow
def test_concurrent_requests_of_mixed_sizes_are_batched_correctly(service, folder, predictor):
    """16 requests from 4 threads, two sizes, interleaved with bad uploads (H2: ICO and PCX, which passed the
    old check and failed the whole batch in the worker): every good answer equals the Predictor's for its
    image (dynamic batches never mix answers up, a bad upload never fails another), every bad one a 4xx."""
    base = rgb(image_paths(folder)[0])
    images = [base, cv2.resize(base, (320, 64))]
    encoded = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in images]
    poison = [b"garbage", pil_bytes("ICO", (32, 32)), pil_bytes("PCX")]
    jobs = [(i % 2, encoded[i % 2] if i % 3 else poison[i % 9 // 3]) for i in range(18)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda j: request(service.port, "POST", "/predict", j[1]), jobs))
    docs = {}
    for (which, data), (status, _, body) in zip(jobs, answers, strict=True):
        if data in poison:
            assert status == 415, body
        else:
            assert status == 200, body
            docs.setdefault(which, []).append(json.loads(body))
    assert sorted(docs) == [0, 1]
    for which, found in docs.items():
        for doc in found:
            assert_same_as_predictor(doc, images[which], predictor, exact=False)


@pytest.mark.slow
def test_folder_listing_and_no_path_traversal(service, folder):
    """M2 + L2: only regular image files inside images=DIR are listed and served (the symlinks to a secret
    outside and to /etc/passwd, the fifo and the text file named .png are not), names only, no paths."""
    status, _, body = request(service.port, "GET", "/api/images")
    listing = json.loads(body)
    assert status == 200 and listing["images"] == regular_images(folder)
    assert listing["folder"] == folder.name and "/" not in body.decode()
    name = listing["images"][0]
    status, ctype, body = request(service.port, "GET", f"/api/images/{name}")
    assert status == 200 and body == (folder / name).read_bytes() and ctype == "image/jpeg"
    for bad in ("..%2F..%2Fetc%2Fpasswd", "nope.jpg", "leak.jpg", "passwd.png", "pipe.jpg"):
        status, _, body = request(service.port, "GET", f"/api/images/{bad}")
        assert status == 404 and b"root:" not in body and b"secret" not in body, (bad, body)
    # a listed name swapped for a link out after the listing is refused too (checked on the open file)
    (folder / "late.jpg").symlink_to(folder.parent / "secret.txt")
    assert request(service.port, "GET", "/api/images/late.jpg")[0] == 404
    (folder / "late.jpg").unlink()


@pytest.mark.slow
def test_no_filesystem_paths_and_no_docs_by_default(service, run_files):
    """L2: /info, /api/model and the answers name files, never folders; /docs and /openapi.json are off."""
    run_dir = str(run_files["a"].parent)
    for path in ("/info", "/api/model", "/api/images"):
        status, _, body = request(service.port, "GET", path)
        assert status == 200 and run_dir not in body.decode() and str(REPO) not in body.decode()
    info = json.loads(request(service.port, "GET", "/api/model")[2])
    assert "/" not in info["thresholds"]["source"] and info["checkpoints"] == [run_files["a"].name]
    assert info["max_pixels"] == 16 * 256 * 1600 and info["formats"] == ["JPEG", "PNG", "BMP", "TIFF"]
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert request(service.port, "GET", path)[0] == 404


@pytest.mark.slow
def test_metrics_in_prometheus_format(service, folder, predictor):
    """/metrics: requests by route and code, latency histogram, batch sizes, errors by code, the model."""
    good = image_paths(folder)[0].read_bytes()
    assert request(service.port, "POST", "/predict", good)[0] == 200
    assert request(service.port, "POST", "/predict", b"junk")[0] == 415
    status, ctype, body = request(service.port, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), text[:300]
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    assert values['steel_defect_http_requests_total{route="/predict",code="200"}'] >= 1
    assert values['steel_defect_http_errors_total{code="415"}'] >= 1
    assert values['steel_defect_http_request_duration_seconds_count{route="/predict"}'] >= 2
    assert values['steel_defect_http_request_duration_seconds_bucket{route="/predict",le="+Inf"}'] >= 2
    assert values["steel_defect_batch_size_count"] >= 1 and values["steel_defect_batch_size_sum"] >= 1
    assert 'steel_defect_batch_size_bucket{le="4"}' in values  # buckets 1..max_batch_size
    fingerprint = predictor.fingerprints()[0]
    assert any(k.startswith("steel_defect_model_info{") and fingerprint in k for k in values)


@pytest.mark.slow
def test_a_bad_checkpoint_stops_the_service_at_start_with_its_message(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    proc = subprocess.run(
        [sys.executable, "-m", "steel_defect.serve", f"ckpt={junk}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (
        proc.returncode == 2 and "not a steel-defect checkpoint" in proc.stderr and str(junk) in proc.stderr
    )


# ------------------------------------------------------------------------------------------------------
# pure parts
# ------------------------------------------------------------------------------------------------------
def test_settings_parse_and_refuse_with_the_key(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"x")
    s = parse_args([f"ckpt={ckpt}", "port=9000", "tta=[hflip]", "max_upload_mb=0.5", "max_batch_size=8"])
    assert (
        s.port == 9000 and s.tta == ("hflip",) and s.max_upload_bytes == 512 * 1024 and s.host == "127.0.0.1"
    )
    for args, message in (
        ([], "ckpt is required"),
        ([f"ckpt={tmp_path / 'none.ckpt'}"], "not found"),
        ([f"ckpt={ckpt}", "port=70000"], "port must be an integer"),
        ([f"ckpt={ckpt}", "colour=red"], "unknown setting"),
        ([f"ckpt={ckpt}", "tta=[rot90]"], "unknown tta"),
        ([f"ckpt={ckpt}", "host=10.0.0.1"], "host='10.0.0.1' is not valid"),
        ([f"ckpt={ckpt}", "max_pixels=0"], "max_pixels must be"),
        ([f"ckpt={ckpt}", "formats=[JPEG, GIF]"], "GIF"),
        ([f"ckpt={ckpt}", "read_timeout=0"], "read_timeout must be"),
        ([f"ckpt={ckpt}", "max_batch_size=0"], "max_batch_size must be"),
        ([f"ckpt={ckpt}", f"images={tmp_path / 'nowhere'}"], "not a folder"),
        (["port"], "key=value"),
    ):
        with pytest.raises((ValueError, FileNotFoundError), match=message.replace("[", r"\[")):
            parse_args(args)


def test_check_image_accepts_complete_images_only():
    ok, jpg = cv2.imencode(".jpg", np.full((20, 30, 3), 128, np.uint8))
    assert check_image(jpg.tobytes()) == ("JPEG", 20, 30)
    ok, png = cv2.imencode(".png", np.zeros((5, 7), np.uint8))
    assert check_image(png.tobytes()) == ("PNG", 5, 7)
    assert check_image(pil_bytes("BMP")) == ("BMP", 30, 40)
    assert check_image(pil_bytes("TIFF")) == ("TIFF", 30, 40)
    for data, status in (
        (b"", 400),
        (b"GIF? no", 415),
        (png.tobytes()[: len(png) // 2], 400),
        (jpg.tobytes()[:100], 400),
        (pil_bytes("ICO", (32, 32)), 415),
        (pil_bytes("PCX"), 415),
        (EPS, 415),
        (pil_bytes("PNG", (10000, 10000), "L"), 413),
    ):
        with pytest.raises(UploadError) as info:
            check_image(data)
        assert info.value.status == status


def test_components_and_prediction_json():
    mask = np.zeros((6, 10), bool)
    mask[1:3, 1:4] = True  # 6 px
    mask[4, 8] = True
    mask[5, 9] = True  # diagonal neighbour: 8-connected, one component of 2
    assert components(mask) == [
        {"x": 1, "y": 1, "width": 3, "height": 2, "area": 6},
        {"x": 8, "y": 4, "width": 2, "height": 2, "area": 2},
    ]
    pred = ImagePrediction("i.png", True, np.stack([mask, np.zeros_like(mask)]), np.array([0.9, 0.1]), None)
    doc = prediction_json(pred, ["pit", "scratch"], {"fingerprints": ["f"]}, {"source": "s"})
    assert doc["image"] == {"name": "i.png", "height": 6, "width": 10} and doc["defective"] is True
    pit, scratch = doc["classes"]
    assert (pit["name"], pit["kept"], pit["area"], len(pit["boxes"])) == ("pit", True, 8, 2)
    assert np.array_equal(rle_decode(pit["rle"], (6, 10)).astype(bool), mask)
    assert (scratch["kept"], scratch["area"], scratch["rle"], scratch["boxes"]) == (False, 0, "", [])
    with pytest.raises(ValueError, match="3 class names for 2 masks"):
        prediction_json(pred, ["a", "b", "c"], {}, {})
