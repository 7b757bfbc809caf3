"""Faults injected for real: a Celery worker SIGKILLed mid-training, jobs past their time limits,
a worker lost for good. Each test owns its redis-server and workers (the session's stay untouched).

Lease and reaper logic against a real Redis is checked without a worker (fast); the rest is slow.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from common.celery_config import make_celery
from common.jobstore import JobStore, now
from common.schemas import JobRecord
from tests.conftest import KEY_A, free_port, wait_until
from tests.service.helpers import TINY_CONFIG, upload, wait_job
from tests.service.processes import kill_group, start_redis, start_worker, stop_group

A = {"Authorization": f"Bearer {KEY_A}"}
# No Motion Adapter: its one-off training would dominate these tests' time; the spatial training is what resumes.
RESUMABLE = {**TINY_CONFIG, "train_steps": 60, "use_motion_adapter": False}


@pytest.fixture
def own_redis(tmp_path):
    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    proc = start_redis(port, data)
    yield f"redis://127.0.0.1:{port}/0"
    stop_group(proc)


def fault_settings(settings, redis_url: str, tmp_path, **update):
    return settings.model_copy(update={
        "redis_url": redis_url, "s3_bucket": "stillmoving-faults", "workdir": tmp_path / "worker",
        "heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 8.0, "reaper_interval_s": 1.0, "max_attempts": 2,
        "train_checkpoint_every": 5, **update})


# ---- lease and reaper on a real Redis, no worker ---------------------------------------------------
def running_job(store: JobStore, queue: str, attempts: int) -> JobRecord:
    job = JobRecord(id=f"job_reap_{time.time_ns()}", kind="generate", owner="reaper-test", created_at=now(),
                    params={"prompt": "x"})
    assert store.create_job(job, queue)
    for attempt in range(attempts):
        assert store.transition(job.id, ["queued"], attempt=attempt, status="running", started_at=now(),
                                attempts=attempt + 1, heartbeat_at=now())
        if attempt + 1 < attempts:
            assert store.transition(job.id, ["running"], attempt=attempt + 1, status="queued")
    return job


def test_reaper_requeues_a_silent_job_then_fails_it_after_the_retry_limit(settings):
    from worker.reaper import Reaper

    queue = f"reaper-{time.time_ns()}"
    conf = settings.model_copy(update={"generate_queue": queue, "heartbeat_timeout_s": 0.5, "max_attempts": 2})
    store, celery = JobStore(conf.redis_url), make_celery(conf)
    reaper = Reaper(store, celery, conf)
    job = running_job(store, queue, attempts=1)
    assert store.heartbeat(job.id, 1)  # the attempt that holds the job may beat
    assert job.id not in reaper.reap_once()  # fresh heartbeat: left alone
    time.sleep(0.7)
    assert reaper.reap_once()[job.id] == "requeued"
    record = store.get_job(job.id)
    assert record.status == "queued" and record.stage == "requeued" and store.queue_position(job.id) == 1
    assert store.redis.llen(queue) == 1  # a new task message for the job is in the broker
    assert not store.heartbeat(job.id, 1)  # the old attempt lost its lease: its worker will stop
    assert not store.transition(job.id, ["running"], attempt=1, status="succeeded")

    assert store.transition(job.id, ["queued"], attempt=1, status="running", attempts=2, started_at=now())
    time.sleep(0.7)
    assert reaper.reap_once()[job.id] == "worker_lost"
    record = store.get_job(job.id)
    assert record.status == "failed" and record.error.code == "worker_lost"
    assert "2 attempts" in record.error.message and "heartbeat" in record.error.message
    assert job.id not in dict(store.running())
    assert reaper.reap_once() == {} or job.id not in reaper.reap_once()


def test_reaper_fails_a_job_past_its_hard_time_limit(settings):
    from worker.reaper import Reaper

    queue = f"reaper-{time.time_ns()}"
    conf = settings.model_copy(update={"generate_queue": queue, "generate_time_limit_s": 60,
                                       "heartbeat_timeout_s": 5})
    store = JobStore(conf.redis_url)
    reaper = Reaper(store, make_celery(conf), conf)
    job = running_job(store, queue, attempts=1)
    store.update_job(job.id, started_at=now() - timedelta(seconds=62))
    assert store.heartbeat(job.id, 1)
    assert job.id not in reaper.reap_once()  # just past the limit and still beating: Celery's own kill comes first
    store.update_job(job.id, started_at=now() - timedelta(seconds=66))
    assert store.heartbeat(job.id, 1)
    assert reaper.reap_once()[job.id] == "timeout"  # a heartbeat timeout past the limit, even with a live heartbeat
    record = store.get_job(job.id)
    assert record.status == "failed" and record.error.code == "timeout" and "60 s" in record.error.message


def adapter_tensors(storage, customization_id: str) -> dict:
    """The stored Spatial Adapter's tensors (numpy: the test process never loads torch)."""
    from safetensors.numpy import load

    return load(storage.get_bytes(f"customizations/{customization_id}/spatial_adapter.safetensors"))


