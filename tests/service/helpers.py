"""Small helpers shared by the service tests: HTTP calls and waits, and the fault tests' settings."""

from __future__ import annotations

import json
import time
from pathlib import Path

TERMINAL = ("succeeded", "failed", "canceled")
TINY_CONFIG = {"prompts": ["a photo of sks dog"], "num_images": 2, "train_steps": 4, "rank": 4,
               "num_frames": 8, "height": 32, "width": 32, "seed": 1}
# No Motion Adapter: its one-off training would dominate these tests' time; the spatial training is what resumes.
RESUMABLE = {**TINY_CONFIG, "train_steps": 60, "use_motion_adapter": False}


def upload(client, auth, path: Path, config: dict | None = None, headers: dict | None = None, filename=None):
    with open(path, "rb") as handle:
        return client.post(
            "/customizations", headers={**auth, **(headers or {})},
            files={"checkpoint": (filename or Path(path).name, handle, "application/octet-stream")},
            data={"config": json.dumps(TINY_CONFIG if config is None else config)})


def wait_job(client, auth, job_id: str, timeout: float = 300, until=TERMINAL, seen: list | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/jobs/{job_id}", headers=auth)
        assert response.status_code == 200, response.text
        job = response.json()
        if seen is not None:
            seen.append((job["status"], job["stage"], job["progress"]))
        if job["status"] in until:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} ({job['stage']}) after {timeout}s: {job}")
        time.sleep(0.1)


def job_ids(api, headers: dict) -> list[str]:
    """The ids of a key's jobs, newest first: what "nothing was queued" compares (a job's view signs its result URLs
    anew each second, and other tests' jobs move on meanwhile)."""
    return [job["id"] for job in api.get("/jobs?limit=100", headers=headers).json()["items"]]


def assert_error(response, status: int, code: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if field is not None:
        assert error.get("field") == field, error
    return error


def wait_stage(client, auth, job_id: str, stage: str, timeout: float = 120) -> dict:
    """Poll until the job is running in `stage`; fail at once if it ended first."""
    def check():
        job = client.get(f"/jobs/{job_id}", headers=auth).json()
        assert job["status"] not in TERMINAL, job
        return job if job["status"] == "running" and job["stage"] == stage else None

    deadline = time.monotonic() + timeout
    while not (job := check()):
        assert time.monotonic() < deadline, f"job {job_id} never reached stage {stage!r}"
        time.sleep(0.05)
    return job


def worker_pid(redis_url: str, job_id: str) -> int:
    """The pid of the pool process that holds (or last held) a job, from its record."""
    from common.jobstore import JobStore

    return int(JobStore(redis_url).get_job(job_id).worker.rsplit(":", 1)[1])


def fault_settings(settings, redis_url: str, tmp_path, **update):
    """The fault tests' settings: their own Redis and bucket, fast heartbeats and reaper, small checkpoints."""
    return settings.model_copy(update={
        "redis_url": redis_url, "s3_bucket": "stillmoving-faults", "workdir": tmp_path / "worker",
        "heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 8.0, "reaper_interval_s": 1.0, "max_attempts": 2,
        "train_checkpoint_every": 5, **update})
