"""Load test of the inspection service (``python -m steel_defect.serve``) on 127.0.0.1, bounded in requests
and time.

    .venv/bin/python bench/serve.py [--ckpt PATH] [--model unet_efflite1] [--images DIR] [--requests 500]
        [--clients 8] [--batch 1 4] [--max-seconds 600] [--json out.json]

For each ``max_batch_size`` in ``--batch``: starts the service, sends ``--requests`` POST /predict (raw JPEG
bytes, the images of ``--images`` in turn; default the 89 real Severstal test images of ../shared) from
``--clients`` threads, and prints throughput, p50/p95/p99 latency and failures. Speed is also given as a
ratio against a reference timed in the same run: the same Predictor in process, one image at a time (what
the service adds: HTTP, JSON, base64, queueing). Faithfulness: every image's answer is compared with the
submission ``predict.py``'s code path writes for the same folder with the same checkpoint and thresholds
(identical RLEs, or the share of pixels that differ where dynamic batching changed the float sums).

Without ``--ckpt`` the model is the demo's architecture (``conf/model/<--model>.yaml``) with random weights
and raw thresholds (speed does not depend on the weights; random weights give non-empty masks to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.inference import net_config  # noqa: E402
from steel_defect.inference.folder import predict_images  # noqa: E402
from steel_defect.inference.predictor import Predictor  # noqa: E402
from steel_defect.rle import rle_decode  # noqa: E402
from steel_defect.submission import read_submission  # noqa: E402

REAL_TEST = REPO.parent / "shared" / "data" / "severstal-real" / "test_images"


def random_checkpoint(model: str, path: Path, seed: int = 0) -> Path:
    """A checkpoint of ``model``'s architecture with random weights (no training, no download)."""
    from steel_defect.models.module import SteelDefectModule

    torch.manual_seed(seed)
    module = SteelDefectModule(net=net_config(model))
    ckpt: dict[str, Any] = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(args: list[str], log: Path, seconds: float = 300) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "steel_defect.serve", *args, f"port={port}", "host=127.0.0.1"],
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                if resp.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.5)
    stop_service(proc)
    raise SystemExit(f"the service was not healthy within {seconds} s:\n{log.read_text()[-3000:]}")


