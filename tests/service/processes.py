"""Processes the fault tests own and kill for real: a redis-server, a moto S3 server, Celery workers.

Each is started in its own session, so SIGKILL of the process group takes the Celery parent and its
pool children down together, as when a worker's machine or container dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from pathlib import Path

from tests.conftest import PYTHON, ROOT, stop, wait_until


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
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
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
