"""Fair dispatch between keys (`JobStore.next_fair`): one key's backlog delays another key's job by at most
one of its jobs; positions are among the caller's own jobs. On a real Redis, then through the real worker."""

from __future__ import annotations

import time

import pytest

from common.jobstore import JobStore, now
from common.schemas import JobRecord
from tests.service.helpers import wait_job


def queued(store: JobStore, queue: str, owner: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        job = JobRecord(id=f"job_fair_{owner}_{i}_{time.time_ns()}", kind="generate", owner=owner, created_at=now(),
                        params={"prompt": "x"})
        assert store.create_job(job, queue)
        ids.append(job.id)
    return ids


def take(store: JobStore, queue: str) -> str | None:
    """What a worker does with a turn: pick, then start (queued -> running)."""
    job_id = store.next_fair(queue)
    if job_id is not None:
        assert store.transition(job_id, ["queued"], attempt=0, status="running", attempts=1)
    return job_id


def test_round_robin_between_keys_and_own_positions(settings):
    store, queue = JobStore(settings.redis_url), f"fair-{time.time_ns()}"
    a = queued(store, queue, "A", 10)
    b = queued(store, queue, "B", 1)
    assert [store.queue_position(j) for j in a] == list(range(1, 11))  # among A's own jobs
    assert store.queue_position(b[0]) == 1  # A's backlog is not B's business
    order = [take(store, queue) for _ in range(3)]
    assert b[0] in order[:2], order  # B starts after at most one of A's
    c = queued(store, queue, "C", 2)  # a key arriving later gets the next turn, then the keys alternate
    assert take(store, queue) == c[0]
    rest = [take(store, queue) for _ in range(9)]
    assert rest[:2] == [a[2], c[1]] or rest[:2] == [c[1], a[2]], rest
    assert sorted(order + [c[0]] + rest) == sorted(a + b + c) and take(store, queue) is None
    assert store.queue_position(a[-1]) is None  # not queued any more


def test_waiting_and_canceled_jobs_are_skipped(settings):
    store, queue = JobStore(settings.redis_url), f"fair-{time.time_ns()}"
    first, second = queued(store, queue, "A", 2)
    store.defer(first, 60)  # waits for its customization
    assert take(store, queue) == second
    assert store.next_fair(queue) is None and store.queued_depth(queue) == 1  # queued, not startable yet
    store.defer(first, -1)
    assert store.next_fair(queue) == first
    assert store.transition(first, ["queued"], status="canceled")
    assert store.next_fair(queue) is None and store.queued_depth(queue) == 0


@pytest.mark.slow
def test_a_backlog_of_one_key_does_not_starve_another(client, auth_a, auth_b, worker):
    quick = {"prompt": "x", "num_frames": 2, "height": 32, "width": 32, "steps": 1}
    backlog = [client.post("/generate", headers=auth_a, json={**quick, "seed": i}).json()["job_id"] for i in range(10)]
    other = client.post("/generate", headers=auth_b, json=quick).json()["job_id"]
    assert client.get(f"/jobs/{other}", headers=auth_b).json()["queue_position"] in (None, 1)
    jobs = {j: wait_job(client, auth_a if j != other else auth_b, j, timeout=180) for j in backlog + [other]}
    assert all(job["status"] == "succeeded" for job in jobs.values()), jobs
    started = sorted(jobs, key=lambda j: jobs[j]["started_at"])
    assert started.index(other) <= 1, [jobs[j]["started_at"] for j in started]
