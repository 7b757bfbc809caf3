"""Benchmark 6: API latency on loopback, and queue pickup latency with an idle worker.

The real stack, each in its own process on free loopback ports: redis-server, moto's S3 server, the API
under uvicorn (``python -m api``) and, for the pickup phase, a Celery worker (prefork, one pool process),
started by the helpers the service tests and the local stack use (`scripts/processes.py`).

Latency: `--clients` (50) concurrent clients, each its own `httpx.AsyncClient` on a kept-alive connection,
for ``POST /generate``, ``GET /jobs/{id}`` (a queued job: what a polling client reads) and the reference
``GET /healthz`` on the same server (no auth, no store: the floor of uvicorn + FastAPI + the client here).
Latency is client-side, request sent to response read. Two loads, each case interleaved with the others
over `--rounds` rounds (order alternating) so drift in the machine's load hits them alike:
  * polling: each client sends a request every `--interval` s (0.5 s: the CLI's poll interval), from a random
    phase, the next one as soon as the reply is in when a reply is late: 50 clients' steady load;
  * back to back: each client sends its next request as soon as the reply is in (saturation). Here the
    latency is set by throughput (Little's law: p50 ~ clients / requests per second), and on 2 cores the
    load generator itself (httpx, 0.5-1 ms CPU per request) takes about as much CPU as the server, so the
    API's CPU per request (from /proc, also reported) is the figure that API changes move.
No worker runs meanwhile (posted jobs stay queued). Then the store is emptied, the worker started, and
`--pickups` generations posted one at a time to the idle worker: pickup = the job record's ``started_at``
minus its ``created_at`` (accepted -> running). The first one is a warm-up.

Targets (issue 5): p99 < 25 ms for both endpoints at 50 concurrent clients; pickup p50 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import resource
import statistics
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack
from datetime import datetime
from pathlib import Path

import httpx

from bench.harness import quiet, report
from common.settings import Settings
from scripts.processes import free_port, start_moto, start_redis, stop_group
from tests.service.processes import start_api, start_worker

TARGET_P99_MS = 25.0
TARGET_PICKUP_P50_MS = 50.0
KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GEN = {"prompt": "a photo of a dog", "num_frames": 4, "height": 32, "width": 32, "steps": 1, "seed": 1}
REFERENCE = "GET /healthz (reference)"


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks (100 Hz)


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def clients_run(clients: list[httpx.AsyncClient], case: tuple, requests: int, interval: float) -> list[float]:
    """Each client sends `requests` requests, one per `interval` s (0: back to back); the latencies in ms."""
    method, path, body, expect = case
    latencies: list[float] = []

    async def one_client(client: httpx.AsyncClient) -> None:
        await asyncio.sleep(random.uniform(0, interval))
        for _ in range(requests):
            start = time.perf_counter()
            response = await client.request(method, path, json=body)
            latencies.append((time.perf_counter() - start) * 1000)
            if response.status_code != expect:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - start)))

    await asyncio.gather(*(one_client(client) for client in clients))
    return latencies


async def latency_phase(url: str, api_pid: int, clients: int, requests: int, rounds: int,
                        interval: float) -> list[dict]:
    async with AsyncExitStack() as stack:
        pool = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60))
                for _ in range(clients)]
        job_id = (await pool[0].post("/generate", json=GEN)).json()["job_id"]
        cases = {REFERENCE: ("GET", "/healthz", None, 200), "POST /generate": ("POST", "/generate", GEN, 202),
                 "GET /jobs/{id}": ("GET", f"/jobs/{job_id}", None, 200)}
        for case in cases.values():  # warm-up: connections opened, first-call costs paid
            await clients_run(pool, case, 2, 0.0)
        rows = []
        for load, pause in (("polling", interval), ("back to back", 0.0)):
            ms: dict[str, list[float]] = {name: [] for name in cases}
            seconds, api_cpu, own_cpu = (dict.fromkeys(cases, 0.0) for _ in range(3))
            for round_ in range(rounds):
                for name in cases if round_ % 2 == 0 else reversed(cases):
                    api0, own0, start = process_cpu_s(api_pid), own_cpu_s(), time.perf_counter()
                    ms[name] += await clients_run(pool, cases[name], requests, pause)
                    seconds[name] += time.perf_counter() - start
                    api_cpu[name] += process_cpu_s(api_pid) - api0
                    own_cpu[name] += own_cpu_s() - own0
            floor = statistics.quantiles(ms[REFERENCE], n=100, method="inclusive")[98]
            for name in cases:
                n = len(ms[name])
                q = statistics.quantiles(ms[name], n=100, method="inclusive")
                rows.append({"load": load, "what": name, "n": n, "p50_ms": statistics.median(ms[name]),
                             "p90_ms": q[89], "p99_ms": q[98], "max_ms": max(ms[name]),
                             "req_per_s": n / seconds[name], "api_cpu_ms_per_req": 1000 * api_cpu[name] / n,
                             "client_cpu_ms_per_req": 1000 * own_cpu[name] / n, "p99_ratio_to_reference": q[98] / floor})
    return rows


def pickup_phase(url: str, count: int, timeout: float = 120) -> list[float]:
    """Post `count` generations one at a time to an idle worker; pickup latencies (ms), warm-up dropped."""
    pickups = []
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        for _ in range(count + 1):
            time.sleep(0.3)  # the worker is idle: back on its queue after the previous job
            job_id = client.post("/generate", json=GEN).json()["job_id"]
            deadline = time.monotonic() + timeout
            while (job := client.get(f"/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
                time.sleep(0.05)
            if job["status"] != "succeeded":
                raise RuntimeError(f"generation failed: {job['error']}")
            created, started = (datetime.fromisoformat(job[k]) for k in ("created_at", "started_at"))
            pickups.append((started - created).total_seconds() * 1000)
    return pickups[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="per client, case and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between a polling client's requests")
    parser.add_argument("--pickups", type=int, default=20)
    parser.add_argument("--name", default="api_latency", help="results file name")
    args = parser.parse_args()
    quiet()
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    with ExitStack() as stack:
        redis_port, s3_port = free_port(), free_port()
        stack.callback(stop_group, start_redis(redis_port, work, appendonly=False))
        stack.callback(stop_group, start_moto(s3_port, work / "moto.log"))
        settings = Settings(
            redis_url=f"redis://127.0.0.1:{redis_port}/0", s3_endpoint_url=f"http://127.0.0.1:{s3_port}",
            s3_bucket="bench-api", s3_access_key_id="bench", s3_secret_access_key="bench", api_keys=[KEY],
            api_port=free_port(), model_preset="tiny", workdir=work / "worker", max_queued_jobs_per_key=10**9,
            progress_interval_s=0.0, _env_file=None)
        url = f"http://{settings.api_host}:{settings.api_port}"
        api = start_api(settings, work / "api.log")
        stack.callback(stop_group, api)
        print(f"stack up; {args.clients} clients x {args.requests} requests x {args.rounds} rounds", flush=True)
        gc.collect()
        gc.freeze()  # this process holds torch's large heap (harness): no full collections inside timings
        rows = asyncio.run(latency_phase(url, api.pid, args.clients, args.requests, args.rounds, args.interval))

        import redis

        redis.Redis(port=redis_port).flushdb()  # the latency phase's queued jobs: dropped, never run
        stack.callback(stop_group, start_worker(settings, work / "worker.log", "bench"))
        pickups = pickup_phase(url, args.pickups)

    pickup_p50 = statistics.median(pickups)
    rows.append({"load": "one at a time", "what": "pickup (accepted -> running), idle worker", "n": len(pickups),
                 "p50_ms": pickup_p50, "max_ms": max(pickups)})
    p99 = {(r["load"], r["what"]): r["p99_ms"] for r in rows if "p99_ms" in r}
    met = {f"{what} p99 < {TARGET_P99_MS:.0f} ms ({load})": p99[(load, what)] < TARGET_P99_MS
           for load in ("polling", "back to back") for what in ("POST /generate", "GET /jobs/{id}")}
    met[f"pickup p50 < {TARGET_PICKUP_P50_MS:.0f} ms"] = pickup_p50 < TARGET_PICKUP_P50_MS
    report(args.name, rows, {
        "config": {"clients": args.clients, "requests_per_client_case_round": args.requests, "rounds": args.rounds,
                   "polling_interval_s": args.interval, "pickups": args.pickups, "generate_body": GEN,
                   "server": "python -m api (uvicorn, one process)"},
        "pickup_ms": pickups,
        "target": f"p99 < {TARGET_P99_MS:.0f} ms (POST /generate, GET /jobs/{{id}}) at {args.clients} clients; "
                  f"pickup p50 < {TARGET_PICKUP_P50_MS:.0f} ms", "met": met,
    })


if __name__ == "__main__":
    main()
