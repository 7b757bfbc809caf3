"""Start, wait for and stop the service's processes: redis-server, moto's S3 server, Celery workers and the
API under uvicorn. One set of helpers for the local stack (`scripts.stack`: ``make up``, ``make demo``), the
tests and the benchmarks.

Each process runs in its own session, logging to a file: SIGKILL of its process group takes a Celery parent
and its pool children down together (as when a worker's machine dies), SIGSTOP/SIGCONT freeze and thaw a
server. A start returns once the process answers (redis PING, HTTP 200, the worker's ``ready.``); one that
does not is stopped, and the error carries the end of its log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(PYTHON).parent
CELERY = ("-m", "celery")  # how a worker is started: `python -m celery -A worker.celery_app worker ...`


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    """Poll `check` until it returns something truthy and return that; a check that keeps raising is reported
    with its error (a broken check must not look like a slow server)."""
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


def service_env(overrides: Mapping[str, str] = ()) -> dict[str, str]:
    """This process's environment with `overrides` (``STILLMOVING_*`` settings, ...), importing from the repo."""
    return {**os.environ, **dict(overrides), "PYTHONPATH": str(ROOT)}


def spawn(command: Sequence[str], log_path: Path | None, env: Mapping[str, str] | None = None,
          append: bool = False, cwd: Path = ROOT) -> subprocess.Popen:
    """Start `command` in `cwd` (the repo), in a session of its own, its output to `log_path` (None: discarded)."""
    if log_path is None:
        return subprocess.Popen(list(command), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
    with open(log_path, "ab" if append else "wb") as log:
        return subprocess.Popen(list(command), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def await_ready(proc: subprocess.Popen, check, timeout: float, what: str, log_path: Path | None = None):
    """Wait until `proc` is alive and `check()` holds; otherwise (timeout, exit, interrupt) stop it and raise,
    with the end of its log."""
    try:
        return wait_until(lambda: proc.poll() is None and check(), timeout, what)
    except BaseException as exc:
        stop_group(proc)
        if isinstance(exc, TimeoutError) and log_path is not None and log_path.exists():
            tail = log_path.read_text(errors="replace")[-5000:]
            raise RuntimeError(f"{exc} (exit status {proc.returncode}); the end of {log_path}:\n{tail}") from None
        raise


def start_redis(port: int, data_dir: Path, appendonly: bool = False, log_path: Path | None = None,
                timeout: float = 30) -> subprocess.Popen:
    """A redis-server on loopback `port`, no snapshots; with `appendonly`, an AOF (fsync every second) in
    `data_dir`, so that a server restarted on the same directory has the data back."""
    import redis

    proc = spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec",
                  "--dir", str(data_dir)], log_path)
    await_ready(proc, redis.Redis(port=port).ping, timeout, f"redis-server on {port}", log_path)
    return proc


def start_moto(port: int, log_path: Path, timeout: float = 60) -> subprocess.Popen:
    """moto's S3 server on loopback `port` (in memory: a restarted server is empty); appends to `log_path`."""
    proc = spawn([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log_path, append=True)
    url = f"http://127.0.0.1:{port}/moto-api/"
    await_ready(proc, lambda: urllib.request.urlopen(url, timeout=2).status == 200, timeout,
                f"moto server on {port}", log_path)
    return proc


def launch_worker(env: Mapping[str, str], log_path: Path, name: str, queues: str,
                  entry: Sequence[str] = CELERY) -> subprocess.Popen:
    """A Celery worker (prefork, one pool process) named ``name@host`` for `queues` ("train,generate"), not
    yet ready (`await_worker`). `entry` is how Python starts Celery's command line (a module that wraps it)."""
    return spawn([PYTHON, *entry, "-A", "worker.celery_app", "worker", "-Q", queues, "-c", "1", "-P", "prefork",
                  "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "info"], log_path, env)


def await_worker(proc: subprocess.Popen, log_path: Path, timeout: float = 120) -> subprocess.Popen:
    await_ready(proc, lambda: b"ready." in log_path.read_bytes(), timeout, f"the celery worker (pid {proc.pid})",
                log_path)
    proc.log_path = log_path
    return proc


def start_worker(env: Mapping[str, str], log_path: Path, name: str, queues: str, entry: Sequence[str] = CELERY,
                 timeout: float = 120) -> subprocess.Popen:
    """`launch_worker`, then wait for it to be ready; the process has ``log_path`` set."""
    return await_worker(launch_worker(env, log_path, name, queues, entry), log_path, timeout)


def start_api(env: Mapping[str, str], url: str, log_path: Path, timeout: float = 60) -> subprocess.Popen:
    """The API under uvicorn (``python -m api``; host and port from `env`'s settings), ready on `url`/readyz."""
    proc = spawn([PYTHON, "-m", "api"], log_path, env)
    await_ready(proc, lambda: urllib.request.urlopen(url + "/readyz", timeout=2).status == 200, timeout,
                f"the API on {url}", log_path)
    return proc


# ---- stopping and killing -------------------------------------------------------------------------
def _group_gone(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap the leader when it is our child (a zombie still counts as there)
    except ChildProcessError:
        pass
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def stop_group(proc: subprocess.Popen | int, timeout: float = 10) -> None:
    """SIGTERM the process group led by `proc` (a Popen or a pid), wait up to `timeout` s for all of it to
    exit (a Celery worker's warm shutdown lets its running task finish), then SIGKILL what is left."""
    pid = proc if isinstance(proc, int) else proc.pid
    try:
        os.killpg(pid, signal.SIGCONT)  # a frozen server must run to see the SIGTERM
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while not _group_gone(pid):
        if time.monotonic() > deadline:
            kill_group(proc)
            return
        time.sleep(0.05)
    if not isinstance(proc, int):
        proc.wait(5)


def kill_group(proc: subprocess.Popen | int) -> None:
    """SIGKILL the process and everything in its session (no cleanup handlers run)."""
    pid = proc if isinstance(proc, int) else proc.pid
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if not isinstance(proc, int):
        proc.wait(30)


def in_group(proc: subprocess.Popen, pid: int) -> bool:
    """Whether `pid` (e.g. a job record's worker pid, a pool child) belongs to `proc`'s process group."""
    try:
        return os.getpgid(pid) == proc.pid
    except ProcessLookupError:
        return False
