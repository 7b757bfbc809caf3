"""Webhooks against real servers on loopback: receivers (one per tenant) that check each delivery's signature
with the client helper, a real API app, two real workers with the engine stand-in (their deliverer threads),
Redis and S3. The module has its own Redis database, queues and bucket: the session's worker (whose settings
refuse loopback webhooks) never sees these jobs.

Receivers: ``/ok`` answers 200, ``/hang`` never answers (until the test ends), ``/redirect`` answers 302 to
``/ok``, ``/endless`` streams a body that never ends; a receiver can be stopped (connection refused) and
started again on its port.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from client.webhooks import WebhookVerificationError, event_of, verify
from common.jobstore import JobStore
from common.webhooks import WebhookRefused, signed_headers
from scripts.processes import free_port, in_group, kill_group, stop_group, wait_until
from tests.conftest import KEY_A, KEY_B
from tests.service.helpers import TINY_CONFIG, assert_error, upload, wait_job
from tests.service.processes import open_gate, start_standin
from worker.webhooks import post

A, B = {"Authorization": f"Bearer {KEY_A}"}, {"Authorization": f"Bearer {KEY_B}"}
VIDEO = {"prompt": "x", "num_frames": 8, "height": 32, "width": 32, "steps": 12, "format": "gif"}
QUICK = {"prompt": "x", "num_frames": 2, "height": 32, "width": 32, "steps": 1, "format": "gif"}
ALL_EVENTS = ["start", "progress", "completed"]


class Receiver:
    """A webhook receiver on a loopback port that verifies every delivery with `secret` (client.webhooks)."""

    def __init__(self, secret: str):
        self.secret, self.port = secret, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.received: list[dict] = []  # verified deliveries: {"path", "id", "event", "body", "at"}
        self.rejected: list[str] = []
        self.hanging: list[float] = []  # when each /hang request arrived
        self.release = threading.Event()
        self.server: ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/hang":
                    receiver.hanging.append(time.monotonic())
                    receiver.release.wait(60)
                    return
                try:
                    body = verify(receiver.secret, raw, dict(self.headers))
                except WebhookVerificationError as exc:
                    receiver.rejected.append(str(exc))
                    self.send_response(400)
                    self.end_headers()
                    return
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", receiver.url + "/ok")
                    self.end_headers()
                    return
                receiver.received.append({"path": self.path, "id": self.headers["webhook-id"], "body": body,
                                          "event": event_of(dict(self.headers)), "at": time.monotonic()})
                self.send_response(200)
                if self.path == "/endless":
                    self.end_headers()
                    try:
                        while not receiver.release.is_set():
                            self.wfile.write(b"x" * 65536)
                    except OSError:  # the deliverer stopped reading and closed the connection
                        pass
                    return
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def of(self, job_id: str) -> list[dict]:
        return [r for r in self.received if r["body"]["id"] == job_id]


@pytest.fixture(scope="module")
def conf(settings, tmp_path_factory):
    base, _, _ = settings.redis_url.rpartition("/")
    yield settings.model_copy(update={
        "redis_url": f"{base}/2", "train_queue": "hooks-train", "generate_queue": "hooks-generate",
        "s3_bucket": "stillmoving-hooks", "workdir": tmp_path_factory.mktemp("hooks-worker"),
        "webhook_allow_private": True, "webhook_backoff_s": 0.3, "webhook_backoff_max_s": 1.0,
        "webhook_poll_s": 0.1, "webhook_lease_s": 3.0, "webhook_timeout_s": 6.0,
        "heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 4.0, "reaper_interval_s": 1.0, "max_attempts": 2})
    redis.Redis.from_url(f"{base}/2").flushdb()


@pytest.fixture(scope="module")
def gates(tmp_path_factory):
    return tmp_path_factory.mktemp("hooks-gates")


@pytest.fixture(scope="module")
def workers(conf, gates):
    """Two real workers (the engine stand-in), each with its deliverer thread."""
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda name: start_standin(conf.model_copy(update={"workdir": conf.workdir / name}),
                                                         gates, name), ("hooks1", "hooks2")))
    yield procs
    for proc in procs:
        stop_group(proc)


@pytest.fixture(scope="module")
def api(conf, workers):
    with TestClient(create_app(conf)) as client:
        yield client


@pytest.fixture(scope="module")
def receivers(api):
    """One receiver per tenant, each checking signatures with its own tenant's secret."""
    made = {key: Receiver(api.get("/webhooks/secret", headers=auth).json()["secret"])
            for key, auth in (("a", A), ("b", B))}
    yield made
    for receiver in made.values():
        receiver.release.set()
        receiver.stop()