def stop_service(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def post(port: int, data: bytes, name: str) -> tuple[int, float, dict | None]:
    import http.client

    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", f"/predict?name={name}", body=data, headers={"Content-Type": "image/jpeg"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    seconds = time.perf_counter() - start
    return resp.status, seconds, (json.loads(body) if resp.status == 200 else None)


def load_test(
    port: int, files: list[Path], requests: int, clients: int, max_seconds: float
) -> dict[str, Any]:
    blobs = [(p.name, p.read_bytes()) for p in files]
    deadline = time.monotonic() + max_seconds
    lock = threading.Lock()
    answers: dict[str, dict] = {}
    latencies: list[float] = []
    failures: list[str] = []

    def one(i: int) -> None:
        if time.monotonic() > deadline:
            return
        name, data = blobs[i % len(blobs)]
        try:
            status, seconds, doc = post(port, data, name)
        except OSError as err:
            with lock:
                failures.append(f"{name}: {err}")
            return
        with lock:
            latencies.append(seconds)
            if status != 200:
                failures.append(f"{name}: HTTP {status}")
            else:
                answers.setdefault(name, doc)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    q = np.quantile(latencies, [0.5, 0.95, 0.99]) if latencies else [float("nan")] * 3
    return {
        "sent": len(latencies) + sum(1 for f in failures if "HTTP" not in f),
        "failures": failures,
        "wall_s": wall,
        "throughput": len(latencies) / wall if wall > 0 else 0.0,
        "p50": float(q[0]),
        "p95": float(q[1]),
        "p99": float(q[2]),
        "answers": answers,
    }


def compare(answers: dict[str, dict], submission: Path) -> dict[str, Any]:
    """Service answers vs predict.py's submission: identical images, worst share of differing pixels."""
    frame = read_submission(submission)
    want = {i: g["EncodedPixels"].tolist() for i, g in frame.groupby("ImageId")}
    identical, worst, nonempty = 0, 0.0, 0
    for name, doc in answers.items():
        rles = [c["rle"] for c in doc["classes"]]
        nonempty += any(rles)
        if rles == want[name]:
            identical += 1
            continue
        h, w = doc["image"]["height"], doc["image"]["width"]
        diff = max(
            float((rle_decode(a, (h, w)) != rle_decode(b, (h, w))).mean())
            for a, b in zip(rles, want[name], strict=True)
        )
        worst = max(worst, diff)
    return {"images": len(answers), "identical": identical, "worst_pixel_share": worst, "nonempty": nonempty}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, help="a trained checkpoint (default: random weights of --model)")
    parser.add_argument("--thresholds", default=None, help="thresholds= for both sides (default raw / auto)")
    parser.add_argument("--model", default="unet_efflite1")
    parser.add_argument("--images", type=Path, default=REAL_TEST)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="max_batch_size values")
    parser.add_argument("--batch-timeout", type=float, default=0.02)
    parser.add_argument("--reference-images", type=int, default=30)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="per load test")
    parser.add_argument("--json", type=Path)
    a = parser.parse_args(argv)
    files = sorted(p for p in a.images.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"--images {a.images}: no images (the real test images live in ../shared)")
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    ckpt = a.ckpt or random_checkpoint(a.model, tmp / f"{a.model}_random.ckpt")
    thresholds = a.thresholds or ("auto" if a.ckpt else "raw")
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    predictor = Predictor.load(ckpt, thresholds=thresholds, device="cpu")
    # predict.py's code path on the same folder: the masks every answer must equal
    submission = tmp / "submission.csv"
    predict_images(predictor, files, submission, batch_size=4, num_workers=0)
    # the in-process reference, one image at a time, timed in this run
    decoded = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in files[: a.reference_images]]
    predictor.predict(decoded[:1])
    start = time.perf_counter()
    for image in decoded:
        predictor.predict([image])
    ref = (time.perf_counter() - start) / len(decoded)
    del predictor

    rows = []
    for batch in a.batch:
        log = tmp / f"serve_b{batch}.log"
        proc, port = start_service(
            [
                f"ckpt={ckpt}",
                f"thresholds={thresholds}",
                f"max_batch_size={batch}",
                f"batch_timeout={a.batch_timeout}",
                "accelerator=cpu",
            ],
            log,
        )
        try:
            for p in files[:2]:  # warm-up, not timed
                post(port, p.read_bytes(), p.name)
            result = load_test(port, files, a.requests, a.clients, a.max_seconds)
        finally:
            stop_service(proc)
        result["compare"] = compare(result.pop("answers"), submission)
        result["batch"] = batch
        rows.append(result)

    print(
        f"\nservice load test: {len(files)} images from {a.images}, {a.clients} client threads, "
        f"checkpoint {ckpt.name} ({'random weights' if a.ckpt is None else 'trained'}), thresholds={thresholds}"
    )
    print(
        f"reference: the same Predictor in process, one image at a time: {ref:.3f} s/image "
        f"({1 / ref:.2f} images/s), timed in this run"
    )
    head = (
        "max_batch",
        "requests",
        "failures",
        "images/s",
        "x in-process",
        "p50 s",
        "p95 s",
        "p99 s",
        "same masks as predict.py",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        c = r["compare"]
        same = f"{c['identical']}/{c['images']} identical"
        if c["identical"] < c["images"]:
            same += f", others differ in <= {100 * c['worst_pixel_share']:.3f}% of pixels"
        print(
            f"| {r['batch']} | {r['sent']} | {len(r['failures'])} | {r['throughput']:.2f} | "
            f"{r['throughput'] * ref:.2f} | {r['p50']:.3f} | {r['p95']:.3f} | {r['p99']:.3f} | {same} |"
        )
    for r in rows:
        for f in r["failures"][:5]:
            print(f"  failure (max_batch {r['batch']}): {f}")
    out = {"reference_s_per_image": ref, "images": len(files), "rows": rows}
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
