"""Deleting and forgetting on a real Redis and S3 server: `DELETE /jobs/{id}` and `DELETE /customizations/{id}`
remove exactly their records and objects (the bucket listed before and after), are refused while in use and
are 404 for another key; the checkpoint object goes by the collector when its last customization does; a
generation racing the deletion of its customization or of its file either blocks it or gets 404; an expired
generation's video is swept.

No worker but the last test's: the others' queues (and Redis database) are their own, so nothing picks their
jobs, and each test moves its jobs through their states with the job store's own transitions, as a worker does."""

from __future__ import annotations

import threading
import time
from typing import Callable

import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from common.deletion import delete_customization
from common.errors import Conflict, NotFound
from common.files import create_file, delete_file, file_key, get_file
from common.jobstore import JobStore, now
from common.schemas import CustomizationRecord, FileRecord, JobRecord
from common.storage import Storage
from common.webhooks import WebhookStore
from tests.service.helpers import TINY_CONFIG, assert_error, upload, wait_job
from worker.collector import collect

GEN = {"prompt": "a dog", "num_frames": 4, "height": 32, "width": 32, "steps": 1}
A, B = {"Authorization": "Bearer del-a"}, {"Authorization": "Bearer del-b"}


@pytest.fixture
def conf(settings):
    """A bucket and a Redis database of its own (checkpoint references span keys: other tests upload the same
    checkpoints), emptied at the end."""
    base, _, _ = settings.redis_url.rpartition("/")
    conf = settings.model_copy(update={"redis_url": f"{base}/2", "s3_bucket": f"stillmoving-del-{time.time_ns()}",
                                       "train_queue": "del-train", "generate_queue": "del-generate",
                                       "api_keys": ["del-a", "del-b"]})
    yield conf
    redis.Redis.from_url(conf.redis_url).flushdb()


@pytest.fixture
def api(conf):
    with TestClient(create_app(conf)) as client:
        yield client


def run(store: JobStore, job_id: str) -> None:
    """What a worker's start does: queued -> running, attempt 1."""
    assert store.transition(job_id, ["queued"], attempt=0, status="running", attempts=1, started_at=now())


def store_video(store: JobStore, storage: Storage, job_id: str) -> list[str]:
    """End a running generation as a worker does: video and poster stored, then succeeded; returns their keys."""
    video, poster = f"videos/{job_id}/video.mp4", f"videos/{job_id}/poster.png"
    for key in (video, poster):
        storage.put_bytes(b"frames", key)
    assert store.finish(job_id, "succeeded", attempt=1, result={"video_key": video, "poster_key": poster})
    return [video, poster]


def store_artifact(store: JobStore, storage: Storage, job_id: str, customization_id: str) -> list[str]:
    """End a running customize job with an artifact, an image and a leftover resume state; returns the keys."""
    prefix = f"customizations/{customization_id}/"
    artifact = [prefix + name for name in ("spatial_adapter.safetensors", "images/000.png", "train-state/latest.json",
                                           "manifest.json")]
    for key in artifact:
        storage.put_bytes(b"x", key)
    assert store.finish(job_id, "succeeded", attempt=1, result={"customization_id": customization_id},
                        customization={"manifest": {"images": [{"file": "images/000.png"}]},
                                       "manifest_key": prefix + "manifest.json"})
    return artifact


def generate(api, auth, customization_id: str | None = None) -> str:
    response = api.post("/generate", headers=auth, json={**GEN, "customization_id": customization_id})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def test_delete_job_refused_while_queued_or_running_then_removes_its_record_and_exactly_its_video(api):
    store, storage = api.app.state.store, api.app.state.storage
    job_id, other = generate(api, A), generate(api, A)
    assert_error(api.delete(f"/jobs/{job_id}", headers=A), 409, "job_active", "job_id")
    run(store, job_id)
    error = assert_error(api.delete(f"/jobs/{job_id}", headers=A), 409, "job_active", "job_id")
    assert "running" in error["message"] and "cancel" in error["message"]
    video = store_video(store, storage, job_id)
    run(store, other)
    kept = store_video(store, storage, other)
    assert_error(api.delete(f"/jobs/{job_id}", headers=B), 404, "not_found", "job_id")  # another key's

    before = set(storage.list_keys(""))
    assert store.redis.exists(store.events_key(job_id))
    store.redis.rpush(WebhookStore.attempts_key(job_id), "{}")  # as the deliverer records an attempt
    response = api.delete(f"/jobs/{job_id}", headers=A)
    assert response.status_code == 204 and response.content == b""
    assert before - set(storage.list_keys("")) == set(video) and set(kept) <= set(storage.list_keys(""))
    assert_error(api.get(f"/jobs/{job_id}", headers=A), 404, "not_found")
    assert [j["id"] for j in api.get("/jobs", headers=A).json()["items"]] == [other]
    assert store.redis.zscore(store.owner_key(store.get_job(other).owner, "jobs"), job_id) is None
    assert not store.redis.exists(store.events_key(job_id))  # its log went with it
    assert not store.redis.exists(WebhookStore.attempts_key(job_id))  # and its webhook attempts
    assert_error(api.delete(f"/jobs/{job_id}", headers=A), 404, "not_found")  # already gone

    canceled = generate(api, A)
    assert api.post(f"/jobs/{canceled}/cancel", headers=A).json()["status"] == "canceled"
    assert api.delete(f"/jobs/{canceled}", headers=A).status_code == 204
    assert store.get_job(canceled) is None


