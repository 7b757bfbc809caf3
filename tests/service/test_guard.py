"""`api.guard` in front of a real uvicorn server: a bad key or an oversized body is answered before the
body is read, so a client that declares 1 GB (and sends none of it) gets its 401/413 at once, and a
chunked JSON body is cut off at the limit. Raw sockets, so nothing in the client reads ahead."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from scripts.processes import free_port, stop_group
from tests.conftest import KEY_A, KEY_B
from tests.service.processes import start_api


@pytest.fixture(scope="module")
def api(settings, tmp_path_factory):
    conf = settings.model_copy(update={"api_port": free_port(), "max_json_bytes": 64 * 1024,
                                       "api_head_timeout_s": 1.0, "api_body_timeout_s": 1.0, "uploads_per_key": 1,
                                       "generate_queue": "guard-generate", "train_queue": "guard-train"})
    proc = start_api(conf, tmp_path_factory.mktemp("guard") / "api.log")
    yield conf
    stop_group(proc)


def raw_request(conf, head: str, body: bytes = b"", timeout: float = 10) -> tuple[int, dict, dict, float]:
    """Send `head` (and `body`), return (status, headers, JSON body, seconds to the answer)."""
    start = time.monotonic()
    with socket.create_connection((conf.api_host, conf.api_port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    elapsed = time.monotonic() - start
    top, payload = data.split(b"\r\n\r\n", 1)
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    try:
        body = json.loads(payload or b"{}")
    except ValueError:  # uvicorn's own plain-text answers
        body = {"text": payload.decode("latin-1")}
    return int(lines[0].split()[1]), headers, body, elapsed


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_a_declared_gigabyte_without_a_key_is_401_before_its_body(api):
    status, headers, body, elapsed = raw_request(api, f"POST /generate HTTP/1.1\nHost: x\n"
                                                     f"Content-Type: application/json\nContent-Length: {2**30}\n")
    assert status == 401 and body["error"]["code"] == "unauthorized" and headers["www-authenticate"] == "Bearer"
    assert elapsed < 5  # answered without waiting for a byte of the body


def test_a_declared_oversized_json_body_with_a_key_is_413_before_its_body(api):
    status, _, body, elapsed = raw_request(api, f"POST /generate HTTP/1.1\nHost: x\nAuthorization: Bearer {KEY_A}\n"
                                                f"Content-Type: application/json\nContent-Length: {2**30}\n")
    assert status == 413 and body["error"]["code"] == "payload_too_large" and str(64 * 1024) in body["error"]["message"]
    assert elapsed < 5


def test_a_chunked_json_body_is_cut_off_at_the_limit(api):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(200):  # 200 KiB of prompt, over the 64 KiB limit, with no Content-Length
            yield b"x" * 1024
        yield b'"}'

    url = f"http://{api.api_host}:{api.api_port}/generate"
    response = httpx.post(url, content=chunks(), headers={"Authorization": f"Bearer {KEY_A}",
                                                         "Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    small = httpx.post(url, json={"prompt": "x"}, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=30)
    assert small.status_code == 202  # a body under the limit still goes through
    assert httpx.get(f"http://{api.api_host}:{api.api_port}/healthz", timeout=5).status_code == 200


def test_public_paths_and_the_page_need_no_key(api):
    base = f"http://{api.api_host}:{api.api_port}"
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/ui/"):
        assert httpx.get(base + path, timeout=10).status_code == 200, path
    assert httpx.get(base + "/jobs", timeout=10).headers["www-authenticate"] == "Bearer"


def test_the_direct_server_bounds_the_request_head(api):
    """Without the proxy in front, uvicorn's h11 parser refuses a head over max_request_head_bytes (100-200 MB
    heads were accepted by the httptools parser and stalled the server 11-55 s)."""
    status, _, _, elapsed = raw_request(api, "GET /healthz HTTP/1.1\nHost: x\nX-Pad: " + "a" * 200_000 + "\n")
    assert status == 400 and elapsed < 5
    assert httpx.get(f"http://{api.api_host}:{api.api_port}/healthz", timeout=5).status_code == 200


def _closed_after(sock: socket.socket, drip: bytes, every: float, limit: float) -> float | None:
    """Drip `drip` every `every` s until the server closes the connection; seconds it took, None past `limit`."""
    start = time.monotonic()
    sock.settimeout(every)
    while time.monotonic() - start < limit:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        try:
            sock.sendall(drip)
        except OSError:  # reset: closed
            return time.monotonic() - start
    return None


def test_the_direct_server_closes_a_dripping_or_silent_request_head(api):
    """nginx's client_header_timeout, on the direct path too (45 dripping heads stayed open before)."""
    with socket.create_connection((api.api_host, api.api_port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        took = _closed_after(sock, b"X-Drip: 1\r\n", 0.3, 10)
    assert took is not None and took < 4, took  # 1 s head timeout; header lines kept coming every 0.3 s
    with socket.create_connection((api.api_host, api.api_port)) as sock:
        took = _closed_after(sock, b"", 0.3, 10)
    assert took is not None and took < 4, took
    # a keep-alive connection idle longer than the head timeout (not the keep-alive one): its next head is
    # timed from its first byte, so a prompt request still goes through
    with socket.create_connection((api.api_host, api.api_port), timeout=5) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
                data += sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 200"), data
            time.sleep(1.5)


def test_a_stalled_body_is_408_and_queues_nothing(api):
    auth = f"Authorization: Bearer {KEY_B}\n"
    def job_ids() -> list[str]:  # ids only: the session's worker may be running other tests' jobs of this key
        return [job["id"] for job in httpx.get(f"http://{api.api_host}:{api.api_port}/jobs", timeout=10,
                                                headers={"Authorization": f"Bearer {KEY_B}"}).json()["items"]]

    before = job_ids()
    status, _, body, elapsed = raw_request(api, f"POST /generate HTTP/1.1\nHost: x\n{auth}Content-Type: "
                                                "application/json\nContent-Length: 100\n", b'{"prompt": "a')
    assert status == 408 and body["error"]["code"] == "request_timeout" and elapsed < 5
    boundary = "b0undary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"checkpoint\"; filename=\"c.safetensors\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + b"\0" * 1000
    status, _, body, elapsed = raw_request(api, f"POST /customizations HTTP/1.1\nHost: x\n{auth}Content-Type: "
                                                f"multipart/form-data; boundary={boundary}\nContent-Length: 100000\n",
                                           part)
    assert status == 408 and body["error"]["code"] == "request_timeout" and elapsed < 5
    assert job_ids() == before


def test_a_key_streams_a_bounded_number_of_uploads_at_once(api):
    """The proxy's per-key upload limit, on the direct path too (here 1): a second upload of the same key is
    429 at once, another key's is not refused, and the slot frees when the first ends."""
    boundary = "b0undary"

    def upload_head(key: str) -> bytes:
        return (f"POST /customizations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: "
                f"multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n--{boundary}\r\n"
                ).encode()

    def second(key: str) -> tuple[int, dict]:
        status, _, body, _ = raw_request(api, f"POST /customizations HTTP/1.1\nHost: x\nAuthorization: Bearer {key}"
                                              f"\nContent-Type: multipart/form-data; boundary={boundary}\n"
                                              "Content-Length: 4\n", b"--x\n")
        return status, body

    with socket.create_connection((api.api_host, api.api_port), timeout=5) as first:
        first.sendall(upload_head(KEY_A))
        time.sleep(0.3)  # the guard has counted it
        status, body = second(KEY_A)
        assert status == 429 and body["error"]["code"] == "too_many_uploads", body
        assert second(KEY_B)[0] not in (429, 500)  # another key's upload is let through (and refused as malformed)
        first.sendall(b"Content-Disposition: form-data; name=\"config\"\r\n\r\n{}")
    time.sleep(0.5)  # the first upload's connection closed: its slot is free
    assert second(KEY_A)[0] not in (429, 500)
