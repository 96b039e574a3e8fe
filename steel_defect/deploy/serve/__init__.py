"""The inspection service: ``python -m steel_defect.serve ckpt=PATH [port=8000] [key=value ...]``.

A LitServe server around the :class:`~steel_defect.inference.predictor.Predictor` (the model loads once per worker,
requests are batched dynamically): ``POST /predict`` takes an image (raw JPEG/PNG/BMP/TIFF bytes or a
multipart upload) and answers JSON (per class: probability, kept, area, RLE, component boxes; the thresholds
and model fingerprints used; an overlay PNG with ``?overlay=1``); ``GET /health`` is 200 once the model is
loaded; ``GET /`` is the viewer page; ``GET /metrics`` Prometheus text. With an API key every route but
/health needs ``Authorization: Bearer KEY`` (docs/DEPLOY.md). Modules: :mod:`.settings` (the key=value
configuration), :mod:`.images` (upload bytes -> a checked image: format, pixel limit, decode),
:mod:`.upload` (request bodies -> checked image bytes, every client mistake a 4xx JSON error),
:mod:`.auth` (the API key and the viewer's session), :mod:`.gallery` (the ``images=DIR`` folder),
:mod:`.metrics` (/metrics), :mod:`.limits` (uvicorn's connection limits and request deadline),
:mod:`.lifecycle` (stopping on SIGTERM/SIGINT), :mod:`.result` (a prediction -> its JSON), :mod:`.app`
(the LitAPI and the server with its viewer routes).
"""
