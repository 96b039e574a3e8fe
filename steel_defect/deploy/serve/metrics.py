"""``GET /metrics`` in Prometheus text format, counted across the service's processes.

The HTTP side (requests by route and status code, latency) is counted by :class:`MetricsMiddleware` in the
API process(es); batch sizes, batch inference time and per-image inference failures by the inference
worker(s). Both write one shared-memory array (:class:`Metrics`, made before the server starts: forked API
processes inherit it, the spawned workers receive it with their LitAPI), so any API process answers for
the whole service. The model's checkpoints and weight fingerprints are an info metric.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

#: the routes counted by name (anything else: "other"), so a scanner cannot blow up the label set
ROUTES: tuple[str, ...] = (
    "/predict",
    "/health",
    "/info",
    "/metrics",
    "/",
    "/viewer.js",
    "/api/model",
    "/api/images",
    "/api/images/{name}",
    "/api/login",
    "/api/logout",
    "/docs",
    "/openapi.json",
    "other",
)
CODES: tuple[str, ...] = (
    "200", "204", "304", "400", "401", "403", "404", "405", "408",
    "413", "415", "422", "429", "500", "503", "504", "other",
)  # fmt: skip
#: request latency buckets, seconds
LATENCY: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: inference time of one batch, seconds
BATCH_SECONDS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def route_of(path: str) -> str:
    if path in ROUTES:
        return path
    if path.startswith("/api/images/"):
        return "/api/images/{name}"
    return "other"


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: Any) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}" if labels else ""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class _Layout:
    """Offsets of every series in the shared array."""

    def __init__(self, max_batch_size: int) -> None:
        self.batch_buckets = tuple(float(b) for b in range(1, max_batch_size + 1))
        n = 0
        self.requests = n
        n += len(ROUTES) * len(CODES)
        self.latency = n  # per route: buckets..., +Inf count, sum
        n += len(ROUTES) * (len(LATENCY) + 2)
        self.batch = n  # buckets..., count, sum
        n += len(self.batch_buckets) + 2
        self.batch_time = n
        n += len(BATCH_SECONDS) + 2
        self.item_errors = n
        n += 1
        self.size = n


class Metrics:
    """Counters and histograms in shared memory (picklable to spawned workers while they start)."""

    def __init__(self, max_batch_size: int = 1, model: Mapping[str, Any] | None = None) -> None:
        ctx = mp.get_context("spawn")
        self.layout = _Layout(max_batch_size)
        self.values = ctx.RawArray("d", self.layout.size)
        self.lock = ctx.Lock()
        self.started = time.time()
        self.model = dict(model or {})

    # -- writers -------------------------------------------------------------------------------------
    def _histogram(self, base: int, buckets: Sequence[float], value: float) -> None:
        v = self.values
        for i in range(bisect_left(buckets, value), len(buckets)):
            v[base + i] += 1
        v[base + len(buckets)] += 1
        v[base + len(buckets) + 1] += value

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        route = ROUTES.index(route_of(path))
        code = str(status) if str(status) in CODES else "other"
        lay = self.layout
        with self.lock:
            self.values[lay.requests + route * len(CODES) + CODES.index(code)] += 1
            self._histogram(lay.latency + route * (len(LATENCY) + 2), LATENCY, seconds)

    def observe_batch(self, size: int, seconds: float, failed_items: int = 0) -> None:
        lay = self.layout
        with self.lock:
            self._histogram(lay.batch, lay.batch_buckets, float(size))
            self._histogram(lay.batch_time, BATCH_SECONDS, seconds)
            self.values[lay.item_errors] += failed_items

    # -- the exposition --------------------------------------------------------------------------------
    def _hist_lines(self, name: str, base: int, buckets: Sequence[float], snap, **labels: Any) -> list[str]:
        lines = [
            f"{name}_bucket{_labels(**labels, le=_num(b))} {_num(snap[base + i])}"
            for i, b in enumerate(buckets)
        ]
        count, total = snap[base + len(buckets)], snap[base + len(buckets) + 1]
        lines.append(f"{name}_bucket{_labels(**labels, le='+Inf')} {_num(count)}")
        lines.append(f"{name}_count{_labels(**labels)} {_num(count)}")
        lines.append(f"{name}_sum{_labels(**labels)} {_num(total)}")
        return lines

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        with self.lock:
            snap = list(self.values)
        lay = self.layout
        out = [
            "# HELP steel_defect_http_requests_total HTTP requests answered, by route and status code.",
            "# TYPE steel_defect_http_requests_total counter",
        ]
        errors: dict[str, float] = {}
        for r, route in enumerate(ROUTES):
            for c, code in enumerate(CODES):
                value = snap[lay.requests + r * len(CODES) + c]
                if value:
                    out.append(
                        f"steel_defect_http_requests_total{_labels(route=route, code=code)} {_num(value)}"
                    )
                    if code == "other" or int(code) >= 400:
                        errors[code] = errors.get(code, 0.0) + value
        out += [
            "# HELP steel_defect_http_errors_total HTTP answers with a 4xx or 5xx status, by code.",
            "# TYPE steel_defect_http_errors_total counter",
        ]
        out += [
            f"steel_defect_http_errors_total{_labels(code=c)} {_num(v)}" for c, v in sorted(errors.items())
        ]
        out += [
            "# HELP steel_defect_http_request_duration_seconds Time from request to response, by route.",
            "# TYPE steel_defect_http_request_duration_seconds histogram",
        ]
        for r, route in enumerate(ROUTES):
            base = lay.latency + r * (len(LATENCY) + 2)
            if snap[base + len(LATENCY)]:
                out += self._hist_lines(
                    "steel_defect_http_request_duration_seconds", base, LATENCY, snap, route=route
                )
        out += [
            "# HELP steel_defect_batch_size Images per dynamic batch run by an inference worker.",
            "# TYPE steel_defect_batch_size histogram",
            *self._hist_lines("steel_defect_batch_size", lay.batch, lay.batch_buckets, snap),
            "# HELP steel_defect_batch_seconds Inference time of one dynamic batch (decode to JSON).",
            "# TYPE steel_defect_batch_seconds histogram",
            *self._hist_lines("steel_defect_batch_seconds", lay.batch_time, BATCH_SECONDS, snap),
            "# HELP steel_defect_inference_errors_total Images whose inference failed (each answered on its own).",
            "# TYPE steel_defect_inference_errors_total counter",
            f"steel_defect_inference_errors_total {_num(snap[lay.item_errors])}",
            "# HELP steel_defect_model_info The model served: file and the fingerprint of the weights it runs (value 1).",
            "# TYPE steel_defect_model_info gauge",
        ]
        names = self.model.get("checkpoints") or []
        prints = self.model.get("weights_fingerprints") or self.model.get("fingerprints") or []
        for i, name in enumerate(names):
            fp = prints[i] if i < len(prints) else None
            labels = _labels(
                checkpoint=name, fingerprint=fp or "unknown", runtime=self.model.get("runtime", "")
            )
            out.append(f"steel_defect_model_info{labels} 1")
        out += [
            "# HELP steel_defect_start_time_seconds When the service started (Unix time).",
            "# TYPE steel_defect_start_time_seconds gauge",
            f"steel_defect_start_time_seconds {self.started:.3f}",
        ]
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    """ASGI middleware (outermost of ours): counts every HTTP answer, 401s and 4xx included."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def counted(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.observe_request(scope["path"], status, time.perf_counter() - start)


def add_metrics_route(app: Any, metrics: Metrics) -> None:
    """``GET /metrics`` (behind the API key like every route but /health)."""
    from starlette.responses import Response

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():  # noqa: ANN202 (no annotation: FastAPI would try to resolve it)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
