"""``/customizations``: upload a customized T2I checkpoint and train Still-Moving Spatial Adapters."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.deps import CeleryDep, IdempotencyKey, OwnerDep, SettingsDep, StorageDep, StoreDep
from api.enqueue import accepted, check_queue_limit, enqueue, new_id, rate_limit, replay
from api.upload import HashingSink, receive_form
from api.views import customization_view
from common import checkpoint_header, presets
from common.errors import InvalidArgument, NotFound
from common.jobstore import decode_cursor, encode_cursor, now
from common.schemas import (
    CustomizationConfig,
    CustomizationList,
    CustomizationRecord,
    CustomizationView,
    JobAccepted,
    JobRecord,
)
from common.settings import Settings
from common.storage import checkpoint_key

router = APIRouter(tags=["customizations"])
SCOPE = "customizations"
FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {
            "schema": {
                "type": "object", "required": ["checkpoint", "config"],
                "properties": {
                    "checkpoint": {"type": "string", "format": "binary",
                                   "description": ".safetensors: LoRA, diffusers UNet or single-file SD 1.5"},
                    "config": {**CustomizationConfig.model_json_schema(), "description": "CustomizationConfig as JSON",
                               "example": {"prompts": ["a photo of sks dog"]}},
                },
            },
            # The filename must end in .safetensors; documented so generated clients (and the fuzz) send one.
            "encoding": {
                "config": {"contentType": "application/json"},
                "checkpoint": {"contentType": "application/octet-stream", "headers": {"Content-Disposition": {
                    "schema": {"type": "string"},
                    "example": 'form-data; name="checkpoint"; filename="model.safetensors"'}}},
            },
        }},
    }
}


def check_header(head: bytes, size: int, settings: Settings, base_model: str) -> checkpoint_header.CheckpointSummary:
    """Parse and check an upload's header, in the thread pool: a 16 MiB header must not stall the event loop."""
    info = checkpoint_header.parse_header(head, size, settings.max_header_bytes)
    return checkpoint_header.check_against_base(info, checkpoint_header.load_base_keys(base_model))


def fingerprint(sha256: str, config: CustomizationConfig) -> str:
    """What makes two uploads the same request: the checkpoint's content and the canonical config."""
    return hashlib.sha256(f"{sha256}:{config.model_dump_json()}".encode()).hexdigest()


def parse_config(raw: bytes, default_base: str) -> CustomizationConfig:
    """Parse with pydantic's JSON parser, as /generate bodies are: deep nesting, huge numbers and lone
    surrogates (which no response could encode later) are a 422 on ``config``, never a 500."""
    try:
        config = CustomizationConfig.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            reason = first["msg"].removeprefix("Invalid JSON: ")
            raise InvalidArgument(f"config is not valid JSON: {reason}", field="config") from None
        where = ".".join(str(p) for p in first["loc"])
        field = f"config.{where}" if where else "config"
        raise InvalidArgument(f"{field}: {first['msg'].removeprefix('Value error, ')}", field=field) from None
    if config.base_model is None:
        config.base_model = default_base
    return config


@router.post("/customizations", status_code=202, response_model=JobAccepted, openapi_extra=FORM_SCHEMA,
             summary="Upload a checkpoint and start a Still-Moving customization")
async def create_customization(request: Request, owner: OwnerDep, settings: SettingsDep, store: StoreDep,
                               storage: StorageDep, celery: CeleryDep, idempotency_key: IdempotencyKey = None):
    keep_alive = None
    if idempotency_key:
        held = await run_in_threadpool(store.idempotency_reserve, owner, SCOPE, idempotency_key,
                                       settings.idempotency_lease_s)
        if held is not None:
            if not held.get("job_id"):  # still in progress: 409 without reading the body
                return await run_in_threadpool(replay, store, owner, held, None)
            sink = HashingSink()  # a retry: hash its upload to compare, store nothing
            config = parse_config(await receive_form(request, sink, settings), settings.model_preset)
            return await run_in_threadpool(replay, store, owner, held, fingerprint(sink.hexdigest(), config))

        def keep_alive():
            store.idempotency_extend(owner, SCOPE, idempotency_key, settings.idempotency_lease_s)
    upload = storage.upload_stream()
    try:
        await run_in_threadpool(rate_limit, store, settings, owner)
        await run_in_threadpool(check_queue_limit, store, settings, owner)
        raw_config = await receive_form(request, upload, settings, keep_alive)
        config = parse_config(raw_config, settings.model_preset)
        if config.base_model != settings.model_preset:
            raise InvalidArgument(f"base_model={config.base_model!r} is not served here; this deployment serves "
                                  f"{settings.model_preset!r}", field="config.base_model")
        presets.check_customization(settings.preset(), config.model_dump())
        summary = await run_in_threadpool(check_header, bytes(upload.head), upload.size, settings, config.base_model)
        sha256 = upload.hexdigest()
        await run_in_threadpool(upload.commit, checkpoint_key(sha256))
        job_id, customization_id = new_id("job"), new_id("cus")
        created = now()
        customization = CustomizationRecord(
            id=customization_id, owner=owner, name=config.name, job_id=job_id, base_model=config.base_model,
            checkpoint_sha256=sha256, checkpoint_format=summary.format, config=config.model_dump(), created_at=created)
        job = JobRecord(id=job_id, kind="customize", owner=owner, created_at=created, customization_id=customization_id,
                        params={"config": config.model_dump(), "checkpoint_sha256": sha256,
                                "checkpoint_format": summary.format})
        await run_in_threadpool(enqueue, store, celery, settings, job, customization)
    except BaseException:
        await run_in_threadpool(upload.abort)
        if idempotency_key:
            await run_in_threadpool(store.idempotency_release, owner, SCOPE, idempotency_key)
        raise
    if idempotency_key:
        await run_in_threadpool(store.idempotency_bind, owner, SCOPE, idempotency_key,
                                {"job_id": job_id, "customization_id": customization_id,
                                 "fingerprint": fingerprint(sha256, config)}, settings.idempotency_ttl_s)
    return accepted(JobAccepted(job_id=job_id, status="queued", customization_id=customization_id))


def parse_cursor(cursor: str | None) -> tuple[float, str] | None:
    try:
        return decode_cursor(cursor)
    except ValueError:
        raise InvalidArgument(f"cursor={cursor!r} is not a cursor returned by this API", field="cursor") from None


Limit = Annotated[int, Query(ge=1, le=100)]


@router.get("/customizations", response_model=CustomizationList, summary="The caller's customizations, newest first")
def list_customizations(owner: OwnerDep, store: StoreDep, storage: StorageDep, limit: Limit = 20,
                        cursor: str | None = None):
    items, next_cursor = store.list_customizations(owner, limit, parse_cursor(cursor))
    return CustomizationList(items=[customization_view(c, storage) for c in items],
                             next_cursor=encode_cursor(next_cursor))


@router.get("/customizations/{customization_id}", response_model=CustomizationView,
            summary="A customization: state, settings, manifest and artifact URLs")
def get_customization(customization_id: str, owner: OwnerDep, store: StoreDep, storage: StorageDep):
    record = store.get_customization(customization_id)
    if record is None or record.owner != owner:
        raise NotFound(f"no customization {customization_id!r}", field="customization_id")
    return customization_view(record, storage)
