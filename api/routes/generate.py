"""``POST /generate``: one video from the base model or a customization."""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from api.deps import CeleryDep, IdempotencyKey, OwnerDep, SettingsDep, StoreDep, WebhooksDep
from api.enqueue import check_webhook, enqueue, new_id, rate_limit, usable_customization
from api.idempotency import Idempotency
from api.inputs import check_control, check_motion_lora, needs, resolve
from common import presets
from common.errors import UnsupportedMediaType
from common.jobstore import now
from common.schemas import GenerateRequest, JobAccepted, JobRecord

router = APIRouter(tags=["generate"])
SCOPE = "generate"


async def require_json(request: Request) -> None:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(f"{request.method} {request.url.path} takes application/json")


@router.post("/generate", status_code=202, response_model=JobAccepted, summary="Queue a video generation")
def create_generation(body: GenerateRequest, owner: OwnerDep, settings: SettingsDep, store: StoreDep,
                      celery: CeleryDep, hooks: WebhooksDep, _json: Annotated[None, Depends(require_json)] = None,
                      idempotency_key: IdempotencyKey = None):
    check_control(body, settings)
    check_motion_lora(body, settings)
    check_webhook(body, settings)
    presets.check_video(settings.preset(), body.num_frames, body.height, body.width, body.steps,
                        controlnet=body.control is not None, init_strength=body.init.strength if body.init else None,
                        context_length=body.context_length, context_stride=body.context_stride, prompt=body.prompt,
                        scheduler=body.scheduler)
    fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    with Idempotency(store, settings, owner, SCOPE, idempotency_key) as claim:
        if claim.held is not None:
            return claim.replay(fingerprint)
        rate_limit(store, settings, owner)  # a replay above costs no token
        if body.customization_id:
            usable_customization(body.customization_id, owner, store)
        inputs = resolve(body, owner, store)
        params = body.model_dump()
        if params["seed"] is None:
            params["seed"] = secrets.randbelow(2**32)
        # the per-key queue limit: `enqueue` checks it atomically (no early check, nothing is streamed here)
        job = JobRecord(id=new_id("job"), kind="generate", owner=owner, created_at=now(), params=params,
                        customization_id=body.customization_id, inputs=inputs)
        enqueue(store, celery, settings, job, webhook=body, hooks=hooks, needs=needs(body))
        return claim.accept(JobAccepted(job_id=job.id, status="queued"), fingerprint)
