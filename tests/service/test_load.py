"""200 concurrent ``POST /generate`` against a real uvicorn API process, the session's Celery worker, Redis
and S3: each request is accepted or told 429, no accepted job is lost or duplicated, each one finishes,
the job list is exactly what was accepted, and the per-key queue limit holds throughout the burst.

The API process gets its own key with a small queue limit, which bounds the work the one-process worker
has to do (a few tiny-preset videos) however many requests arrive.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timezone

import httpx
import pytest

from api.auth import owner_of
from common.jobstore import JobStore
from scripts.processes import free_port, stop_group
from tests.service.helpers import TERMINAL, assert_error
from tests.service.processes import start_api

pytestmark = pytest.mark.slow

LOAD_KEY = "load-key"
AUTH = {"Authorization": f"Bearer {LOAD_KEY}"}
REQUESTS = 200
LIMIT = 6  # queued jobs per key: the burst is accepted up to this, plus whatever the worker starts meanwhile
GEN = {"prompt": "a dog", "num_frames": 4, "height": 32, "width": 32, "steps": 1, "fps": 4}
FINISH_TIMEOUT_S = 75


@pytest.fixture(scope="module")
def load_api(settings, worker, tmp_path_factory):
    """A uvicorn API process on loopback, same servers and queues as the session worker, its own key."""
    conf = settings.model_copy(update={"api_host": "127.0.0.1", "api_port": free_port(), "api_keys": [LOAD_KEY],
                                       "max_queued_jobs_per_key": LIMIT})
    proc = start_api(conf, tmp_path_factory.mktemp("load-api") / "api.log")
    try:
        yield f"http://{conf.api_host}:{conf.api_port}"
    finally:
        stop_group(proc)


class PeakQueued(threading.Thread):
    """Samples the key's queued-job count in Redis while the burst runs; `peak` is the highest seen."""

    def __init__(self, store: JobStore, owner: str):
        super().__init__(daemon=True)
        self.store, self.owner, self.peak, self.samples = store, owner, 0, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.store.queued_count(self.owner))
            self.samples += 1
            time.sleep(0.002)


async def burst(url: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post("/generate", json={**GEN, "seed": i}) for i in range(REQUESTS)))


def wait_all(client: httpx.Client, job_ids: list[str]) -> dict[str, dict]:
    """Every job's view once all are terminal; fails naming the stragglers after FINISH_TIMEOUT_S."""
    deadline, jobs = time.monotonic() + FINISH_TIMEOUT_S, {}
    while True:
        for job_id in job_ids:
            if job_id not in jobs or jobs[job_id]["status"] not in TERMINAL:
                response = client.get(f"/jobs/{job_id}")
                assert response.status_code == 200, response.text  # visible from the moment it was accepted
                jobs[job_id] = response.json()
        pending = {j: v["status"] for j, v in jobs.items() if v["status"] not in TERMINAL}
        if not pending:
            return jobs
        assert time.monotonic() < deadline, f"not terminal after {FINISH_TIMEOUT_S}s: {pending}"
        time.sleep(0.25)


def listed_job_ids(client: httpx.Client) -> list[str]:
    ids, cursor = [], None
    while True:
        page = client.get("/jobs", params={"limit": 100, **({"cursor": cursor} if cursor else {})}).json()
        ids += [item["id"] for item in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            return ids


def test_200_concurrent_generations_none_lost(load_api, settings):
    store = JobStore(settings.redis_url)
    owner = owner_of(LOAD_KEY)
    assert store.queued_count(owner) == 0
    sampler = PeakQueued(store, owner)
    sampler.start()
    try:
        responses = asyncio.run(burst(load_api))
    finally:
        sampler.done.set()
        sampler.join()
    burst_end = datetime.now(timezone.utc)

    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {202, 429}, [r.text for r in responses if r.status_code not in (202, 429)]
    for refused in (r for r in responses if r.status_code == 429):
        assert f"limit {LIMIT}" in assert_error(refused, 429, "too_many_requests")["message"]
    accepted = [r.json()["job_id"] for r in responses if r.status_code == 202]
    assert len(set(accepted)) == len(accepted) >= LIMIT, statuses  # an empty queue takes LIMIT jobs at least
    assert sampler.samples > 10 and sampler.peak <= LIMIT, (sampler.peak, sampler.samples)

    with httpx.Client(base_url=load_api, headers=AUTH, timeout=30) as client:
        jobs = wait_all(client, accepted)
        listed = listed_job_ids(client)
    assert sorted(listed) == sorted(accepted)  # no job missing, none extra, none twice
    for job in jobs.values():
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        assert job["kind"] == "generate" and job["params"]["seed"] in range(REQUESTS), job
    # The limit held at every admission: beyond LIMIT, only as many were accepted as the worker had
    # taken off the queue (started) before the burst ended.
    started_in_burst = sum(datetime.fromisoformat(job["started_at"]) <= burst_end for job in jobs.values())
    assert len(accepted) <= LIMIT + started_in_burst, (len(accepted), started_in_burst)
    assert store.queued_count(owner) == 0
