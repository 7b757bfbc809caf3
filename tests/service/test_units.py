"""Unit-level properties: presigned URLs (moto does not check signatures), streaming uploads, settings,
the import boundaries between layers, the LRU cache."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from botocore.exceptions import ClientError

from common.settings import DEV_API_KEY, Settings
from common.storage import Storage, checkpoint_key
from worker.cache import LRUCache

ROOT = Path(__file__).resolve().parents[2]
SECRET = "unit-secret"


def verify_presigned(url: str, secret: str, at: datetime, region: str = "us-east-1") -> bool:
    """An independent SigV4 query-string verifier (what S3 does): signature and expiry."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    signature = query.pop("X-Amz-Signature")
    amz_date = query["X-Amz-Date"]
    signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    if not signed_at <= at <= signed_at + timedelta(seconds=int(query["X-Amz-Expires"])):
        return False
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items()))
    canonical = "\n".join(["GET", parts.path, canonical_query, f"host:{parts.netloc}\n", "host", "UNSIGNED-PAYLOAD"])
    scope = query["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for piece in (amz_date[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, piece.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature)


@pytest.fixture
def unit_storage():
    return Storage(Settings(s3_endpoint_url="http://127.0.0.1:9", s3_public_endpoint_url="http://files.example:9000",
                            s3_bucket="bucket", s3_access_key_id="AKIDUNIT", s3_secret_access_key=SECRET,
                            presign_expiry_s=600, _env_file=None))


def test_presigned_url_is_signed_for_one_object_and_expires(unit_storage):
    key = "videos/job_abc/video.mp4"
    url = unit_storage.presign(key)
    parts = urlsplit(url)
    assert parts.netloc == "files.example:9000"  # the public endpoint, not the internal one
    assert parts.path == f"/bucket/{key}"
    query = dict(parse_qsl(parts.query))
    assert query["X-Amz-Expires"] == "600" and query["X-Amz-SignedHeaders"] == "host"
    now = datetime.now(timezone.utc)
    assert verify_presigned(url, SECRET, now)
    assert not verify_presigned(url, SECRET, now + timedelta(seconds=601)), "expired URL must fail"
    assert not verify_presigned(url, "other-secret", now)
    other_tenant = url.replace("job_abc", "job_xyz")
    assert not verify_presigned(other_tenant, SECRET, now), "the signature binds the object key"
    assert dict(parse_qsl(urlsplit(unit_storage.presign(key, 30)).query))["X-Amz-Expires"] == "30"


def test_streaming_upload_multipart_hash_dedup_and_abort(settings):
    storage = Storage(settings.model_copy(update={"upload_part_bytes": 5 * 1024**2}))
    storage.ensure_bucket()
    data = os.urandom(11 * 1024**2 + 123)  # three parts
    upload = storage.upload_stream()
    for i in range(0, len(data), 65536):
        upload.write(data[i:i + 65536])
    sha = hashlib.sha256(data).hexdigest()
    assert upload.hexdigest() == sha and upload.size == len(data)
    assert len(upload._buffer) < 5 * 1024**2  # memory holds less than one part
    assert upload.commit(checkpoint_key(sha)) is True
    assert storage.get_bytes(checkpoint_key(sha)) == data
    again = storage.upload_stream()
    again.write(data)
    assert again.commit(checkpoint_key(sha)) is False  # stored once
    dropped = storage.upload_stream()
    dropped.write(data)
    dropped.abort()
    assert storage.list_keys("uploads/") == []
    assert storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []) == []


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("STILLMOVING_API_KEYS", "k1, k2 ,")
    monkeypatch.setenv("STILLMOVING_MAX_UPLOAD_BYTES", "123")
    monkeypatch.setenv("STILLMOVING_MODEL_PRESET", "sd15")
    settings = Settings(_env_file=None)
    assert settings.api_keys == ["k1", "k2"] and settings.max_upload_bytes == 123
    assert settings.model_preset == "sd15"
    assert Settings.model_validate({"api_keys": DEV_API_KEY}).api_keys == [DEV_API_KEY]
    env = settings.to_env()
    assert env["STILLMOVING_API_KEYS"] == "k1,k2"
    monkeypatch.setenv("STILLMOVING_MODEL_PRESET", "sdxl")
    with pytest.raises(ValueError):
        Settings(_env_file=None)


