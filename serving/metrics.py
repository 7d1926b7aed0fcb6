"""Prometheus metrics: request counts and latency per route, on a registry owned by one app."""

from __future__ import annotations

import time

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        # One registry per app, so tests that build several apps do not collide.
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "embedserve_requests_total", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "embedserve_request_seconds", "HTTP request latency", ["method", "route"], registry=self.registry
        )
        self.batch_size = Histogram(
            "embedserve_batch_size",
            "items per model call",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.inflight_requests = Gauge(
            "embedserve_inflight_requests", "requests in progress (the probes not counted)", registry=self.registry,
        )
        self.inflight_bytes = Gauge(
            "embedserve_inflight_body_bytes", "bytes of request bodies held by the requests in progress",
            registry=self.registry,
        )
        self.queued = Gauge(
            "embedserve_queued_rows", "rows (images, texts) waiting for or in a model call, per model",
            ["model"], registry=self.registry,
        )
        self.precision = Gauge(
            "embedserve_model_precision", "1 for the precision variant each loaded model's encoder runs",
            ["model", "version", "role", "precision"], registry=self.registry,
        )

    def set_precisions(self, precisions: dict[tuple[str, str], dict[str, str]]) -> None:
        """Show {(model, version): {role: precision}} as the precision gauge, dropping models no longer loaded."""
        self.precision.clear()
        for (model, version), roles in precisions.items():
            for role, precision in roles.items():
                self.precision.labels(model, version, role, precision).set(1)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status.

    A plain ASGI middleware rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware
    runs the app in a task group and streams the response through a memory channel, which cost
    about a fifth of the event loop's time per request. Here the status is read off the
    `http.response.start` message on its way out. A request whose handler raised an unhandled
    exception (answered 500 by the outer ServerErrorMiddleware) is counted as a 500 too.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app finishes without answering, the server answers 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:  # an exception still counts, as the 500 the server answers with
            route = scope.get("route")  # set by the router on the scope it was handed, which is this one
            path = getattr(route, "path", "unmatched")  # the route template keeps label counts bounded
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(scope["method"], path).observe(time.perf_counter() - start)


def install_metrics(app: FastAPI) -> Metrics:
    metrics = Metrics()
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics
