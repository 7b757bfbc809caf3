"""Faults injected for real: a Celery worker SIGKILLed mid-training or mid-sampling, jobs past their time
limits, an engine that raises, a worker lost for good, Redis restarted under a live worker, storage killed,
restarted or frozen (SIGSTOP) under a running job. Each test owns its servers and workers (the session's stay
untouched).

The workers are real ones with the engine stand-in (`tests.service.engine_standin`): a job whose prompt says
``@hold=denoise @gate=go`` is held at that stage until the test opens the gate, so each fault lands exactly
where the test means it to, however loaded the machine; then the real engine finishes the job.

Lease, reaper and storage-retry logic against real servers is checked without a worker (fast); the rest is slow.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from common import exports
from common.celery_config import make_celery
from common.jobstore import JobStore, now
from common.schemas import JobRecord
from scripts.processes import free_port, in_group, kill_group, start_moto, start_redis, stop_group, wait_until
from tests.conftest import KEY_A
from tests.service.helpers import RESUMABLE, fault_settings, upload, wait_job, wait_stage, worker_pid
from tests.service.processes import Moto, StorageProxy, open_gate, start_standin, start_standins, start_worker

A = {"Authorization": f"Bearer {KEY_A}"}
# A generation held in its denoise stage until the test opens gate "go" (time to inject a fault), and a quick one.
HELD_VIDEO = {"prompt": "a held one @hold=denoise @gate=go", "num_frames": 8, "height": 32, "width": 32,
              "steps": 8, "seed": 5, "format": "gif"}
QUICK_VIDEO = {"prompt": "x", "num_frames": 2, "height": 32, "width": 32, "steps": 1}


@pytest.fixture
def own_moto(tmp_path):
    moto = Moto(free_port(), tmp_path / "moto.log")
    yield moto
    moto.stop()


def seconds(job: dict, since: str = "started_at", until: str = "finished_at") -> float:
    """Seconds between two of a job's timestamps (as the API gives them)."""
    return (datetime.fromisoformat(job[until]) - datetime.fromisoformat(job[since])).total_seconds()


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


def test_reaper_finalizes_a_canceled_job_whose_worker_went_quiet(settings):
    """The cancel was asked, then the worker died before its next step: the job ends canceled (was re-run)."""
    from worker.reaper import Reaper

    queue = f"reaper-{time.time_ns()}"
    conf = settings.model_copy(update={"generate_queue": queue, "heartbeat_timeout_s": 0.5, "max_attempts": 3})
    store = JobStore(conf.redis_url)
    job = running_job(store, queue, attempts=1)
    store.request_cancel(job.id)
    time.sleep(0.7)
    assert Reaper(store, make_celery(conf), conf).reap_once()[job.id] == "canceled"
    record = store.get_job(job.id)
    assert record.status == "canceled" and record.error.code == "canceled" and store.redis.llen(queue) == 0


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


