"""End to end through a real Celery worker on the tiny preset: upload → customization → video → download."""

from __future__ import annotations

import io
import time

import httpx
import imageio.v3 as iio
import pytest

from tests.service.helpers import TINY_CONFIG, assert_error, upload, wait_job

pytestmark = pytest.mark.slow


def fetch(url: str) -> bytes:
    response = httpx.get(url, timeout=30)  # a presigned URL needs no API key
    assert response.status_code == 200, url
    return response.content


def decode(data: bytes, extension: str):
    return iio.imread(io.BytesIO(data), extension=extension, index=None)


@pytest.fixture(scope="module")
def ready_customization(client, auth_a, worker, checkpoints):
    response = upload(client, auth_a, checkpoints["lora"])
    assert response.status_code == 202, response.text
    body = response.json()
    job = wait_job(client, auth_a, body["job_id"])
    assert job["status"] == "succeeded", job
    return body["customization_id"]


def test_full_flow_upload_customize_generate_download(client, auth_a, worker, checkpoints):
    response = upload(client, auth_a, checkpoints["lora"], {**TINY_CONFIG, "name": "dog", "seed": 3})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["customization_id"].startswith("cus_")
    assert response.headers["Location"] == f"/jobs/{body['job_id']}"

    seen: list = []
    job = wait_job(client, auth_a, body["job_id"], seen=seen)
    assert job["status"] == "succeeded", job
    assert job["kind"] == "customize" and job["progress"] == 1.0 and job["error"] is None
    assert job["started_at"] and job["finished_at"] and job["queue_position"] is None
    stages = {stage for _, stage, _ in seen}
    assert "train" in stages or "done" in stages, seen  # progress was reported while running
    progresses = [p for _, _, p in seen]
    assert progresses == sorted(progresses), "progress never goes backwards"
    result = job["result"]
    assert result["customization_id"] == body["customization_id"]
    assert len(result["image_urls"]) == TINY_CONFIG["num_images"]
    assert decode(fetch(result["preview_url"]), ".mp4").shape[0] == TINY_CONFIG["num_frames"]
    for url in result["image_urls"]:
        assert iio.imread(io.BytesIO(fetch(url)), extension=".png").shape[:2] == (32, 32)

    customization = client.get(f"/customizations/{body['customization_id']}", headers=auth_a).json()
    assert customization["status"] == "ready" and customization["name"] == "dog"
    assert customization["checkpoint"]["format"] == "lora"
    manifest = customization["manifest"]
    assert manifest["checkpoint"]["sha256"] == customization["checkpoint"]["sha256"]
    assert manifest["settings"]["train_steps"] == TINY_CONFIG["train_steps"]
    assert len(manifest["loss_curve"]) == TINY_CONFIG["train_steps"]

    request = {"customization_id": body["customization_id"], "prompt": "a sks dog running", "num_frames": 8,
               "height": 48, "width": 64, "steps": 2, "seed": 7, "fps": 4}
    response = client.post("/generate", headers=auth_a, json=request)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/jobs/{response.json()['job_id']}"
    video_job = wait_job(client, auth_a, response.json()["job_id"])
    assert video_job["status"] == "succeeded", video_job
    result = video_job["result"]
    assert result["seed"] == 7 and result["method"] == "still-moving" and result["format"] == "mp4"
    assert set(result["timings"]) >= {"sample"}
    frames = decode(fetch(result["video_url"]), ".mp4")
    assert frames.shape[:3] == (8, 48, 64), frames.shape
    poster = iio.imread(io.BytesIO(fetch(result["poster_url"])), extension=".png")
    assert poster.shape[:2] == (48, 64)


