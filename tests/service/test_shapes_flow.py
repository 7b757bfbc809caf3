"""The full flow on the `shapes` preset, asserting what the video shows: the world's committed customized
checkpoint is uploaded, customized with Still-Moving by a real worker, and the generated videos are read by
the world's judge (in a subprocess: this test process never imports torch)."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from scripts.processes import PYTHON, ROOT, await_worker, stop_group
from tests.service.helpers import upload, wait_job
from tests.service.processes import launch_worker

pytestmark = pytest.mark.slow

CONFIG = {"name": "two-tone", "prompts": ["a sks red circle", "a sks blue square", "a sks yellow triangle",
                                          "a sks green circle"], "num_images": 4, "train_steps": 30, "seed": 0}
PROMPT = "a sks red square moving right"
SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def shapes_settings(settings, tmp_path_factory):
    return settings.model_copy(update={
        "model_preset": "shapes", "train_queue": "train-shapes", "generate_queue": "generate-shapes",
        "workdir": tmp_path_factory.mktemp("shapes-worker"), "motion_train_steps": 40, "motion_num_images": 8})


@pytest.fixture(scope="module")
def shapes_client(shapes_settings):
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(shapes_settings)) as client:
        yield client


@pytest.fixture(scope="module")
def shapes_worker(shapes_settings, tmp_path_factory):
    """Launched, not yet ready: `readings` makes its checkpoint meanwhile, then waits for it."""
    log_path = tmp_path_factory.mktemp("shapes-celery") / "worker.log"
    proc = launch_worker(shapes_settings, log_path, "shapes")
    proc.log_path = log_path
    yield proc
    stop_group(proc)


def judge(paths) -> list[dict]:
    """What `python -m engine.shapes.judge VIDEO` prints for each video, read in one process (one torch import)."""
    code = ("import json, sys\nfrom pathlib import Path\nfrom engine.shapes.judge import read_video_file\n"
            "for path in sys.argv[1:]:\n"
            "    print(json.dumps({k: v for k, v in read_video_file(Path(path)).items() if k != 'per_frame'}))")
    out = subprocess.run([PYTHON, "-c", code, *map(str, paths)], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return [json.loads(line) for line in out.stdout.strip().splitlines()[-len(paths):]]


@pytest.fixture(scope="module")
def readings(shapes_client, shapes_worker, auth_a, tmp_path_factory) -> list[dict]:
    """The committed DreamBooth fine-tune (as the single-file checkpoint users upload) customized through the API
    by a real worker, then three videos read by the judge."""
    tmp_path = tmp_path_factory.mktemp("shapes-flow")
    checkpoint = tmp_path / "dreambooth.safetensors"
    subprocess.run([PYTHON, "-m", "engine", "make-checkpoint", "--format", "ldm", str(checkpoint)], cwd=ROOT,
                   check=True, capture_output=True)
    response = upload(shapes_client, auth_a, checkpoint, CONFIG)
    assert response.status_code == 202, response.text
    customization = response.json()["customization_id"]
    await_worker(shapes_worker, shapes_worker.log_path)
    job = wait_job(shapes_client, auth_a, response.json()["job_id"], timeout=600)
    assert job["status"] == "succeeded", job
    videos = []
    for seed in SEEDS:
        response = shapes_client.post("/generate", headers=auth_a,
                                      json={"customization_id": customization, "prompt": PROMPT, "seed": seed})
        assert response.status_code == 202, response.text
        done = wait_job(shapes_client, auth_a, response.json()["job_id"], timeout=300)
        assert done["status"] == "succeeded", done
        videos.append(tmp_path / f"video-{seed}.mp4")
        videos[-1].write_bytes(httpx.get(done["result"]["video_url"], timeout=30).raise_for_status().content)
    return judge(videos)


def test_the_shapes_flow_makes_videos_the_judge_reads(readings):
    assert len(readings) == len(SEEDS) and all(r["frames"] == 8 for r in readings)
    assert all({"majority", "readable", "look_two_tone", "track"} <= set(r) for r in readings)


def test_a_customized_object_keeps_its_look_and_moves(readings):
    """What the video should show: one readable object, the customized look, moving."""
    readable = [r["readable"] >= 0.75 for r in readings]
    two_tone = [r["look_two_tone"] >= 0.5 for r in readings]
    moving = [max(abs(d) for d in r["track"]["displacement"]) >= 4 for r in readings]
    assert sum(readable) >= 2 and sum(two_tone) >= 2 and sum(moving) >= 2, readings


def test_a_reference_drives_the_shapes_controlnet_through_the_api(shapes_client, shapes_worker, auth_a,
                                                                   tmp_path):
    """A red square moving diagonally (a path no caption names) uploaded to /files drives the preset's committed
    canny ControlNet: the object of the video follows it (mean per-frame mask IoU against the reference's masks,
    read in a subprocess), far better than the same prompt and seed without the control."""
    subprocess.run([PYTHON, "-c", "import sys, numpy as np\nfrom pathlib import Path\nfrom engine import export\n"
                    "from engine.shapes.control_eval import reference\nr = reference(0)\n"
                    "export.write_video(r.frames, Path(sys.argv[1]), 'ref', 'gif', 8)\n"
                    "np.save(Path(sys.argv[1]) / 'masks.npy', r.masks)", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True)
    response = shapes_client.post("/files", headers=auth_a,
                                  files={"file": ("ref.gif", (tmp_path / "ref.gif").read_bytes(), "image/gif")})
    assert response.status_code == 201, response.text
    await_worker(shapes_worker, shapes_worker.log_path)
    body = {"prompt": "a red square", "seed": 1, "format": "gif"}
    videos = []
    for name, extra in (("plain", {}), ("control", {"control": {"file": response.json()["file_id"], "type": "canny"}})):
        accepted = shapes_client.post("/generate", headers=auth_a, json=body | extra)
        assert accepted.status_code == 202, accepted.text
        done = wait_job(shapes_client, auth_a, accepted.json()["job_id"], timeout=300)
        assert done["status"] == "succeeded", done
        videos.append(tmp_path / f"{name}.gif")
        videos[-1].write_bytes(httpx.get(done["result"]["video_url"], timeout=30).raise_for_status().content)
    code = ("import sys, numpy as np, imageio.v3 as iio\nfrom engine.shapes.judge import frame_ious\n"
            "masks = np.load(sys.argv[1])\nfor path in sys.argv[2:]:\n"
            "    print(float(np.mean(frame_ious(np.asarray(iio.imread(path, index=None))[..., :3], masks))))")
    out = subprocess.run([PYTHON, "-c", code, str(tmp_path / "masks.npy"), *map(str, videos)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    plain, controlled = map(float, out.stdout.split()[-2:])
    assert controlled >= 0.5 and controlled >= plain + 0.2, (plain, controlled)
