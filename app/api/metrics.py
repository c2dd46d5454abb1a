"""Prometheus metrics of one API process: requests, latency, verdicts, inference time.

Each app gets its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import time
from fastapi import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "nominal_http_requests_total", "HTTP requests by route template, method and status.",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "nominal_http_request_seconds", "HTTP request latency by route template.",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.verdicts = Counter(
            "nominal_verdicts_total", "Verdicts by machine setting and outcome.",
            ["setting", "verdict"], registry=self.registry,
        )
        self.inference = Histogram(
            "nominal_inference_seconds", "Embedding plus nominal-neighbour search, per inspected image.",
            ["setting"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Counts and times every HTTP request, as plain ASGI (Starlette's BaseHTTPMiddleware costs latency)."""

        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                # The router put the matched route in the scope: label by its template
                # ("/v1/settings/{setting}"), not the raw path, so label values stay bounded.
                template = getattr(scope.get("route"), "path", "unmatched")
                self.requests.labels(scope["method"], template, str(status)).inc()
                self.latency.labels(scope["method"], template).observe(time.perf_counter() - started)

        return measured

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
