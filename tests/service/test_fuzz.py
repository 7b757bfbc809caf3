"""Property-based fuzz: requests generated from the OpenAPI schema (schemathesis), fitting it and breaking it,
never get a 5xx; every 4xx is the JSON error envelope; 2xx bodies match the schema. A second property test
feeds the upload route safetensors files built around the base's real key names, where parser bugs hide.

The real app runs in-process on the session's redis-server and moto S3, but on its own Redis database,
queues and bucket: the jobs the fuzz creates reach no worker (the session worker's broker is database 0),
and everything is dropped at the end. Seeds are fixed (derandomize) so CI sees the same cases every run.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter

import pytest
import redis
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import response_schema_conformance

from api.app import create_app
from common.checkpoint_header import DTYPE_BYTES, load_base_keys
from common.storage import Storage
from tests.service.helpers import TINY_CONFIG

FUZZ_KEY = "fuzz-key"
AUTH = {"authorization": f"Bearer {FUZZ_KEY}"}
# Cases per operation, split over the positive and negative modes where the operation has inputs to break.
CASES = {"GET /healthz": 1, "GET /readyz": 1, "POST /customizations": 200, "GET /customizations": 100,
         "GET /customizations/{customization_id}": 60, "POST /generate": 300, "GET /jobs": 100,
         "GET /jobs/{job_id}": 60, "POST /jobs/{job_id}/cancel": 60, "DELETE /jobs/{job_id}": 60,
         "DELETE /customizations/{customization_id}": 60, "GET /limits": 1,
         "GET /jobs/{job_id}/logs": 30, "GET /jobs/{job_id}/events": 30, "POST /files": 100,
         "GET /files": 100, "GET /files/{file_id}": 30, "DELETE /files/{file_id}": 30,
         "GET /webhooks/secret": 1, "POST /webhooks/secret/rotate": 1, "GET /jobs/{job_id}/webhooks": 30,
         "POST /evaluations": 100, "GET /customizations/{customization_id}/export": 60}
UPLOAD_CASES = 500
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def fuzz_settings(settings):
    """The session's servers, with a Redis database, queues, bucket and key nobody else uses. The queue
    and rate limits are out of reach so that a 429 never hides what a request would have done. Emptied at
    the end."""
    base, _, _ = settings.redis_url.rpartition("/")
    fuzz = settings.model_copy(update={
        "redis_url": f"{base}/1", "train_queue": "fuzz-train", "generate_queue": "fuzz-generate",
        "s3_bucket": "stillmoving-fuzz", "api_keys": [FUZZ_KEY], "max_queued_jobs_per_key": 100_000,
        "job_burst": 100_000,
        "max_upload_bytes": 1024 * 1024, "max_file_bytes": 1024 * 1024})
    yield fuzz
    redis.Redis.from_url(fuzz.redis_url).flushdb()
    storage = Storage(fuzz)
    storage.ensure_bucket()
    for key in storage.list_keys(""):
        storage.delete(key)


@pytest.fixture(scope="module")
def fuzz_app(fuzz_settings):
    app = create_app(fuzz_settings)
    yield app
    asgi.shutdown_lifespans()  # schemathesis keeps the app's lifespan running until told


@pytest.fixture(scope="module")
def fuzz_client(fuzz_settings):
    with TestClient(create_app(fuzz_settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


def check_response(case, response) -> None:
    """No 5xx; a 4xx is ``{"error": {"code", "message"}}`` as JSON; a 2xx matches the documented schema."""
    where = f"{case.operation.label} -> {response.status_code}\n{case.as_curl_command(AUTH)}\n{response.text[:500]}"
    assert response.status_code < 500, where
    if response.status_code >= 400:
        assert response.headers.get("content-type", [""])[0].startswith("application/json"), where
        error = response.json().get("error")
        assert isinstance(error, dict), where
        assert isinstance(error.get("code"), str) and error["code"], where
        assert isinstance(error.get("message"), str) and error["message"], where
    else:
        case.validate_response(response, checks=[response_schema_conformance], headers=AUTH)


def test_every_operation_is_fuzzed_and_500_cases_in_all(fuzz_schema):
    assert {op.ok().label for op in fuzz_schema.get_all_operations()} == set(CASES)
    assert sum(CASES.values()) >= 500


@pytest.mark.parametrize("label", list(CASES))
def test_schema_fuzz_never_gets_a_server_error(fuzz_schema, label):
    operation = fuzz_schema.find_operation_by_label(label)
    sent: Counter = Counter()
    for mode in (GenerationMode.NEGATIVE, GenerationMode.POSITIVE):  # positive cases make up what negative lacks
        negative = mode is GenerationMode.NEGATIVE
        examples = math.ceil(CASES[label] / 2) if negative else CASES[label] - sent[GenerationMode.NEGATIVE]

        @hypothesis_settings(max_examples=examples, **SETTINGS)
        @given(case=operation.as_strategy(mode, headers=AUTH))
        def fuzz(case) -> None:
            response = case.call(headers=AUTH)
            sent[mode] += 1  # noqa: B023 (fuzz runs within this iteration)
            sent[response.status_code] += 1
            check_response(case, response)

        try:
            fuzz()
        except Unsatisfiable:  # nothing to break: no parameters, or only free-form path strings
            assert negative, label
    assert sent[GenerationMode.POSITIVE] + sent[GenerationMode.NEGATIVE] >= CASES[label], sent


# ---- uploads: safetensors files around the base's key names ----------------------------------------
BASE = load_base_keys("tiny")["unet"]
WEIGHTS = {k.removesuffix(".weight"): list(shape) for k, shape in BASE.items() if k.endswith(".weight")}
SCALARS = st.none() | st.booleans() | st.integers(-3, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=3), max_leaves=6)
# (tensor name, the shape that would fit the base): one family per file, as real checkpoints have, or a mix.
TENSORS = {
    "lora": [pair for m, w in WEIGHTS.items() for pair in ((f"unet.{m}.lora_A.weight", [4, *w[1:2]]),
             (f"unet.{m}.lora_B.weight", [w[0], 4]), (f"unet.{m}.alpha", []))],
    "kohya": [pair for m, w in WEIGHTS.items() for k in [m.replace(".", "_")] for pair in (
              (f"lora_unet_{k}.lora_down.weight", [4, *w[1:2]]), (f"lora_unet_{k}.lora_up.weight", [w[0], 4]))],
    "unet": [(k, list(shape)) for k, shape in BASE.items()],
    "ldm": [(f"model.diffusion_model.{k}", list(shape)) for k, shape in BASE.items()] + [("betas", [1000])],
}
PAIRS = {family: st.sampled_from(pairs) for family, pairs in TENSORS.items()}
PAIRS["mixed"] = st.one_of(*PAIRS.values(), st.tuples(st.text(max_size=12), st.just([])),
                           st.just(("__metadata__", [])), st.just(("text_encoder.x.lora_A.weight", [4, 16])))
SHAPES = st.lists(st.sampled_from([0, 1, 3, 4, 16, 32, 64]), max_size=4).filter(lambda s: math.prod(s) <= 4096)
FLAWS = (None,) * 6 + ("entry", "dtype", "shape", "offsets", "length", "data")  # half the files: framing intact


@st.composite
def safetensors_files(draw) -> bytes:
    """Tensors named after the base's keys with fitting or drawn shapes, offsets laid out from dtype and
    shape, and at most one framing flaw; names and shapes that do not fit are for the key checks to name."""
    family = draw(st.sampled_from(sorted(PAIRS)))
    pairs = draw(st.lists(PAIRS[family], max_size=4, unique_by=lambda pair: pair[0]))
    flaw, broken = draw(st.sampled_from(FLAWS)), draw(st.integers(0, 3))
    header, position = {}, 0
    for i, (name, fitting) in enumerate(pairs):
        dtype, shape = draw(st.sampled_from(["F32", *sorted(DTYPE_BYTES)])), draw(st.just(fitting) | SHAPES)
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        entry = {"dtype": dtype, "shape": shape, "data_offsets": [position, position + size]}
        position += size
        if i == broken and flaw in ("dtype", "shape", "offsets"):
            entry[{"offsets": "data_offsets"}.get(flaw, flaw)] = draw(JSON)
        header[name] = draw(JSON) if i == broken and flaw == "entry" else entry
    raw = json.dumps(header).encode()
    length = draw(st.integers(0, 2**64 - 1)) if flaw == "length" else len(raw)
    data = b"\x00" * position + (draw(st.binary(min_size=1, max_size=8)) if flaw == "data" else b"")
    return struct.pack("<Q", length) + raw + data


def test_upload_fuzz_gets_a_clear_answer(fuzz_client):
    """Accepted (and readable back) or refused with a 4xx naming the checkpoint; never a 5xx."""
    statuses: Counter[int] = Counter()

    @hypothesis_settings(max_examples=UPLOAD_CASES, **SETTINGS)
    @given(content=safetensors_files())
    def fuzz(content: bytes) -> None:
        response = fuzz_client.post("/customizations", headers=AUTH, data={"config": json.dumps(TINY_CONFIG)},
                                    files={"checkpoint": ("model.safetensors", content)})
        statuses[response.status_code] += 1
        assert response.status_code in (202, 413, 422), response.text
        if response.status_code == 202:
            view = fuzz_client.get(f"/customizations/{response.json()['customization_id']}", headers=AUTH)
            assert view.status_code == 200, view.text
        else:
            assert response.json()["error"]["field"] == "checkpoint", response.text

    fuzz()
    assert statuses[202] and statuses[422] > UPLOAD_CASES // 2, statuses  # both paths taken, mostly refusals
