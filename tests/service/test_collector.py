"""The storage collector on a real Redis and S3 server: checkpoints no customization was made from (an
upload refused after it was published) or whose customizations all ended long ago, and left-behind
staging objects, are deleted once past the grace period; those of live customizations and young ones stay."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from common.jobstore import JobStore, now
from common.schemas import CustomizationRecord, JobRecord
from common.storage import Storage, checkpoint_key
from tests.service.helpers import assert_error, upload
from worker.collector import collect


@pytest.fixture
def conf(settings):
    return settings.model_copy(update={"s3_bucket": f"stillmoving-gc-{time.time_ns()}",
                                       "train_queue": "gc-train", "generate_queue": "gc-generate",
                                       "api_keys": ["gc-key"], "max_queued_jobs_per_key": 1})


def customization(store: JobStore, sha: str, status: str, finished_ago: float | None = None) -> None:
    cus = CustomizationRecord(id=f"cus_gc_{time.time_ns()}", owner="gc", job_id="job_x", base_model="tiny",
                              checkpoint_sha256=sha, checkpoint_format="lora", config={}, created_at=now(),
                              status=status)
    if finished_ago is not None:
        cus.finished_at = now().fromtimestamp(time.time() - finished_ago, tz=now().tzinfo)
    job = JobRecord(id=f"job_gc_{time.time_ns()}", kind="customize", owner="gc", created_at=now(),
                    customization_id=cus.id)
    assert store.create_job(job, "gc-none", cus)


def test_collects_what_nobody_needs_after_the_grace_period(conf):
    store, storage = JobStore.from_settings(conf), Storage(conf)
    storage.ensure_bucket()
    names = {name: f"{name}{time.time_ns()}" for name in ("ready", "failed_long_ago", "failed_now", "orphan")}
    for sha in names.values():
        storage.put_bytes(b"x", checkpoint_key(sha))
    customization(store, names["ready"], "ready")
    customization(store, names["failed_long_ago"], "failed", finished_ago=7200)
    customization(store, names["failed_now"], "failed", finished_ago=-3000)  # ended 601 s before `later`
    storage.put_bytes(b"half", "uploads/left-behind")

    assert collect(store, storage, grace_s=3600) == []  # everything is younger than the grace period
    later = time.time() + 3601
    deleted = collect(store, storage, grace_s=3600, clock=later)
    assert sorted(deleted) == sorted([checkpoint_key(names["failed_long_ago"]), checkpoint_key(names["orphan"]),
                                      "uploads/left-behind"])
    assert storage.exists(checkpoint_key(names["ready"])) and storage.exists(checkpoint_key(names["failed_now"]))
    rules = storage.client.get_bucket_lifecycle_configuration(Bucket=storage.bucket)["Rules"]
    assert rules[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}  # unfinished uploads' parts
    assert store.checkpoint_users(names["failed_long_ago"]) == [] and store.checkpoint_users(names["ready"])


def test_a_queued_customizations_upload_stays_and_a_refused_one_leaves_nothing(conf, checkpoints):
    """Through the API: the checkpoint of a queued customization is kept past the grace period; an upload
    refused by the queue limit stores nothing (the orphan of one refused after publishing, by the atomic
    check racing another request, is the `orphan` above)."""
    with TestClient(create_app(conf)) as api:
        auth = {"Authorization": "Bearer gc-key"}
        store, storage = api.app.state.store, api.app.state.storage
        first = upload(api, auth, checkpoints["lora"])
        assert first.status_code == 202
        before = set(storage.list_keys(""))
        assert_error(upload(api, auth, checkpoints["unet"]), 429, "too_many_requests")  # limit 1
        assert set(storage.list_keys("")) == before
        kept = checkpoint_key(api.get(f"/customizations/{first.json()['customization_id']}",
                                      headers=auth).json()["checkpoint"]["sha256"])
        assert collect(store, storage, grace_s=3600, clock=time.time() + 3601) == [] and storage.exists(kept)
