"""``GET /metrics``: Prometheus' text format. This process's request metrics (`api.telemetry`) and, read from
Redis at each scrape, the service's: queues, jobs by status, job counters and time histograms, webhook
deliveries (`common.job_metrics`: exact, and the same from every API process).

No API key: Prometheus scrapes with none. When ``metrics_token`` is set it needs ``Authorization: Bearer
<token>`` instead (Prometheus' ``authorization`` setting); unset, it is open, and the proxy in front
(`deploy/nginx`) answers it 404 so only the private network that Prometheus scrapes on reaches it.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Iterator, get_args

from fastapi import APIRouter, Header, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from api.auth import owner_of
from common import job_metrics
from common.errors import Unauthorized
from common.schemas import TERMINAL, WebhookEventType
from common.webhooks import DUE_KEY

router = APIRouter(tags=["metrics"])
REAPER_ACTIONS = ("requeued", "canceled", "timeout", "worker_lost")
WEBHOOK_EVENTS, WEBHOOK_OUTCOMES = get_args(WebhookEventType), ("delivered", "failed", "given_up")
log = logging.getLogger("stillmoving.api")


class ServiceCollector(Collector):
    """The Redis-side metrics of `app` (its job store and settings), read when scraped."""

    def __init__(self, app):
        self.app = app

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("stillmoving_store_up", "1 when the job store (Redis) answered this scrape")
        state = getattr(self.app.state, "store", None)
        try:
            if state is None:
                raise RuntimeError("not started")
            settings = self.app.state.settings
            snap = job_metrics.read(state, (settings.train_queue, settings.generate_queue),
                                    [owner_of(k) for k in settings.api_keys], DUE_KEY)
        except Exception as exc:  # Redis down: the request metrics are still served
            log.warning("metrics: the job store could not be read (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _families(snap)


def _family(kind, name: str, doc: str, labels: list[str], values: dict) -> Metric:
    """A gauge, counter or histogram family of `values` ({label value or tuple of them: value or Histogram})."""
    family = kind(name, doc, labels=labels)
    for key, value in values.items():
        names = list(key) if isinstance(key, tuple) else [key]
        if isinstance(value, job_metrics.Histogram):
            family.add_metric(names, value.cumulative(), value.total)
        else:
            family.add_metric(names, value)
    return family


def _families(snap: job_metrics.Snapshot) -> Iterator[Metric]:
    kinds, c = job_metrics.KINDS, snap.counter
    gauge, counter, histogram = GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily
    yield _family(gauge, "stillmoving_queue_depth", "Queued jobs of each queue (startable or waiting for their "
                  "customization)", ["queue"], snap.queued)
    yield _family(gauge, "stillmoving_queue_messages", "Celery messages waiting in each queue's broker list (one "
                  "per queued job or re-queue; what a queue-length autoscaler reads)", ["queue"], snap.messages)
    yield _family(gauge, "stillmoving_queue_tenant_depth", "Queued jobs of each key (its tenant id, a hash) in "
                  "each queue", ["queue", "owner"], snap.tenants)
    yield _family(gauge, "stillmoving_jobs", "Job records by kind and status (finished ones until they expire)",
                  ["kind", "status"], snap.jobs)
    yield _family(counter, "stillmoving_jobs_created", "Jobs created", ["kind"], {k: c("created", k) for k in kinds})
    yield _family(counter, "stillmoving_job_runs_started", "Runs started (a job's attempts)", ["kind"],
                  {k: c("started", k) for k in kinds})
    yield _family(counter, "stillmoving_jobs_finished", "Jobs ended, by how", ["kind", "status"],
                  {(k, s): c("finished", k, s) for k in kinds for s in TERMINAL})
    yield _family(counter, "stillmoving_job_retries", "Running jobs put back in their queue for another attempt",
                  ["kind"], {k: c("retries", k) for k in kinds})
    yield _family(counter, "stillmoving_reaper_actions", "What the reapers did to running jobs: re-queued (silent "
                  "worker), canceled, failed (timeout, worker_lost)", ["kind", "action"],
                  {(k, a): c("reaped", k, a) for k in kinds for a in REAPER_ACTIONS})
    yield _family(histogram, "stillmoving_job_run_seconds", "A run's start to its job's end, by how it ended",
                  ["kind", "status"], snap.run_s)
    yield _family(histogram, "stillmoving_job_queue_wait_seconds", "A job entering its queue (created or "
                  "re-queued) to a run's start", ["kind"], snap.wait_s)
    yield _family(counter, "stillmoving_webhook_deliveries", "Webhook delivery attempts, by event and outcome "
                  "(failed: retried later; given_up: past the retry window)", ["event", "outcome"],
                  {(e, o): c("webhook", e, o) for e in WEBHOOK_EVENTS for o in WEBHOOK_OUTCOMES})
    yield _family(gauge, "stillmoving_webhooks_pending", "Jobs with webhook deliveries still to make", [],
                  {(): snap.webhooks_pending})


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
    token = request.app.state.settings.metrics_token
    if token is not None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized("GET /metrics needs 'Authorization: Bearer <metrics token>'")
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
