"""Create a job record and send its Celery task by name; the per-key rate and queue limits; the 202."""

from __future__ import annotations

import logging
import math
import uuid
from typing import Sequence

from celery import Celery
from fastapi.responses import JSONResponse
from opentelemetry import trace

from api.deps import owned_customization
from common import logs, tracing
from common.celery_config import TASK_FOR_KIND, task_headers
from common.errors import CustomizationFailed, ServiceUnavailable, TooManyRequests
from common.jobstore import JobStore
from common.schemas import CustomizationRecord, ErrorInfo, JobAccepted, JobRecord, WebhookFields
from common.settings import Settings
from common.webhooks import WebhookStore, resolve

log = logging.getLogger("stillmoving.api")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _too_many(settings: Settings, queued: int) -> TooManyRequests:
    return TooManyRequests(f"this key already has {queued} queued jobs (limit "
                           f"{settings.max_queued_jobs_per_key}); wait for some to start")


def rate_limit(store: JobStore, settings: Settings, owner: str) -> None:
    """Spend a job-creation token of the key (429 with Retry-After when its bucket is empty)."""
    wait = store.take_token(owner, settings.job_rate_per_s, settings.job_burst)
    if wait > 0:
        raise TooManyRequests(f"this key creates jobs faster than {settings.job_rate_per_s:g} a second "
                              f"(bursts of {settings.job_burst}); retry in {wait:.1f} s", retry_after=math.ceil(wait),
                              code="rate_limited")


def check_queue_limit(store: JobStore, settings: Settings, owner: str) -> None:
    """Early check (before an upload is streamed); `enqueue` enforces the limit again atomically."""
    queued = store.queued_count(owner)
    if queued >= settings.max_queued_jobs_per_key:
        raise _too_many(settings, queued)


def check_webhook(fields: WebhookFields, settings: Settings, field: str = "webhook") -> None:
    """422 `webhook_refused` naming `field` when the webhook URL leads where webhooks may not go (the
    deliverer checks again at each attempt: DNS may change)."""
    if fields.webhook is not None:
        resolve(fields.webhook, settings.webhook_allow_private, field)


def usable_customization(customization_id: str, owner: str, store: JobStore) -> CustomizationRecord:
    """The caller's customization a new job samples (404 otherwise); 409 when it failed or was canceled (a
    queued or training one is waited for by the job)."""
    customization = owned_customization(customization_id, owner, store)
    if customization.status in ("failed", "canceled"):
        raise CustomizationFailed(f"customization {customization_id!r} is {customization.status}; it cannot be used",
                                  field="customization_id")
    return customization


def enqueue(store: JobStore, celery: Celery, settings: Settings, job: JobRecord,
            customization: CustomizationRecord | None = None, webhook: WebhookFields | None = None,
            hooks: WebhookStore | None = None, needs: Sequence[tuple[str, str]] = ()) -> None:
    """Store the job (queued) first, then send the task: the worker always finds the record. A webhook is
    registered before the job exists, so that no event of it can be missed (one never created is dropped).
    `needs`: the records the job reads, checked as it is created (`JobStore.create_job`)."""
    queue = settings.queue_for(job.kind)
    with tracing.span(f"enqueue {job.kind}", trace.SpanKind.PRODUCER,
                      {"stillmoving.job_id": job.id, "messaging.destination.name": queue}):
        # what the job's runs log and trace under: this request's id and this span (common.tracing)
        job.request_id, job.trace = logs.current("request_id"), tracing.carrier() or None
        logs.bind(job_id=job.id)
        _create_and_send(store, celery, settings, job, queue, customization, webhook, hooks, needs)


def _create_and_send(store: JobStore, celery: Celery, settings: Settings, job: JobRecord, queue: str,
                     customization: CustomizationRecord | None, webhook: WebhookFields | None,
                     hooks: WebhookStore | None, needs: Sequence[tuple[str, str]]) -> None:
    if webhook is not None and webhook.webhook is not None and hooks is not None:
        hooks.register(job.id, job.owner, webhook.webhook, list(webhook.webhook_events_filter))
    if not store.create_job(job, queue, customization, limit=settings.max_queued_jobs_per_key, needs=needs):
        raise _too_many(settings, store.queued_count(job.owner))
    try:
        celery.send_task(TASK_FOR_KIND[job.kind], args=[job.id], queue=queue, task_id=job.id,
                         headers=task_headers(job))
    except Exception as exc:  # broker down: do not leave a queued job that nobody will run
        log.warning("could not send task for %s: %s", job.id, type(exc).__name__)
        store.finish(job.id, "failed", ["queued"],  # its customization too
                     error=ErrorInfo(code="unavailable", message="the queue was unreachable"))
        raise ServiceUnavailable("the job queue is unreachable; retry later") from exc


def accepted(body: JobAccepted) -> JSONResponse:
    return JSONResponse(body.model_dump(exclude_none=True), status_code=202,
                        headers={"Location": f"/jobs/{body.job_id}"})

