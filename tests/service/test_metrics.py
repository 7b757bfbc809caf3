"""``GET /metrics`` against real servers: request counts by route template and status, and the service's numbers
read from Redis (queues, jobs by status, job counters and time histograms, reaper actions, webhook deliveries)
following what really happened: jobs created through the API, started, finished, canceled, re-queued by a real
reaper, deleted, expired; then one job run by the session's real worker.

Most tests use their own Redis database and queues (no worker takes their jobs, so each change is the test's);
the last uses the session's worker.
"""

from __future__ import annotations

import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.auth import owner_of
from common import job_metrics
from common.jobstore import JobStore, now
from common.schemas import JobRecord
from common.webhooks import DUE_KEY, WebhookStore
from tests.conftest import KEY_A, KEY_B
from tests.service.helpers import wait_job

A, B = {"Authorization": f"Bearer {KEY_A}"}, {"Authorization": f"Bearer {KEY_B}"}
QUICK = {"prompt": "x", "num_frames": 2, "height": 32, "width": 32, "steps": 1, "format": "gif"}


def scrape(api) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics scrape: {(sample name, labels): value}."""
    response = api.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """A sample's value; 0 for a series not there (a counter nobody incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def conf(settings, tmp_path_factory):
    base, _, _ = settings.redis_url.rpartition("/")
    redis.Redis.from_url(f"{base}/5").flushdb()
    return settings.model_copy(update={
        "redis_url": f"{base}/5", "train_queue": "metrics-train", "generate_queue": "metrics-generate",
        "heartbeat_timeout_s": 0.2, "webhook_allow_private": True, "webhook_retry_window_s": 2.0,
        "webhook_backoff_s": 0.1})


@pytest.fixture(scope="module")
def api(conf):
    with TestClient(create_app(conf)) as test_client:
        yield test_client


def test_requests_are_counted_by_route_template_and_status_with_a_request_id(api):
    for _ in range(3):
        assert api.get("/limits", headers=A).status_code == 200
    for job_id in ("job_nope1", "job_nope2"):
        response = api.get(f"/jobs/{job_id}", headers=A)
        assert response.status_code == 404
    assert api.get("/jobs").status_code == 401  # refused by the guard before any route runs: still its template
    assert api.get("/no/such/path", headers=A).status_code == 404
    samples = scrape(api)
    counts = {dict(labels)["route"] + " " + dict(labels)["status"]: v for (name, labels), v in samples.items()
              if name == "stillmoving_http_requests_total"}
    assert counts == {"/limits 200": 3, "/jobs/{job_id} 404": 2, "/jobs 401": 1, "unmatched 404": 1}, counts
    assert value(samples, "stillmoving_http_request_duration_seconds_count", method="GET", route="/limits",
                 status="200") == 3
    assert value(samples, "stillmoving_store_up") == 1
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)

    given = api.get("/limits", headers={**A, "X-Request-ID": "client-chosen.id-1"})
    assert given.headers["x-request-id"] == "client-chosen.id-1"
    made = api.get("/limits", headers=A).headers["x-request-id"]
    replaced = api.get("/limits", headers={**A, "X-Request-ID": "not ok" + "x" * 200}).headers["x-request-id"]
    assert len(made) == len(replaced) == 32 and made != replaced and int(made, 16) >= 0


def test_the_metrics_token_when_set_is_the_only_way_in(conf):
    with TestClient(create_app(conf.model_copy(update={"metrics_token": "scrape-secret"}))) as locked:
        refused = locked.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert locked.get("/metrics", headers=A).status_code == 401  # an API key is not the metrics token
        assert locked.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).status_code == 200


def job_counts(api) -> dict[tuple[str, str], int]:
    """(kind, status) -> the records both keys list (what `stillmoving_jobs` must equal)."""
    counts: dict[tuple[str, str], int] = {}
    for auth in (A, B):
        for job in api.get("/jobs?limit=100", headers=auth).json()["items"]:
            counts[(job["kind"], job["status"])] = counts.get((job["kind"], job["status"]), 0) + 1
    return counts


def assert_jobs_gauge_matches_records(api, samples) -> None:
    gauge = {(dict(labels)["kind"], dict(labels)["status"]): int(v) for (name, labels), v in samples.items()
             if name == "stillmoving_jobs" and v}
    assert gauge == job_counts(api), (gauge, job_counts(api))


