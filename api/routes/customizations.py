"""``/customizations``: upload a customized T2I checkpoint and train Still-Moving Spatial Adapters."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.deps import (
    CeleryDep,
    IdempotencyKey,
    OwnedCustomization,
    OwnerDep,
    SettingsDep,
    StorageDep,
    StoreDep,
    WebhooksDep,
)
from api.enqueue import check_queue_limit, check_webhook, enqueue, new_id, rate_limit
from api.errors import reshape_validation_errors
from api.idempotency import Idempotency
from api.upload import HashingSink, receive_form
from api.views import customization_view
from common import checkpoint_header, presets
from common.deletion import delete_customization
from common.errors import InvalidArgument
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
from common.storage import StreamingUpload, checkpoint_key

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
        raise reshape_validation_errors(exc.errors(), root="config") from None
    if config.base_model is None:
        config.base_model = default_base
    return config


async def replay_upload(request: Request, claim: Idempotency, settings: Settings):
    """A retry of an upload whose key is held: 409 at once while the first is in progress (the body unread);
    else its upload is hashed (nothing stored) to compare it with the first one's."""
    if claim.pending:
        return await run_in_threadpool(claim.replay, None)
    sink = HashingSink()
    config = parse_config(await receive_form(request, sink, settings), settings.model_preset)
    return await run_in_threadpool(claim.replay, fingerprint(sink.hexdigest(), config))


async def receive_upload(request: Request, upload: StreamingUpload, settings: Settings, keep_alive):
    """Stream the form into `upload` and check it: the config (for this deployment's preset), then the
    checkpoint's header against the base model. Returns the config and the header's summary."""
    config = parse_config(await receive_form(request, upload, settings, keep_alive), settings.model_preset)
    if config.base_model != settings.model_preset:
        raise InvalidArgument(f"base_model={config.base_model!r} is not served here; this deployment serves "
                              f"{settings.model_preset!r}", field="config.base_model")
    presets.check_customization(settings.preset(), config.model_dump())
    await run_in_threadpool(check_webhook, config, settings, "config.webhook")
    summary = await run_in_threadpool(check_header, bytes(upload.head), upload.size, settings, config.base_model)
    return config, summary


def customization_job(owner: str, config: CustomizationConfig, sha256: str,
                      checkpoint_format: str) -> tuple[JobRecord, CustomizationRecord]:
    """The records of a new customization and the job that trains it."""
    job_id, customization_id, created = new_id("job"), new_id("cus"), now()
    customization = CustomizationRecord(
        id=customization_id, owner=owner, name=config.name, job_id=job_id, base_model=config.base_model,
        checkpoint_sha256=sha256, checkpoint_format=checkpoint_format, config=config.model_dump(), created_at=created)
    job = JobRecord(id=job_id, kind="customize", owner=owner, created_at=created, customization_id=customization_id,
                    params={"config": config.model_dump(), "checkpoint_sha256": sha256,
                            "checkpoint_format": checkpoint_format})
    return job, customization


@router.post("/customizations", status_code=202, response_model=JobAccepted, openapi_extra=FORM_SCHEMA,
             summary="Upload a checkpoint and start a Still-Moving customization")
async def create_customization(request: Request, owner: OwnerDep, settings: SettingsDep, store: StoreDep,
                               storage: StorageDep, celery: CeleryDep, hooks: WebhooksDep,
                               idempotency_key: IdempotencyKey = None):
    async with Idempotency(store, settings, owner, SCOPE, idempotency_key) as claim:
        if claim.held is not None:
            return await replay_upload(request, claim, settings)
        upload = storage.upload_stream()
        try:
            await run_in_threadpool(rate_limit, store, settings, owner)
            await run_in_threadpool(check_queue_limit, store, settings, owner)
            config, summary = await receive_upload(request, upload, settings, claim.keep_alive)
            sha256 = upload.hexdigest()
            await run_in_threadpool(upload.commit, checkpoint_key(sha256))
            job, customization = customization_job(owner, config, sha256, summary.format)
            await run_in_threadpool(enqueue, store, celery, settings, job, customization, config, hooks)
        except BaseException:
            await run_in_threadpool(upload.abort)
            raise
        body = JobAccepted(job_id=job.id, status="queued", customization_id=customization.id)
        return await run_in_threadpool(claim.accept, body, fingerprint(sha256, config))


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
def get_customization(customization: OwnedCustomization, storage: StorageDep):
    return customization_view(customization, storage)


@router.delete("/customizations/{customization_id}", status_code=204, response_class=Response,
               summary="Delete a customization nothing uses",
               description="Its record, its training job's record and its stored artifact, images and resume "
                           "states (204); the uploaded checkpoint goes once no customization uses it. 409 while "
                           "its training job, or a generation that uses it, is queued or running.")
def delete_unused_customization(customization: OwnedCustomization, store: StoreDep, storage: StorageDep):
    delete_customization(store, storage, customization)
    return Response(status_code=204)