def test_delete_customization_refused_while_it_trains_or_a_generation_uses_it_then_removes_exactly_it(
        api, checkpoints):
    store, storage = api.app.state.store, api.app.state.storage
    accepted = upload(api, A, checkpoints["lora"]).json()
    cid, train_job = accepted["customization_id"], accepted["job_id"]
    path = f"/customizations/{cid}"
    for setup in (lambda: None, lambda: run(store, train_job)):  # queued, then training
        setup()
        error = assert_error(api.delete(path, headers=A), 409, "customization_in_use", "customization_id")
        assert train_job in error["message"]
    artifact = store_artifact(store, storage, train_job, cid)
    assert_error(api.delete(path, headers=B), 404, "not_found", "customization_id")  # another key's

    generation, base_video = generate(api, A, cid), generate(api, A)
    for setup in (lambda: None, lambda: run(store, generation)):  # a generation that uses it: queued, running
        setup()
        error = assert_error(api.delete(path, headers=A), 409, "customization_in_use", "customization_id")
        assert generation in error["message"]
    video = store_video(store, storage, generation)
    assert store.get_job(base_video).status == "queued"  # a queued job that does not use it holds nothing

    sha = store.get_customization(cid).checkpoint_sha256
    before = set(storage.list_keys(""))
    assert before >= {*artifact, *video, f"checkpoints/{sha}.safetensors"}
    assert api.delete(path, headers=A).status_code == 204
    assert before - set(storage.list_keys("")) == set(artifact)  # the checkpoint and the video stay
    assert_error(api.get(path, headers=A), 404, "not_found")
    assert api.get("/customizations", headers=A).json()["items"] == []
    assert_error(api.get(f"/jobs/{train_job}", headers=A), 404, "not_found")  # its training job's record
    assert not store.redis.exists(store.events_key(train_job))  # and log
    assert api.get(f"/jobs/{generation}", headers=A).json()["result"]["video_url"]  # the video's own record stays
    assert cid not in store.redis.smembers(store.checkpoint_refs_key(sha))
    assert_error(api.post("/generate", headers=A, json={**GEN, "customization_id": cid}), 404, "not_found",
                 "customization_id")
    assert_error(api.delete(path, headers=A), 404, "not_found")


def test_the_shared_checkpoint_stays_while_a_customization_of_any_key_uses_it_and_the_collector_takes_it_after(
        api, checkpoints):
    store, storage = api.app.state.store, api.app.state.storage
    first = upload(api, A, checkpoints["lora"]).json()
    second = upload(api, B, checkpoints["lora"], {**TINY_CONFIG, "seed": 2}).json()  # the same content, key B
    sha = store.get_customization(first["customization_id"]).checkpoint_sha256
    assert store.get_customization(second["customization_id"]).checkpoint_sha256 == sha
    checkpoint = f"checkpoints/{sha}.safetensors"
    run(store, second["job_id"])
    store_artifact(store, storage, second["job_id"], second["customization_id"])
    assert api.post(f"/jobs/{first['job_id']}/cancel", headers=A).json()["status"] == "canceled"

    later = time.time() + 3601  # past the grace period
    assert api.delete(f"/customizations/{first['customization_id']}", headers=A).status_code == 204
    assert collect(store, storage, grace_s=3600, clock=later) == [] and storage.exists(checkpoint)
    assert api.delete(f"/customizations/{second['customization_id']}", headers=B).status_code == 204
    assert storage.exists(checkpoint)  # the API leaves it to the collector
    assert collect(store, storage, grace_s=3600, clock=later) == [checkpoint]
    assert not storage.exists(checkpoint) and not store.redis.exists(store.checkpoint_refs_key(sha))