def test_queue_and_job_metrics_follow_the_records(api, conf):
    from worker.reaper import Reaper

    store: JobStore = api.app.state.store
    queue = conf.generate_queue
    created = time.monotonic()
    ids = [api.post("/generate", headers=auth, json=QUICK).json()["job_id"] for auth in (A, A, B)]
    samples = scrape(api)
    assert value(samples, "stillmoving_queue_depth", queue=queue) == 3
    assert value(samples, "stillmoving_queue_messages", queue=queue) == 3  # Celery's broker list: nobody consumes
    assert value(samples, "stillmoving_queue_tenant_depth", queue=queue, owner=owner_of(KEY_A)) == 2
    assert value(samples, "stillmoving_queue_tenant_depth", queue=queue, owner=owner_of(KEY_B)) == 1
    assert value(samples, "stillmoving_jobs_created_total", kind="generate") == 3
    assert_jobs_gauge_matches_records(api, samples)

    # what a worker does: start the first (queued -> running), run 0.3 s, succeed
    time.sleep(0.2)
    assert store.transition(ids[0], ["queued"], attempt=0, status="running", attempts=1, started_at=now())
    waited = time.monotonic() - created
    time.sleep(0.3)
    assert store.finish(ids[0], "succeeded", attempt=1, result={})
    samples = scrape(api)
    assert value(samples, "stillmoving_job_runs_started_total", kind="generate") == 1
    assert value(samples, "stillmoving_job_queue_wait_seconds_count", kind="generate") == 1
    assert 0.2 <= value(samples, "stillmoving_job_queue_wait_seconds_sum", kind="generate") <= waited + 0.1
    assert value(samples, "stillmoving_jobs_finished_total", kind="generate", status="succeeded") == 1
    assert value(samples, "stillmoving_job_run_seconds_count", kind="generate", status="succeeded") == 1
    assert 0.3 <= value(samples, "stillmoving_job_run_seconds_sum", kind="generate", status="succeeded") < 3
    assert value(samples, "stillmoving_job_run_seconds_bucket", kind="generate", status="succeeded", le="1.0") == 1
    assert value(samples, "stillmoving_queue_depth", queue=queue) == 2
    assert_jobs_gauge_matches_records(api, samples)

    # a queued job canceled: ended without a run (no run time); a running one whose worker fell silent: the
    # reaper re-queues it (a retry, a new broker message)
    assert api.post(f"/jobs/{ids[1]}/cancel", headers=A).status_code == 200
    assert store.transition(ids[2], ["queued"], attempt=0, status="running", attempts=1, started_at=now())
    time.sleep(conf.heartbeat_timeout_s + 0.1)
    assert Reaper(store, api.app.state.celery, conf).reap_once() == {ids[2]: "requeued"}
    samples = scrape(api)
    assert value(samples, "stillmoving_jobs_finished_total", kind="generate", status="canceled") == 1
    assert value(samples, "stillmoving_job_run_seconds_count", kind="generate", status="canceled") == 0
    assert value(samples, "stillmoving_job_retries_total", kind="generate") == 1
    assert value(samples, "stillmoving_reaper_actions_total", kind="generate", action="requeued") == 1
    assert value(samples, "stillmoving_job_runs_started_total", kind="generate") == 2
    assert value(samples, "stillmoving_queue_messages", queue=queue) == 4
    assert value(samples, "stillmoving_queue_tenant_depth", queue=queue, owner=owner_of(KEY_B)) == 1
    assert_jobs_gauge_matches_records(api, samples)

    # a deleted record leaves the status count; what happened stays counted
    assert api.delete(f"/jobs/{ids[0]}", headers=A).status_code == 204
    samples = scrape(api)
    assert value(samples, "stillmoving_jobs", kind="generate", status="succeeded") == 0
    assert value(samples, "stillmoving_jobs_finished_total", kind="generate", status="succeeded") == 1
    assert_jobs_gauge_matches_records(api, samples)


def test_a_finished_record_leaves_the_count_when_it_expires(conf):
    store = JobStore(conf.redis_url, retention_s=1)
    job = JobRecord(id=f"job_expiry_{time.time_ns()}", kind="customize", owner="expiry-test", created_at=now())
    assert store.create_job(job, "expiry-queue")
    assert store.finish(job.id, "canceled", ["queued"])

    def canceled() -> int:
        return job_metrics.read(store, [], [], DUE_KEY).jobs[("customize", "canceled")]

    assert canceled() == 1
    time.sleep(1.1)
    assert store.get_job(job.id) is None  # Redis expired the record ...
    assert canceled() == 0  # ... and the count with it


