"""``GET /customizations/{id}/export`` on a real Redis and S3 server: a trained customization's exports (built by
the real worker with the artifact) come back as presigned URLs to the same stored object every time; an unknown
format is a 422 naming ``format``, another key's customization a 404, one not ready a 409."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from urllib.parse import urlparse

import httpx
import pytest

from api.auth import owner_of
from common.jobstore import JobStore, now
from common.schemas import CustomizationRecord, JobRecord
from common.storage import Storage
from tests.conftest import KEY_A
from tests.service.helpers import TINY_CONFIG, assert_error, upload, wait_job

CONFIG = {**TINY_CONFIG, "use_motion_adapter": False, "name": "two tone/v1"}


def fetch(url: str) -> httpx.Response:
    response = httpx.get(url, timeout=30)  # a presigned URL needs no API key
    assert response.status_code == 200, url
    return response


@pytest.fixture(scope="module")
def trained(client, auth_a, worker, checkpoints) -> str:
    response = upload(client, auth_a, checkpoints["lora"], CONFIG)
    assert response.status_code == 202, response.text
    job = wait_job(client, auth_a, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    return response.json()["customization_id"]


def export(client, auth, customization_id: str, **params):
    return client.get(f"/customizations/{customization_id}/export", headers=auth, params=params)


@pytest.mark.slow
def test_each_format_is_one_stored_object_served_again_and_again(client, auth_a, settings, trained, checkpoints):
    storage = Storage(settings)
    for fmt, suffix in (("diffusers", "zip"), ("kohya", "safetensors"), ("comfyui", "zip")):
        first = export(client, auth_a, trained, format=fmt)
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["format"] == fmt and body["filename"] == f"two-tone-v1-{fmt}.{suffix}"
        key = urlparse(body["url"]).path.removeprefix(f"/{settings.s3_bucket}/")
        assert key.startswith(f"customizations/{trained}/exports/")
        stored = storage.client.head_object(Bucket=storage.bucket, Key=key)
        download = fetch(body["url"])
        assert hashlib.sha256(download.content).hexdigest() == body["sha256"] and len(download.content) == body["size"]
        assert body["filename"] in download.headers.get("content-disposition", "")
        second = export(client, auth_a, trained, format=fmt).json()
        assert urlparse(second["url"]).path == urlparse(body["url"]).path and second["sha256"] == body["sha256"]
        again = storage.client.head_object(Bucket=storage.bucket, Key=key)
        assert (again["ETag"], again["LastModified"]) == (stored["ETag"], stored["LastModified"])  # not rebuilt
        if fmt == "diffusers":
            archive = zipfile.ZipFile(io.BytesIO(download.content))
            assert set(archive.namelist()) == {"pytorch_lora_weights.safetensors", "README.md"}
            assert "load_lora_weights" in archive.read("README.md").decode()
        if fmt == "comfyui":
            archive = zipfile.ZipFile(io.BytesIO(download.content))
            workflow = json.loads(archive.read("workflow_api.json"))
            assert "ADE_UseEvolvedSampling" in {node["class_type"] for node in workflow.values()}
        if fmt == "kohya":
            header = json.loads(download.content[8:8 + int.from_bytes(download.content[:8], "little")])
            assert all(k == "__metadata__" or k.startswith("lora_unet_") for k in header)
    with_checkpoint = export(client, auth_a, trained, format="comfyui", include_checkpoint="true").json()
    assert fetch(with_checkpoint["checkpoint_url"]).content == checkpoints["lora"].read_bytes()
    assert with_checkpoint["checkpoint_filename"].startswith("stillmoving-customization-")
    assert export(client, auth_a, trained, format="comfyui").json()["checkpoint_url"] is None


def _record(store: JobStore, owner: str, manifest: dict | None) -> str:
    """A customization as the job store holds it: queued (`manifest` None) or ready with `manifest`."""
    stamp = time.time_ns()
    customization = CustomizationRecord(id=f"cus_export_{stamp}", owner=owner, job_id=f"job_export_{stamp}",
                                        base_model="tiny", checkpoint_sha256=f"{stamp:064x}",
                                        checkpoint_format="lora", config={}, created_at=now())
    job = JobRecord(id=customization.job_id, kind="customize", owner=owner, created_at=now(),
                    customization_id=customization.id)
    assert store.create_job(job, "export-test-train", customization)  # a queue no worker serves
    if manifest is not None:
        assert store.transition(job.id, ["queued"], attempt=0, status="running", attempts=1, started_at=now())
        assert store.finish(job.id, "succeeded", attempt=1, customization={"manifest": manifest})
    return customization.id


def test_bad_requests_are_named(client, auth_a, auth_b, settings):
    store, owner = JobStore.from_settings(settings), owner_of(KEY_A)
    queued = _record(store, owner, None)
    legacy = _record(store, owner, {"spatial_adapter": {"file": "spatial_adapter.safetensors"}})
    for params in ({"format": "onnx"}, {}):
        assert_error(export(client, auth_a, queued, **params), 422, "invalid_argument", "format")
    assert_error(export(client, auth_b, queued, format="kohya"), 404, "not_found", "customization_id")
    assert_error(export(client, auth_a, "cus_nope", format="kohya"), 404, "not_found", "customization_id")
    assert_error(export(client, auth_a, queued, format="kohya"), 409, "customization_not_ready", "customization_id")
    assert_error(export(client, auth_a, legacy, format="diffusers"), 409, "export_unavailable", "format")

