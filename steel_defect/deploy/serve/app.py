"""The LitAPI around any :class:`~steel_defect.inference.engine.Inferencer` and the LitServe server with the viewer."""

from __future__ import annotations

import base64
import logging
import os
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any

import litserve as ls

from steel_defect.deploy.serve.auth import BearerAuth
from steel_defect.deploy.serve.gallery import GalleryError, gallery_files, read_gallery_image
from steel_defect.deploy.serve.images import UploadError, decode_image
from steel_defect.deploy.serve.metrics import Metrics, MetricsMiddleware, add_metrics_route
from steel_defect.deploy.serve.result import overlay_png, prediction_json
from steel_defect.deploy.serve.settings import ServeSettings
from steel_defect.deploy.serve.upload import UploadMiddleware
from steel_defect.inference.engine import Inferencer
from steel_defect.inference.engine import load_predictor as load_engine

API_PATH = "/predict"
log = logging.getLogger(__name__)
#: what the viewer's pages may load: only this origin (images drawn from blobs and data URLs)
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}


def public_source(source: str, folders: list[str | os.PathLike] | tuple = ()) -> str:
    """``source`` (a thresholds description) with every filesystem path cut to its file name (``folders``:
    known folders, also cut where a path with spaces would defeat the pattern)."""
    if os.path.isabs(source):  # a thresholds.yaml given by path (spaces and all)
        return Path(source).name
    known = {str(f) for f in folders} | {os.path.abspath(str(f)) for f in folders}
    for folder in sorted(known, key=len, reverse=True):
        source = source.replace(folder.rstrip(os.sep) + os.sep, "")
    return re.sub(r"(?<![\w.~-])(?:~|\.{1,2})?/(?:[^\s/]+/)*([^\s/]+)", r"\1", source)


def describe(predictor: Inferencer, runtime: str = "auto") -> dict[str, Any]:
    """What the answers say about the model: classes, checkpoints, fingerprints (the claimed source ones,
    what thresholds are bound to, and ``weights_fingerprints``: a hash of the weights really loaded), TTA,
    the engine, thresholds (file names only, never a filesystem path), and the padding stride."""
    source = public_source(predictor.source, [p.parent for p in predictor.ckpts])
    return {
        "classes": list(predictor.classes),
        "checkpoints": [p.name for p in predictor.ckpts],
        "fingerprints": predictor.fingerprints(),
        "weights_fingerprints": predictor.weights_fingerprints(),
        "tta": list(predictor.tta),
        "runtime": runtime,
        "engine": predictor.engine,
        "device": str(predictor.device),
        "stride": int(predictor.stride),
        "thresholds": {"source": source, "params": predictor.params.to_dict()},
    }


def load_predictor(settings: ServeSettings, device: str = "auto") -> Inferencer:
    """The predictor of ``settings`` (the one factory, any engine); any failure to load a model file becomes a
    ValueError naming it."""
    try:
        return load_engine(
            settings.ckpt,
            thresholds=settings.thresholds,
            device=device,
            runtime=settings.runtime,
            tta=settings.tta,
            check_thresholds=settings.check_thresholds,
        )
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001
        # onnxruntime's InvalidProtobuf/Fail, a RecursionError from hostile metadata, a torch error...
        raise ValueError(
            f"ckpt={', '.join(settings.ckpt)}: could not be loaded ({type(err).__name__}: "
            f"{str(err)[:300]}); is it a steel-defect checkpoint or an .onnx exported by predict.py task=export?"
        ) from err


def _error_item(name: str, status: int, detail: str) -> dict[str, Any]:
    return {"error": (status, detail), "name": name}