def test_reaper_does_not_count_attempts_given_back_at_a_shutdown(settings):
    """Attempt 1 gave the job back when its worker shut down (SIGTERM); attempt 2's worker then died. With a
    limit of 2 attempts the job is re-queued once more, not failed: only one attempt was lost."""
    from worker.reaper import Reaper

    queue = f"reaper-{time.time_ns()}"
    conf = settings.model_copy(update={"generate_queue": queue, "heartbeat_timeout_s": 0.5, "max_attempts": 2})
    store = JobStore(conf.redis_url)
    reaper = Reaper(store, make_celery(conf), conf)
    job = running_job(store, queue, attempts=2)
    store.update_job(job.id, given_back=1)
    time.sleep(0.7)
    assert reaper.reap_once()[job.id] == "requeued"
    record = store.get_job(job.id)
    assert record.status == "queued" and record.attempts == 2 and record.given_back == 1
    assert store.transition(job.id, ["queued"], attempt=2, status="running", attempts=3, started_at=now())
    time.sleep(0.7)
    assert reaper.reap_once()[job.id] == "worker_lost"  # the second attempt lost: now the limit is reached
    assert "each of 2 attempts" in store.get_job(job.id).error.message


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
    """Two workers; the one training is SIGKILLed right after it saved its resume state at step 5 (held
    there). The other's reaper re-queues the job, it resumes at step 5 and ends with the same adapter
    weights, bit for bit, as the same customization run without a fault."""
    conf = fault_settings(settings, own_redis, tmp_path)
    config = {**RESUMABLE, "prompts": ["a photo of sks dog @hold=train:5 @gate=go"], "train_steps": 10}
    workers = start_standins(conf, tmp_path)
    try:
        with TestClient(create_app(conf)) as api:
            storage = api.app.state.storage
            body = upload(api, A, checkpoints["lora"], config).json()
            job_id, cus_id = body["job_id"], body["customization_id"]
            state = f"customizations/{cus_id}/train-state/"
            wait_stage(api, A, job_id, "train")
            wait_until(lambda: "holding at train 5/10" in "".join(w.log_path.read_text() for w in workers), 120,
                       "the training held after its step-5 resume state")
            assert storage.exists(state + "latest.json")
            holder = worker_pid(own_redis, job_id)
            victim, survivor = workers if in_group(workers[0], holder) else workers[::-1]
            kill_group(victim)  # SIGKILL: Celery parent and pool child, no cleanup
            job = api.get(f"/jobs/{job_id}", headers=A).json()
            assert job["status"] == "running" and job["attempts"] == 1, job  # until the survivor's reaper looks
            open_gate(tmp_path)

            job = wait_job(api, A, job_id, timeout=300)
            assert job["status"] == "succeeded" and job["attempts"] == 2, job
            assert in_group(survivor, worker_pid(own_redis, job_id))
            manifest = api.get(f"/customizations/{cus_id}", headers=A).json()["manifest"]
            resumed = manifest["resumed_from_step"]
            assert resumed == 5 and resumed % conf.train_checkpoint_every == 0, resumed
            assert len(manifest["loss_curve"]) == config["train_steps"]
            assert storage.list_keys(state) == []  # the resume state is dropped once the artifact is stored
            assert f"resumes training from step {resumed}" in survivor.log_path.read_text()

            # the same customization without a fault gives the same adapter weights, bit for bit
            again = upload(api, A, checkpoints["lora"], config).json()
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
        for worker in workers:
            stop_group(worker)


# ---- SIGKILL during sampling ----------------------------------------------------------------------
@pytest.mark.slow
def test_worker_killed_during_sampling_is_rerun_by_a_live_worker(settings, own_redis, tmp_path):
    """Two workers; the one sampling the video is SIGKILLed mid-denoise. The other's reaper sees the
    heartbeat stop, re-queues the job, and runs it again from the start to `succeeded`."""
    conf = fault_settings(settings, own_redis, tmp_path, heartbeat_timeout_s=3.0)
    workers = start_standins(conf, tmp_path)
    try:
        with TestClient(create_app(conf)) as api:
            job_id = api.post("/generate", headers=A, json=HELD_VIDEO).json()["job_id"]
            wait_stage(api, A, job_id, "denoise")
            holder = worker_pid(own_redis, job_id)
            victim, survivor = workers if in_group(workers[0], holder) else workers[::-1]
            assert in_group(victim, holder)
            kill_group(victim)
            killed_at = time.monotonic()
            assert api.get(f"/jobs/{job_id}", headers=A).json()["status"] == "running"  # until the reaper looks
            open_gate(tmp_path)  # the rerun samples the video for real

            job = wait_job(api, A, job_id, timeout=120)
            assert job["status"] == "succeeded" and job["attempts"] == 2, job
            assert time.monotonic() - killed_at > conf.heartbeat_timeout_s  # re-queued for the silence, not before
            assert in_group(survivor, worker_pid(own_redis, job_id))
            assert f"job {job_id}: no heartbeat" in survivor.log_path.read_text()
            assert job["result"]["seed"] == HELD_VIDEO["seed"] and job["result"]["num_frames"] == 8
            video = httpx.get(job["result"]["video_url"], timeout=30)
            assert video.status_code == 200 and video.content[:6] == b"GIF89a"
    finally:
        for worker in workers:
            stop_group(worker)


