"""``/files`` and a generation's control and init through the API: probing each format, every refusal, tenant
isolation, the listing, the Idempotency-Key, a deletion refused while a generation reads the file, the request's
validation. Jobs here go to queues no worker serves (they stay queued, and are moved through their states with
the job store's own transitions, as a worker does); the flow through a real worker is in `test_control_flow.py`."""

from __future__ import annotations

import hashlib
import io

import imageio.v2 as imageio
import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import owner_of
from common.jobstore import now
from tests.service.helpers import assert_error, upload

GEN = {"prompt": "a dog", "num_frames": 4, "height": 32, "width": 32, "steps": 4, "format": "gif"}  # v2v: 2 of them kept at 0.5
MAX_FRAMES, MAX_PIXELS, MAX_BYTES = 10, 64 * 64, 200_000


def moving_square(n: int = 5, height: int = 48, width: int = 64) -> np.ndarray:
    frames = np.zeros((n, height, width, 3), np.uint8)
    for i in range(n):
        frames[i, 12:36, 4 + 4 * i:28 + 4 * i] = 255
    return frames


def encode(frames: np.ndarray, extension: str) -> bytes:
    """`frames` as a file of that extension: H.264 MP4, VP9 WebM (imageio-ffmpeg), GIF, PNG, JPEG (first frame)."""
    buffer = io.BytesIO()
    if extension in (".mp4", ".webm"):
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=extension) as handle:
            codec = "libx264" if extension == ".mp4" else "libvpx-vp9"
            writer = imageio.get_writer(handle.name, format="FFMPEG", fps=8, codec=codec, macro_block_size=8,
                                        ffmpeg_log_level="error")
            for frame in frames:
                writer.append_data(frame)
            writer.close()
            return open(handle.name, "rb").read()
    if extension == ".gif":
        imageio.mimsave(buffer, list(frames), format="GIF", duration=125, loop=0)
    else:
        imageio.imwrite(buffer, frames[0], format=extension.lstrip("."))
    return buffer.getvalue()


LIST_KEY = "files-list-key"  # a key only the listing test uploads with
LISTER = {"Authorization": f"Bearer {LIST_KEY}"}


@pytest.fixture(scope="module")
def files_settings(settings):
    return settings.model_copy(update={"train_queue": "files-train", "generate_queue": "files-generate",
                                       "max_file_frames": MAX_FRAMES, "max_file_pixels": MAX_PIXELS,
                                       "max_file_bytes": MAX_BYTES, "api_keys": [*settings.api_keys, LIST_KEY]})


@pytest.fixture(scope="module")
def api(files_settings):
    with TestClient(create_app(files_settings)) as client:
        yield client


def post_file(api, auth, data: bytes, name: str = "ref.mp4", field: str = "file", key: str | None = None):
    headers = {**auth, **({"Idempotency-Key": key} if key else {})}
    return api.post("/files", headers=headers, files={field: (name, data, "application/octet-stream")})


def stored(api) -> list[str]:
    return api.app.state.storage.list_keys("files/")


@pytest.fixture(scope="module")
def reference(api, auth_a) -> dict:
    response = post_file(api, auth_a, encode(moving_square(), ".gif"), "ref.gif")
    assert response.status_code == 201, response.text
    return response.json()


@pytest.mark.parametrize(("name", "kind", "frames", "content_type"), [
    ("ref.mp4", "video", 5, "video/mp4"), ("ref.webm", "video", 5, "video/webm"), ("ref.gif", "video", 5, "image/gif"),
    ("ref.png", "image", 1, "image/png"), ("ref.jpg", "image", 1, "image/jpeg"),
    ("two.gif", "video", 2, "image/gif"), ("one.gif", "video", 1, "image/gif")])  # no frame counted twice