def ready_customization(store: JobStore, owner: str) -> CustomizationRecord:
    stamp = time.time_ns()
    customization = CustomizationRecord(id=f"cus_race_{stamp}", owner=owner, job_id=f"job_race_{stamp}",
                                        base_model="tiny", checkpoint_sha256=f"{stamp:064x}",
                                        checkpoint_format="lora", config={}, created_at=now())
    job = JobRecord(id=customization.job_id, kind="customize", owner=owner, created_at=now(),
                    customization_id=customization.id)
    assert store.create_job(job, "race-train", customization)
    run(store, job.id)
    assert store.finish(job.id, "succeeded", attempt=1)
    return store.get_customization(customization.id)


def generation_of(customization: CustomizationRecord) -> JobRecord:
    return JobRecord(id=f"job_race_gen_{time.time_ns()}", kind="generate", owner=customization.owner,
                     created_at=now(), customization_id=customization.id, params={"prompt": "x"})


def race(enqueue: Callable[[], bool], delete: Callable[[], None]) -> list[str]:
    """A generation's creation and a deletion at the same instant: which won (exactly one must), as
    ``["enqueued"]`` (the deletion was a `Conflict`) or ``["deleted"]`` (the creation was `NotFound`)."""
    barrier, won = threading.Barrier(2), []

    def first():
        barrier.wait()
        try:
            won.append(enqueue() and "enqueued")
        except NotFound:
            pass

    def second():
        barrier.wait()
        try:
            delete()
            won.append("deleted")
        except Conflict:
            pass

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(won) == 1, won
    return won


def test_a_generation_enqueued_during_a_deletion_either_blocks_it_or_gets_404(conf):
    store, storage = JobStore.from_settings(conf), Storage(conf)
    storage.ensure_bucket()
    owner = f"race-{time.time_ns()}"
    # the route has checked the customization; the deletion runs before its job is created: 404, nothing written
    late = ready_customization(store, owner)
    delete_customization(store, storage, late)
    job = generation_of(late)
    with pytest.raises(NotFound) as refused:
        store.create_job(job, "race-generate")
    assert refused.value.field == "customization_id"
    assert store.get_job(job.id) is None and store.queued_count(owner) == 0
    # the job is created first: the deletion is refused
    early = ready_customization(store, owner)
    assert store.create_job(generation_of(early), "race-generate")
    with pytest.raises(Conflict):
        delete_customization(store, storage, early)
    assert store.get_customization(early.id) is not None

    outcomes = []  # at the same instant, many times: exactly one of the two wins each time
    for _ in range(20):
        customization = ready_customization(store, owner)
        job = generation_of(customization)
        won = race(lambda j=job: store.create_job(j, "race-generate"),
                   lambda c=customization: delete_customization(store, storage, c))
        assert (store.get_customization(customization.id) is None) == (won == ["deleted"])
        outcomes += won
    queued = store.redis.zrange(store.owner_key(owner, "queued"), 0, -1)
    assert all(store.get_customization(store.get_job(j).customization_id) for j in queued)  # none names a gone one
    assert len(queued) == 1 + outcomes.count("enqueued")


def stored_file(store: JobStore, storage: Storage, owner: str) -> FileRecord:
    """An uploaded file as `POST /files` leaves it: its object, then its record."""
    file_id = f"file_race_{time.time_ns()}"
    record = FileRecord(id=file_id, owner=owner, kind="video", frames=5, width=64, height=48, fps=8.0, size=6,
                        sha256="0" * 64, content_type="image/gif", key=f"files/{file_id}/source", created_at=now())
    storage.put_bytes(b"frames", record.key)
    create_file(store, record)
    return record


def generation_reading(record: FileRecord) -> tuple[JobRecord, list[tuple[str, str]]]:
    """A generation whose control reads the file, and what the route passes `create_job` as its needs."""
    job = JobRecord(id=f"job_race_gen_{time.time_ns()}", kind="generate", owner=record.owner, created_at=now(),
                    params={"prompt": "x"}, inputs={"control": {"key": record.key, "frames": record.frames}})
    return job, [(file_key(record.id), "control.file")]


