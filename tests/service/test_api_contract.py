"""The HTTP contract of every endpoint and error status. Jobs here go to queues no worker serves,
so they stay queued and the assertions about queued state are deterministic."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.conftest import KEY_A, KEY_B
from tests.service.helpers import TINY_CONFIG, assert_error, job_ids, upload

KEY_C = "test-key-c"
GEN = {"prompt": "a dog", "num_frames": 4, "height": 32, "width": 32, "steps": 1}


@pytest.fixture(scope="module")
def api_settings(settings):
    return settings.model_copy(update={"train_queue": "contract-train", "generate_queue": "contract-generate",
                                       "api_keys": [KEY_A, KEY_B, KEY_C]})


@pytest.fixture(scope="module")
def api(api_settings):
    with TestClient(create_app(api_settings)) as client:
        yield client


@pytest.fixture(scope="module")
def a():
    return {"Authorization": f"Bearer {KEY_A}"}


@pytest.fixture(scope="module")
def b():
    return {"Authorization": f"Bearer {KEY_B}"}


def stored_keys(api, prefix: str) -> list[str]:
    return api.app.state.storage.list_keys(prefix)


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


# ---- health, docs ---------------------------------------------------------------------------------
def test_health_ready_docs(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "storage": "ok"}
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/customizations", "/customizations/{customization_id}", "/generate", "/jobs", "/jobs/{job_id}",
            "/jobs/{job_id}/cancel", "/healthz", "/readyz"} <= set(paths)
    assert "delete" in paths["/jobs/{job_id}"] and "delete" in paths["/customizations/{customization_id}"]
    form = paths["/customizations"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]["properties"]["config"]["required"] == ["prompts"]  # the config's own schema
    assert form["encoding"]["config"]["contentType"] == "application/json"
    assert ".safetensors" in form["encoding"]["checkpoint"]["headers"]["Content-Disposition"]["example"]


def test_redis_down_gives_503_with_retry_after(api_settings):
    from scripts.processes import free_port

    down = api_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(down)) as client:
        ready = client.get("/readyz")
        assert_error(ready, 503, "unavailable")
        assert ready.headers["Retry-After"]
        jobs = client.get("/jobs", headers={"Authorization": f"Bearer {KEY_A}"})
        assert_error(jobs, 503, "unavailable")
        assert jobs.headers["Retry-After"]


def test_unknown_route_uses_the_envelope(api, a):
    assert_error(api.get("/nope", headers=a), 404, "not_found")
    assert_error(api.delete("/jobs", headers=a), 405, "method_not_allowed")


# ---- auth -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,path", [("get", "/jobs"), ("get", "/jobs/job_x"), ("post", "/jobs/job_x/cancel"),
                                         ("get", "/customizations"), ("get", "/customizations/cus_x"),
                                         ("post", "/generate"), ("post", "/customizations"),
                                         ("delete", "/jobs/job_x"), ("delete", "/customizations/cus_x")])
@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {KEY_A}", "Bearer "])
def test_every_endpoint_needs_a_valid_key(api, method, path, header):
    headers = {"Authorization": header} if header else {}
    response = getattr(api, method)(path, headers=headers, **({"json": GEN} if path == "/generate" else {}))
    assert_error(response, 401, "unauthorized")
    assert KEY_A not in response.text


def test_api_keys_never_reach_the_logs(api, a, caplog):
    """Every logger at DEBUG (the app's, uvicorn's, redis', kombu's, botocore's) while a key is accepted, a wrong
    one refused and a request fails inside the app: neither key appears in any record."""
    import logging

    wrong = "Bearer leaked-wrong-key-123"
    with caplog.at_level(logging.DEBUG):
        assert api.post("/generate", headers=a, json=GEN).status_code == 202
        assert api.get("/jobs", headers={"Authorization": wrong}).status_code == 401
        assert api.get("/jobs?cursor=nan", headers=a).status_code == 422
    text = "\n".join(f"{r.name} {r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records)
    assert caplog.records  # the capture saw the libraries' debug output, so the check below means something
    assert KEY_A not in text and "leaked-wrong-key-123" not in text


# ---- generate validation --------------------------------------------------------------------------
@pytest.mark.parametrize("change,field", [
    ({"height": 30}, "height"), ({"width": 1030}, "width"), ({"num_frames": 0}, "num_frames"),
    ({"num_frames": 1000}, "num_frames"), ({"steps": 0}, "steps"), ({"guidance_scale": -1}, "guidance_scale"),
    ({"prompt": ""}, "prompt"), ({"prompt": "x" * 501}, "prompt"), ({"method": "magic"}, "method"),
    ({"method": "naive"}, None), ({"format": "avi"}, "format"), ({"fps": 0}, "fps"), ({"seed": -1}, "seed"),
    ({"height": "tall"}, "height"), ({"unknown": 1}, "unknown"), ({"prompt": None}, "prompt"),
    ({"motion_adapter_scale": 1.0}, "motion_adapter_scale"), ({"motion_adapter_scale": 3}, "motion_adapter_scale"),
    ({"scheduler": "lcm"}, "scheduler"),
])
def test_generate_rejects_bad_values(api, a, change, field):
    response = api.post("/generate", headers=a, json={**GEN, **change})
    error = assert_error(response, 422, "invalid_argument")
    if field:
        assert error["field"] == field


# ---- cost limits (common/presets.py; tiny: 32 frame positions, CPU-sized limits) ---------------------
@pytest.mark.parametrize("change,field,said", [
    ({"num_frames": 257}, "num_frames", "longest video"),  # past 32 frames, FreeNoise windows (test_long_video.py)
    ({"num_frames": 64, "context_length": 33, "height": 32, "width": 32}, "context_length", "32 frame positions"),
    # the attack of the hardening issue: 32 frames at 1024x1024, 150 steps, accepted before
    ({"num_frames": 32, "height": 1024, "width": 1024, "steps": 150}, "height", "pixel-frames"),
    ({"num_frames": 8, "height": 256, "width": 512}, "width", "pixel-frames"),
    ({"num_frames": 32, "height": 64, "width": 64, "steps": 51}, "steps", "x steps"),
])
def test_generate_over_the_preset_limits_is_422_naming_field_and_limit(api, a, api_settings, change, field, said):
    preset = api_settings.preset()
    before = job_ids(api, a)
    error = assert_error(api.post("/generate", headers=a, json={**GEN, **change}), 422, "invalid_argument", field)
    assert said in error["message"]
    limit = preset.max_frames if "positions" in said else preset.max_video_frames if "longest" in said \
        else preset.max_video_pixels if "pixel" in said else preset.max_video_work
    assert str(limit) in error["message"]
    assert job_ids(api, a) == before  # nothing queued


def test_generate_at_the_limit_is_accepted_and_limits_are_published(api, a, api_settings):
    preset = api_settings.preset()
    largest = {"num_frames": 32, "height": 64, "width": 64, "steps": 50}
    assert 32 * 64 * 64 * 50 == preset.max_video_work  # the tiny limit is this very video
    assert api.post("/generate", headers=a, json={**GEN, **largest}).status_code == 202
    published = api.get("/limits", headers=a).json()
    assert published["preset"] == "tiny" and published["max_frames"] == preset.max_frames == 32
    assert published["max_video_work"] == preset.max_video_work and published["train_sizes"] is None
    assert api.get("/limits").status_code == 401


def test_cost_limits_follow_the_settings(api_settings):
    default_video = 8 * 32 * 32 * 4  # tiny's default frames, size and steps
    conf = api_settings.model_copy(update={"max_video_work": default_video, "api_keys": ["test-key-limits"]})
    with TestClient(create_app(conf)) as small:
        headers = {"Authorization": "Bearer test-key-limits"}
        assert small.get("/limits", headers=headers).json()["max_video_work"] == default_video
        assert small.post("/generate", headers=headers, json={"prompt": "x"}).status_code == 202
        assert_error(small.post("/generate", headers=headers, json={"prompt": "x", "steps": 5}), 422,
                     "invalid_argument", "steps")


def test_generate_malformed_json_and_content_type(api, a):
    bad = api.post("/generate", headers={**a, "Content-Type": "application/json"}, content=b"{not json")
    assert_error(bad, 400, "malformed_json")
    text = api.post("/generate", headers={**a, "Content-Type": "text/plain"}, content=json.dumps(GEN))
    assert text.status_code in (415, 422)
    assert text.json()["error"]["code"] in ("unsupported_media_type", "invalid_argument")


def test_generate_unknown_customization_is_404(api, a):
    assert_error(api.post("/generate", headers=a, json={**GEN, "customization_id": "cus_nope"}),
                 404, "not_found", "customization_id")


# ---- generate accepted, jobs ----------------------------------------------------------------------
def test_generate_accepts_and_job_is_visible_only_to_its_key(api, a, b):
    response = api.post("/generate", headers=a, json=GEN)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["job_id"].startswith("job_")
    assert response.headers["Location"] == f"/jobs/{body['job_id']}"
    job = api.get(f"/jobs/{body['job_id']}", headers=a).json()
    assert job["kind"] == "generate" and job["status"] == "queued" and job["progress"] == 0
    assert job["queue_position"] >= 1 and job["result"] is None and job["error"] is None
    assert job["params"]["method"] == "base" and isinstance(job["params"]["seed"], int)
    assert_error(api.get(f"/jobs/{body['job_id']}", headers=b), 404, "not_found")
    assert_error(api.post(f"/jobs/{body['job_id']}/cancel", headers=b), 404, "not_found")
    assert body["job_id"] not in job_ids(api, b)


def test_queue_position_counts_jobs_ahead(api, a):
    first = api.post("/generate", headers=a, json=GEN).json()["job_id"]
    second = api.post("/generate", headers=a, json=GEN).json()["job_id"]
    p1 = api.get(f"/jobs/{first}", headers=a).json()["queue_position"]
    p2 = api.get(f"/jobs/{second}", headers=a).json()["queue_position"]
    assert p2 == p1 + 1
    assert api.post(f"/jobs/{first}/cancel", headers=a).json()["status"] == "canceled"
    assert api.get(f"/jobs/{second}", headers=a).json()["queue_position"] == p1
    assert api.get(f"/jobs/{first}", headers=a).json()["queue_position"] is None


def test_cancel_queued_job(api, a):
    job_id = api.post("/generate", headers=a, json=GEN).json()["job_id"]
    response = api.post(f"/jobs/{job_id}/cancel", headers=a)
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "canceled" and job["finished_at"] and job["error"]["code"] == "canceled"
    assert api.post(f"/jobs/{job_id}/cancel", headers=a).status_code == 200
    assert_error(api.post("/jobs/job_missing/cancel", headers=a), 404, "not_found")


def test_list_jobs_newest_first_paginated(api):
    c = {"Authorization": f"Bearer {KEY_C}"}
    ids = [api.post("/generate", headers=c, json={**GEN, "seed": i}).json()["job_id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        page = api.get("/jobs", headers=c, params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert_error(api.get("/jobs?limit=0", headers=c), 422, "invalid_argument", "limit")
    assert_error(api.get("/jobs?limit=101", headers=c), 422, "invalid_argument", "limit")
    assert_error(api.get("/jobs?cursor=abc", headers=c), 422, "invalid_argument", "cursor")
    for job_id in ids:
        api.post(f"/jobs/{job_id}/cancel", headers=c)


def test_pagination_skips_no_job_created_in_the_same_instant(api):
    """The cursor was the last item's timestamp alone, exclusive: jobs sharing it were skipped."""
    from api.auth import owner_for

    d = {"Authorization": "Bearer test-key-c"}
    owner = owner_for(d["Authorization"], [KEY_C])
    ids = [api.post("/generate", headers=d, json={**GEN, "seed": i}).json()["job_id"] for i in range(5)]
    store = api.app.state.store
    listing = store.owner_key(owner, "jobs")
    store.redis.zadd(listing, {job_id: 1234.5 for job_id in ids})  # all five in one instant
    seen, cursor = [], None
    while True:
        page = api.get("/jobs", headers=d, params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [item["id"] for item in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert sorted(seen) == sorted(set(seen)) and set(ids) <= set(seen), (seen, ids)
    for job_id in ids:
        api.post(f"/jobs/{job_id}/cancel", headers=d)


def test_job_creation_is_rate_limited_per_key_with_retry_after(api_settings):
    """Submit-then-cancel loops made ~4 KB records at 200/s; now a token bucket per key (burst 3, 2/s here).

    The store's clock is held still, so a slow machine cannot refill the bucket between requests."""
    conf = api_settings.model_copy(update={"job_burst": 3, "job_rate_per_s": 2.0, "api_keys": ["rate-1", "rate-2"]})
    with TestClient(create_app(conf)) as client:
        store, t0 = client.app.state.store, 1_000_000.0
        store.clock = lambda: t0
        one, two = ({"Authorization": f"Bearer {k}"} for k in ("rate-1", "rate-2"))
        made = [client.post("/generate", headers=one, json=GEN) for _ in range(3)]
        assert [r.status_code for r in made] == [202, 202, 202]
        refused = client.post("/generate", headers=one, json=GEN)
        assert_error(refused, 429, "rate_limited")
        assert refused.headers["retry-after"] == "1"  # 0.5 s to the next token, rounded up
        assert client.post("/generate", headers={**one, "Idempotency-Key": "r"}, json=GEN).status_code == 429
        assert client.post("/generate", headers=two, json=GEN).status_code == 202  # the bucket is per key
        for r in made:
            assert client.post(f"/jobs/{r.json()['job_id']}/cancel", headers=one).status_code == 200  # not rated
        store.clock = lambda: t0 + 0.6  # 2 a second: one token back
        assert client.post("/generate", headers=one, json=GEN).status_code == 202
        assert client.post("/generate", headers=one, json=GEN).status_code == 429


def test_finished_job_records_expire_and_leave_the_listing(api_settings):
    conf = api_settings.model_copy(update={"job_retention_s": 60, "api_keys": ["retention-1"]})
    with TestClient(create_app(conf)) as client:
        auth = {"Authorization": "Bearer retention-1"}
        done, kept = (client.post("/generate", headers=auth, json=GEN).json()["job_id"] for _ in range(2))
        assert client.post(f"/jobs/{done}/cancel", headers=auth).status_code == 200
        store = client.app.state.store
        assert 0 < store.redis.ttl(store.job_key(done)) <= 60 and store.redis.ttl(store.job_key(kept)) == -1
        store.redis.delete(store.job_key(done))  # as Redis does once the TTL has passed
        assert [j["id"] for j in client.get("/jobs", headers=auth).json()["items"]] == [kept]
        assert store.redis.zcard(store.owner_key(store.get_job(kept).owner, "jobs")) == 1  # the id left the index


def test_per_key_queue_limit_is_429(api_settings):
    limited = api_settings.model_copy(update={"max_queued_jobs_per_key": 2, "api_keys": ["limited-key"]})
    headers = {"Authorization": "Bearer limited-key"}
    with TestClient(create_app(limited)) as client:
        ids = [client.post("/generate", headers=headers, json=GEN) for _ in range(2)]
        assert all(r.status_code == 202 for r in ids)
        assert_error(client.post("/generate", headers=headers, json=GEN), 429, "too_many_requests")
        client.post(f"/jobs/{ids[0].json()['job_id']}/cancel", headers=headers)
        assert client.post("/generate", headers=headers, json=GEN).status_code == 202


# ---- idempotency ----------------------------------------------------------------------------------
def test_generate_idempotency_key(api, a, b):
    key = {"Idempotency-Key": "retry-123"}
    first = api.post("/generate", headers={**a, **key}, json=GEN)
    again = api.post("/generate", headers={**a, **key}, json=GEN)
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"]
    other_body = api.post("/generate", headers={**a, **key}, json={**GEN, "prompt": "a cat"})
    assert_error(other_body, 409, "idempotency_key_reused")
    other_key = api.post("/generate", headers={**b, **key}, json=GEN)  # keys are per tenant
    assert other_key.status_code == 202 and other_key.json()["job_id"] != first.json()["job_id"]


def test_upload_idempotency_key_and_dedup(api, a, checkpoints):
    key = {"Idempotency-Key": "upload-1"}
    first = upload(api, a, checkpoints["lora"], headers=key)
    again = upload(api, a, checkpoints["lora"], headers=key)
    assert first.status_code == again.status_code == 202
    assert first.json() == {**again.json(), "status": first.json()["status"]}
    third = upload(api, a, checkpoints["lora"])  # same bytes, no key: a new customization, one stored object
    assert third.json()["customization_id"] != first.json()["customization_id"]
    sha = api.get(f"/customizations/{first.json()['customization_id']}", headers=a).json()["checkpoint"]["sha256"]
    assert api.get(f"/customizations/{third.json()['customization_id']}", headers=a).json()["checkpoint"]["sha256"] == sha
    assert stored_keys(api, f"checkpoints/{sha}") == [f"checkpoints/{sha}.safetensors"]
    assert stored_keys(api, "uploads/") == []


def test_upload_idempotency_key_reused_with_another_request_is_409(api, a, checkpoints):
    """Was 202 and the original job for each of these (the README promised 409)."""
    key = {"Idempotency-Key": "upload-reuse"}
    first = upload(api, a, checkpoints["lora"], headers=key)
    assert first.status_code == 202
    objects = stored_keys(api, "checkpoints/")
    assert_error(upload(api, a, checkpoints["unet"], headers=key), 409, "idempotency_key_reused")  # other file
    assert_error(upload(api, a, checkpoints["lora"], {**TINY_CONFIG, "seed": 2}, headers=key), 409,
                 "idempotency_key_reused")  # other config
    assert_error(upload(api, a, checkpoints["lora"], {"prompts": "x"}, headers=key), 422, "invalid_argument",
                 "config.prompts")  # a garbage config is refused as such
    text = api.post("/customizations", headers={**a, **key, "Content-Type": "text/plain"}, content=b"hello")
    assert_error(text, 415, "unsupported_media_type")
    assert upload(api, a, checkpoints["lora"], headers=key).json()["job_id"] == first.json()["job_id"]
    assert stored_keys(api, "checkpoints/") == objects and stored_keys(api, "uploads/") == []  # retries store nothing


def test_an_idempotency_key_of_a_request_that_died_is_free_after_its_lease(api, a):
    """A request killed mid-upload left its key reserved for 24 h (every retry 409); now a lease."""
    import time

    from api.auth import owner_for

    store = api.app.state.store
    owner = owner_for(a["Authorization"], [KEY_A])
    assert store.idempotency_reserve(owner, "generate", "died-1", ttl_s=1) is None  # as a request that then died
    assert_error(api.post("/generate", headers={**a, "Idempotency-Key": "died-1"}, json=GEN), 409,
                 "idempotency_in_progress")
    time.sleep(1.3)
    retry = api.post("/generate", headers={**a, "Idempotency-Key": "died-1"}, json=GEN)
    assert retry.status_code == 202, retry.text
    assert api.post("/generate", headers={**a, "Idempotency-Key": "died-1"}, json=GEN).json()["job_id"] == \
        retry.json()["job_id"]  # bound for the full retention once the request finished
    assert store.redis.ttl(store._idem_key(owner, "generate", "died-1")) > api.app.state.settings.idempotency_lease_s


# ---- customizations -------------------------------------------------------------------------------
def test_upload_accepted_and_customization_views(api, a, b, checkpoints):
    import hashlib

    response = upload(api, a, checkpoints["unet"], {**TINY_CONFIG, "name": "mine"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"job_id", "customization_id", "status"} and body["status"] == "queued"
    assert response.headers["Location"] == f"/jobs/{body['job_id']}"
    view = api.get(f"/customizations/{body['customization_id']}", headers=a).json()
    assert view["status"] == "queued" and view["name"] == "mine" and view["manifest"] is None
    assert view["checkpoint"] == {"sha256": hashlib.sha256(checkpoints["unet"].read_bytes()).hexdigest(),
                                  "format": "unet"}
    assert view["base_model"] == "tiny" and view["config"]["train_steps"] == TINY_CONFIG["train_steps"]
    job = api.get(f"/jobs/{body['job_id']}", headers=a).json()
    assert job["kind"] == "customize" and job["customization_id"] == body["customization_id"]
    listed = [c["id"] for c in api.get("/customizations", headers=a).json()["items"]]
    assert listed[0] == body["customization_id"]
    assert body["customization_id"] not in [c["id"] for c in api.get("/customizations", headers=b).json()["items"]]
    assert_error(api.get(f"/customizations/{body['customization_id']}", headers=b), 404, "not_found")
    assert_error(api.post("/generate", headers=b, json={**GEN, "customization_id": body["customization_id"]}),
                 404, "not_found", "customization_id")
    assert api.post("/generate", headers=a, json={**GEN, "customization_id": body["customization_id"]}).status_code == 202
    assert_error(api.get("/customizations/cus_missing", headers=a), 404, "not_found")
    api.post(f"/jobs/{body['job_id']}/cancel", headers=a)
    assert api.get(f"/customizations/{body['customization_id']}", headers=a).json()["status"] == "canceled"
    assert_error(api.post("/generate", headers=a, json={**GEN, "customization_id": body["customization_id"]}),
                 409, "customization_failed")



class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/stillmoving-pwned",))


BAD_UPLOADS = {
    "empty": (b"", "invalid_argument"),
    "random bytes": (b"\x00\x01garbage" * 100, "invalid_checkpoint"),
    "pickle": (pickle.dumps({"state_dict": Evil()}), "invalid_checkpoint"),
    "huge header length": (struct.pack("<Q", 2**60) + b"{}", "invalid_checkpoint"),
    "header not json": (struct.pack("<Q", 10) + b"not json!!" + b"\x00" * 8, "invalid_checkpoint"),
    "offsets past the file": (safetensors_bytes({"conv_in.bias": {"dtype": "F32", "shape": [16],
                                                                  "data_offsets": [0, 64]}}, b"\x00" * 8),
                              "invalid_checkpoint"),
    "unknown keys": (safetensors_bytes({"not.a.unet.key": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                                       b"\x00" * 8), "invalid_checkpoint"),
    "lora for a missing module": (safetensors_bytes(
        {"unet.down_blocks.9.attn1.to_q.lora_A.weight": {"dtype": "F32", "shape": [1, 16], "data_offsets": [0, 64]}},
        b"\x00" * 64), "invalid_checkpoint"),
    "lora with wrong shape": (safetensors_bytes(
        {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight":
         {"dtype": "F32", "shape": [1, 7], "data_offsets": [0, 28]}}, b"\x00" * 28), "invalid_checkpoint"),
    # Each of these four was a 500. tests/service/test_fuzz.py found the first two (an unhashable dtype, a LoRA
    # on a 1-D norm weight); the last two are headers stdlib json fails on with RecursionError or ValueError.
    "dtype not a string": (safetensors_bytes({"conv_in.bias": {"dtype": ["F32"], "shape": [16],
                                                               "data_offsets": [0, 64]}}, b"\x00" * 64),
                           "invalid_checkpoint"),
    "lora on a 1-d weight": (safetensors_bytes(
        {"unet.down_blocks.0.attentions.0.norm.lora_A.weight": {"dtype": "F32", "shape": [4, 16],
                                                               "data_offsets": [0, 256]}}, b"\x00" * 256),
        "invalid_checkpoint"),
    "header nested too deep": (struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000, "invalid_checkpoint"),
    "header with a 5000-digit number": (struct.pack("<Q", 5010) + b'{"x": ' + b"9" * 5000 + b"}   ",
                                        "invalid_checkpoint"),
}


def test_a_header_of_too_many_values_is_refused_before_it_is_parsed(api, a, tmp_path):
    """A shape list of 300,000 ones (the hardening issue's 8 million blocked the event loop 2.2 s an upload)."""
    path = tmp_path / "many.safetensors"
    path.write_bytes(safetensors_bytes({"x": {"dtype": "F32", "shape": [1] * 300_000, "data_offsets": [0, 4]}},
                                       b"\x00" * 4))
    error = assert_error(upload(api, a, path), 422, "invalid_checkpoint", "checkpoint")
    assert "300002 values" in error["message"]  # the commas of the shape and the offsets


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_checkpoints_are_refused_and_nothing_is_stored_or_queued(api, tmp_path, name):
    content, code = BAD_UPLOADS[name]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    c = {"Authorization": f"Bearer {KEY_C}"}
    before_jobs = job_ids(api, c)
    before_objects = stored_keys(api, "checkpoints/")
    error = assert_error(upload(api, c, path), 422, code, "checkpoint")
    assert len(error["message"]) > 10
    assert stored_keys(api, "checkpoints/") == before_objects
    assert stored_keys(api, "uploads/") == []
    assert job_ids(api, c) == before_jobs
    import os

    assert not os.path.exists("/tmp/stillmoving-pwned")


def test_unet_with_a_wrong_shape_names_the_tensor(api, a, checkpoints, tmp_path):
    raw = checkpoints["unet"].read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    name = "conv_in.bias"
    header[name]["shape"] = [4, 4]  # same byte count, wrong shape
    path = tmp_path / "reshaped.safetensors"
    path.write_bytes(safetensors_bytes(header, raw[8 + length:]))
    error = assert_error(upload(api, a, path), 422, "invalid_checkpoint", "checkpoint")
    assert name in error["message"]


@pytest.mark.parametrize("filename,message", [("../evil.safetensors", "path separators"),
                                              ("dir\\x.safetensors", "path separators"),
                                              ("model.ckpt", ".safetensors")])
def test_bad_filenames(api, a, checkpoints, filename, message):
    error = assert_error(upload(api, a, checkpoints["lora"], filename=filename), 422, "invalid_argument", "checkpoint")
    assert message in error["message"]


@pytest.mark.parametrize("config,field", [
    ({}, "config.prompts"), ({**TINY_CONFIG, "prompts": []}, "config.prompts"),
    ({**TINY_CONFIG, "prompts": ["x"] * 17}, "config.prompts"), ({**TINY_CONFIG, "prompts": ["x" * 501]}, "config.prompts"),
    ({**TINY_CONFIG, "num_images": 0}, "config.num_images"), ({**TINY_CONFIG, "rank": 0}, "config.rank"),
    ({**TINY_CONFIG, "learning_rate": 0}, "config.learning_rate"), ({**TINY_CONFIG, "height": 33}, "config.height"),
    ({**TINY_CONFIG, "base_model": "sdxl"}, "config.base_model"), ({**TINY_CONFIG, "bogus": 1}, "config.bogus"),
    ({**TINY_CONFIG, "num_frames": 40}, "config.num_frames"),  # over the motion modules' 32 positions
    ({**TINY_CONFIG, "train_steps": 20000}, "config.train_steps"),  # over tiny's training cost limit
    ({**TINY_CONFIG, "height": 512, "width": 512}, "config.height"),
])
def test_bad_configs(api, a, checkpoints, config, field):
    assert_error(upload(api, a, checkpoints["lora"], config), 422, "invalid_argument", field)


@pytest.mark.parametrize("raw", ["[" * 30_000 + "]" * 30_000, '{"prompts": ["x"], "seed": 1' + "0" * 5000 + "}",
                                 '{"prompts": ["\\ud800"]}'], ids=["deep", "huge-int", "lone-surrogate"])
def test_config_json_that_no_response_could_hold_is_422(api, checkpoints, raw):
    """Was a 500 (RecursionError, ValueError) or, for the surrogate, a 202 whose records no view could render."""
    c = {"Authorization": f"Bearer {KEY_C}"}
    before = job_ids(api, c)
    response = api.post("/customizations", headers=c, data={"config": raw},
                        files={"checkpoint": ("x.safetensors", checkpoints["lora"].read_bytes())})
    error = assert_error(response, 422, "invalid_argument", "config")
    assert "not valid JSON" in error["message"]
    assert job_ids(api, c) == before


@pytest.mark.parametrize("path", ["/jobs", "/customizations"])
@pytest.mark.parametrize("cursor", ["nan", "-NaN", "inf", "abc", "1.5", "1.5~", "nan~job_x"])
def test_cursor_not_from_this_api_is_422(api, a, path, cursor):
    """A "nan" cursor was a 503 (job store unreachable): it parses as a float, which Redis refuses as a bound."""
    assert_error(api.get(path, headers=a, params={"cursor": cursor}), 422, "invalid_argument", "cursor")


def test_malformed_forms(api, a, checkpoints):
    assert_error(api.post("/customizations", headers=a, json={"prompts": ["x"]}), 415, "unsupported_media_type")
    no_config = api.post("/customizations", headers=a,
                         files={"checkpoint": ("x.safetensors", checkpoints["lora"].read_bytes())})
    assert_error(no_config, 422, "invalid_argument", "config")
    no_file = api.post("/customizations", headers=a, files={"config": (None, json.dumps(TINY_CONFIG))})
    assert_error(no_file, 422, "invalid_argument", "checkpoint")
    bad_json = api.post("/customizations", headers=a, data={"config": "{nope"},
                        files={"checkpoint": ("x.safetensors", checkpoints["lora"].read_bytes())})
    assert_error(bad_json, 422, "invalid_argument", "config")
    cut = (b'--b\r\nContent-Disposition: form-data; name="config"\r\n\r\n' + json.dumps(TINY_CONFIG).encode() +
           b'\r\n--b\r\nContent-Disposition: form-data; name="checkpoint"; filename="x.safetensors"\r\n\r\n' +
           checkpoints["lora"].read_bytes())  # no closing boundary: the upload was cut off
    before = job_ids(api, a)
    response = api.post("/customizations", headers={**a, "Content-Type": "multipart/form-data; boundary=b"},
                        content=cut)
    assert_error(response, 400, "bad_request")
    assert "closing boundary" in response.json()["error"]["message"]
    assert job_ids(api, a) == before and stored_keys(api, "uploads/") == []


def test_hygiene_empty_body_empty_customization_id_and_headers(api, a):
    assert_error(api.post("/generate", headers={**a, "Content-Type": "application/json"}), 400, "bad_request")
    assert_error(api.post("/generate", headers=a, json={**GEN, "customization_id": ""}), 422, "invalid_argument",
                 "customization_id")  # was the base model
    page = api.get("/ui/")
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
    for response in (page, api.get("/jobs", headers=a), api.get("/jobs")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"


def test_upload_over_the_limit_is_413_and_nothing_is_stored(api_settings, checkpoints):
    small = api_settings.model_copy(update={"max_upload_bytes": 4096})
    with TestClient(create_app(small)) as client:
        before = stored_keys(client, "checkpoints/")
        response = upload(client, {"Authorization": f"Bearer {KEY_A}"}, checkpoints["unet"])
        assert_error(response, 413, "payload_too_large", "checkpoint")
        assert stored_keys(client, "checkpoints/") == before
        assert stored_keys(client, "uploads/") == []


def test_upload_over_the_limit_without_content_length_is_rejected_while_streaming(api_settings):
    """A chunked body (no Content-Length) is cut off once the checkpoint passes the limit."""
    small = api_settings.model_copy(update={"max_upload_bytes": 64 * 1024})
    boundary = "stillmovingboundary"
    sent = []

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"config\"\r\n\r\n"
               f"{json.dumps(TINY_CONFIG)}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"checkpoint\"; "
               f"filename=\"big.safetensors\"\r\n\r\n").encode()
        for _ in range(64):  # 4 MiB in total if everything were read
            sent.append(1)
            yield b"\x00" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    with TestClient(create_app(small)) as client:
        before = stored_keys(client, "checkpoints/")
        response = client.post("/customizations", content=body(),
                               headers={"Authorization": f"Bearer {KEY_A}",
                                        "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert_error(response, 413, "payload_too_large", "checkpoint")
        assert stored_keys(client, "checkpoints/") == before and stored_keys(client, "uploads/") == []