# ---- SIGKILL during training ----------------------------------------------------------------------
@pytest.mark.slow
def test_worker_killed_during_training_resumes_from_checkpoint_on_another_worker(settings, checkpoints, own_redis,
                                                                                  tmp_path):
    conf = fault_settings(settings, own_redis, tmp_path)
    with TestClient(create_app(conf)) as api:
        storage = api.app.state.storage
        body = upload(api, A, checkpoints["lora"], RESUMABLE).json()
        job_id, cus_id = body["job_id"], body["customization_id"]
        state = f"customizations/{cus_id}/train-state/"
        first = start_worker(conf.model_copy(update={"workdir": tmp_path / "w1"}), tmp_path / "w1.log", "first")
        try:
            wait_until(lambda: storage.exists(state + "latest.json"), 300, "a training checkpoint in storage",
                       interval=0.05)
            kill_group(first)  # SIGKILL: Celery parent and pool child, no cleanup
        finally:
            stop_group(first)
        job = api.get(f"/jobs/{job_id}", headers=A).json()
        assert job["status"] == "running" and job["attempts"] == 1, job  # nobody left to say otherwise

        second = start_worker(conf.model_copy(update={"workdir": tmp_path / "w2"}), tmp_path / "w2.log", "second")
        try:
            job = wait_job(api, A, job_id, timeout=300)
            assert job["status"] == "succeeded" and job["attempts"] == 2, job
            manifest = api.get(f"/customizations/{cus_id}", headers=A).json()["manifest"]
            resumed = manifest["resumed_from_step"]
            assert 0 < resumed < RESUMABLE["train_steps"] and resumed % conf.train_checkpoint_every == 0, resumed
            assert len(manifest["loss_curve"]) == RESUMABLE["train_steps"]
            assert storage.list_keys(state) == []  # the resume state is dropped once the artifact is stored
            assert f"resumes training from step {resumed}" in second.log_path.read_text()

            # the same customization without a fault gives the same adapter weights, bit for bit
            again = upload(api, A, checkpoints["lora"], RESUMABLE).json()
            clean = wait_job(api, A, again["job_id"], timeout=300)
            assert clean["status"] == "succeeded" and clean["attempts"] == 1, clean
            reference = api.get(f"/customizations/{again['customization_id']}", headers=A).json()["manifest"]
            assert reference["resumed_from_step"] == 0
            assert reference["loss_curve"] == manifest["loss_curve"]
            resumed_weights = adapter_tensors(storage, cus_id)
            reference_weights = adapter_tensors(storage, again["customization_id"])
            assert resumed_weights.keys() == reference_weights.keys() and resumed_weights
            for name, tensor in reference_weights.items():
                assert (tensor == resumed_weights[name]).all(), name
        finally:
            stop_group(second)


