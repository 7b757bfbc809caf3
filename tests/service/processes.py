"""The service tests' processes, started by the shared helpers (`scripts.processes`) from a test's settings:
Celery workers (the real one, or one with the engine stand-in of `tests.service.engine_standin`) and the API
under uvicorn; a moto S3 server a test kills, freezes and restarts; a storage proxy that fails chosen requests.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from scripts import processes
from scripts.processes import CELERY, await_ready, kill_group, start_moto, stop_group
from tests.service import engine_standin


def worker_env(settings, **extra: str) -> dict[str, str]:
    """Environment of a worker process started by a test: its settings, and one torch thread unless told
    otherwise (the tiny preset gains nothing from more, and on a shared machine OpenMP threads spinning
    against other processes' work made a 0.1 s sampling step take 6 s)."""
    return {"OMP_NUM_THREADS": "1", **processes.service_env({**settings.to_env(), **extra})}


def launch_worker(settings, log_path: Path, name: str, entry=CELERY, queues: tuple[str, ...] | None = None,
                  **extra_env: str):
    """A real Celery worker (prefork, one pool process) for `queues` (default: both queues of `settings`), not
    yet ready (`scripts.processes.await_worker`)."""
    queues = queues or (settings.train_queue, settings.generate_queue)
    return processes.launch_worker(worker_env(settings, **extra_env), log_path, name, ",".join(queues), entry)


def start_worker(settings, log_path: Path, name: str, entry=CELERY, queues: tuple[str, ...] | None = None,
                 **extra_env: str):
    """`launch_worker`, ready."""
    return processes.await_worker(launch_worker(settings, log_path, name, entry, queues, **extra_env), log_path)


def start_standin(settings, tmp_path: Path, name: str):
    """A real worker with the engine stand-in, its engine loaded, logging to ``tmp_path/<name>.log``; its
    gates (`open_gate`) are in ``tmp_path/gates``."""
    (tmp_path / "gates").mkdir(exist_ok=True)
    proc = start_worker(settings, tmp_path / f"{name}.log", name, engine_standin.ENTRY,
                        **{engine_standin.GATES_ENV: str(tmp_path / "gates")})
    await_ready(proc, lambda: engine_standin.LOADED in proc.log_path.read_text(), 120,
                f"worker {name} to load the engine", proc.log_path)
    return proc


def start_standins(settings, tmp_path: Path, names: tuple[str, ...] = ("w1", "w2")) -> list:
    """`start_standin` for each name, each in its own work directory (``tmp_path/<name>``: no shared disk), all
    started at once (worker start-up is the slow part)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(names)) as pool:
        return list(pool.map(lambda name: start_standin(settings.model_copy(update={"workdir": tmp_path / name}),
                                                        tmp_path, name), names))


def open_gate(tmp_path: Path, name: str = "go") -> None:
    """Let the stand-in's jobs held on gate `name` go on (``@gate=NAME``)."""
    (tmp_path / "gates" / name).touch()


def start_api(settings, log_path: Path):
    """The API served by uvicorn (``python -m api``) on ``settings.api_host:api_port``, ready on /readyz."""
    return processes.start_api(processes.service_env(settings.to_env()),
                               f"http://{settings.api_host}:{settings.api_port}", log_path)


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
        stop_group(self.proc)  # a frozen one is thawed first


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