def generate(api, auth, url: str, events=None, **body) -> str:
    request = {**QUICK, **body, "webhook": url} | ({"webhook_events_filter": events} if events else {})
    response = api.post("/generate", headers=auth, json=request)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def attempts(api, auth, job_id: str) -> list[dict]:
    response = api.get(f"/jobs/{job_id}/webhooks", headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def completed(receiver: Receiver, job_id: str, timeout: float = 60) -> dict:
    return wait_until(lambda: next((r for r in receiver.of(job_id) if r["event"] == "completed"), None), timeout,
                      f"the completed delivery of {job_id}")


@pytest.mark.slow
def test_signed_deliveries_in_order_with_progress_throttled_and_attempts_listed(api, conf, receivers, gates):
    hook = receivers["a"]
    job_id = generate(api, A, hook.url + "/ok", ALL_EVENTS, **{**VIDEO, "prompt": "x @hold=denoise:2 @gate=slow"})
    wait_until(lambda: any(r["event"] == "progress" for r in hook.of(job_id)), 60, "a progress delivery")
    open_gate(gates, "slow")
    last = completed(hook, job_id)
    job = wait_job(api, A, job_id)
    assert job["status"] == "succeeded" and last["body"]["status"] == "succeeded"
    # the same job body as GET /jobs/{id} (presigned URLs are signed anew for each request)
    assert {k: v for k, v in last["body"].items() if k != "result"} == {k: v for k, v in job.items() if k != "result"}
    assert last["body"]["result"].keys() == job["result"].keys() and last["body"]["result"]["video_url"]
    got = hook.of(job_id)
    assert not hook.rejected
    events = [r["event"] for r in got]
    assert events[0] == "start" and events[-1] == "completed" and set(events[1:-1]) == {"progress"}
    stream_ids = [r["id"].rsplit("_", 1)[1] for r in got]  # msg_<job>_<stream id>: in stream order, none twice
    assert stream_ids == sorted(stream_ids, key=lambda s: tuple(map(int, s.split("-")))) and len(set(stream_ids)) == len(got)
    progress_ms = [int(s.split("-")[0]) for s, e in zip(stream_ids, events) if e == "progress"]
    assert all(b - a >= 500 for a, b in zip(progress_ms, progress_ms[1:])), progress_ms
    stored = [json.loads(f[b"event"]) for _, f in redis.Redis.from_url(conf.redis_url).xrange(JobStore.events_key(job_id))]
    assert sum(e["type"] == "progress" for e in stored) > len(progress_ms)  # throttled: some were not sent
    listed = attempts(api, A, job_id)
    assert [a["webhook_id"] for a in listed] == [r["id"] for r in got]
    assert all(a["delivered"] and a["status_code"] == 200 and a["error"] is None and a["attempt"] == 1 for a in listed)
    assert [a["event"] for a in listed] == events
    assert api.get(f"/jobs/{job_id}/webhooks", headers=B).status_code == 404  # another tenant's job



@pytest.mark.slow
def test_a_customization_delivers_its_completion_only_by_default(api, receivers, checkpoints):
    hook = receivers["a"]
    config = {**TINY_CONFIG, "use_motion_adapter": False, "webhook": hook.url + "/ok"}
    response = upload(api, A, checkpoints["lora"], config)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    last = completed(hook, job_id, timeout=180)
    assert last["body"]["kind"] == "customize" and last["body"]["status"] == "succeeded"
    assert last["body"]["customization_id"] == response.json()["customization_id"]
    time.sleep(0.5)
    assert [r["event"] for r in hook.of(job_id)] == ["completed"]  # start and progress not asked for


@pytest.mark.slow
def test_a_rotated_secret_signs_the_next_deliveries(api, receivers):
    hook = receivers["b"]
    old = hook.secret
    new = api.post("/webhooks/secret/rotate", headers=B).json()["secret"]
    assert new != old and new.startswith("whsec_") and api.get("/webhooks/secret", headers=B).json()["secret"] == new
    assert api.get("/webhooks/secret", headers=A).json()["secret"] != new  # per key
    hook.secret = new
    job_id = generate(api, B, hook.url + "/ok")
    last = completed(hook, job_id)
    assert not hook.rejected
    body = json.dumps(last["body"])
    with pytest.raises(WebhookVerificationError):  # the old secret's signature is not the new one's
        verify(old, body, signed_headers(new, last["id"], body))


@pytest.mark.slow
def test_deliveries_survive_the_receiver_being_down_for_a_while(api, conf):
    secret = api.get("/webhooks/secret", headers=A).json()["secret"]
    hook = Receiver(secret)
    hook.stop()  # connection refused until it is started again
    try:
        job_id = generate(api, A, hook.url + "/ok", ["start", "completed"])
        assert wait_job(api, A, job_id)["status"] == "succeeded"  # the job does not wait for its webhook
        failed = wait_until(lambda: len(tried := attempts(api, A, job_id)) >= 3 and tried, 60, "three failed attempts")
        assert all(not a["delivered"] and a["status_code"] is None and "Connect" in a["error"] for a in failed)
        assert {a["event"] for a in failed} == {"start"}  # in order: the completion waits for the start
        assert [a["attempt"] for a in failed[:3]] == [1, 2, 3]
        hook.start()
        last = completed(hook, job_id)
        assert [r["event"] for r in hook.of(job_id)] == ["start", "completed"]
        assert last["body"]["status"] == "succeeded" and not hook.rejected
        listed = attempts(api, A, job_id)
        start = [a for a in listed if a["event"] == "start"]
        assert start[-1]["delivered"] and start[-1]["status_code"] == 200 and len({a["webhook_id"] for a in start}) == 1
    finally:
        hook.stop()


@pytest.mark.slow
def test_a_hanging_receiver_does_not_delay_the_next_job(api, conf, receivers):
    hook = receivers["a"]
    hanging = generate(api, A, hook.url + "/hang")
    wait_until(lambda: hook.hanging, 60, "the hanging receiver's request")
    began = time.monotonic()
    quick = generate(api, A, hook.url + "/ok")
    last = completed(hook, quick)
    assert last["at"] - began < conf.webhook_timeout_s  # delivered while the other attempt still hangs
    assert attempts(api, A, hanging) == []  # its first attempt has not even ended yet
    tried = wait_until(lambda: attempts(api, A, hanging), conf.webhook_timeout_s + 10, "the hanging attempt's end")
    assert "Timeout" in tried[0]["error"] and tried[0]["duration_ms"] < (conf.webhook_timeout_s + 2) * 1000


def test_each_kind_of_refused_webhook_url_is_422_naming_the_field(conf, checkpoints):
    strict = conf.model_copy(update={"webhook_allow_private": False})
    refused = {"ftp://example.com/hook": "http and https", "file:///etc/passwd": "http and https",
               "http://127.0.0.1:9/hook": "loopback", "http://[::1]/hook": "loopback",
               "http://[::ffff:127.0.0.1]/hook": "loopback", "http://localhost:8080/hook": "loopback",
               "http://10.1.2.3/hook": "private", "http://192.168.0.7/hook": "private",
               "http://169.254.10.10/hook": "link-local", "http://169.254.169.254/latest/meta-data": "metadata",
               "https://0.0.0.0/hook": "loopback"}
    with TestClient(create_app(strict)) as api:
        before = len(api.get("/jobs?limit=100", headers=A).json()["items"])
        for url, why in refused.items():
            error = assert_error(api.post("/generate", headers=A, json={**QUICK, "webhook": url}), 422,
                                 "webhook_refused" if why != "http and https" else "invalid_argument", "webhook")
            assert why in error["message"], (url, error)
        for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/"):
            assert_error(upload(api, A, checkpoints["lora"], {**TINY_CONFIG, "webhook": url}), 422,
                         "webhook_refused", "config.webhook")
        assert_error(api.post("/generate", headers=A, json={**QUICK, "webhook": "http://example.com/",
                                                            "webhook_events_filter": ["done"]}), 422,
                     "invalid_argument", "webhook_events_filter.0")
        assert len(api.get("/jobs?limit=100", headers=A).json()["items"]) == before  # nothing queued
    allowed = conf.model_copy(update={"webhook_allow_private": True})
    with TestClient(create_app(allowed)) as api:  # the setting lets loopback through, never metadata
        assert_error(api.post("/generate", headers=A, json={**QUICK, "webhook": "http://169.254.169.254/"}),
                     422, "webhook_refused", "webhook")


def test_delivery_checks_the_address_again_follows_no_redirect_and_reads_a_bounded_response(conf):
    hook = Receiver("whsec_" + "QUJDREVGR0hJSktMTU5PUA==")
    try:
        body = b'{"id": "job_x"}'
        headers = signed_headers(hook.secret, "msg_1", body.decode())
        strict = conf.model_copy(update={"webhook_allow_private": False})
        with pytest.raises(WebhookRefused, match="loopback"):  # a server listens there: refused at delivery
            post(hook.url + "/ok", body, headers, strict)
        assert hook.received == []
        assert post(hook.url + "/redirect", body, headers, conf) == 302
        assert hook.received == []  # /ok was never asked: the redirect was not followed
        began = time.monotonic()
        assert post(hook.url + "/endless", body, headers, conf) == 200
        assert time.monotonic() - began < conf.webhook_timeout_s  # stopped after the bounded read
        assert [r["path"] for r in hook.received] == ["/endless"]
    finally:
        hook.release.set()
        hook.stop()


@pytest.mark.slow
def test_a_worker_sigkill_loses_no_event_and_delivers_none_to_another_tenant(api, conf, workers, receivers, gates):
    hook_a, hook_b = receivers["a"], receivers["b"]
    job_a = generate(api, A, hook_a.url + "/ok", ["start", "completed"],
                     **{**VIDEO, "prompt": "x @hold=denoise @gate=killed"})
    job_b = generate(api, B, hook_b.url + "/ok", ["start", "completed"])
    wait_until(lambda: api.get(f"/jobs/{job_a}", headers=A).json()["stage"] == "denoise", 60, "job A held")
    holder = int(JobStore(conf.redis_url).get_job(job_a).worker.rsplit(":", 1)[1])
    victim = next(w for w in workers if in_group(w, holder))
    kill_group(victim)
    open_gate(gates, "killed")
    job = wait_job(api, A, job_a, timeout=120)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    completed(hook_a, job_a)
    completed(hook_b, job_b)
    stored = redis.Redis.from_url(conf.redis_url, decode_responses=True).xrange(JobStore.events_key(job_a))
    wanted = [i for i, f in stored if json.loads(f["event"]).get("status") in ("running", "succeeded")]
    delivered = [r["id"].rsplit("_", 1)[1] for r in hook_a.of(job_a)]
    assert list(dict.fromkeys(delivered)) == wanted  # both starts and the end, in order (a repeat allowed)
    assert {r["body"]["id"] for r in hook_a.received} >= {job_a} and job_a not in {r["body"]["id"] for r in hook_b.received}
    assert job_b not in {r["body"]["id"] for r in hook_a.received}
    assert not hook_a.rejected and not hook_b.rejected  # each signed with its own tenant's secret


def test_signatures_match_the_standard_webhooks_example_and_the_helper_refuses_tampering():
    """The spec's published example (secret, id, timestamp, body → signature), then the client helper."""
    secret, body = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", '{"test": 2432232314}'
    headers = signed_headers(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", body, timestamp=1614265330)
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    fresh = signed_headers(secret, "msg_1", body)
    assert verify(secret, body.encode(), fresh) == {"test": 2432232314}
    for bad_body, bad_headers in [(body.replace("2", "3"), fresh), (body, headers),  # tampered; too old
                                  (body, {**fresh, "webhook-signature": "v1,AAAA"}),
                                  (body, {**fresh, "webhook-signature": "garbage"})]:
        with pytest.raises(WebhookVerificationError):
            verify(secret, bad_body, bad_headers)