# ---- time limits ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_jobs_over_their_soft_or_hard_time_limit_fail_with_timeout(settings, checkpoints, own_redis, tmp_path):
    """Training: soft limit (SoftTimeLimitExceeded inside the task). Generation: hard limit, enforced by the
    reaper from the record's started_at (billiard arms Celery's own hard kill only after the soft limit, here
    500 s): the job fails with `timeout`, is not retried, loses its lease, and its worker stops and is free."""
    conf = fault_settings(settings, own_redis, tmp_path, train_soft_time_limit_s=6, train_time_limit_s=600,
                          generate_soft_time_limit_s=500, generate_time_limit_s=6)
    worker = start_worker(conf, tmp_path / "limits.log", "limits")
    try:
        with TestClient(create_app(conf)) as api:
            train = upload(api, A, checkpoints["lora"], {**RESUMABLE, "train_steps": 20000}).json()
            job = wait_job(api, A, train["job_id"], timeout=240)
            assert job["status"] == "failed" and job["error"]["code"] == "timeout", job
            assert api.get(f"/customizations/{train['customization_id']}", headers=A).json()["status"] == "failed"

            video = api.post("/generate", headers=A, json={"prompt": "a long one", "num_frames": 32, "height": 128,
                                                           "width": 128, "steps": 150}).json()
            job = wait_job(api, A, video["job_id"], timeout=240)
            assert job["status"] == "failed" and job["error"]["code"] == "timeout", job
            assert job["attempts"] == 1

            quick = api.post("/generate", headers=A, json={"prompt": "x", "num_frames": 2, "height": 32, "width": 32,
                                                           "steps": 1}).json()
            assert wait_job(api, A, quick["job_id"], timeout=240)["status"] == "succeeded"  # the worker is free
    finally:
        stop_group(worker)


# ---- Redis and storage outages --------------------------------------------------------------------
def test_redis_restart_503_then_recovers_and_queued_jobs_survive(settings, tmp_path):
    """SIGKILL the API's redis-server (AOF on, as in compose): 503 + Retry-After, never 500; once a
    redis-server is back on the same port and data dir, the API recovers by itself, queued jobs intact."""
    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    proc = start_redis(port, data, appendonly=True)
    conf = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0", "train_queue": "outage-train",
                                       "generate_queue": "outage-generate"})
    gen = {"prompt": "x", "num_frames": 2, "height": 32, "width": 32, "steps": 1}
    try:
        with TestClient(create_app(conf)) as api:
            job_id = api.post("/generate", headers=A, json=gen).json()["job_id"]
            time.sleep(1.5)  # appendfsync everysec
            kill_group(proc)
            for response in (api.get(f"/jobs/{job_id}", headers=A), api.post("/generate", headers=A, json=gen),
                             api.get("/jobs", headers=A), api.get("/readyz")):
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "unavailable" and int(response.headers["Retry-After"]) > 0
            proc = start_redis(port, data, appendonly=True)
            job = wait_until(lambda: api.get(f"/jobs/{job_id}", headers=A).json(), 30, "the API to recover")
            assert job["status"] == "queued" and job["queue_position"] == 1, job
            assert api.get("/readyz").status_code == 200
            again = api.post("/generate", headers=A, json=gen)
            assert again.status_code == 202, again.text
            assert api.get(f"/jobs/{again.json()['job_id']}", headers=A).json()["queue_position"] == 2
    finally:
        stop_group(proc)


def test_storage_down_upload_is_503_and_nothing_is_queued(settings, checkpoints, tmp_path):
    from tests.service.processes import start_moto

    port = free_port()
    moto = start_moto(port, tmp_path / "moto.log")
    conf = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{port}", "train_queue": "outage-train"})
    try:
        with TestClient(create_app(conf)) as api:
            newest = [j["id"] for j in api.get("/jobs?limit=5", headers=A).json()["items"]]
            kill_group(moto)
            response = upload(api, A, checkpoints["lora"])
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "unavailable" and int(response.headers["Retry-After"]) > 0
            assert api.get("/readyz").status_code == 503
            assert [j["id"] for j in api.get("/jobs?limit=5", headers=A).json()["items"]] == newest  # nothing queued
            moto = start_moto(port, tmp_path / "moto.log")  # back (empty, as moto is in-memory: recreate the bucket)
            api.app.state.storage.ensure_bucket()
            assert upload(api, A, checkpoints["lora"]).status_code == 202
    finally:
        stop_group(moto)
