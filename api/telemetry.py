"""The outermost ASGI middleware: each request's id (``X-Request-ID``, taken or made, and sent back), its log
context, its metrics (count and latency by route template and status) and its access line. Its server span is
FastAPI's own (native OpenTelemetry, around the whole app once a tracer provider is set: `common.tracing`);
this adds the request id to it.

It wraps the guard, so refused requests (401, 413, 429 before any body is read) are counted and logged too.
The route is the template the request matches (``/jobs/{job_id}``), never the path, so ids do not make series;
a path no route matches is ``unmatched``.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import BaseRoute, Match

from common import logs

log = logging.getLogger("stillmoving.access")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
UNMATCHED = "unmatched"


def route_template(routes: Sequence[BaseRoute], scope) -> str:
    """The path template of the route `scope` goes to (a mount's prefix: ``/ui``), else `UNMATCHED`."""
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", UNMATCHED)
        if match == Match.PARTIAL and partial is None:  # the path, not the method (405)
            partial = getattr(route, "path", None)
    return partial or UNMATCHED


class HttpMetrics:
    """The request metrics of one app (its own registry: several apps in one test process do not collide)."""

    def __init__(self, registry: CollectorRegistry):
        labels = ("method", "route", "status")
        self.requests = Counter("stillmoving_http_requests", "HTTP requests answered, by route template and status",
                                labels, registry=registry)
        self.latency = Histogram("stillmoving_http_request_duration_seconds", "Time from a request's arrival to "
                                 "the end of its response, by route template and status", labels,
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("stillmoving_http_requests_in_flight", "Requests being answered now",
                               registry=registry)


class RequestTelemetry:
    """`routes`: every route of the app, flat (the app fills the list once its routes are all there)."""

    def __init__(self, app, routes: Sequence[BaseRoute], metrics: HttpMetrics):
        self.app, self.routes, self.metrics = app, routes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = logs.request_id(headers.get("x-request-id"))
        method, route = scope["method"], route_template(self.routes, scope)
        status, start = 500, time.perf_counter()  # 500 unless a response starts (an exception escaped)

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        self.metrics.in_flight.inc()
        trace.get_current_span().set_attribute("stillmoving.request_id", request_id)
        with logs.context(request_id=request_id):
            try:
                await self.app(scope, receive, sending)
            finally:
                seconds = time.perf_counter() - start
                self.metrics.in_flight.dec()
                self.metrics.requests.labels(method, route, str(status)).inc()
                self.metrics.latency.labels(method, route, str(status)).observe(seconds)
                log.info("%s %s %d %.1f ms", method, route, status, seconds * 1000,  # owner, job_id: the context's
                         extra={"method": method, "route": route, "path": scope["path"], "status": status,
                                "duration_ms": round(seconds * 1000, 1)})
