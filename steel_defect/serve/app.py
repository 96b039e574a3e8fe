"""The LitAPI around the :class:`~steel_defect.predictor.Predictor` and the LitServe server with the viewer."""

from __future__ import annotations

import base64
from importlib import resources
from pathlib import Path
from typing import Any

import litserve as ls

from steel_defect.io import list_images
from steel_defect.predictor import Predictor
from steel_defect.serve.result import overlay_png, prediction_json
from steel_defect.serve.settings import ServeSettings
from steel_defect.serve.upload import UploadMiddleware, decode_image

API_PATH = "/predict"


def describe(predictor: Predictor, runtime: str = "auto") -> dict[str, Any]:
    """What the answers say about the model: classes, checkpoints, weight fingerprints, TTA, thresholds."""
    return {
        "classes": list(predictor.classes),
        "checkpoints": [p.name for p in predictor.ckpts],
        "fingerprints": predictor.fingerprints(),
        "tta": list(predictor.tta),
        "runtime": runtime,
        "device": str(predictor.device),
        "thresholds": {"source": predictor.source, "params": predictor.params.to_dict()},
    }


def load_predictor(settings: ServeSettings, device: str = "auto") -> Predictor:
    return Predictor.load(
        settings.ckpt,
        thresholds=settings.thresholds,
        device=device,
        runtime=settings.runtime,
        tta=settings.tta,
        check_thresholds=settings.check_thresholds,
    )


class SteelDefectAPI(ls.LitAPI):
    """setup: load the Predictor once per worker; decode: validated bytes -> RGB; predict: a dynamic batch
    of images (any sizes) -> one JSON answer each."""

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__(
            max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout, api_path=API_PATH
        )
        self.settings = settings

    def setup(self, device: str) -> None:
        self.predictor = load_predictor(self.settings, device)
        info = describe(self.predictor, self.settings.runtime)
        self.model = {k: info[k] for k in ("checkpoints", "fingerprints", "tta", "runtime", "device")}
        self.thresholds = info["thresholds"]

    def decode_request(self, request):  # noqa: ANN001 (unannotated: LitServe then passes the JSON body)
        # The UploadMiddleware has already checked that these bytes are a complete image.
        image = decode_image(base64.b64decode(request["image"]))
        return {"image": image, "name": str(request["name"]), "overlay": bool(request.get("overlay"))}

    def predict(self, x: Any) -> Any:
        items = x if isinstance(x, list) else [x]
        preds = self.predictor.predict([i["image"] for i in items], [i["name"] for i in items])
        out = [
            prediction_json(
                pred,
                self.predictor.classes,
                self.model,
                self.thresholds,
                overlay=overlay_png(item["image"], pred, self.predictor.classes) if item["overlay"] else None,
            )
            for item, pred in zip(items, preds, strict=True)
        ]
        return out if isinstance(x, list) else out[0]

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def folder_images(folder: str | None) -> list[str]:
    """The image files the viewer may pick from ``folder`` (sorted names; none without a folder)."""
    if folder is None:
        return []
    return [p.name for p in list_images(folder)]


def add_viewer_routes(app: Any, settings: ServeSettings, info: dict[str, Any]) -> None:
    """``GET /`` (the viewer page, replacing LitServe's placeholder), its script, ``GET /api/model`` and the
    configured folder (``GET /api/images``, ``GET /api/images/{name}``: listed names only)."""
    from fastapi import HTTPException
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

    static = resources.files("steel_defect.serve") / "static"
    app.router.routes = [
        r
        for r in app.router.routes
        if not (getattr(r, "path", None) == "/" and "GET" in getattr(r, "methods", ()))
    ]

    @app.get("/", include_in_schema=False)
    async def viewer() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @app.get("/viewer.js", include_in_schema=False)
    async def viewer_js() -> Response:
        return Response((static / "viewer.js").read_text(encoding="utf-8"), media_type="text/javascript")

    @app.get("/api/model")
    async def model() -> JSONResponse:
        return JSONResponse({**info, "gallery": settings.gallery, "max_upload_mb": settings.max_upload_mb})

    @app.get("/api/images")
    async def images() -> JSONResponse:
        return JSONResponse({"folder": settings.images, "images": folder_images(settings.images)})

    @app.get("/api/images/{name}")
    async def image(name: str) -> FileResponse:
        if name not in folder_images(settings.images):
            raise HTTPException(404, f"no image {name!r} in the configured folder (images=...)")
        return FileResponse(Path(settings.images) / name)


def build_server(settings: ServeSettings, info: dict[str, Any]) -> ls.LitServer:
    """The LitServer for ``settings`` (``info``: :func:`describe` of a predictor loaded up front)."""
    server = ls.LitServer(
        SteelDefectAPI(settings),
        accelerator=settings.accelerator,
        devices=settings.devices if settings.accelerator != "cpu" else "auto",
        workers_per_device=settings.workers_per_device,
        timeout=settings.timeout,
        model_metadata=info,
        middlewares=[(UploadMiddleware, {"path": API_PATH, "max_bytes": settings.max_upload_bytes})],
    )
    add_viewer_routes(server.app, settings, info)
    return server