# ---- time limits and engine errors ----------------------------------------------------------------
@pytest.mark.slow
def test_jobs_over_their_soft_or_hard_time_limit_fail_with_timeout(settings, checkpoints, own_redis, tmp_path):
    """Training: soft limit (SoftTimeLimitExceeded inside the task). Generation: hard limit, enforced by the
    reaper from the record's started_at (billiard arms Celery's own hard kill only after the soft limit, here
    500 s): the job fails with `timeout`, is not retried, loses its lease, and its worker stops and is free.
    An engine that raises fails its job with `internal`, and the worker goes on.

    Each limited job is held by the engine stand-in (no gate: for ever) in a pool process that loaded the
    engine before (a first task's import of it could outlast the soft limit), so each limit lands inside
    the job's engine call however loaded the machine."""
    conf = fault_settings(settings, own_redis, tmp_path, train_soft_time_limit_s=4, train_time_limit_s=600,
                          generate_soft_time_limit_s=500, generate_time_limit_s=3, heartbeat_timeout_s=5.0)
    worker = start_standin(conf, tmp_path, "limits")
    try:
        with TestClient(create_app(conf)) as api:
            train = upload(api, A, checkpoints["lora"], {**RESUMABLE, "prompts": ["a long one @hold=load"]}).json()
            job = wait_job(api, A, train["job_id"], timeout=120)
            assert job["status"] == "failed" and job["error"]["code"] == "timeout", job
            # Celery's clock starts with the task, after the job was created and before the runner started it
            assert job["attempts"] == 1 and seconds(job, since="created_at") >= conf.train_soft_time_limit_s, job
            assert api.get(f"/customizations/{train['customization_id']}", headers=A).json()["status"] == "failed"

            video = api.post("/generate", headers=A, json={**QUICK_VIDEO, "prompt": "a long one @hold=denoise"})
            job = wait_job(api, A, video.json()["job_id"], timeout=120)
            assert job["status"] == "failed" and job["error"]["code"] == "timeout", job
            assert f"time limit of {conf.generate_time_limit_s} s" in job["error"]["message"], job
            assert job["attempts"] == 1 and seconds(job) >= conf.generate_time_limit_s, job
            lost = f"job {job['id']} attempt 1: no longer ours, stopping"
            wait_until(lambda: lost in worker.log_path.read_text(), 30, "the held job's worker to stop it")

            broken = api.post("/generate", headers=A, json={**QUICK_VIDEO, "prompt": "a bug @raise=denoise"})
            job = wait_job(api, A, broken.json()["job_id"], timeout=120)
            assert job["status"] == "failed" and job["error"]["code"] == "internal", job
            assert job["error"]["message"] == "internal error (RuntimeError)" and job["attempts"] == 1, job

            quick = api.post("/generate", headers=A, json=QUICK_VIDEO).json()
            assert wait_job(api, A, quick["job_id"], timeout=120)["status"] == "succeeded"  # the worker is free
            assert worker.poll() is None
    finally:
        stop_group(worker)


