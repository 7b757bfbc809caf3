"""A job's log, live status (Server-Sent Events) and timings, against a real API (uvicorn), worker, Redis and S3."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
import redis

from api.auth import owner_for
from client.http import iter_sse
from common.jobstore import JobStore, now
from common.schemas import JobRecord
from tests.conftest import KEY_A, free_port
from tests.service.helpers import TINY_CONFIG, assert_error, upload, wait_job
from tests.service.processes import start_api, stop_group

TRAIN_STEPS = 20  # loss lines at steps 10 and 20 (log_loss_every's default)


def read_sse(lines, until=None) -> list[dict]:
    """The events ({"id"?, "event", "data"}) and comments ({"comment"}) of a stream's `lines` as they come,
    until the server ends it or `until(event)` says stop (the rest stays in `lines`)."""
    seen = []
    for event in iter_sse(lines):
        seen.append(event)
        if until is not None and until(event):
            break
    return seen


def stream(api: str, job_id: str, key: str = KEY_A, after: str | None = None):
    headers = {"Authorization": f"Bearer {key}"} | ({"Last-Event-ID": after} if after else {})
    return httpx.stream("GET", f"{api}/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(60))


@pytest.fixture(scope="module")
def api(settings, worker, tmp_path_factory):
    """The API under uvicorn (SSE over real connections), polling its streams often and keeping them alive
    with a comment every 0.3 s."""
    own = settings.model_copy(update={"api_host": "127.0.0.1", "api_port": free_port(), "events_poll_s": 0.05,
                                      "events_keepalive_s": 0.3})
    proc = start_api(own, tmp_path_factory.mktemp("events-api") / "api.log")
    yield f"http://127.0.0.1:{own.api_port}"
    stop_group(proc)


@pytest.fixture(scope="module")
def followed(api, client, auth_a, checkpoints, settings):
    """A customization followed over SSE from its creation, the connection dropped a few training steps in
    and resumed with Last-Event-ID after a pause: (job id, events before, events after the reconnect)."""
    response = upload(client, auth_a, checkpoints["lora"], {**TINY_CONFIG, "train_steps": TRAIN_STEPS})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    with stream(api, job_id) as first:
        assert first.status_code == 200 and first.headers["content-type"].startswith("text/event-stream")
        before = read_sse(first.iter_lines(), until=lambda e: e.get("event") == "progress" and e["data"]["stage"] == "train"
                          and e["data"]["step"] >= 3)
    time.sleep(0.5)  # steps go on while no one listens
    last_id = [e for e in before if "id" in e][-1]["id"]
    with stream(api, job_id, after=last_id) as second:
        after = read_sse(second.iter_lines())  # to its end: the server closes the stream once the job ended
    return job_id, before, after


@pytest.mark.slow
def test_sse_from_queued_to_succeeded_resumes_after_last_event_id(followed, settings):
    job_id, before, after = followed
    stored = [entry_id for entry_id, _ in redis.Redis.from_url(settings.redis_url).xrange(
        JobStore.events_key(job_id))]
    ids = [e["id"] for e in before + after if "id" in e]
    assert [i.decode() for i in stored] == ids  # no event lost, none duplicated, in order
    assert before[0]["event"] == "status" and before[0]["data"]["status"] == "queued"
    resumed = [e for e in after if "id" in e]
    assert resumed[0]["data"]["stage"] == "train" and resumed[0]["data"]["step"] > before[-1]["data"]["step"]
    assert after[-1]["event"] == "status" and after[-1]["data"]["status"] == "succeeded"
    statuses = [e["data"]["status"] for e in before + after if e.get("event") == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    for event in before + after:
        if "id" in event:
            assert event["data"]["id"] == event["id"] and event["event"] == event["data"]["type"]


@pytest.mark.slow
def test_eta_while_running_and_metrics_in_the_result(followed, client, auth_a):
    job_id, before, after = followed
    running = [e["data"] for e in before + after if e.get("event") == "progress"]
    etas = [p["eta_s"] for p in running if p["stage"] == "train" and p["step"] < TRAIN_STEPS]
    assert etas and all(isinstance(eta, (int, float)) and eta > 0 for eta in etas), running
    assert running[-1]["progress"] <= 1.0
    job = client.get(f"/jobs/{job_id}", headers=auth_a).json()
    assert job["eta_s"] is None  # only while running
    metrics = job["result"]["metrics"]
    assert {"fetch", "train", "upload"} <= set(metrics["stages"]), metrics
    assert 0 <= metrics["queue_s"] and 0 < metrics["run_s"] <= metrics["device_s"]
    assert sum(metrics["stages"].values()) == pytest.approx(metrics["run_s"], abs=0.5)

    video = client.post("/generate", headers=auth_a, json={"prompt": "x", "num_frames": 4, "height": 32,
                                                           "width": 32, "steps": 2, "format": "gif"})
    done = wait_job(client, auth_a, video.json()["job_id"])
    assert done["status"] == "succeeded", done
    assert {"load", "denoise", "upload"} <= set(done["result"]["metrics"]["stages"]), done["result"]


@pytest.mark.slow
def test_logs_hold_status_stage_changes_losses_and_the_worker(followed, client, auth_a, worker):
    job_id, _, _ = followed
    response = client.get(f"/jobs/{job_id}/logs", headers=auth_a)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert items and all(item["message"] for item in items)
    assert {item["type"] for item in items} <= {"status", "stage", "log"}  # progress is the stream's only
    running = [i for i in items if i["type"] == "status" and i["status"] == "running"]
    assert len(running) == 1 and running[0]["attempt"] == 1
    host, _, pid = running[0]["worker"].rpartition(":")
    with open(f"/proc/{pid}/stat") as stat:  # the pool process of the session's worker ran it
        assert host == socket.gethostname() and int(stat.read().rsplit(")", 1)[1].split()[1]) == worker.pid
    stages = [i["stage"] for i in items if i["type"] == "stage"]
    assert stages[0] == "fetch" and stages[-1] == "upload" and "train" in stages, stages
    losses = [i for i in items if i["type"] == "log" and i.get("stage") == "train"]
    assert [i["step"] for i in losses] == [10, TRAIN_STEPS], losses
    assert all(isinstance(i["loss"], float) and "loss" in i["message"] for i in losses)
    assert items[-1]["type"] == "status" and items[-1]["status"] == "succeeded"
    with_job = client.get(f"/jobs/{job_id}", params={"logs": "true"}, headers=auth_a).json()
    assert with_job["logs"] == items
    assert client.get(f"/jobs/{job_id}", headers=auth_a).json()["logs"] is None


def test_another_keys_job_is_404_on_logs_and_events(client, auth_a, auth_b, settings):
    job = idle_job(settings, "events-404")
    for path in (f"/jobs/{job.id}/logs", f"/jobs/{job.id}/events", f"/jobs/{job.id}?logs=true"):
        assert_error(client.get(path, headers=auth_b), 404, "not_found", "job_id")
        assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get(f"/jobs/{job.id}/logs", headers=auth_a).json()["items"][0]["status"] == "queued"
    bad = client.get(f"/jobs/{job.id}/events", headers={**auth_a, "Last-Event-ID": "x\\y"})
    assert_error(bad, 422, "invalid_argument", "Last-Event-ID")


def idle_job(settings, queue: str, store: JobStore | None = None) -> JobRecord:
    """A queued job of key A in a queue no worker serves (it stays queued until canceled)."""
    job = JobRecord(id=f"job_events_{time.time_ns()}", kind="generate",
                    owner=owner_for(f"Bearer {KEY_A}", settings.api_keys), created_at=now())
    assert (store or JobStore(settings.redis_url)).create_job(job, f"{queue}-{time.time_ns()}")
    return job


@pytest.mark.slow
def test_a_queued_jobs_stream_keeps_alive_tells_its_position_and_ends_with_it(api, client, auth_a, settings):
    job = idle_job(settings, "events-idle")
    started = time.monotonic()
    with stream(api, job.id) as response:
        lines = response.iter_lines()
        seen = read_sse(lines, until=lambda e: e.get("comment") == "keep-alive"
                        and time.monotonic() - started > 1.5)
        assert client.post(f"/jobs/{job.id}/cancel", headers=auth_a).status_code == 200
        rest = read_sse(lines)  # ends by itself once the job did
    assert seen[0]["data"]["status"] == "queued"
    assert {"event": "queue", "data": {"type": "queue", "queue_position": 1}} in seen
    assert sum(1 for e in seen if e.get("comment") == "keep-alive") >= 3  # idle, every 0.3 s, never cut
    assert rest[-1]["data"]["status"] == "canceled" and rest[-1]["data"]["error"]["code"] == "canceled"


def test_the_log_is_bounded_and_the_stream_expires_with_its_job(client, auth_a, settings):
    store = JobStore(settings.redis_url, retention_s=600, max_events=20)
    job = idle_job(settings, "events-bounded", store)
    for i in range(50):
        assert store.add_event(job.id, {"type": "log", "level": "info", "message": f"line {i}"})
    assert store.redis.xlen(store.events_key(job.id)) == 20
    items = client.get(f"/jobs/{job.id}/logs", headers=auth_a).json()["items"]
    assert [i["message"] for i in items] == [f"line {i}" for i in range(30, 50)]  # the newest 20
    assert store.redis.ttl(store.events_key(job.id)) == -1  # kept while the job lives
    store.cancel(job.id)
    assert 590 <= store.redis.ttl(store.events_key(job.id)) <= 600  # then expires with its record
    assert store.job_events(job.id)[-1]["status"] == "canceled"
    store.redis.delete(store.job_key(job.id))
    assert not store.add_event(job.id, {"type": "log", "message": "late"})  # no stream outlives its record
    assert store.redis.ttl(store.events_key(job.id)) > 0