class Receiver:
    """A webhook receiver on loopback: ``/ok`` answers 200, ``/fail`` 500."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200 if self.path == "/ok" else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        Thread(target=self.server.serve_forever, daemon=True).start()


def test_webhook_deliveries_are_counted_by_event_and_outcome(api, conf):
    from worker.webhooks import Deliverer

    receiver = Receiver()
    try:
        ok, failing = (api.post("/generate", headers=A, json={**QUICK, "webhook": receiver.url + path}).json()["job_id"]
                       for path in ("/ok", "/fail"))
        assert value(scrape(api), "stillmoving_webhooks_pending") == 2
        for job_id in (ok, failing):
            assert api.post(f"/jobs/{job_id}/cancel", headers=A).status_code == 200  # the completed event
        deliverer = Deliverer(api.app.state.store, api.app.state.storage, conf)
        hooks: WebhookStore = deliverer.hooks
        for job_id in (ok, failing, failing):  # the failing one: a failed attempt, then (past the window) given up
            if job_id == failing:
                time.sleep(conf.webhook_retry_window_s if hooks.state(failing).get("failing_since") else 0)
            assert hooks.take_lease(job_id, "t", 5)
            deliverer.deliver(job_id, "t")
            hooks.release_lease(job_id, "t")
        samples = scrape(api)
        outcomes = {o: value(samples, "stillmoving_webhook_deliveries_total", event="completed", outcome=o)
                    for o in ("delivered", "failed", "given_up")}
        assert outcomes == {"delivered": 1, "failed": 1, "given_up": 1}, outcomes
        assert [a["delivered"] for a in api.get(f"/jobs/{failing}/webhooks", headers=A).json()["items"]] == \
            [False, False]
        assert value(samples, "stillmoving_webhooks_pending") == 0
    finally:
        receiver.server.shutdown()


@pytest.mark.slow
def test_a_job_run_by_the_worker_moves_the_gauges_and_its_times_match_its_record(client, auth_a, worker, settings):
    """The session's worker runs a generation: created, started, succeeded counted once each, its run time and
    queue wait observed as its record says (to the Redis clock's few milliseconds)."""
    store = JobStore.from_settings(settings)

    def busy() -> int:
        snap = job_metrics.read(store, [], [], DUE_KEY)
        return sum(n for (_, status), n in snap.jobs.items() if status in ("queued", "running"))

    deadline = time.monotonic() + 120
    while busy() and time.monotonic() < deadline:  # other tests' jobs done: what changes now is this job's
        time.sleep(0.2)
    before = scrape(client)
    job_id = client.post("/generate", headers=auth_a, json=QUICK).json()["job_id"]
    job = wait_job(client, auth_a, job_id, timeout=120)
    assert job["status"] == "succeeded", job
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("stillmoving_jobs_created_total", kind="generate") == 1
    assert delta("stillmoving_job_runs_started_total", kind="generate") == 1
    assert delta("stillmoving_jobs_finished_total", kind="generate", status="succeeded") == 1
    assert delta("stillmoving_jobs", kind="generate", status="succeeded") == 1
    assert delta("stillmoving_jobs", kind="generate", status="queued") == 0
    assert delta("stillmoving_jobs", kind="generate", status="running") == 0
    times = {k: datetime.fromisoformat(job[k]) for k in ("created_at", "started_at", "finished_at")}
    run_s = (times["finished_at"] - times["started_at"]).total_seconds()
    wait_s = (times["started_at"] - times["created_at"]).total_seconds()
    assert delta("stillmoving_job_run_seconds_count", kind="generate", status="succeeded") == 1
    assert abs(delta("stillmoving_job_run_seconds_sum", kind="generate", status="succeeded") - run_s) < 0.1
    assert delta("stillmoving_job_queue_wait_seconds_count", kind="generate") == 1
    assert abs(delta("stillmoving_job_queue_wait_seconds_sum", kind="generate") - wait_s) < 0.1
    assert delta("stillmoving_http_requests_total", method="POST", route="/generate", status="202") == 1