# ---- Redis and storage outages --------------------------------------------------------------------
@pytest.mark.slow
def test_redis_restart_503_then_recovers_and_queued_jobs_survive(settings, tmp_path):
    """SIGKILL the redis-server (AOF on, as in compose) under the API and a live worker busy with a job:
    503 + Retry-After, never 500; once a redis-server is back on the same port and data dir, the API
    recovers by itself, the running job goes on (same attempt), the job queued before the restart survives
    and runs, and the same worker process (not a new one) also runs a job submitted after the restart."""
    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    proc = start_redis(port, data, appendonly=True)
    conf = fault_settings(settings, f"redis://127.0.0.1:{port}/0", tmp_path)
    worker = start_standin(conf, tmp_path, "outage")
    gen = {**QUICK_VIDEO, "format": "gif"}
    try:
        with TestClient(create_app(conf)) as api:
            busy = api.post("/generate", headers=A, json=HELD_VIDEO).json()["job_id"]
            wait_stage(api, A, busy, "denoise")
            job_id = api.post("/generate", headers=A, json=gen).json()["job_id"]
            assert api.get(f"/jobs/{job_id}", headers=A).json()["queue_position"] == 1
            time.sleep(1.5)  # appendfsync everysec
            kill_group(proc)
            for response in (api.get(f"/jobs/{job_id}", headers=A), api.post("/generate", headers=A, json=gen),
                             api.get("/jobs", headers=A), api.get("/readyz")):
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "unavailable" and int(response.headers["Retry-After"]) > 0
            proc = start_redis(port, data, appendonly=True)
            job = wait_until(lambda: api.get(f"/jobs/{job_id}", headers=A).json(), 30, "the API to recover")
            assert job["status"] == "queued" and job["queue_position"] == 1, job  # the worker is still busy
            assert api.get("/readyz").status_code == 200
            again = api.post("/generate", headers=A, json=gen)
            assert again.status_code == 202, again.text
            assert api.get(f"/jobs/{again.json()['job_id']}", headers=A).json()["queue_position"] == 2
            open_gate(tmp_path)  # the busy job goes on

            for each in (busy, job_id, again.json()["job_id"]):
                done = wait_job(api, A, each, timeout=120)
                assert done["status"] == "succeeded" and done["attempts"] == 1, done
                assert in_group(worker, worker_pid(conf.redis_url, each))  # the same worker process ran each
            assert worker.poll() is None
    finally:
        stop_group(worker)
        stop_group(proc)


def test_storage_down_upload_is_503_and_nothing_is_queued(settings, checkpoints, tmp_path):
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


# ---- storage outages on the worker side -------------------------------------------------------------
def test_worker_storage_retries_with_backoff_then_names_the_failed_operation(settings, own_moto):
    """The worker's storage against a real server killed and restarted (no worker; the waits are recorded)."""
    from botocore.exceptions import ClientError

    from common.errors import StorageUnavailable
    from common.storage import RetryingStorage

    conf = settings.model_copy(update={"s3_endpoint_url": own_moto.url, "s3_bucket": "retry-test",
                                       "storage_retries": 3, "storage_backoff_s": 0.1, "storage_backoff_max_s": 0.25})
    waits: list[float] = []
    storage = RetryingStorage(conf, sleep=waits.append)
    storage.ensure_bucket()
    own_moto.kill()
    with pytest.raises(StorageUnavailable) as failure:
        storage.put_bytes(b"video", "videos/job_x/video.mp4")
    assert failure.value.code == "storage_unavailable" and failure.value.status == 503
    assert "upload of videos/job_x/video.mp4 failed after 4 attempts" in failure.value.message, failure.value.message
    assert waits == [0.1, 0.2, 0.25]  # doubling, capped

    def back_on_second_wait(delay: float) -> None:
        waits.append(delay)
        if len(waits) == 2:  # the server comes back (empty: moto is in memory) within the retry window
            own_moto.restart()
            RetryingStorage(conf).ensure_bucket()

    waits.clear()
    storage.sleep = back_on_second_wait
    storage.put_bytes(b"video", "videos/job_x/video.mp4")
    assert waits == [0.1, 0.2] and storage.get_bytes("videos/job_x/video.mp4") == b"video"
    waits.clear()
    with pytest.raises(ClientError):  # a missing object is no outage: no retry
        storage.get_bytes("videos/job_x/missing.mp4")
    assert waits == []