class SteelDefectAPI(ls.LitAPI):
    """setup: load the predictor once per worker; decode: checked bytes -> RGB; predict: a dynamic batch of
    images (any sizes) -> one JSON answer each. A request never fails another: an image that does not
    decode, or whose inference fails when it is retried alone, gets its own error answer."""

    def __init__(self, settings: ServeSettings, metrics: Metrics | None = None) -> None:
        super().__init__(
            max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout, api_path=API_PATH
        )
        self.settings = settings
        self.metrics = metrics

    def setup(self, device: str) -> None:
        from steel_defect.deploy.serve.lifecycle import set_parent_death_signal

        set_parent_death_signal()  # the worker goes when the service's main process goes, even on kill -9
        self.predictor = load_predictor(self.settings, device)
        info = describe(self.predictor, self.settings.runtime)
        keys = ("checkpoints", "fingerprints", "weights_fingerprints", "tta", "runtime", "device")
        self.model = {k: info[k] for k in keys}
        self.thresholds = info["thresholds"]

    def decode_request(self, request):  # noqa: ANN001 (unannotated: LitServe then passes the JSON body)
        name = str(request.get("name", "upload"))
        try:  # the UploadMiddleware has decoded these bytes already; this cannot fail but for memory
            image = decode_image(base64.b64decode(request["image"]), name)
        except UploadError as err:
            return _error_item(name, err.status, err.detail)
        except Exception as err:  # noqa: BLE001 (one request's failure, never the batch's)
            log.exception("decoding %s failed", name)
            return _error_item(name, 500, f"{name} could not be decoded here ({type(err).__name__})")
        return {"image": image, "name": name, "overlay": bool(request.get("overlay"))}

    def _answers(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        preds = self.predictor.predict([i["image"] for i in items], [i["name"] for i in items])
        return [
            prediction_json(
                pred,
                self.predictor.classes,
                self.model,
                self.thresholds,
                overlay=overlay_png(item["image"], pred, self.predictor.classes) if item["overlay"] else None,
            )
            for item, pred in zip(items, preds, strict=True)
        ]

    def predict(self, x: Any) -> Any:
        start = time.perf_counter()
        items = x if isinstance(x, list) else [x]
        out: list[dict[str, Any] | None] = [i if "error" in i else None for i in items]
        todo = [k for k, i in enumerate(items) if "error" not in i]
        try:
            for k, answer in zip(todo, self._answers([items[k] for k in todo]), strict=True):
                out[k] = answer
        except Exception:  # noqa: BLE001 (find the culprit: each image again on its own)
            log.exception("a batch of %d images failed; answering each on its own", len(todo))
            for k in todo:
                try:
                    out[k] = self._answers([items[k]])[0]
                except Exception as err:  # noqa: BLE001
                    log.exception("inference failed for %s", items[k]["name"])
                    status = 507 if isinstance(err, MemoryError) else 500
                    out[k] = _error_item(
                        items[k]["name"],
                        status,
                        f"inference failed for {items[k]['name']} ({type(err).__name__}); see the service log",
                    )
        if self.metrics is not None:
            failed = sum(1 for o in out if o is not None and "error" in o)
            self.metrics.observe_batch(len(items), time.perf_counter() - start, failed)
        return out if isinstance(x, list) else out[0]

    def encode_response(self, output):  # noqa: ANN001, ANN201 (a dict, or a JSONResponse with the error's status)
        if "error" in output:
            from starlette.responses import JSONResponse

            status, detail = output["error"]
            return JSONResponse({"detail": detail}, status_code=status)
        return output


def add_viewer_routes(app: Any, settings: ServeSettings, info: dict[str, Any]) -> None:
    """``GET /`` (the viewer page, replacing LitServe's placeholder), its script, ``GET /api/model`` and the
    configured folder (``GET /api/images``, ``GET /api/images/{name}``: listed names only, regular files
    inside the folder only). Answers carry file names, never filesystem paths."""
    from starlette.responses import HTMLResponse, JSONResponse, Response

    static = resources.files("steel_defect.deploy.serve") / "static"
    app.router.routes = [
        r
        for r in app.router.routes
        if not (getattr(r, "path", None) == "/" and "GET" in getattr(r, "methods", ()))
    ]
    folder = Path(settings.images).name if settings.images else None

    @app.get("/", include_in_schema=False)
    async def viewer():  # noqa: ANN202 (no annotations on routes: FastAPI would try to resolve them)
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    @app.get("/viewer.js", include_in_schema=False)
    async def viewer_js():  # noqa: ANN202
        text = (static / "viewer.js").read_text(encoding="utf-8")
        return Response(text, media_type="text/javascript", headers=PAGE_HEADERS)

    @app.get("/api/model")
    async def model():  # noqa: ANN202
        return JSONResponse(
            {
                **info,
                "gallery": settings.gallery,
                "max_upload_mb": settings.max_upload_mb,
                "max_pixels": settings.max_pixels,
                "formats": list(settings.formats),
            }
        )

    @app.get("/api/images")
    async def images():  # noqa: ANN202
        return JSONResponse(
            {"folder": folder, "images": list(gallery_files(settings.images, settings.formats))}
        )

    @app.get("/api/images/{name}")
    async def image(name: str):  # noqa: ANN202
        if settings.images is None:
            return JSONResponse({"detail": "no images folder configured (images=DIR)"}, status_code=404)
        try:
            data, media = read_gallery_image(
                settings.images, name, settings.max_upload_bytes, settings.formats
            )
        except GalleryError as err:
            return JSONResponse({"detail": err.detail}, status_code=err.status)
        return Response(data, media_type=media, headers={"x-content-type-options": "nosniff"})


def build_server(settings: ServeSettings, info: dict[str, Any]) -> ls.LitServer:
    """The LitServer for ``settings`` (``info``: :func:`describe` of a predictor loaded up front).

    Middlewares, outermost first: gzip (LitServe's), metrics (counts every answer), the API key (before
    any body is read), the upload check (``POST /predict`` only).
    """
    metrics = Metrics(settings.max_batch_size, info)
    upload = {
        "path": API_PATH,
        "max_bytes": settings.max_upload_bytes,
        "formats": settings.formats,
        "max_pixels": settings.max_pixels,
        "stride": info.get("stride", 32),
        "read_timeout": settings.read_timeout,
        "max_uploads": settings.max_uploads,
    }
    server = ls.LitServer(
        SteelDefectAPI(settings, metrics),
        accelerator=settings.accelerator,
        devices=settings.devices if settings.accelerator != "cpu" else "auto",
        workers_per_device=settings.workers_per_device,
        timeout=settings.timeout,
        model_metadata=info,
        disable_openapi_url=not settings.docs,
        middlewares=[
            (UploadMiddleware, upload),
            (BearerAuth, {"key": settings.api_key}),
            (MetricsMiddleware, {"metrics": metrics}),
        ],
    )
    server.uvicorn_graceful_timeout = settings.stop_timeout
    add_viewer_routes(server.app, settings, info)
    add_metrics_route(server.app, metrics)
    return server
