"""The FastAPI application factory; clients are created once in `lifespan` and kept on ``app.state``."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, ProcessCollector
from starlette.routing import BaseRoute

from api import errors
from api.event_stream import EventStream
from api.guard import RequestGuard
from api.routes import (
    customizations,
    evaluations,
    exports,
    files,
    generate,
    health,
    job_events,
    jobs,
    limits,
    metrics,
    webhooks,
)
from api.telemetry import HttpMetrics, RequestTelemetry
from common import logs, tracing
from common.celery_config import make_celery
from common.jobstore import JobStore
from common.schemas import ErrorEnvelope
from common.settings import Settings, get_settings
from common.storage import Storage
from common.webhooks import WebhookStore

log = logging.getLogger("stillmoving.api")
UI_DIR = Path(__file__).resolve().parents[1] / "ui"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {code: {"model": ErrorEnvelope} for code in errors.ERROR_STATUSES}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for `settings` (default: from the environment)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        app.state.store = JobStore.from_settings(settings)
        app.state.storage = Storage(settings)
        app.state.celery = make_celery(settings)
        app.state.events = EventStream(settings)
        app.state.webhooks = WebhookStore.from_settings(app.state.store, settings)
        if settings.s3_create_bucket:
            try:
                app.state.storage.ensure_bucket()
            except Exception as exc:  # storage down at start: /readyz says so, the API still serves
                log.warning("storage: bucket %r could not be checked or created at start (%s: %s); serving "
                            "without it", settings.s3_bucket, type(exc).__name__, exc)
        yield
        app.state.store.redis.close()
        await app.state.events.close()

    app = FastAPI(
        title="stillmoving",
        version="0.1.0",
        description="Customized video generation with Still-Moving: upload a customized Stable Diffusion 1.5 "
                    "checkpoint, train Spatial Adapters, generate videos. Auth: `Authorization: Bearer <key>`.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    errors.install(app)
    app.add_middleware(RequestGuard, settings=settings)
    registry = CollectorRegistry()  # this app's: request metrics, the process, the service's (read from Redis)
    routes: list[BaseRoute] = []  # filled below, once every route is there
    app.add_middleware(RequestTelemetry, routes=routes, metrics=HttpMetrics(registry))  # outermost
    ProcessCollector(registry=registry)
    registry.register(metrics.ServiceCollector(app))
    app.state.metrics_registry = registry
    tracing.setup(settings, "stillmoving-api")
    modules = (health, customizations, exports, files, generate, evaluations, jobs, job_events, limits, metrics, webhooks)
    for module in modules:
        app.include_router(module.router)

    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> RedirectResponse:  # relative: Starlette's own redirect is built from the Host header
        return RedirectResponse("/ui/")

    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
    # the routers' routes and the app's own (docs, /ui): FastAPI keeps an included router as one entry
    routes += [r for module in modules for r in module.router.routes]
    routes += [r for r in app.router.routes if hasattr(r, "path")]
    return app


def main() -> None:
    """Console entry: serve the API with uvicorn on the configured host and port."""
    import uvicorn

    from api.http_protocol import with_head_timeout

    settings = get_settings()
    logs.setup(settings.log_level, settings.log_format)
    http = with_head_timeout(settings.api_head_timeout_s) if settings.api_http == "h11" else settings.api_http
    # uvicorn's loggers propagate to the one JSON handler; its access line is replaced by api.telemetry's,
    # which knows the request's id, route and owner
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_config=None,
                access_log=False, http=http, h11_max_incomplete_event_size=settings.max_request_head_bytes,
                limit_concurrency=settings.api_max_connections, timeout_keep_alive=settings.api_keep_alive_s)