@pytest.mark.slow
def test_storage_restarted_within_the_retry_window_the_job_still_succeeds(settings, own_redis, own_moto, tmp_path):
    """Storage SIGKILLed while a video is sampled: its upload fails, is retried with backoff, and succeeds
    once a storage server is back on the same port; the job succeeds on its first attempt."""
    conf = fault_settings(settings, own_redis, tmp_path, s3_endpoint_url=own_moto.url, storage_retries=8,
                          storage_backoff_s=0.5, storage_backoff_max_s=4.0, storage_timeout_s=2.0)
    worker = start_standin(conf, tmp_path, "storage")
    try:
        with TestClient(create_app(conf)) as api:
            job_id = api.post("/generate", headers=A, json=HELD_VIDEO).json()["job_id"]
            wait_stage(api, A, job_id, "denoise")
            own_moto.kill()
            open_gate(tmp_path)  # the video is sampled, then its upload fails
            retrying = f"storage: upload of videos/{job_id}/"
            wait_until(lambda: retrying in worker.log_path.read_text(), 120, "the worker to retry its upload")
            assert api.get(f"/jobs/{job_id}", headers=A).json()["status"] == "running"
            own_moto.restart()
            api.app.state.storage.ensure_bucket()  # in-memory moto comes back empty

            job = wait_job(api, A, job_id, timeout=60)
            assert job["status"] == "succeeded" and job["attempts"] == 1, job
            video = httpx.get(job["result"]["video_url"], timeout=30)
            assert video.status_code == 200 and video.content[:6] == b"GIF89a"
            assert httpx.get(job["result"]["poster_url"], timeout=30).content[:4] == b"\x89PNG"
    finally:
        stop_group(worker)


@pytest.mark.slow
def test_storage_down_fails_the_job_clearly_and_the_worker_goes_on(settings, checkpoints, own_redis, own_moto,
                                                                   tmp_path):
    """Storage frozen (SIGSTOP: requests hang) before a customization uploads its artifact: every retry times
    out, and the job fails with `storage_unavailable` within the retry window, with no result or manifest.
    Storage killed (connection refused): a video job fails the same way. The worker stays up and runs the
    next job once storage is back."""
    conf = fault_settings(settings, own_redis, tmp_path, s3_endpoint_url=own_moto.url, storage_retries=2,
                          storage_backoff_s=0.2, storage_timeout_s=1.0, train_checkpoint_every=1000)
    window = 3 * (2 * 1.0) + 0.2 + 0.4  # attempts x (100-continue wait + response wait, 1 s each) + the waits
    worker = start_standin(conf, tmp_path, "storage")
    try:
        with TestClient(create_app(conf)) as api:
            storage, store = api.app.state.storage, JobStore(conf.redis_url)
            held = {**RESUMABLE, "prompts": ["a photo of sks dog @hold=train @gate=go"], "train_steps": 8}
            body = upload(api, A, checkpoints["lora"], held).json()
            job_id, cus_id = body["job_id"], body["customization_id"]
            wait_stage(api, A, job_id, "train")
            own_moto.freeze()
            open_gate(tmp_path)  # training ends, then its upload hangs
            wait_stage(api, A, job_id, "upload")
            upload_started = time.monotonic()
            job = wait_job(api, A, job_id, timeout=120)
            assert time.monotonic() - upload_started < window + 5, "the job outlived its storage retry window"
            assert job["status"] == "failed" and job["error"]["code"] == "storage_unavailable", job
            assert f"upload of customizations/{cus_id}/" in job["error"]["message"]
            assert "after 3 attempts" in job["error"]["message"]
            assert job["result"] is None and store.get_job(job_id).result is None
            customization = api.get(f"/customizations/{cus_id}", headers=A).json()
            assert customization["status"] == "failed" and customization["error"]["code"] == "storage_unavailable"
            assert customization["manifest"] is None and store.get_customization(cus_id).manifest is None

            own_moto.thaw()
            own_moto.kill()
            video = api.post("/generate", headers=A, json=QUICK_VIDEO).json()["job_id"]
            job = wait_job(api, A, video, timeout=60)
            assert job["status"] == "failed" and job["error"]["code"] == "storage_unavailable", job
            assert f"upload of videos/{video}/" in job["error"]["message"] and job["result"] is None

            own_moto.restart()
            storage.ensure_bucket()
            assert worker.poll() is None
            after = api.post("/generate", headers=A, json=QUICK_VIDEO).json()["job_id"]
            job = wait_job(api, A, after, timeout=60)
            assert job["status"] == "succeeded", job
            assert storage.exists(store.get_job(after).result["video_key"])
    finally:
        stop_group(worker)


