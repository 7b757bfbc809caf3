"""Many machines, simulated: three real workers in separate work directories (no shared disk; only Redis and
S3 between them), one serving `train` only and two `generate` only, through a mixed burst of 40 jobs of two
tenants on the tiny preset's real engine.

Every job succeeds exactly once (one attempt, queued → running → succeeded, on a worker of its queue); the
Motion Adapter is trained once, by the train worker, and the generate workers that sample with it fetch that
one file from storage; at the end `/metrics` agrees with the job records (jobs by kind and status, created,
started and finished counters, run-time histogram counts, empty queues, no retries or reaped jobs).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from common.jobstore import JobStore
from common.storage import motion_adapter_prefix
from scripts.processes import in_group, stop_group
from tests.conftest import KEY_A, KEY_B
from tests.service.helpers import TERMINAL, TINY_CONFIG, fault_settings, upload
from tests.service.processes import start_worker
from tests.service.test_metrics import scrape, value

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

TENANTS = {"a": {"Authorization": f"Bearer {KEY_A}"}, "b": {"Authorization": f"Bearer {KEY_B}"}}
VIDEO = {"num_frames": 4, "height": 32, "width": 32, "steps": 2, "fps": 4, "format": "gif"}
UPLOADS = {"a": ("lora", "ldm"), "b": ("lora-kohya", "unet")}  # two customizations per tenant
BASE_VIDEOS = 10  # per tenant, in the burst beside the customizations
# per customization, once it is ready: (method, motion_adapter_scale)
ON_CUSTOMIZATIONS = (("naive", 0.0), ("still-moving", 0.0), ("still-moving", 1.0), ("still-moving", -1.0))
FINISH_TIMEOUT_S = 900


def wait_all(api: TestClient, jobs: dict[str, str]) -> dict[str, dict]:
    """{job id: view} once every job (of tenant jobs[id]) is terminal; fails naming the stragglers."""
    deadline, views = time.monotonic() + FINISH_TIMEOUT_S, {}
    while True:
        for job_id, tenant in jobs.items():
            if job_id not in views or views[job_id]["status"] not in TERMINAL:
                response = api.get(f"/jobs/{job_id}", headers=TENANTS[tenant])
                assert response.status_code == 200, response.text
                views[job_id] = response.json()
        pending = {j: (v["status"], v["stage"]) for j, v in views.items() if v["status"] not in TERMINAL}
        if not pending:
            return views
        assert time.monotonic() < deadline, f"not terminal after {FINISH_TIMEOUT_S}s: {pending}"
        time.sleep(0.5)


def test_three_workers_without_shared_disk_run_a_mixed_burst_of_two_tenants_once_each(
        settings, own_redis, checkpoints, tmp_path):
    conf = fault_settings(settings, own_redis, tmp_path, s3_bucket="stillmoving-fleet", max_attempts=3)
    roles = {"train": (conf.train_queue,), "gen1": (conf.generate_queue,), "gen2": (conf.generate_queue,)}
    with ThreadPoolExecutor(len(roles)) as pool:  # start-up (imports, base models) is the slow part
        started = pool.map(lambda name: start_worker(conf.model_copy(update={"workdir": tmp_path / name}),
                                                     tmp_path / f"{name}.log", name, queues=roles[name]), roles)
        workers = dict(zip(roles, started))
    try:
        with TestClient(create_app(conf)) as api:
            storage, store = api.app.state.storage, JobStore(own_redis)
            jobs: dict[str, str] = {}  # job id -> tenant
            customizations: dict[str, str] = {}  # customization id -> tenant
            for tenant, formats in UPLOADS.items():
                for i, fmt in enumerate(formats):
                    config = {**TINY_CONFIG, "prompts": [f"a photo of sks dog, tenant {tenant} #{i}"],
                              "motion_adapter_source": "shared"}  # one Motion Adapter for the whole fleet
                    body = upload(api, TENANTS[tenant], checkpoints[fmt], config)
                    assert body.status_code == 202, body.text
                    jobs[body.json()["job_id"]] = tenant
                    customizations[body.json()["customization_id"]] = tenant
            for i in range(BASE_VIDEOS):
                for tenant, auth in TENANTS.items():
                    response = api.post("/generate", headers=auth, json={**VIDEO, "prompt": f"a dog {i}", "seed": i})
                    assert response.status_code == 202, response.text
                    jobs[response.json()["job_id"]] = tenant
            trainings = {j for j in jobs if store.get_job(j).kind == "customize"}
            wait_all(api, {j: jobs[j] for j in trainings})
            for cus_id, tenant in customizations.items():
                for method, scale in ON_CUSTOMIZATIONS:
                    response = api.post("/generate", headers=TENANTS[tenant], json={
                        **VIDEO, "prompt": "a sks dog running", "seed": 7, "customization_id": cus_id,
                        "method": method, "motion_adapter_scale": scale})
                    assert response.status_code == 202, response.text
                    jobs[response.json()["job_id"]] = tenant
            assert len(jobs) == 40

            views = wait_all(api, jobs)
            failed = {j: v.get("error") for j, v in views.items() if v["status"] != "succeeded"}
            assert not failed, failed
            records = {j: store.get_job(j) for j in jobs}
            for job_id, record in records.items():
                log = [e["status"] for e in store.job_log(job_id) if e["type"] == "status"]
                assert record.attempts == 1 and record.given_back == 0, (job_id, record)
                assert log == ["queued", "running", "succeeded"], (job_id, log)
                pid = int(record.worker.rsplit(":", 1)[1])
                mine = ["train"] if record.kind == "customize" else ["gen1", "gen2"]
                assert any(in_group(workers[name], pid) for name in mine), (job_id, record.kind, record.worker)
            ran = Counter(name for r in records.values() for name, w in workers.items()
                          if in_group(w, int(r.worker.rsplit(":", 1)[1])))
            assert ran["train"] == len(customizations) and ran["gen1"] and ran["gen2"], ran
            owners = Counter((jobs[j], r.owner) for j, r in records.items())
            assert sorted(owners.values()) == [20, 20] and len({o for _, o in owners}) == 2, owners

            # The Motion Adapter: trained once (the first customization), reused by the others, one file in
            # storage, and the same bytes in the work directory of each generate worker that sampled with it.
            manifests = [api.get(f"/customizations/{c}", headers=TENANTS[t]).json()["manifest"]
                         for c, t in customizations.items()]
            motion = [m["motion_adapter"] for m in manifests]
            assert sum(bool(m.get("trained_now")) for m in motion) == 1, motion
            (key,) = {m["key"] for m in motion}
            stored = storage.list_keys(motion_adapter_prefix(key))
            assert len(storage.list_keys("motion-adapters/")) == len(stored) == 2, stored  # adapter + meta
            adapter_key = next(k for k in stored if k.endswith(".safetensors"))
            original = storage.get_bytes(adapter_key)
            for name in ("train", "gen1", "gen2"):  # the generate workers train nothing: theirs came from storage
                local = tmp_path / name / adapter_key
                assert local.read_bytes() == original, name

            # /metrics against the records.
            samples = scrape(api)
            by = Counter((r.kind, r.status) for r in records.values())
            kinds = Counter(r.kind for r in records.values())
            assert kinds == {"customize": 4, "generate": 36}, kinds
            for kind, n in kinds.items():
                assert value(samples, "stillmoving_jobs", kind=kind, status="succeeded") == by[(kind, "succeeded")]
                for status in ("queued", "running", "failed", "canceled"):
                    assert value(samples, "stillmoving_jobs", kind=kind, status=status) == 0, (kind, status)
                assert value(samples, "stillmoving_jobs_created_total", kind=kind) == n
                assert value(samples, "stillmoving_job_runs_started_total", kind=kind) == n
                assert value(samples, "stillmoving_jobs_finished_total", kind=kind, status="succeeded") == n
                assert value(samples, "stillmoving_job_run_seconds_count", kind=kind, status="succeeded") == n
                assert value(samples, "stillmoving_job_queue_wait_seconds_count", kind=kind) == n
            for queue in (conf.train_queue, conf.generate_queue):
                assert value(samples, "stillmoving_queue_depth", queue=queue) == 0, queue
                assert value(samples, "stillmoving_queue_messages", queue=queue) == 0, queue
            retries = sum(v for (name, _), v in samples.items() if name == "stillmoving_job_retries_total")
            reaped = sum(v for (name, _), v in samples.items() if name == "stillmoving_reaper_actions_total")
            assert retries == 0 and reaped == 0, (retries, reaped)
    finally:
        for worker in workers.values():
            stop_group(worker)
