"""Start and stop the local stack: redis-server and moto's S3 server on loopback (unless endpoints are set),
a Celery worker and the API. State (pids, URLs, logs) lives in ``var/stack/``.

    python -m scripts.stack up      # background; prints the API URL and the dev key
    python -m scripts.stack down    # stops only what `up` started
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE_DIR = ROOT / "var" / "stack"
STATE = STATE_DIR / "stack.json"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not come up within {timeout}s (logs in {STATE_DIR})")


def spawn(name: str, command: list[str], env: dict, state: dict) -> subprocess.Popen:
    log = open(STATE_DIR / f"{name}.log", "wb")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    state["pids"][name] = proc.pid
    STATE.write_text(json.dumps(state, indent=2))
    return proc


def up(api_port: int | None = None) -> dict:
    """Start what is missing; return the state (api_url, api_key, pids)."""
    if STATE.exists():
        raise SystemExit(f"a stack is already running ({STATE}); run `make down` first")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    state: dict = {"pids": {}}
    try:
        if not env.get("STILLMOVING_REDIS_URL"):
            port = free_port()
            spawn("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(STATE_DIR),
                            "--appendonly", "no", "--save", ""], env, state)
            env["STILLMOVING_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            wait_for(lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True, 20, "redis-server")
        if not env.get("STILLMOVING_S3_ENDPOINT_URL"):
            port = free_port()
            spawn("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env, state)
            env["STILLMOVING_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
            env.setdefault("STILLMOVING_S3_ACCESS_KEY_ID", "stillmoving")
            env.setdefault("STILLMOVING_S3_SECRET_ACCESS_KEY", "stillmoving-secret")
            wait_for(lambda: urllib.request.urlopen(env["STILLMOVING_S3_ENDPOINT_URL"] + "/moto-api/", timeout=2),
                     30, "moto S3 server")
        env.setdefault("STILLMOVING_WORKDIR", str(ROOT / "var" / "worker"))
        port = api_port or int(env.get("STILLMOVING_API_PORT", "8000"))
        env["STILLMOVING_API_PORT"] = str(port)
        spawn("worker", [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q",
                         f"{env.get('STILLMOVING_TRAIN_QUEUE', 'train')},{env.get('STILLMOVING_GENERATE_QUEUE', 'generate')}",
                         "-c", "1", "-n", f"local-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
                         "-l", "info"], env, state)
        spawn("api", [sys.executable, "-m", "api"], env, state)
        url = f"http://{env.get('STILLMOVING_API_HOST', '127.0.0.1')}:{port}"
        wait_for(lambda: urllib.request.urlopen(url + "/readyz", timeout=2).status == 200, 60, "the API")
        wait_for(lambda: b"ready." in (STATE_DIR / "worker.log").read_bytes(), 90, "the worker")
    except BaseException:
        down()
        raise
    key = env.get("STILLMOVING_API_KEYS", "sm-dev-key").split(",")[0].strip()
    state.update(api_url=url, api_key=key, env={k: v for k, v in env.items() if k.startswith("STILLMOVING_")
                                                and "SECRET" not in k and "API_KEYS" not in k})
    STATE.write_text(json.dumps(state, indent=2))
    return state


def down() -> None:
    """Stop the processes recorded by `up` (their process groups), newest first."""
    if not STATE.exists():
        print("no local stack is running")
        return
    state = json.loads(STATE.read_text())
    for name, pid in reversed(list(state["pids"].items())):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
        print(f"stopped {name} (pid {pid})")
    STATE.unlink()


def main(argv: list[str]) -> None:
    if argv[:1] == ["up"]:
        state = up()
        print(f"stillmoving is up: {state['api_url']}  (docs: {state['api_url']}/docs)")
        print(f"API key: {state['api_key']}   e.g. curl -H 'Authorization: Bearer {state['api_key']}' "
              f"{state['api_url']}/jobs")
        print(f"logs: {STATE_DIR}/*.log   stop with: make down")
    elif argv[:1] == ["down"]:
        down()
    else:
        raise SystemExit("usage: python -m scripts.stack up|down")


if __name__ == "__main__":
    main(sys.argv[1:])