def test_a_generation_enqueued_while_its_file_is_deleted_either_blocks_it_or_gets_404(conf):
    store, storage = JobStore.from_settings(conf), Storage(conf)
    storage.ensure_bucket()
    owner = f"race-file-{time.time_ns()}"
    late = stored_file(store, storage, owner)  # the route has resolved the file; it is deleted before the job
    delete_file(store, storage, late)
    job, needs = generation_reading(late)
    with pytest.raises(NotFound) as refused:
        store.create_job(job, "race-generate", needs=needs)
    assert refused.value.field == "control.file"
    assert store.get_job(job.id) is None and store.queued_count(owner) == 0 and not storage.exists(late.key)
    early = stored_file(store, storage, owner)  # the job is created first: the deletion is refused
    job, needs = generation_reading(early)
    assert store.create_job(job, "race-generate", needs=needs)
    with pytest.raises(Conflict) as kept:
        delete_file(store, storage, early)
    assert kept.value.code == "file_in_use" and job.id in str(kept.value)
    assert get_file(store, early.id, owner) == early and storage.exists(early.key)

    outcomes = []  # at the same instant, many times: exactly one of the two wins each time
    for _ in range(20):
        record = stored_file(store, storage, owner)
        job, needs = generation_reading(record)
        won = race(lambda j=job, n=needs: store.create_job(j, "race-generate", needs=n),
                   lambda r=record: delete_file(store, storage, r))
        assert (not store.redis.exists(file_key(record.id))) == (won == ["deleted"])
        assert storage.exists(record.key) == (won == ["enqueued"])
        outcomes += won
    queued = [store.get_job(j) for j in store.redis.zrange(store.owner_key(owner, "queued"), 0, -1)]
    assert all(storage.exists(job.inputs["control"]["key"]) for job in queued)  # none reads a gone file
    assert len(queued) == 1 + outcomes.count("enqueued")


def test_an_expired_generations_record_and_video_go_and_nothing_still_named_does(conf):
    short, store, storage = JobStore(conf.redis_url, retention_s=1), JobStore.from_settings(conf), Storage(conf)
    storage.ensure_bucket()
    owner = f"retention-{time.time_ns()}"
    expiring, kept = (JobRecord(id=f"job_ret_{i}_{time.time_ns()}", kind="generate", owner=owner, created_at=now(),
                                params={"prompt": "x"}) for i in range(2))
    for job in (expiring, kept):
        assert store.create_job(job, "retention-generate")
        run(store, job.id)
    expired_video = store_video(short, storage, expiring.id)  # finished with a 1 s retention
    kept_video = store_video(store, storage, kept.id)  # and with 7 days
    customization = ready_customization(store, owner)
    storage.put_bytes(b"x", f"customizations/{customization.id}/manifest.json")  # a live customization's
    storage.put_bytes(b"x", "customizations/cus_gone/manifest.json")  # one whose deletion's storage step failed
    assert 0 < short.redis.ttl(short.job_key(expiring.id)) <= 1
    assert store.redis.ttl(store.customization_key(customization.id)) == -1  # customizations never expire

    deadline = time.monotonic() + 10
    while store.get_job(expiring.id) is not None:
        assert time.monotonic() < deadline, "the record never expired"
        time.sleep(0.1)
    listed = {j.id for j in store.list_jobs(owner, 10, None)[0]}
    assert listed == {kept.id, customization.job_id}  # the expired one left the listing
    assert collect(store, storage, grace_s=3600) == []  # the video is younger than the grace period
    deleted = collect(store, storage, grace_s=3600, clock=time.time() + 3601)
    assert sorted(deleted) == sorted([*expired_video, "customizations/cus_gone/manifest.json"]), deleted
    assert all(storage.exists(key) for key in kept_video)
    assert storage.exists(f"customizations/{customization.id}/manifest.json")


@pytest.mark.slow
def test_deleting_a_real_video_and_customization_removes_exactly_what_the_worker_stored(
        client, auth_a, auth_b, worker, checkpoints):
    """Through the session's worker: what a real training and sampling stored, and nothing else, is deleted."""
    storage = client.app.state.storage
    accepted = upload(client, auth_a, checkpoints["lora"], {**TINY_CONFIG, "seed": 5}).json()
    cid = accepted["customization_id"]
    assert wait_job(client, auth_a, accepted["job_id"])["status"] == "succeeded"
    job = wait_job(client, auth_a, generate(client, auth_a, cid))
    assert job["status"] == "succeeded", job
    record = client.app.state.store.get_job(job["id"])

    before = set(storage.list_keys(""))
    assert_error(client.delete(f"/jobs/{job['id']}", headers=auth_b), 404, "not_found")
    assert client.delete(f"/jobs/{job['id']}", headers=auth_a).status_code == 204
    assert before - set(storage.list_keys("")) == {record.result["video_key"], record.result["poster_key"]}

    before = set(storage.list_keys(""))
    stored = {key for key in before if key.startswith(f"customizations/{cid}/")}
    manifest = client.get(f"/customizations/{cid}", headers=auth_a).json()["manifest"]
    assert {f"customizations/{cid}/{name}" for name in ("manifest.json", "spatial_adapter.safetensors")} <= stored
    assert {f"customizations/{cid}/{item['file']}" for item in manifest["images"]} <= stored
    assert client.delete(f"/customizations/{cid}", headers=auth_a).status_code == 204
    after = set(storage.list_keys(""))
    assert before - after == stored and after <= before  # the checkpoint and the Motion Adapter stay
    assert_error(client.post("/generate", headers=auth_a, json={**GEN, "customization_id": cid}), 404, "not_found")