def test_gpu_path_settings_reach_the_engine_model_spec():
    # one subprocess (this one never imports the engine), each case's settings read from its environment
    code = ("import os; from common.settings import Settings; from worker.runner import model_spec\n"
            "for on in ('true', 'false'):\n"
            "    os.environ.update(STILLMOVING_COMPILE_UNET=on, STILLMOVING_GRADIENT_CHECKPOINTING=on)\n"
            "    spec = model_spec(Settings(_env_file=None)); print(spec.compile_unet, spec.gradient_checkpointing)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert [line.split() for line in out.splitlines()] == [["True", "True"], ["False", "False"]]


def test_lru_cache():
    cache, loads = LRUCache(2), []
    for key in ["a", "b", "a", "c", "b"]:
        cache.get_or_load(key, lambda key=key: loads.append(key) or key.upper())
    assert loads == ["a", "b", "c", "b"] and len(cache) == 2 and "a" not in cache


def _modules_after(statement: str, whole_names: bool = False) -> set[str]:
    name = "m" if whole_names else "m.split('.')[0]"
    code = f"import sys; {statement}; print(' '.join(sorted({name} for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_api_loads_no_torch_nor_engine():
    loaded = _modules_after("import api, api.app; api.app.create_app()")
    assert "torch" not in loaded and "engine" not in loaded and "diffusers" not in loaded
    assert "fastapi" in loaded


def test_worker_parent_loads_no_torch():
    assert "torch" not in _modules_after("import worker.tasks")


def test_engine_loads_no_service_frameworks():
    if not (ROOT / "engine" / "__init__.py").exists():
        pytest.skip("engine not present")
    loaded = _modules_after("import engine")
    assert not loaded & {"celery", "fastapi", "starlette", "uvicorn", "api", "worker"}, loaded
    # the shared fact tables (preset defaults, frame positions, cost limits; checkpoint key rules; long-video
    # windows and prompt maps; export formats; video-to-video's step rule) and their plain-python errors, nothing more
    common = {m for m in _modules_after("import engine", whole_names=True) if m.split(".")[0] == "common"}
    assert common == {"common", "common.presets", "common.errors", "common.checkpoint_rules", "common.long_video",
                      "common.exports", "common.video_to_video"}, common


def test_a_customization_s_urls_are_built_one_way():
    """The job's result and the customization's view presign the same keys (the view restated the storage prefix)."""
    from types import SimpleNamespace

    from api.views import customization_view, job_view
    from common.schemas import CustomizationRecord, JobRecord
    from common.storage import customization_artifact_keys

    storage = SimpleNamespace(presign=lambda key: f"https://s3/{key}")
    manifest = {"preview": {"video": "preview.mp4", "poster": "preview.png"},
                "images": [{"file": "images/000.png"}, {"file": "images/001.png"}]}
    created = datetime.now(timezone.utc)
    job = JobRecord(id="j1", kind="customize", owner="o", status="succeeded", created_at=created,
                    customization_id="c1", result={"customization_id": "c1", **customization_artifact_keys("c1", manifest)})
    record = CustomizationRecord(id="c1", owner="o", status="ready", job_id="j1", base_model="tiny",
                                 checkpoint_sha256="0" * 64, checkpoint_format="lora", config={}, created_at=created,
                                 manifest=manifest)
    result, view = job_view(job, None, storage).result, customization_view(record, storage)
    assert result["preview_url"] == view.preview_url == "https://s3/customizations/c1/preview.mp4"
    assert result["image_urls"] == view.image_urls == ["https://s3/customizations/c1/images/000.png",
                                                       "https://s3/customizations/c1/images/001.png"]
    assert result["preview_poster_url"] == "https://s3/customizations/c1/preview.png"


def test_every_job_error_is_mapped_in_one_place():
    """A bad adapter file was a bare ValueError: "internal error". Engine and service errors keep their code."""
    import engine
    from common.errors import CustomizationFailed, StorageUnavailable
    from worker.runner import job_outcome

    cases = {engine.AdapterError("adapter file 'x' is not a readable safetensors file"): ("failed", "invalid_adapter"),
             engine.CheckpointError("bad"): ("failed", "invalid_checkpoint"),
             engine.CancelledError("stop"): ("canceled", "canceled"),
             StorageUnavailable("storage unavailable: upload of k"): ("failed", "storage_unavailable"),
             CustomizationFailed("customization 'c' failed"): ("failed", "customization_failed"),
             ValueError("oops"): ("failed", "internal")}
    for exc, (status, code) in cases.items():
        got_status, error = job_outcome(exc)
        assert (got_status, error.code) == (status, code), exc
        if code not in ("canceled", "internal"):
            assert error.message == exc.message
    assert job_outcome(ValueError("oops"))[1].message == "internal error (ValueError)"


def test_a_source_video_gone_between_queueing_and_download_fails_input_missing(tmp_path):
    """The source job deleted, or its record expired and the collector took its video, even after any check: the
    download's 404 is the generation's ``input_missing`` (not ``internal``); other storage errors stay theirs."""
    from types import SimpleNamespace

    from common.schemas import JobRecord
    from worker.runner import InputMissing, Runner, job_outcome

    def storage(code: str):
        def get_file(key, path):
            raise ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": int(code)}}, "HeadObject")
        return SimpleNamespace(get_file=get_file)

    job = JobRecord.model_validate({"id": "job_x", "kind": "generate", "owner": "o", "status": "running",
                                    "created_at": datetime.now(timezone.utc), "params": {},
                                    "inputs": {"control": {"key": "videos/job_gone/video.mp4", "frames": 4}}})
    with pytest.raises(InputMissing) as info:
        Runner.inputs(SimpleNamespace(storage=storage("404")), job, tmp_path)
    assert job_outcome(info.value)[1].code == "input_missing" and "videos/job_gone" in info.value.message
    with pytest.raises(ClientError):
        Runner.inputs(SimpleNamespace(storage=storage("403")), job, tmp_path)


class _WrappedClientError(ClientError):
    """A storage error raised by a layer outside botocore's modules (a wrapper, a test double)."""


def _multipart_request(body: bytes):
    from starlette.requests import Request

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/customizations", "query_string": b"",
                    "headers": [(b"content-type", b"multipart/form-data; boundary=XX")]}, receive)


