"""The reverse proxy's config (deploy/nginx/stillmoving.conf.template, compose's `proxy`), run by a real
nginx in front of a real API: it passes requests through and bounds what uvicorn does not (head size,
a head dripped slowly, uploads streaming at once per key)."""

from __future__ import annotations

import shutil
import socket
import string
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from scripts.processes import ROOT, await_ready, free_port, spawn, stop_group
from tests.conftest import KEY_A, KEY_B
from tests.service.processes import start_api

pytestmark = pytest.mark.slow
TEMPLATE = ROOT / "deploy" / "nginx" / "stillmoving.conf.template"
MAIN = """worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    include {d}/stillmoving.conf;
}}
"""


@pytest.fixture(scope="module")
def proxy(settings, tmp_path_factory):
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if nginx is None:
        pytest.fail("nginx is not installed (apt-get install nginx-light)")
    api = settings.model_copy(update={"api_port": free_port(), "api_http": "httptools"})  # as behind the proxy
    work = tmp_path_factory.mktemp("proxy")
    work.chmod(0o777)
    api_proc = start_api(api, work / "api.log")
    port = free_port()
    conf = string.Template(TEMPLATE.read_text()).safe_substitute(
        PROXY_PORT=port, API_UPSTREAM=f"127.0.0.1:{api.api_port}", MAX_BODY="16m", UPLOADS_PER_KEY=2)
    (work / "stillmoving.conf").write_text(conf)
    (work / "nginx.conf").write_text(MAIN.format(d=work))
    check = subprocess.run([nginx, "-t", "-p", str(work), "-c", str(work / "nginx.conf")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = spawn([nginx, "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"], None)
    url = f"http://127.0.0.1:{port}"
    try:
        await_ready(proc, lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, 30, "nginx")
        yield url, port
    finally:
        stop_group(proc)
        stop_group(api_proc)


def test_requests_pass_through(proxy):
    url, _ = proxy
    assert httpx.get(url + "/readyz", timeout=10).status_code == 200
    job = httpx.post(url + "/generate", headers={"Authorization": f"Bearer {KEY_A}"}, timeout=10,
                     json={"prompt": "x", "num_frames": 2, "steps": 1})
    assert job.status_code == 202, job.text
    assert httpx.get(url + "/generate", timeout=10).status_code in (401, 405)


def test_metrics_are_not_served_through_the_proxy(proxy):
    url, _ = proxy
    refused = httpx.get(url + "/metrics", timeout=10)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"


def test_an_oversized_head_is_431_json(proxy):
    url, _ = proxy
    response = httpx.get(url + "/healthz", headers={"X-Pad": "a" * 100_000}, timeout=10)
    assert response.status_code == 431 and response.json()["error"]["code"] == "request_head_too_large"


def test_a_head_dripped_slowly_is_cut_off(proxy):
    _, port = proxy
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        closed = False
        while time.monotonic() - start < 18:
            try:
                sock.sendall(b"X-Drip: 1\r\n")
                sock.settimeout(3)
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            else:  # nginx answered (408) before it closed
                closed = True
                break
    elapsed = time.monotonic() - start
    assert closed and 8 < elapsed < 18, elapsed  # client_header_timeout 10 s


def test_uploads_streaming_at_once_are_bounded_per_key(proxy):
    _, port = proxy

    def start_upload(key: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"POST /customizations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                     "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\n".encode())
        return sock

    slow = [start_upload(KEY_A), start_upload(KEY_A)]
    try:
        time.sleep(0.5)
        third = start_upload(KEY_A)
        answer = third.recv(4096)
        assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
        third.close()
        other = start_upload(KEY_B)  # another key is not held back
        other.settimeout(1.5)
        with pytest.raises(socket.timeout):
            other.recv(4096)  # still streaming: no refusal
        other.close()
    finally:
        for sock in slow:
            sock.close()
