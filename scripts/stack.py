"""Start and stop the local stack: redis-server and moto's S3 server on loopback (unless endpoints are set),
a Celery worker and the API. State (pids, URLs, logs) lives in ``var/stack/``.

    python -m scripts.stack up      # background; prints the API URL and the dev key
    python -m scripts.stack down    # stops only what `up` started
"""

from __future__ import annotations

import json
import os
import sys

from scripts.processes import (
    ROOT,
    await_worker,
    free_port,
    launch_worker,
    service_env,
    start_api,
    start_moto,
    start_redis,
    stop_group,
)

STATE_DIR = ROOT / "var" / "stack"
STATE = STATE_DIR / "stack.json"


def up(api_port: int | None = None) -> dict:
    """Start what is missing; return the state (api_url, api_key, pids)."""
    if STATE.exists():
        raise SystemExit(f"a stack is already running ({STATE}); run `make down` first")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    env = service_env()
    state: dict = {"pids": {}}

    def started(name: str, proc):
        state["pids"][name] = proc.pid
        STATE.write_text(json.dumps(state, indent=2))
        return proc

    try:
        if not env.get("STILLMOVING_REDIS_URL"):
            port = free_port()
            started("redis", start_redis(port, STATE_DIR, log_path=STATE_DIR / "redis.log"))
            env["STILLMOVING_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        if not env.get("STILLMOVING_S3_ENDPOINT_URL"):
            port = free_port()
            (STATE_DIR / "moto.log").unlink(missing_ok=True)
            started("moto", start_moto(port, STATE_DIR / "moto.log"))
            env["STILLMOVING_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
            env.setdefault("STILLMOVING_S3_ACCESS_KEY_ID", "stillmoving")
            env.setdefault("STILLMOVING_S3_SECRET_ACCESS_KEY", "stillmoving-secret")
        env.setdefault("STILLMOVING_WORKDIR", str(ROOT / "var" / "worker"))
        port = api_port or int(env.get("STILLMOVING_API_PORT", "8000"))
        env["STILLMOVING_API_PORT"] = str(port)
        queues = f"{env.get('STILLMOVING_TRAIN_QUEUE', 'train')},{env.get('STILLMOVING_GENERATE_QUEUE', 'generate')}"
        worker = started("worker", launch_worker(env, STATE_DIR / "worker.log", f"local-{os.getpid()}", queues))
        url = f"http://{env.get('STILLMOVING_API_HOST', '127.0.0.1')}:{port}"
        started("api", start_api(env, url, STATE_DIR / "api.log"))  # while the worker starts
        await_worker(worker, STATE_DIR / "worker.log", timeout=90)
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
        stop_group(pid)
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