@pytest.mark.slow
def test_storage_failing_mid_upload_leaves_no_manifest_and_no_result(settings, checkpoints, own_redis, tmp_path):
    """One object's upload keeps failing (a proxy in front of storage answers 503 for it: a partial outage)
    after the objects before it were written. The job fails with `storage_unavailable`, and what would name
    the missing object was never written: no manifest for a customization, no result for a video."""
    proxy = StorageProxy(settings.s3_endpoint_url)
    conf = fault_settings(settings, own_redis, tmp_path, s3_endpoint_url=proxy.url, storage_retries=2,
                          storage_backoff_s=0.1)
    worker = start_worker(conf, tmp_path / "worker.log", "partial")
    try:
        with TestClient(create_app(conf)) as api:
            storage, store = api.app.state.storage, JobStore(conf.redis_url)
            # the last artifact before a customization's manifest; a video's poster, written after the video
            down = ("/spatial_adapter.safetensors", "/poster.png")
            proxy.refuse = lambda method, path: method == "PUT" and path.endswith(down)
            body = upload(api, A, checkpoints["lora"], {**RESUMABLE, "train_steps": 4}).json()
            job_id, cus_id = body["job_id"], body["customization_id"]
            job = wait_job(api, A, job_id, timeout=120)
            prefix = f"customizations/{cus_id}/"
            assert job["status"] == "failed" and job["error"]["code"] == "storage_unavailable", job
            assert f"upload of {prefix}spatial_adapter.safetensors failed after 3 attempts" in job["error"]["message"]
            assert len(proxy.refused) == 3  # each attempt reached storage
            before = ("images/000.png", "images/001.png", "preview.mp4", "preview.png", *exports.FILES.values())
            assert sorted(storage.list_keys(prefix)) == sorted(prefix + name for name in before)  # no manifest
            assert job["result"] is None and store.get_job(job_id).result is None
            customization = api.get(f"/customizations/{cus_id}", headers=A).json()
            assert customization["status"] == "failed" and customization["manifest"] is None
            assert store.get_customization(cus_id).manifest is None

            video = api.post("/generate", headers=A, json=QUICK_VIDEO).json()["job_id"]
            job = wait_job(api, A, video, timeout=60)
            assert job["status"] == "failed" and job["error"]["code"] == "storage_unavailable", job
            assert f"upload of videos/{video}/poster.png" in job["error"]["message"]
            assert storage.list_keys(f"videos/{video}/") == [f"videos/{video}/video.mp4"]  # written, never named
            assert job["result"] is None and store.get_job(video).result is None
    finally:
        stop_group(worker)
        proxy.close()



@pytest.mark.slow
def test_a_pool_process_loads_the_engine_before_its_first_task(settings, own_redis, tmp_path):
    """A soft time limit that fired while a fresh pool process imported torch (seconds on a loaded machine)
    ended the task before the runner held its job, which stayed queued: the pool now imports it at start."""
    from pathlib import Path

    conf = fault_settings(settings, own_redis, tmp_path)
    worker = start_worker(conf, tmp_path / "worker.log", "preload")
    try:
        def pool_has_torch() -> bool:
            children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
            return bool(children) and all("libtorch" in Path(f"/proc/{c}/maps").read_text() for c in children)

        wait_until(pool_has_torch, 120, "the pool process to load the engine with no task run")
        assert "libtorch" not in Path(f"/proc/{worker.pid}/maps").read_text()  # the parent stays torch-free
    finally:
        stop_group(worker)
