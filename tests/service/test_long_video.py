"""Long videos and prompt travel on POST /generate: validation (422 naming the field), the limits (one window's
memory, the whole video's work), and a long video with a prompt map through the real worker on tiny."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.conftest import KEY_A
from tests.service.helpers import assert_error, wait_job
from tests.service.test_flow import decode, fetch

GEN = {"prompt": "a dog", "height": 32, "width": 32, "steps": 1}


@pytest.fixture(scope="module")
def api(settings):
    """Jobs go to queues no worker serves: accepted ones stay queued (and cost nothing)."""
    conf = settings.model_copy(update={"train_queue": "long-train", "generate_queue": "long-generate"})
    with TestClient(create_app(conf)) as client:
        yield client


@pytest.fixture(scope="module")
def a():
    return {"Authorization": f"Bearer {KEY_A}"}


@pytest.mark.parametrize("change,field,said", [
    ({"prompt": {}}, "prompt", "1..64 entries"),
    ({"prompt": {"4": "a dog"}}, "prompt", "needs frame 0"),
    ({"prompt": {"0": "a dog", "x": "a cat"}}, "prompt", "not a frame number"),
    ({"prompt": {"0": "a dog", "-3": "a cat"}}, "prompt", "not a frame number"),
    ({"prompt": {"0": "a dog", "2.5": "a cat"}}, "prompt", "not a frame number"),
    ({"prompt": {"0": "a dog", "8": "  "}}, "prompt", "prompt[8] is empty"),
    ({"prompt": {"0": "a dog", "8": 5}}, "prompt", "must be a string"),
    ({"prompt": {"0": "x" * 501}}, "prompt", "longer than 500"),
    ({"prompt": {str(i): "a dog" for i in range(65)}, "num_frames": 100}, "prompt", "1..64 entries"),
    ({"prompt": ["a dog"]}, "prompt", "string or an object"),
    ({"prompt": {"0": "a dog", "40": "a cat"}, "num_frames": 40}, "prompt", "frame 40 is not in [0, num_frames=40)"),
    ({"prompt": {"0": "a dog", "8": "a cat"}}, "prompt", "num_frames=8"),  # tiny's default: 8 frames
    ({"num_frames": 257}, "num_frames", "longest video, 256 frames"),
    ({"num_frames": 1025}, "num_frames", "less than or equal to 1024"),
    ({"num_frames": 64, "context_length": 33}, "context_length", "32 frame positions"),
    ({"num_frames": 64, "context_length": 1}, "context_length", "greater than or equal to 2"),
    ({"num_frames": 64, "context_length": 16, "context_stride": 17}, "context_stride", "1..context_length=16"),
    ({"num_frames": 64, "context_stride": 0}, "context_stride", "greater than or equal to 1"),
    ({"num_frames": 64, "context_length": "long"}, "context_length", "integer"),
    # memory is one window's: 32 frames of 128x64 are over tiny's 32 x 64 x 64 pixel-frames
    ({"num_frames": 64, "height": 128, "width": 64}, "height", "context_length x height x width"),
    # time is the whole video's: 256 frames of 32x32 at 26 steps are over 32 x 64 x 64 x 50
    ({"num_frames": 256, "steps": 26}, "num_frames", "x steps"),
])
def test_bad_long_video_requests_are_422_naming_the_field(api, a, change, field, said):
    def job_ids() -> list[str]:  # ids only: the session's other jobs of this key move on meanwhile
        return [job["id"] for job in api.get("/jobs?limit=100", headers=a).json()["items"]]

    before = job_ids()
    error = assert_error(api.post("/generate", headers=a, json={**GEN, **change}), 422, "invalid_argument", field)
    assert said in error["message"], error
    assert job_ids() == before  # nothing queued


def test_long_videos_within_the_limits_are_accepted_and_shown(api, a, settings):
    preset = settings.preset()
    published = api.get("/limits", headers=a).json()
    assert published["max_video_frames"] == preset.max_video_frames == 256 and published["max_frames"] == 32
    # the largest tiny video: 256 frames of 32x32 at 25 steps is exactly its work limit
    assert 256 * 32 * 32 * 25 == preset.max_video_work
    travel = {"0": "a dog running", "128": "a dog running", "200": "a cat sitting"}
    body = {**GEN, "prompt": travel, "num_frames": 256, "steps": 25, "context_length": 16, "context_stride": 4}
    response = api.post("/generate", headers=a, json=body)
    assert response.status_code == 202, response.text
    job = api.get(f"/jobs/{response.json()['job_id']}", headers=a).json()
    params = job["params"]
    assert params["prompt"] == travel and params["num_frames"] == 256
    assert (params["context_length"], params["context_stride"]) == (16, 4)
    # a window of 32 frames at 64x64 is the memory limit itself, however long the video
    assert api.post("/generate", headers=a, json={**GEN, "num_frames": 100, "height": 64, "width": 64}).status_code \
        == 202
    openapi = api.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]["properties"]
    assert {"context_length", "context_stride"} <= set(openapi) and "anyOf" in openapi["prompt"]


@pytest.mark.slow
def test_a_long_video_with_a_prompt_map_through_the_worker(client, auth_a, worker):
    """40 frames (past tiny's 32 positions) in windows of 16 every 4, the prompt travelling from frame 20."""
    request = {"prompt": {"0": "a dog running", "20": "a dog running", "39": "a cat sitting"}, "num_frames": 40,
               "height": 16, "width": 16, "steps": 1, "seed": 5, "context_length": 16, "context_stride": 4}
    response = client.post("/generate", headers=auth_a, json=request)
    assert response.status_code == 202, response.text
    job = wait_job(client, auth_a, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert (result["num_frames"], result["context_length"], result["context_stride"]) == (40, 16, 4)
    assert job["params"]["prompt"] == request["prompt"]
    assert decode(fetch(result["video_url"]), ".mp4").shape[:3] == (40, 16, 16)
    short = wait_job(client, auth_a, client.post("/generate", headers=auth_a, json={
        "prompt": "a dog", "num_frames": 8, "height": 16, "width": 16, "steps": 1}).json()["job_id"])
    assert short["status"] == "succeeded" and "context_length" not in short["result"]  # the plain path
