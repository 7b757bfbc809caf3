"""A customize job and its customization change state together, in one script of the job store: start, finish,
cancel, the reaper's re-queue and its give-up, the API's broker-down path. On a real Redis, no worker (each
test's queue is its own, so nothing picks its jobs); the reaper's test has a Redis of its own."""

from __future__ import annotations

import time

import pytest

from common.errors import ServiceUnavailable
from common.jobstore import JobStore, now
from common.schemas import CustomizationRecord, JobRecord
from scripts.processes import start_redis, stop_group
from tests.conftest import free_port


def records() -> tuple[JobRecord, CustomizationRecord]:
    stamp = time.time_ns()
    customization = CustomizationRecord(id=f"cus_state_{stamp}", owner=f"state-{stamp}", job_id=f"job_state_{stamp}",
                                        base_model="tiny", checkpoint_sha256=f"{stamp:064x}",
                                        checkpoint_format="lora", config={}, created_at=now())
    job = JobRecord(id=customization.job_id, kind="customize", owner=customization.owner, created_at=now(),
                    customization_id=customization.id)
    return job, customization


def customize_job(store: JobStore, queue: str) -> tuple[JobRecord, CustomizationRecord]:
    job, customization = records()
    assert store.create_job(job, queue, customization)
    return job, customization


def start(store: JobStore, job_id: str, attempt: int = 0) -> None:
    """What the runner's `start` does: queued -> running, next attempt."""
    assert store.transition(job_id, ["queued"], attempt=attempt, status="running", attempts=attempt + 1,
                            started_at=now(), heartbeat_at=now())


def states(store: JobStore, job: JobRecord) -> tuple[str, str]:
    return store.get_job(job.id).status, store.get_customization(job.customization_id).status


@pytest.fixture
def store(settings):
    return JobStore(settings.redis_url, retention_s=3600)


@pytest.fixture
def own_store(tmp_path):
    port = free_port()
    proc = start_redis(port, tmp_path, appendonly=False)
    yield JobStore(f"redis://127.0.0.1:{port}/0", retention_s=3600)
    stop_group(proc)


@pytest.fixture
def queue():
    return f"state-{time.time_ns()}"


class Broker:
    """Celery's `send_task` as the reaper and `enqueue` call it: records the task ids, or fails when down."""

    def __init__(self, up: bool = True):
        self.up, self.sent = up, []

    def send_task(self, name: str, args: list, queue: str, task_id: str, headers: dict | None = None) -> None:
        if not self.up:
            raise ConnectionError("broker down")
        self.sent.append(task_id)


def test_start_and_success_move_the_customization_with_its_job(store, queue):
    job, _ = customize_job(store, queue)
    assert states(store, job) == ("queued", "queued")
    start(store, job.id)
    assert states(store, job) == ("running", "training")
    manifest = {"images": []}
    assert store.finish(job.id, "succeeded", attempt=1, result={"customization_id": job.customization_id},
                        customization={"manifest": manifest})
    record, customization = store.get_job(job.id), store.get_customization(job.customization_id)
    assert (record.status, record.stage, record.progress) == ("succeeded", "done", 1.0)
    assert customization.status == "ready" and customization.manifest == manifest
    assert customization.finished_at == record.finished_at and customization.error is None
    assert 0 < store.redis.ttl(store.job_key(job.id)) <= 3600  # the job's retention, not the customization's
    assert store.redis.ttl(store.customization_key(job.customization_id)) == -1
    assert job.id not in dict(store.running())


def test_a_finish_by_an_attempt_that_lost_the_job_writes_neither(store, queue):
    """Was: the runner marked the customization ready (with its manifest) before it knew the job was still its."""
    job, _ = customize_job(store, queue)
    start(store, job.id)
    assert store.requeue(job.id, 1)
    assert not store.finish(job.id, "succeeded", attempt=1, customization={"manifest": {"images": []}})
    assert states(store, job) == ("queued", "queued")
    assert store.get_customization(job.customization_id).manifest is None


def test_cancel_of_a_queued_customization_job_cancels_both_and_leaves_the_queue(store, queue):
    job, _ = customize_job(store, queue)
    assert store.queued_depth(queue) == 1 and store.queue_position(job.id) == 1
    canceled = store.cancel(job.id)
    assert canceled.status == "canceled" and canceled.cancel_requested and canceled.error.code == "canceled"
    customization = store.get_customization(job.customization_id)
    assert customization.status == "canceled" and customization.error == canceled.error
    assert customization.finished_at == canceled.finished_at is not None
    assert store.queued_depth(queue) == 0 and store.queue_position(job.id) is None
    assert store.next_fair(queue) is None and store.queued_count(job.owner) == 0
    assert store.cancel(job.id).status == "canceled"  # again: nothing changes


