"""Session fixtures of the service tests: real redis-server and moto S3 server on free loopback ports,
a real Celery worker subprocess (never eager mode), the API app, tiny checkpoints in upload formats.

Engine-agnostic: the test process never imports the engine or torch; checkpoints are made in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
KEY_A, KEY_B = "test-key-a", "test-key-b"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(settings) -> dict[str, str]:
    """Environment of a worker process started by a test: its settings, and one torch thread unless told
    otherwise (the tiny preset gains nothing from more, and on a shared machine OpenMP threads spinning
    against other processes' work made a 0.1 s sampling step take 6 s)."""
    return {"OMP_NUM_THREADS": "1", **os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    """Poll `check` until it returns something truthy; a check that keeps raising is reported with its error
    (a broken check must not look like a slow server)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # not up yet (connection refused, ...): keep the last one to report
            last_error = exc
        time.sleep(interval)
    why = f"; the check last raised {type(last_error).__name__}: {last_error}" if last_error else ""
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}{why}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port, data = free_port(), tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(data)], stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    wait_until(client.ping, 15, "redis-server")
    yield f"redis://127.0.0.1:{port}/0"
    stop(proc)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([str(Path(PYTHON).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: urllib.request.urlopen(url + "/moto-api/", timeout=2).status == 200, 30, "moto server")
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def settings(redis_url, s3_endpoint, tmp_path_factory):
    from common.settings import Settings

    return Settings(
        redis_url=redis_url, s3_endpoint_url=s3_endpoint, s3_bucket="stillmoving-test", s3_access_key_id="test",
        s3_secret_access_key="test", api_keys=[KEY_A, KEY_B], model_preset="tiny",
        workdir=tmp_path_factory.mktemp("worker"), motion_train_steps=4, motion_num_images=2, wait_poll_s=0.5,
        progress_interval_s=0.0, max_queued_jobs_per_key=50, job_burst=10_000, _env_file=None,
    )


@pytest.fixture(scope="session")
def worker(settings, tmp_path_factory):
    """A real Celery worker process serving both queues with one pool process."""
    log_path = tmp_path_factory.mktemp("celery") / "worker.log"
    env = worker_env(settings)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q",
             f"{settings.train_queue},{settings.generate_queue}", "-c", "1", "-P", "prefork", "-n", "test@%h",
             "--without-gossip", "--without-mingle", "-l", "info"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: proc.poll() is None and b"ready." in log_path.read_bytes(), 60, "celery worker")
    except TimeoutError:
        stop(proc)
        raise RuntimeError(log_path.read_text()[-5000:]) from None
    proc.log_path = log_path
    yield proc
    stop(proc)
    if os.environ.get("STILLMOVING_TEST_SHOW_WORKER_LOG"):
        print(log_path.read_text()[-20000:])


@pytest.fixture(scope="session")
def app(settings):
    from api.app import create_app

    return create_app(settings)


@pytest.fixture(scope="session")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def auth_a():
    return {"Authorization": f"Bearer {KEY_A}"}


@pytest.fixture(scope="session")
def auth_b():
    return {"Authorization": f"Bearer {KEY_B}"}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny customized checkpoints for the `tiny` base in every upload format, made by the engine's CLI."""
    out = tmp_path_factory.mktemp("checkpoints")
    paths = {fmt: out / f"tiny-{fmt}.safetensors" for fmt in ("lora", "lora-kohya", "unet", "ldm")}
    code = ("import sys, engine\n"
            "for fmt, path in zip(sys.argv[1::2], sys.argv[2::2]): engine.make_tiny_checkpoint(fmt, path)\n")
    args = [str(x) for fmt, path in paths.items() for x in (fmt, path)]
    subprocess.run([PYTHON, "-c", code, *args], cwd=ROOT, check=True, capture_output=True)
    return paths
