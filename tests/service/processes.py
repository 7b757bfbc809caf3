"""Processes the fault tests (and bench.api_latency) own and kill for real: a redis-server, a moto S3 server,
Celery workers, the API under uvicorn.

Each is started in its own session, so SIGKILL of the process group takes the Celery parent and its
pool children down together, as when a worker's machine or container dies. SIGSTOP freezes a server
(it accepts connections and never answers, as a hung storage does); SIGCONT lets it go on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path

from tests.conftest import PYTHON, ROOT, stop, wait_until, worker_env


def start_redis(port: int, data_dir: Path, appendonly: bool = True) -> subprocess.Popen:
    import redis

    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec",
                             "--dir", str(data_dir)], stdout=subprocess.DEVNULL, start_new_session=True)
    wait_until(redis.Redis(port=port).ping, 30, f"redis-server on {port}")
    return proc


def start_moto(port: int, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([str(Path(PYTHON).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/moto-api/"
    wait_until(lambda: urllib.request.urlopen(url, timeout=2).status == 200, 60, "moto server")
    return proc


def start_worker(settings, log_path: Path, name: str) -> subprocess.Popen:
    """A real Celery worker (prefork, one pool process) for both queues of `settings`."""
    env = worker_env(settings)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q",
             f"{settings.train_queue},{settings.generate_queue}", "-c", "1", "-P", "prefork", "-n", f"{name}@%h",
             "--without-gossip", "--without-mingle", "-l", "info"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is None and b"ready." in log_path.read_bytes(), 120, f"celery worker {name}")
    except TimeoutError:
        stop_group(proc)
        raise RuntimeError(log_path.read_text()[-5000:]) from None
    proc.log_path = log_path
    return proc


def start_api(settings, log_path: Path) -> subprocess.Popen:
    """The API served by uvicorn (``python -m api``) on ``settings.api_host:api_port``, ready on /readyz."""
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([PYTHON, "-m", "api"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://{settings.api_host}:{settings.api_port}/readyz"
    try:
        wait_until(lambda: proc.poll() is None and urllib.request.urlopen(url, timeout=2).status == 200, 60,
                   "the API")
    except TimeoutError:
        stop_group(proc)
        raise RuntimeError(log_path.read_text()[-5000:]) from None
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything in its session (no cleanup handlers run)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


def stop_group(proc: subprocess.Popen) -> None:
    stop(proc)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # pool children left behind, if any
    except ProcessLookupError:
        pass


def in_group(proc: subprocess.Popen, pid: int) -> bool:
    """Whether `pid` (e.g. a job record's worker pid, a pool child) belongs to `proc`'s process group."""
    try:
        return os.getpgid(pid) == proc.pid
    except ProcessLookupError:
        return False


class Moto:
    """A moto S3 server on one loopback port that a test can kill, freeze and start again (in memory:
    a restarted server is empty)."""

    def __init__(self, port: int, log_path: Path):
        self.port, self.log_path = port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.proc = start_moto(port, log_path)

    def kill(self) -> None:
        kill_group(self.proc)

    def restart(self) -> None:
        self.proc = start_moto(self.port, self.log_path)

    def freeze(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.thaw()
        stop_group(self.proc)


class StorageProxy:
    """An HTTP proxy in front of a storage server that answers 503 to the requests `refuse(method, path)`
    picks (one object's storage node down: a partial outage) and forwards every other request as it is."""

    def __init__(self, target_url: str):
        import http.client
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.refuse = lambda method, path: False
        self.refused: list[str] = []
        proxy, target = self, urlsplit(target_url)

        class Forward(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers `Expect: 100-continue` itself

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urlsplit(self.path).path
                if proxy.refuse(self.command, path):
                    proxy.refused.append(f"{self.command} {path}")
                    error = b"<Error><Code>ServiceUnavailable</Code><Message>node down</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                head = self.command == "HEAD"  # its Content-Length is the object's, with no body
                self.send_header("Content-Length", response.getheader("Content-Length", "0") if head else str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="storage-proxy", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