def test_a_storage_error_while_streaming_an_upload_stays_a_storage_error():
    """Regression: upload errors were told apart by module name, so this one became a 400 'malformed body'."""
    import asyncio

    from api.upload import receive_form

    class FailingSink:
        size = 0

        def write(self, data):
            raise _WrappedClientError({"Error": {"Code": "SlowDown"}}, "UploadPart")

    body = (b'--XX\r\nContent-Disposition: form-data; name="checkpoint"; filename="a.safetensors"\r\n\r\n'
            + b"x" * 100 + b"\r\n--XX--\r\n")
    with pytest.raises(_WrappedClientError):
        asyncio.run(receive_form(_multipart_request(body), FailingSink(), Settings(_env_file=None)))


def test_the_api_renders_every_storage_error_as_503():
    """boto3's own wrappers (S3UploadFailedError) were a 500 "internal error"."""
    from boto3.exceptions import S3UploadFailedError
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api import errors

    app = FastAPI()
    errors.install(app)

    @app.get("/x")
    def fail():
        raise S3UploadFailedError("upload failed")

    response = TestClient(app, raise_server_exceptions=False).get("/x")
    assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"


def test_a_failed_bucket_check_at_start_is_logged(caplog):
    from fastapi.testclient import TestClient

    from api.app import create_app

    settings = Settings(s3_endpoint_url="http://127.0.0.1:9", s3_bucket="nobucket", storage_timeout_s=1,
                        redis_url="redis://127.0.0.1:9/0", _env_file=None)
    with caplog.at_level("WARNING", logger="stillmoving.api"), TestClient(create_app(settings)):
        pass
    assert any("bucket 'nobucket' could not be checked" in r.getMessage() for r in caplog.records), caplog.text


