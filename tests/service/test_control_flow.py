"""Conditional generation end to end through a real Celery worker on the tiny preset: a reference uploaded to
``/files`` drives a canny ControlNet (its conditioning frames stored with the result); a control changes the
video and at scale 0 leaves it as it is without one; a previous job's video is an init (video-to-video) without a
re-upload; a file a queued generation reads is kept (409) until it ends, and a generation whose source job was
deleted meanwhile fails ``input_missing``."""

from __future__ import annotations

import io

import httpx
import imageio.v3 as iio
import numpy as np
import pytest

from tests.service.helpers import assert_error, wait_job
from tests.service.test_files import encode, moving_square

pytestmark = pytest.mark.slow
GEN = {"prompt": "a dog", "num_frames": 4, "height": 32, "width": 32, "steps": 2, "seed": 5, "format": "gif"}
V2V = {**GEN, "steps": 4}  # strength 0.5 of 2 steps would keep the t=0 step alone (refused: the init unchanged)


def frames_of(result: dict, name: str = "video_url") -> np.ndarray:
    response = httpx.get(result[name], timeout=30)
    assert response.status_code == 200, result[name]
    return iio.imread(io.BytesIO(response.content), extension=".gif", index=None)[..., :3]


def run(client, auth, body: dict) -> dict:
    response = client.post("/generate", headers=auth, json=body)
    assert response.status_code == 202, response.text
    job = wait_job(client, auth, response.json()["job_id"], timeout=180)
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def reference(client, auth_a, worker) -> str:
    data = encode(moving_square(6, 48, 64), ".mp4")
    response = client.post("/files", headers=auth_a, files={"file": ("ref.mp4", data, "video/mp4")})
    assert response.status_code == 201, response.text
    assert response.json()["frames"] == 6
    return response.json()["file_id"]


def test_control_changes_the_video_scale_zero_does_not_and_its_frames_are_stored(client, auth_a, reference):
    plain = run(client, auth_a, GEN)["result"]
    control = {"file": reference, "type": "canny"}
    controlled = run(client, auth_a, {**GEN, "control": control})
    result = controlled["result"]
    assert controlled["params"]["control"]["type"] == "canny" and "control_url" in result and "control_url" not in plain
    edges = frames_of(result, "control_url")
    assert edges.shape == (4, 32, 32, 3)
    white = edges.max(axis=-1) > 127
    assert white.any() and white.mean() < 0.3, "edge maps: a thin outline on black"
    centres = [np.argwhere(w)[:, 1].mean() for w in white]
    assert centres == sorted(centres) and centres[-1] > centres[0] + 3, "the reference's square moves right"
    video, without = frames_of(result), frames_of(plain)
    assert video.shape == without.shape == (4, 32, 32, 3)
    assert not np.array_equal(video, without)
    zero = run(client, auth_a, {**GEN, "control": {**control, "scale": 0}})["result"]
    np.testing.assert_array_equal(frames_of(zero), without)


def test_previous_jobs_video_as_init_without_reupload(client, auth_a, reference):
    first = run(client, auth_a, {**GEN, "seed": 9})
    v2v = run(client, auth_a, {**V2V, "init": {"job_id": first["id"], "strength": 0.5}})
    other = run(client, auth_a, {**V2V, "init": {"file": reference, "strength": 0.5}})
    assert frames_of(v2v["result"]).shape == (4, 32, 32, 3)
    assert not np.array_equal(frames_of(v2v["result"]), frames_of(other["result"])), "the init video is read"
    both = run(client, auth_a, {**V2V, "init": {"job_id": first["id"], "strength": 0.5},
                                "control": {"job_id": first["id"], "type": "precomputed"}})
    assert "control_url" in both["result"]


def test_a_file_in_use_is_kept_and_a_deleted_source_job_fails_its_generation_clearly(client, auth_a, reference):
    source = run(client, auth_a, {**GEN, "seed": 11})
    data = encode(moving_square(), ".gif")
    file_id = client.post("/files", headers=auth_a, files={"file": ("r.gif", data, "image/gif")}).json()["file_id"]
    # queue behind a longer job so that the deletions come before the worker reaches this one
    blocker = client.post("/generate", headers=auth_a, json={**GEN, "steps": 12, "num_frames": 8}).json()["job_id"]
    job_id = client.post("/generate", headers=auth_a, json={**V2V, "init": {"file": file_id, "strength": 0.5},
                                                            "control": {"job_id": source["id"],
                                                                        "type": "precomputed"}}).json()["job_id"]
    error = assert_error(client.delete(f"/files/{file_id}", headers=auth_a), 409, "file_in_use", "file_id")
    assert job_id in error["message"]
    assert client.delete(f"/jobs/{source['id']}", headers=auth_a).status_code == 204  # a finished job's video goes
    job = wait_job(client, auth_a, job_id, timeout=180)
    assert job["status"] == "failed" and job["error"]["code"] == "input_missing", job
    assert "control" in job["error"]["message"], job
    assert client.delete(f"/files/{file_id}", headers=auth_a).status_code == 204  # nothing reads it any more
    assert wait_job(client, auth_a, blocker, timeout=180)["status"] == "succeeded"
