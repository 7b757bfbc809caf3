"""`POST /generate`'s `motion_lora`: only the settings' allow-list is accepted (422 naming the field before any job
exists, so no worker ever reads another source), its scale only with it, the list published by `GET /limits`, and
the job's params carry it to the worker's spec. Jobs go to a queue no worker serves."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from common.schemas import GenerateRequest
from tests.conftest import KEY_A
from tests.service.helpers import assert_error, job_ids

SERVED = "guoyww/animatediff-motion-lora-zoom-in"
GEN = {"prompt": "a dog", "num_frames": 4, "height": 32, "width": 32, "steps": 1}


@pytest.fixture(scope="module")
def api(settings):
    served = settings.model_copy(update={"generate_queue": "mlora-generate", "train_queue": "mlora-train",
                                         "motion_lora_models": [SERVED]})
    with TestClient(create_app(served)) as client:
        yield client


@pytest.fixture(scope="module")
def a():
    return {"Authorization": f"Bearer {KEY_A}"}


@pytest.mark.parametrize("motion_lora", ["guoyww/animatediff-motion-lora-zoom-out", "/etc", "../models/shapes",
                                         SERVED + "/", SERVED.upper(), "https://example.com/lora.safetensors"])
def test_a_motion_lora_off_the_allow_list_is_422_naming_it_and_queues_nothing(api, a, motion_lora):
    before = job_ids(api, a)
    error = assert_error(api.post("/generate", headers=a, json={**GEN, "motion_lora": motion_lora}), 422,
                         "invalid_argument", "motion_lora")
    assert SERVED in error["message"], "the message names what is served"
    assert job_ids(api, a) == before


@pytest.mark.parametrize("change,field", [
    ({"motion_lora_scale": 0.5}, "motion_lora_scale"),  # a scale without a LoRA
    ({"motion_lora": SERVED, "motion_lora_scale": 3}, "motion_lora_scale"),
    ({"motion_lora": ""}, "motion_lora"), ({"motion_lora": 7}, "motion_lora"),
])
def test_bad_motion_lora_values_are_422_naming_the_field(api, a, change, field):
    assert_error(api.post("/generate", headers=a, json={**GEN, **change}), 422, "invalid_argument", field)


def test_a_served_motion_lora_is_accepted_and_carried_in_the_params(api, a):
    response = api.post("/generate", headers=a, json={**GEN, "motion_lora": SERVED, "motion_lora_scale": 0.7})
    assert response.status_code == 202, response.text
    job = api.get(f"/jobs/{response.json()['job_id']}", headers=a).json()
    assert job["status"] == "queued"
    published = api.get("/limits", headers=a).json()
    assert published["motion_loras"] == [SERVED]


def test_the_params_give_the_workers_spec_its_lora_and_scale():
    from worker.runner import sample_spec

    spec = sample_spec(GenerateRequest.model_validate({**GEN, "motion_lora": SERVED}).model_dump())
    assert (spec.motion_lora, spec.motion_lora_scale) == (SERVED, 1.0)
    spec = sample_spec({**GEN, "motion_lora": SERVED, "motion_lora_scale": 0.0})
    assert (spec.motion_lora, spec.motion_lora_scale) == (SERVED, 0.0)
    assert sample_spec(GEN).motion_lora is None


def test_the_tiny_preset_serves_none_by_default(settings):
    assert settings.motion_lora_models is None and settings.motion_loras() == []
