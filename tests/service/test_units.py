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
    # the one shared fact table (defaults, frame positions, cost limits) and its plain-python errors, nothing more
    common = {m for m in _modules_after("import engine", whole_names=True) if m.split(".")[0] == "common"}
    assert common == {"common", "common.presets", "common.errors"}, common
