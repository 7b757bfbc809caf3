"""Session fixtures of the service tests: real redis-server and moto S3 server on free loopback ports,
a real Celery worker subprocess (never eager mode), the API app, tiny checkpoints in upload formats.

Engine-agnostic: the test process never imports the engine or torch; checkpoints are made in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts.processes import PYTHON, ROOT, free_port, start_moto, start_redis, stop_group
from tests.service.processes import start_worker

KEY_A, KEY_B = "test-key-a", "test-key-b"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    stop_group(proc)


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of the test's own (AOF on, as in compose), for tests that fault or fill it."""
    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    proc = start_redis(port, data, appendonly=True)
    yield f"redis://127.0.0.1:{port}/0"
    stop_group(proc)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    port = free_port()
    proc = start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    yield f"http://127.0.0.1:{port}"
    stop_group(proc)


@pytest.fixture(scope="session")
def settings(redis_url, s3_endpoint, tmp_path_factory):
    from common.settings import Settings

    return Settings(
        redis_url=redis_url, s3_endpoint_url=s3_endpoint, s3_bucket="stillmoving-test", s3_access_key_id="test",
        s3_secret_access_key="test", api_keys=[KEY_A, KEY_B], model_preset="tiny",
        workdir=tmp_path_factory.mktemp("worker"), motion_train_steps=4, motion_num_images=2, wait_poll_s=0.5,
        progress_interval_s=0.0, max_queued_jobs_per_key=50, job_burst=10_000, worker_metrics_port=0, _env_file=None,
    )


@pytest.fixture(scope="session")
def worker(settings, tmp_path_factory):
    """A real Celery worker process serving both queues with one pool process."""
    proc = start_worker(settings, tmp_path_factory.mktemp("celery") / "worker.log", "test")
    yield proc
    stop_group(proc)
    if os.environ.get("STILLMOVING_TEST_SHOW_WORKER_LOG"):
        print(proc.log_path.read_text()[-20000:])


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