def test_a_bad_header_keeps_its_cause():
    import struct

    from common.checkpoint_header import parse_header
    from common.errors import InvalidCheckpoint

    head = struct.pack("<Q", 8) + b"not json"
    with pytest.raises(InvalidCheckpoint) as info:
        parse_header(head, len(head), 1024)
    assert isinstance(info.value.__cause__, ValueError)


def test_validation_errors_of_a_body_and_of_the_upload_config_are_reshaped_alike():
    """One reshaper for FastAPI's request errors and the upload's ``config``. Were two: the config's dropped the
    count of further problems, and a body field named like a location ("body", "query"...) lost its name."""
    from pydantic import ValidationError

    from api.errors import reshape_validation_errors
    from common.schemas import CustomizationConfig, GenerateRequest

    def errors(model, raw: str) -> list[dict]:
        with pytest.raises(ValidationError) as caught:
            model.model_validate_json(raw)
        return caught.value.errors()

    two = reshape_validation_errors(errors(CustomizationConfig, '{"prompts": 3, "rank": "x"}'), root="config")
    assert (two.status, two.code, two.field) == (422, "invalid_argument", "config.prompts")
    assert two.message.startswith("config.prompts: ") and two.message.endswith("(and 1 more problems)")
    extra = reshape_validation_errors(errors(CustomizationConfig, '{"prompts": ["x"], "body": 1}'), root="config")
    assert extra.field == "config.body"
    broken = reshape_validation_errors(errors(CustomizationConfig, "{nope"), root="config")
    assert (broken.status, broken.field) == (422, "config") and broken.message.startswith("config is not valid JSON: ")

    body = [{**e, "loc": ("body", *e["loc"])} for e in errors(GenerateRequest, '{"prompt": "x", "steps": "many"}')]
    assert reshape_validation_errors(body).field == "steps"
    assert reshape_validation_errors([{**body[0], "loc": ("body", "body")}]).field == "body"
    assert reshape_validation_errors([{"type": "missing", "loc": ("body",), "msg": "Field required"}]).status == 400
    malformed = reshape_validation_errors([{"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error",
                                            "ctx": {"error": "Expecting value"}}])
    assert (malformed.status, malformed.code, malformed.message) == (
        400, "malformed_json", "request body is not valid JSON: Expecting value")


def test_long_video_windows_cover_every_frame_and_overlap_by_a_quarter_by_default():
    """`common.long_video`: the windows the engine fuses (the last one ends at the last frame) and the default
    stride the API reports (three quarters of the window: AnimateDiff-Evolved's overlap of 4 in 16)."""
    from common.long_video import context_window, windows

    assert context_window(32, 96, None, None, False) == (32, 24)
    assert context_window(32, 96, 16, None, False) == (16, 12)
    assert context_window(32, 16, None, None, False) is None  # within the context: the plain path
    assert context_window(32, 16, None, None, True) == (16, 12)  # a prompt map: one window of every frame
    assert windows(96, 32, 24) == [(0, 32), (24, 56), (48, 80), (64, 96)]
    assert windows(40, 16, 4) == [(0, 16), (4, 20), (8, 24), (12, 28), (16, 32), (20, 36), (24, 40)]
    assert windows(10, 16, 4) == [(0, 10)]
    for frames in range(2, 80, 7):
        for length in (2, 5, 16, 32):
            for stride in range(1, length + 1, 3):
                got = windows(frames, length, stride)
                covered = {f for start, end in got for f in range(start, end)}
                assert covered == set(range(frames)), (frames, length, stride)
                assert all(end - start == min(length, frames) for start, end in got)
                assert [s for s, _ in got] == sorted({s for s, _ in got})