@pytest.mark.parametrize("fmt", ["unet", "ldm", "lora-kohya"])
def test_other_checkpoint_formats_train(client, auth_a, worker, checkpoints, fmt):
    response = upload(client, auth_a, checkpoints[fmt], {**TINY_CONFIG, "train_steps": 2})
    assert response.status_code == 202, response.text
    job = wait_job(client, auth_a, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    expected = "lora" if fmt.startswith("lora") else fmt
    customization = client.get(f"/customizations/{job['customization_id']}", headers=auth_a).json()
    assert customization["manifest"]["checkpoint"]["format"] == expected


def test_base_model_gif_and_default_seed(client, auth_a, worker):
    response = client.post("/generate", headers=auth_a,
                           json={"prompt": "a landscape", "num_frames": 4, "height": 32, "width": 32, "steps": 2,
                                 "format": "gif"})
    assert response.status_code == 202, response.text
    job = wait_job(client, auth_a, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["method"] == "base" and job["result"]["format"] == "gif"
    assert job["params"]["seed"] == job["result"]["seed"]  # a random seed is chosen and reported
    frames = decode(fetch(job["result"]["video_url"]), ".gif")
    assert frames.shape[:3] == (4, 32, 32)


def test_same_seed_same_video(client, auth_a, worker, ready_customization):
    request = {"customization_id": ready_customization, "prompt": "a sks dog", "num_frames": 4, "height": 32,
               "width": 32, "steps": 2, "seed": 11, "format": "gif"}
    videos = []
    for _ in range(2):
        job = wait_job(client, auth_a, client.post("/generate", headers=auth_a, json=request).json()["job_id"])
        assert job["status"] == "succeeded", job
        videos.append(decode(fetch(job["result"]["video_url"]), ".gif"))
    assert (videos[0] == videos[1]).all()
    job = wait_job(client, auth_a, client.post("/generate", headers=auth_a,
                                               json={**request, "scheduler": "euler"}).json()["job_id"])
    assert job["status"] == "succeeded" and job["result"]["scheduler"] == "euler", job
    assert not (decode(fetch(job["result"]["video_url"]), ".gif") == videos[0]).all()


def test_generation_waits_for_training_customization(client, auth_a, worker, checkpoints):
    response = upload(client, auth_a, checkpoints["lora"], TINY_CONFIG)
    customization_id = response.json()["customization_id"]
    response = client.post("/generate", headers=auth_a,
                           json={"customization_id": customization_id, "prompt": "a sks dog", "num_frames": 4,
                                 "height": 32, "width": 32, "steps": 2})
    assert response.status_code == 202, response.text
    state = client.get(f"/customizations/{customization_id}", headers=auth_a).json()["status"]
    assert state in ("queued", "training")  # the generation was accepted before its customization was ready
    job = wait_job(client, auth_a, response.json()["job_id"], timeout=180)
    assert job["status"] == "succeeded", job
    finished = client.get(f"/customizations/{customization_id}", headers=auth_a).json()
    assert finished["status"] == "ready"
    assert job["started_at"] >= finished["finished_at"]


def test_bad_tensor_values_fail_the_job_and_its_generations(client, auth_a, worker, tmp_path):
    """A header-valid checkpoint with NaN weights is accepted at upload, then the engine rejects it."""
    import json
    import struct

    src = tmp_path / "nan.safetensors"
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    header = {f"{key}.lora_A.weight": {"dtype": "F32", "shape": [1, 16], "data_offsets": [0, 64]},
              f"{key}.lora_B.weight": {"dtype": "F32", "shape": [16, 1], "data_offsets": [64, 128]}}
    raw = json.dumps(header).encode()
    src.write_bytes(struct.pack("<Q", len(raw)) + raw + struct.pack("<f", float("nan")) * 32)
    response = upload(client, auth_a, src)
    assert response.status_code == 202, response.text
    customization_id = response.json()["customization_id"]
    generation = client.post("/generate", headers=auth_a,
                             json={"customization_id": customization_id, "prompt": "x", "num_frames": 4,
                                   "height": 32, "width": 32, "steps": 1})
    job = wait_job(client, auth_a, response.json()["job_id"])
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_checkpoint", job
    assert client.get(f"/customizations/{customization_id}", headers=auth_a).json()["status"] == "failed"
    if generation.status_code == 202:  # accepted while training: fails clearly once the customization failed
        video_job = wait_job(client, auth_a, generation.json()["job_id"])
        assert video_job["status"] == "failed" and video_job["error"]["code"] == "customization_failed"
    again = client.post("/generate", headers=auth_a, json={"customization_id": customization_id, "prompt": "x"})
    assert_error(again, 409, "customization_failed", "customization_id")


def cancel_running(client, auth, store, job_id: str, stage: str) -> tuple[int, object]:
    """Cancel a job a few steps into `stage`; return (step read right after the cancel call, final record)."""
    deadline = time.monotonic() + 60
    while (record := store.get_job(job_id)).stage != stage or (record.step or 0) < 2:
        assert record.status == "running" or record.status == "queued", record
        assert time.monotonic() < deadline, f"{stage} never started: {record}"
        time.sleep(0.02)
    response = client.post(f"/jobs/{job_id}/cancel", headers=auth)
    assert response.status_code == 202, response.text
    at_cancel = store.get_job(job_id).step  # the cancel flag is set by now: later steps are the job's slack
    job = wait_job(client, auth, job_id, timeout=30)
    assert job["status"] == "canceled" and job["error"]["code"] == "canceled" and job["result"] is None, job
    return at_cancel, store.get_job(job_id)


def test_cancel_queued_and_running(client, auth_a, worker, checkpoints, settings):
    """A queued job is canceled at once and never runs; a running training and a running sampling stop
    within one step of the cancel (the engine checks between steps), store nothing, and free the worker."""
    from common.jobstore import JobStore

    store, storage = JobStore(settings.redis_url), client.app.state.storage
    # no Motion Adapter: its one-off training (when no earlier test stored one) is not what is canceled here
    long = upload(client, auth_a, checkpoints["lora"], {**TINY_CONFIG, "train_steps": 10000,
                                                        "use_motion_adapter": False})
    queued = upload(client, auth_a, checkpoints["lora"], {**TINY_CONFIG, "seed": 99})
    long_id, queued_id = long.json()["job_id"], queued.json()["job_id"]
    assert wait_job(client, auth_a, long_id, until=("running",), timeout=60)["status"] == "running"
    job = client.get(f"/jobs/{queued_id}", headers=auth_a).json()
    assert job["status"] == "queued" and job["queue_position"] >= 1

    response = client.post(f"/jobs/{queued_id}/cancel", headers=auth_a)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "canceled"
    cus = client.get(f"/customizations/{queued.json()['customization_id']}", headers=auth_a).json()
    assert cus["status"] == "canceled"

    at_cancel, stopped = cancel_running(client, auth_a, store, long_id, "train")
    assert stopped.stage == "train" and at_cancel <= stopped.step <= at_cancel + 1, (at_cancel, stopped)
    assert stopped.steps == 10000
    cus_id = long.json()["customization_id"]
    assert client.get(f"/customizations/{cus_id}", headers=auth_a).json()["status"] == "canceled"
    assert f"customizations/{cus_id}/manifest.json" not in storage.list_keys(f"customizations/{cus_id}/")
    assert client.post(f"/jobs/{long_id}/cancel", headers=auth_a).status_code == 200  # idempotent

    sampling = client.post("/generate", headers=auth_a, json={"prompt": "x", "num_frames": 8, "height": 32,
                                                               "width": 32, "steps": 150, "format": "gif"})
    sampling_id = sampling.json()["job_id"]
    at_cancel, stopped = cancel_running(client, auth_a, store, sampling_id, "denoise")
    assert stopped.stage == "denoise" and at_cancel <= stopped.step <= at_cancel + 1, (at_cancel, stopped)
    assert stopped.steps == 150 and storage.list_keys(f"videos/{sampling_id}/") == []

    # the canceled queued job never runs, and the worker is free again
    after = client.post("/generate", headers=auth_a,
                        json={"prompt": "x", "num_frames": 4, "height": 32, "width": 32, "steps": 1})
    job = wait_job(client, auth_a, after.json()["job_id"], timeout=60)
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert job["started_at"] >= stopped.finished_at.isoformat().replace("+00:00", "Z")
    assert client.get(f"/jobs/{queued_id}", headers=auth_a).json()["status"] == "canceled"
    assert store.get_job(queued_id).attempts == 0
    assert_error(client.post(f"/jobs/{after.json()['job_id']}/cancel", headers=auth_a), 409, "job_finished")
