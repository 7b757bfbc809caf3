"""Annotated controls (depth, openpose, lineart) through the API: refused with a 422 naming ``control.type``
(before any worker) where their annotator weights or ControlNet are not configured; where they are (tiny seeded
transformers models and a seeded lineart Generator, saved in the real layouts, made in a subprocess: this test
process never imports torch), a real worker computes the conditioning frames from the uploaded reference, stores
them with the result, and they change the video."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.app import create_app
from common.presets import ANNOTATORS, WEIGHTED_ANNOTATOR_TYPES
from common.settings import Settings
from scripts.processes import PYTHON, ROOT, stop_group
from tests.service.helpers import assert_error
from tests.service.processes import start_worker
from tests.service.test_control_flow import GEN, frames_of, run
from tests.service.test_files import encode, moving_square

ANNOTATED = WEIGHTED_ANNOTATOR_TYPES


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("annotators")
    paths = {kind: str(out / kind) for kind in ("depth", "openpose", "lineart")}
    code = ("import sys\nfrom engine.tiny_models import save_tiny_depth_estimator, save_tiny_lineart, "
            "save_tiny_pose_estimator\nsave_tiny_depth_estimator(sys.argv[1]); save_tiny_pose_estimator(sys.argv[2]); "
            "save_tiny_lineart(sys.argv[3])\n")
    subprocess.run([PYTHON, "-c", code, *paths.values()], cwd=ROOT, check=True, capture_output=True)
    return paths


@pytest.fixture(scope="module")
def annotated_settings(settings, weights, tmp_path_factory):
    return settings.model_copy(update={
        "train_queue": "annot-train", "generate_queue": "annot-generate", "annotator_models": weights,
        "controlnet_models": {name: "builtin" for name in ("canny", *ANNOTATED)},
        "workdir": tmp_path_factory.mktemp("annot-worker")})


@pytest.fixture(scope="module")
def annotated_client(annotated_settings):
    with TestClient(create_app(annotated_settings)) as client:
        yield client


def reference_of(client, auth) -> str:
    data = encode(moving_square(6, 48, 64), ".mp4")
    response = client.post("/files", headers=auth, files={"file": ("ref.mp4", data, "video/mp4")})
    assert response.status_code == 201, response.text
    return response.json()["file_id"]


def test_settings_refuse_an_annotator_for_a_type_without_one():
    with pytest.raises(ValidationError, match="'canny' has no annotator"):
        Settings(annotator_models={"canny": "lllyasviel/Annotators"}, _env_file=None)
    sd15 = Settings(model_preset="sd15", _env_file=None)
    assert sd15.annotators() == ANNOTATORS["sd15"] and set(sd15.annotators()) == set(WEIGHTED_ANNOTATOR_TYPES)
    assert set(sd15.controlnets()) == {"canny", *WEIGHTED_ANNOTATOR_TYPES}, "a v1.1 ControlNet per type"
    assert Settings(model_preset="shapes", _env_file=None).annotators() == {}


def test_an_unconfigured_annotator_or_controlnet_is_a_422_naming_control_type(settings, auth_a):
    """Depth's weights configured (the API never reads them) but no depth ControlNet served; openpose's not
    configured, nor lineart's."""
    half = settings.model_copy(update={"train_queue": "annot-half-train", "generate_queue": "annot-half-generate",
                                       "annotator_models": {"depth": "Intel/dpt-hybrid-midas"}})
    with TestClient(create_app(half)) as client:
        file_id = reference_of(client, auth_a)
        before = [job["id"] for job in client.get("/jobs?limit=100", headers=auth_a).json()["items"]]
        assert client.get("/limits", headers=auth_a).json()["control_types"] == ["canny", "depth", "precomputed"]
        for kind, says in (("depth", "no ControlNet 'depth'"), ("openpose", "annotator weights are not configured"),
                           ("lineart", "annotator weights are not configured")):
            body = {**GEN, "control": {"file": file_id, "type": kind}}
            error = assert_error(client.post("/generate", headers=auth_a, json=body), 422,
                                 "control_type_unavailable", "control.type")
            assert says in error["message"], error
        after = [job["id"] for job in client.get("/jobs?limit=100", headers=auth_a).json()["items"]]
        assert after == before, "nothing was queued"


@pytest.fixture(scope="module")
def annotated_worker(annotated_settings, tmp_path_factory):
    proc = start_worker(annotated_settings, tmp_path_factory.mktemp("annot-celery") / "worker.log", "annot")
    yield proc
    stop_group(proc)


@pytest.fixture(scope="module")
def plain(annotated_client, annotated_worker, auth_a) -> dict:
    """The reference uploaded, and the video without a control."""
    return {"file_id": reference_of(annotated_client, auth_a), "result": run(annotated_client, auth_a, GEN)["result"]}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ANNOTATED)  # lineart detects at 512x512 (~9 s a frame on a CPU): ~40 s
def test_an_annotated_control_is_computed_by_the_worker_and_changes_the_video(annotated_client, plain, auth_a, kind):
    assert annotated_client.get("/limits", headers=auth_a).json()["control_types"] == ["canny", *ANNOTATED,
                                                                                       "precomputed"]
    job = run(annotated_client, auth_a, {**GEN, "control": {"file": plain["file_id"], "type": kind}})
    result = job["result"]
    assert job["params"]["control"]["type"] == kind and "control_url" in result
    maps, video = frames_of(result, "control_url"), frames_of(result)
    assert maps.shape == video.shape == (4, 32, 32, 3)
    if kind == "depth":
        grey = maps.astype(int)
        assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 8 and maps.max() > 200, "grey maps over the full range"
    if kind == "lineart":
        grey = maps.astype(int)
        assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 8, "grey maps (a random Generator's: mid-grey lines)"
    assert not np.array_equal(video, frames_of(plain["result"])), f"the {kind} control changes the video"