def test_upload_is_probed_stored_with_its_sha256_and_readable(api, auth_a, name, kind, frames, content_type):
    extension = "." + name.rsplit(".", 1)[1]
    data = encode(moving_square(frames if kind == "video" else 5), extension)
    response = post_file(api, auth_a, data, name)
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["Location"] == f"/files/{body['file_id']}"
    assert (body["kind"], body["frames"], body["width"], body["height"]) == (kind, frames, 64, 48)
    assert body["content_type"] == content_type and body["filename"] == name
    assert body["size"] == len(data) and body["sha256"] == hashlib.sha256(data).hexdigest()
    assert (body["fps"] is None) == (kind == "image") and (kind == "image" or body["fps"] > 0)
    assert api.get(f"/files/{body['file_id']}", headers=auth_a).json() == body
    assert api.app.state.storage.get_bytes(f"files/{body['file_id']}/source") == data


@pytest.mark.parametrize(("case", "field_message"), [
    ("not a video", "does not decode"), ("truncated", "does not decode"), ("too many frames", f"{MAX_FRAMES} frames"),
    ("too many pixels", f"{MAX_PIXELS} pixels"), ("empty", "empty")])
def test_undecodable_or_over_the_limits_is_422_naming_file_and_nothing_is_stored(api, auth_a, case, field_message):
    video = encode(moving_square(), ".mp4")
    data = {"not a video": b"#EXTM3U\nhttp://127.0.0.1:9/x.ts\n" * 4, "truncated": video[: len(video) // 2],
            "too many frames": encode(moving_square(MAX_FRAMES + 2), ".gif"),
            "too many pixels": encode(moving_square(2, 72, 72), ".png"), "empty": b""}[case]
    before = stored(api)
    error = assert_error(post_file(api, auth_a, data), 422, "invalid_argument", "file")
    assert field_message in error["message"], error
    assert stored(api) == before
    assert api.app.state.storage.list_keys("uploads/") == []  # the staging object is gone too


def test_over_the_size_limit_is_413_declared_or_streamed(api, auth_a):
    before = stored(api)
    streamed = post_file(api, auth_a, b"\0" * (MAX_BYTES + 1000))  # under the guard's form overhead: counted while read
    assert_error(streamed, 413, "payload_too_large", "file")
    assert str(MAX_BYTES) in streamed.json()["error"]["message"]
    assert_error(post_file(api, auth_a, b"\0" * (MAX_BYTES + 2 * 1024 * 1024)), 413, "payload_too_large", "file")
    assert stored(api) == before


def test_form_problems_are_4xx(api, auth_a):
    assert_error(post_file(api, auth_a, encode(moving_square(), ".gif"), field="video"), 422, "invalid_argument", "video")
    assert_error(api.post("/files", headers=auth_a, json={"file": "x"}), 415, "unsupported_media_type")


def test_another_keys_file_is_404_and_delete_removes_record_and_object(api, auth_a, auth_b):
    created = post_file(api, auth_a, encode(moving_square(), ".gif")).json()
    url = f"/files/{created['file_id']}"
    assert_error(api.get(url, headers=auth_b), 404, "not_found", "file_id")
    assert_error(api.delete(url, headers=auth_b), 404, "not_found", "file_id")
    assert_error(api.post("/generate", headers=auth_b, json={**GEN, "control": {"file": created["file_id"],
                                                                           "type": "canny"}}),
                 404, "not_found", "control.file")
    assert api.get(url, headers=auth_a).status_code == 200
    assert api.delete(url, headers=auth_a).status_code == 204
    assert_error(api.get(url, headers=auth_a), 404, "not_found", "file_id")
    assert_error(api.delete(url, headers=auth_a), 404, "not_found", "file_id")
    assert f"files/{created['file_id']}/source" not in stored(api)


def test_generate_with_control_and_init_records_their_sources(api, auth_a, reference):
    control = {"file": reference["file_id"], "type": "canny", "scale": 0.7, "start": 0.1, "end": 0.9}
    response = api.post("/generate", headers=auth_a, json={**GEN, "steps": 4, "control": control,
                                                      "init": {"file": reference["file_id"], "strength": 0.5}})
    assert response.status_code == 202, response.text
    job = api.get(f"/jobs/{response.json()['job_id']}", headers=auth_a).json()
    assert job["params"]["control"] == {**control, "job_id": None, "controlnet": None, "low_threshold": 100,
                                        "high_threshold": 200}
    assert job["params"]["init"] == {"file": reference["file_id"], "job_id": None, "strength": 0.5}
    record = api.app.state.store.get_job(job["id"])
    source = {"key": f"files/{reference['file_id']}/source", "frames": 5}
    assert record.inputs == {"control": source, "init": source}
    assert "inputs" not in job  # storage keys stay in the record


@pytest.mark.parametrize(("control", "status", "code", "field"), [
    ({"type": "canny"}, 422, "invalid_argument", "control"),  # neither file nor job_id
    ({"type": "canny", "file": "F", "job_id": "job_x"}, 422, "invalid_argument", "control"),
    ({"type": "depth", "file": "F"}, 422, "control_type_unavailable", "control.type"),
    ({"type": "openpose", "file": "F"}, 422, "control_type_unavailable", "control.type"),
    ({"type": "lineart", "file": "F"}, 422, "control_type_unavailable", "control.type"),
    ({"type": "precomputed", "file": "F", "controlnet": "depth"}, 422, "control_type_unavailable",
     "control.controlnet"),
    ({"type": "canny", "file": "F", "start": 0.6, "end": 0.4}, 422, "invalid_argument", "control"),
    ({"type": "canny", "file": "F", "scale": 3}, 422, "invalid_argument", "control.scale"),
    ({"type": "canny", "file": "F", "low_threshold": 200, "high_threshold": 100}, 422, "invalid_argument", "control"),
    ({"type": "precomputed", "file": "F", "low_threshold": 10}, 422, "invalid_argument", "control"),
    ({"type": "sketch", "file": "F"}, 422, "invalid_argument", "control.type"),
    ({"type": "canny", "file": "file_missing"}, 404, "not_found", "control.file"),
    ({"type": "canny", "job_id": "job_missing"}, 404, "not_found", "control.job_id"),
])
def test_bad_controls_are_refused_naming_the_field(api, auth_a, reference, control, status, code, field):
    if control.get("file") == "F":
        control = {**control, "file": reference["file_id"]}
    def job_ids() -> list[str]:  # ids only: the session's worker may be running other tests' jobs of this key
        return [job["id"] for job in api.get("/jobs?limit=100", headers=auth_a).json()["items"]]

    before = job_ids()
    assert_error(api.post("/generate", headers=auth_a, json={**GEN, "control": control}), status, code, field)
    assert job_ids() == before


def test_bad_inits_and_job_sources(api, auth_a, auth_b, reference, checkpoints):
    assert_error(api.post("/generate", headers=auth_a, json={**GEN, "init": {"file": reference["file_id"], "strength": 0}}),
                 422, "invalid_argument", "init.strength")
    few_steps = {**GEN, "steps": 2, "init": {"file": reference["file_id"], "strength": 0.3}}  # int(0.6) = 0 steps
    assert_error(api.post("/generate", headers=auth_a, json=few_steps), 422, "invalid_argument", "init.strength")
    only_t0 = {**GEN, "steps": 4, "init": {"file": reference["file_id"], "strength": 0.3}}  # keeps t=0 alone
    error = assert_error(api.post("/generate", headers=auth_a, json=only_t0), 422, "invalid_argument", "init.strength")
    assert "t=0" in error["message"]
    assert api.post("/generate", headers=auth_a, json={**only_t0, "scheduler": "dpm++"}).status_code == 202
    queued = api.post("/generate", headers=auth_a, json=GEN).json()["job_id"]  # no worker: it stays queued
    assert_error(api.post("/generate", headers=auth_a, json={**GEN, "init": {"job_id": queued}}), 409, "input_not_ready",
                 "init.job_id")
    training = upload(api, auth_a, checkpoints["lora"])
    assert training.status_code == 202, training.text
    error = assert_error(api.post("/generate", headers=auth_a, json={**GEN, "init": {"job_id": training.json()["job_id"]}}),
                         422, "invalid_argument", "init.job_id")
    assert "customize job" in error["message"]
    assert_error(api.post("/generate", headers=auth_b,
                          json={**GEN, "init": {"job_id": queued}}), 404, "not_found", "init.job_id")


def test_a_control_costs_half_a_unet_more(api, auth_a, reference, files_settings):
    preset = files_settings.preset()
    largest = {**GEN, "num_frames": 32, "height": 64, "width": 64, "steps": 50}  # exactly the tiny work limit
    assert 32 * 64 * 64 * 50 == preset.max_video_work
    assert api.post("/generate", headers=auth_a, json=largest).status_code == 202
    error = assert_error(api.post("/generate", headers=auth_a, json={**largest, "control": {
        "file": reference["file_id"], "type": "canny"}}), 422, "invalid_argument")
    assert "ControlNet" in error["message"] and str(preset.max_video_work) in error["message"]
    two_thirds = {**largest, "steps": 33, "control": {"file": reference["file_id"], "type": "canny"}}
    assert api.post("/generate", headers=auth_a, json=two_thirds).status_code == 202


def test_limits_publish_the_controlnets_and_control_types(api, auth_a):
    limits = api.get("/limits", headers=auth_a).json()
    assert limits["controlnets"] == ["canny"]
    assert limits["control_types"] == ["canny", "precomputed"], "tiny configures no annotator"


def test_the_listing_is_the_callers_files_newest_first_in_pages(api, auth_a):
    made = []
    for n in range(5):
        response = post_file(api, LISTER, encode(moving_square(2 + n), ".gif"), f"list-{n}.gif")
        assert response.status_code == 201, response.text
        made.append(response.json())
    first = api.get("/files?limit=2", headers=LISTER)
    assert first.status_code == 200, first.text
    pages, cursor = [first.json()["items"]], first.json()["next_cursor"]
    while cursor:
        page = api.get("/files", headers=LISTER, params={"limit": 2, "cursor": cursor}).json()
        pages.append(page["items"])
        cursor = page["next_cursor"]
    assert [len(p) for p in pages] == [2, 2, 1]
    listed = [item for p in pages for item in p]
    assert listed == made[::-1]  # newest first, each as GET /files/{id} answers it
    assert listed[0] == api.get(f"/files/{made[-1]['file_id']}", headers=LISTER).json()
    assert api.get("/files", headers=LISTER).json() == {"items": made[::-1], "next_cursor": None}  # default 20
    mine = {item["file_id"] for item in api.get("/files?limit=100", headers=auth_a).json()["items"]}
    assert mine.isdisjoint(f["file_id"] for f in made)  # another key's are not listed

    assert api.delete(f"/files/{made[2]['file_id']}", headers=LISTER).status_code == 204
    assert [f["file_id"] for f in api.get("/files", headers=LISTER).json()["items"]] == \
        [made[i]["file_id"] for i in (4, 3, 1, 0)]
    for query, field in (("limit=0", "limit"), ("limit=101", "limit"), ("cursor=nope", "cursor"),
                         ("cursor=nan~x", "cursor")):
        assert_error(api.get(f"/files?{query}", headers=LISTER), 422, "invalid_argument", field)


def test_an_idempotency_key_gives_a_retry_the_first_uploads_file_and_stores_nothing(api, auth_a, auth_b):
    data = encode(moving_square(), ".gif")
    first = post_file(api, auth_a, data, "idem.gif", key="file-idem-1")
    assert first.status_code == 201, first.text
    before = stored(api)
    retry = post_file(api, auth_a, data, "idem.gif", key="file-idem-1")
    assert (retry.status_code, retry.json(), retry.headers["Location"]) == \
        (201, first.json(), first.headers["Location"])
    assert stored(api) == before and api.app.state.storage.list_keys("uploads/") == []  # the retry was only hashed
    for other in ((encode(moving_square(3), ".gif"), "idem.gif"), (data, "renamed.gif")):  # content, then name
        assert_error(post_file(api, auth_a, *other, key="file-idem-1"), 409, "idempotency_key_reused",
                     "Idempotency-Key")
    elsewhere = post_file(api, auth_b, data, "idem.gif", key="file-idem-1")  # keys are per API key
    assert elsewhere.status_code == 201 and elsewhere.json()["file_id"] != first.json()["file_id"]
    assert stored(api) == sorted([*before, f"files/{elsewhere.json()['file_id']}/source"])

    assert api.delete(first.headers["Location"], headers=auth_a).status_code == 204
    gone = assert_error(post_file(api, auth_a, data, "idem.gif", key="file-idem-1"), 404, "not_found", "file_id")
    assert first.json()["file_id"] in gone["message"] and "deleted" in gone["message"]


def test_an_idempotency_key_is_free_again_after_a_refused_upload_and_409_while_one_is_in_progress(api, auth_a):
    assert_error(post_file(api, auth_a, b"not a video at all", key="file-idem-2"), 422, "invalid_argument", "file")
    retry = post_file(api, auth_a, encode(moving_square(), ".gif"), "ok.gif", key="file-idem-2")
    assert retry.status_code == 201, retry.text  # the refusal released the key
    store = api.app.state.store
    owner = owner_of(auth_a["Authorization"].split()[1])
    assert store.idempotency_reserve(owner, "files", "file-idem-3", ttl_s=60) is None  # a request still streaming
    before = stored(api)
    assert_error(post_file(api, auth_a, encode(moving_square(), ".gif"), key="file-idem-3"), 409,
                 "idempotency_in_progress")
    assert stored(api) == before


def run(store, job_id: str) -> None:
    """What a worker's start does: queued -> running, attempt 1."""
    assert store.transition(job_id, ["queued"], attempt=0, status="running", attempts=1, started_at=now())


def test_a_file_a_queued_or_running_generation_reads_is_409_naming_it_until_it_ends(api, auth_a, auth_b):
    store = api.app.state.store
    file_id = post_file(api, auth_a, encode(moving_square(), ".gif"), "used.gif").json()["file_id"]
    other = post_file(api, auth_a, encode(moving_square(), ".gif"), "unused.gif").json()["file_id"]
    url = f"/files/{file_id}"
    for body in ({"control": {"file": file_id, "type": "canny"}}, {"init": {"file": file_id, "strength": 0.5}}):
        job_id = api.post("/generate", headers=auth_a, json={**GEN, **body}).json()["job_id"]
        for setup in (lambda: None, lambda j=job_id: run(store, j)):  # queued, then running
            setup()
            error = assert_error(api.delete(url, headers=auth_a), 409, "file_in_use", "file_id")
            assert job_id in error["message"] and store.get_job(job_id).status in error["message"]
            assert api.get(url, headers=auth_a).status_code == 200 and f"files/{file_id}/source" in stored(api)
        assert_error(api.delete(url, headers=auth_b), 404, "not_found", "file_id")  # another key's: not yours
        assert store.finish(job_id, "failed", attempt=1)  # ended: it reads nothing any more
    assert api.delete(f"/files/{other}", headers=auth_a).status_code == 204  # a queued job it is not in holds nothing
    queued = api.post("/generate", headers=auth_a, json={**GEN, "control": {"file": file_id, "type": "canny"}})
    assert api.post(f"/jobs/{queued.json()['job_id']}/cancel", headers=auth_a).json()["status"] == "canceled"
    assert api.delete(url, headers=auth_a).status_code == 204
    assert f"files/{file_id}/source" not in stored(api)
    assert_error(api.post("/generate", headers=auth_a, json={**GEN, "init": {"file": file_id, "strength": 0.5}}),
                 404, "not_found", "init.file")
