"""Small HTTP helpers shared by the service tests."""

from __future__ import annotations

import json
import time
from pathlib import Path

TERMINAL = ("succeeded", "failed", "canceled")
TINY_CONFIG = {"prompts": ["a photo of sks dog"], "num_images": 2, "train_steps": 4, "rank": 4,
               "num_frames": 8, "height": 32, "width": 32, "seed": 1}


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


def assert_error(response, status: int, code: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if field is not None:
        assert error.get("field") == field, error
    return error
