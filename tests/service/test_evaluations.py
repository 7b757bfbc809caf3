"""``POST /evaluations``: validated like a generation (422 naming the field, 404 for another key's
customization), then a real worker renders the four rows on the tiny preset: a contact sheet, each row's
looping video and its measures in the job's result; the ablation is trained once per customization."""

from __future__ import annotations

import io

import httpx
import imageio.v3 as iio
import pytest

from tests.service.helpers import TINY_CONFIG, assert_error, upload, wait_job

ROWS = ["base", "naive", "still-moving", "still-moving-no-motion-adapter"]
LABEL_WIDTH = 200  # engine.evaluation's label column of the contact sheet


def fetch(url: str) -> bytes:
    response = httpx.get(url, timeout=30)  # presigned: no API key
    assert response.status_code == 200, url
    return response.content


@pytest.fixture(scope="module")
def trained(client, auth_a, worker, checkpoints) -> str:
    response = upload(client, auth_a, checkpoints["lora"], {**TINY_CONFIG, "name": "to compare"})
    assert response.status_code == 202, response.text
    job = wait_job(client, auth_a, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    return response.json()["customization_id"]


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": "a dog"}, "customization_id"),
    ({"customization_id": "cus_x", "prompt": ""}, "prompt"),
    ({"customization_id": "cus_x", "prompt": "   "}, "prompt"),
    ({"customization_id": "cus_x", "prompt": "a dog", "seed": -1}, "seed"),
    ({"customization_id": "cus_x", "prompt": "a dog", "seed": 2**32}, "seed"),
    ({"customization_id": "cus_x", "prompt": "a dog", "num_frames": 1}, "num_frames"),
    ({"customization_id": "cus_x", "prompt": "a dog", "num_frames": 65}, "num_frames"),  # over the bound (33 is a FreeNoise video)
    ({"customization_id": "cus_x", "prompt": "a dog", "steps": 0}, "steps"),
    ({"customization_id": "cus_x", "prompt": "a dog", "method": "naive"}, "method"),  # not a field here
    ({"customization_id": "cus_x", "prompt": "a dog", "webhook": "ftp://example.com/x"}, "webhook"),
])
def test_invalid_evaluations_are_422_naming_the_field(client, auth_a, body, field):
    before = client.get("/jobs?limit=100", headers=auth_a).json()["items"]
    assert_error(client.post("/evaluations", headers=auth_a, json=body), 422, "invalid_argument", field)
    assert [j["id"] for j in client.get("/jobs?limit=100", headers=auth_a).json()["items"]] == \
        [j["id"] for j in before]  # nothing queued


@pytest.mark.slow
def test_evaluation_wants_json_and_a_customization_of_its_own_key(client, auth_a, auth_b, trained):
    response = client.post("/evaluations", headers={**auth_a, "Content-Type": "text/plain"},
                           content=b'{"customization_id": "x", "prompt": "a dog"}')
    assert_error(response, 415, "unsupported_media_type")
    assert "POST /evaluations" in response.json()["error"]["message"]
    body = {"customization_id": trained, "prompt": "a dog"}
    assert_error(client.post("/evaluations", headers=auth_b, json=body), 404, "not_found", "customization_id")
    assert_error(client.post("/evaluations", headers=auth_a, json={**body, "customization_id": "cus_nope"}),
                 404, "not_found", "customization_id")
    assert client.post("/evaluations", json=body).status_code == 401


@pytest.mark.slow
def test_a_worker_renders_the_four_rows_with_a_contact_sheet_and_measures(client, auth_a, auth_b, trained):
    body = {"customization_id": trained, "prompt": "a photo of sks dog", "seed": 5, "steps": 2}
    response = client.post("/evaluations", headers=auth_a, json=body)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/jobs/{response.json()['job_id']}"
    job_id = response.json()["job_id"]
    seen: list = []
    job = wait_job(client, auth_a, job_id, seen=seen)
    assert job["status"] == "succeeded", job
    assert job["kind"] == "evaluate" and job["customization_id"] == trained and job["params"]["seed"] == 5
    assert {s for _, s, _ in seen} & {"ablation_train", "render_base", "render_still-moving"}, seen
    assert [p for _, _, p in seen] == sorted(p for _, _, p in seen)  # progress never goes backwards
    assert_error(client.get(f"/jobs/{job_id}", headers=auth_b), 404, "not_found", "job_id")

    result = job["result"]
    assert result["prompt"] == body["prompt"] and result["seed"] == 5 and result["ablation_trained"] is True
    frames, size = TINY_CONFIG["num_frames"], TINY_CONFIG["height"]
    assert result["num_frames"] == frames
    sheet = iio.imread(io.BytesIO(fetch(result["contact_sheet_url"])), extension=".png")
    assert sheet.shape[:2] == (len(ROWS) * size, LABEL_WIDTH + frames * size)
    assert [row["name"] for row in result["rows"]] == ROWS
    videos, posters = {}, {}
    for row in result["rows"]:
        assert set(row["measures"]) >= {"motion", "temporal_consistency", "fidelity_proxy"}, row
        assert all(isinstance(v, float) for v in row["measures"].values()), row
        videos[row["name"]] = iio.imread(io.BytesIO(fetch(row["video_url"])), extension=".mp4", index=None)
        assert videos[row["name"]].shape[:3] == (frames, size, size)
        posters[row["name"]] = iio.imread(io.BytesIO(fetch(row["poster_url"])), extension=".png")[..., :3]
        assert not any(k.endswith("_key") for k in row)
    # each row's poster is its contact-sheet row's first frame, and its video starts there (H.264 is lossy:
    # the tiny preset's noise-like frames come back within about 20 levels)
    for r, name in enumerate(ROWS):
        cell = sheet[r * size:(r + 1) * size, LABEL_WIDTH:LABEL_WIDTH + size, :3]
        assert (posters[name] == cell).all(), name
        assert abs(cell.astype(float) - videos[name][0].astype(float)).mean() < 30, name
    assert set(result["metrics"]) >= {"queue_s", "run_s", "stages"}  # the job's timings, as for every job

    # a second evaluation of the customization reuses the stored ablation and does not train it again
    storage = client.app.state.storage
    assert f"customizations/{trained}/no-motion-adapter/manifest.json" in storage.list_keys(f"customizations/{trained}/")
    again = client.post("/evaluations", headers=auth_a, json={**body, "seed": 6})
    second = wait_job(client, auth_a, again.json()["job_id"])
    assert second["status"] == "succeeded" and second["result"]["ablation_trained"] is False, second
    assert "ablation_train" not in second["result"]["metrics"]["stages"], second["result"]["metrics"]
    # deleting the job deletes its stored rows
    assert storage.list_keys(f"videos/{job_id}/")
    assert client.delete(f"/jobs/{job_id}", headers=auth_a).status_code == 204
    assert storage.list_keys(f"videos/{job_id}/") == []