def test_cancel_of_a_running_job_asks_it_to_stop_and_of_an_ended_one_does_nothing(store, queue):
    job, _ = customize_job(store, queue)
    start(store, job.id)
    asked = store.cancel(job.id)
    assert asked.status == "running" and asked.cancel_requested
    assert states(store, job) == ("running", "training")  # it ends canceled when its worker stops
    assert store.finish(job.id, "canceled", attempt=1, error=asked.error)
    assert states(store, job) == ("canceled", "canceled")

    other, _ = customize_job(store, queue)
    start(store, other.id)
    assert store.finish(other.id, "failed", attempt=1)
    ended = store.cancel(other.id)
    assert ended.status == "failed" and not ended.cancel_requested  # a finished job is not flagged
    assert states(store, other) == ("failed", "failed")


def test_a_generation_leaves_the_customization_it_uses_alone(store, queue):
    job, _ = customize_job(store, queue)
    start(store, job.id)
    assert store.finish(job.id, "succeeded", attempt=1)
    generation = JobRecord(id=f"job_state_gen_{time.time_ns()}", kind="generate", owner=job.owner,
                           created_at=now(), customization_id=job.customization_id, params={"prompt": "x"})
    assert store.create_job(generation, queue)
    assert store.cancel(generation.id).status == "canceled"
    assert store.get_customization(job.customization_id).status == "ready"


def test_the_reapers_requeue_and_give_up_move_the_customization_too(settings, own_store, queue):
    from worker.reaper import Reaper

    store = own_store  # a reaper passes over every running job: other tests' must not be re-queued
    conf = settings.model_copy(update={"train_queue": queue, "heartbeat_timeout_s": 0.3, "max_attempts": 2})
    job, _ = customize_job(store, queue)
    start(store, job.id)
    time.sleep(0.5)
    with pytest.raises(ConnectionError):  # broker down: back to a dead running job, still training
        Reaper(store, Broker(up=False), conf).reap_once()
    assert states(store, job) == ("running", "training") and store.get_job(job.id).stage == "lost"

    broker = Broker()
    reaper = Reaper(store, broker, conf)
    time.sleep(0.5)  # put back with a fresh heartbeat: silent again after the timeout
    assert reaper.reap_once()[job.id] == "requeued" and broker.sent == [f"{job.id}.retry1"]
    record = store.get_job(job.id)
    assert (record.status, record.stage, record.attempts) == ("queued", "requeued", 1)
    assert store.get_customization(job.customization_id).status == "queued"
    assert store.queue_position(job.id) == 1

    start(store, job.id, attempt=1)
    assert states(store, job) == ("running", "training")
    time.sleep(0.5)
    assert reaper.reap_once()[job.id] == "worker_lost"
    customization = store.get_customization(job.customization_id)
    assert states(store, job) == ("failed", "failed") and customization.error.code == "worker_lost"
    assert customization.finished_at == store.get_job(job.id).finished_at
    statuses = [(e["status"], e.get("stage")) for e in store.job_log(job.id) if e["type"] == "status"]
    assert statuses == [("queued", None), ("running", None), ("queued", "requeued"), ("running", "lost"),
                        ("queued", "requeued"), ("running", None), ("failed", None)]
    log = [e["message"] for e in store.job_log(job.id) if e["type"] == "status"]  # the retries, and why
    assert "no heartbeat from attempt 1" in log[2] and "re-queue could not be sent" in log[3], log
    assert log[6].startswith("failed: worker_lost: ") and "on each of 2 attempts" in log[6], log


def test_a_customization_whose_task_could_not_be_sent_fails_with_its_job(settings, store, queue):
    """Was: the customization failed without an end time (the collector then gave its checkpoint no grace)."""
    from api.enqueue import enqueue

    job, customization = records()
    with pytest.raises(ServiceUnavailable):
        enqueue(store, Broker(up=False), settings.model_copy(update={"train_queue": queue}), job, customization)
    record, stored = store.get_job(job.id), store.get_customization(customization.id)
    assert record.status == stored.status == "failed" and stored.error == record.error
    assert record.error.code == "unavailable" and stored.finished_at == record.finished_at is not None
    assert store.queued_depth(queue) == 0
