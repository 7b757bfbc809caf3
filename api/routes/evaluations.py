"""``POST /evaluations``: a customization compared with what it came from, one prompt and seed rendered four
ways (base, naive injection, Still-Moving, Still-Moving trained without the Motion Adapter). An evaluation is a
job like a generation (queued on the generate queue, waiting for a customization still training); ``GET
/jobs/{id}`` reports it, and its result holds the contact sheet, each row's video and the row's measures."""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends

from api.deps import CeleryDep, IdempotencyKey, OwnerDep, SettingsDep, StoreDep, WebhooksDep
from api.enqueue import check_webhook, enqueue, new_id, rate_limit, usable_customization
from api.idempotency import Idempotency
from api.routes.generate import require_json
from common import presets
from common.jobstore import now
from common.schemas import EvaluationRequest, JobAccepted, JobRecord

router = APIRouter(tags=["evaluations"])
SCOPE = "evaluations"


@router.post("/evaluations", status_code=202, response_model=JobAccepted,
             summary="Queue a side-by-side evaluation of a customization",
             description="Rows base / naive / still-moving / still-moving-no-motion-adapter at the customization's "
                         "size (the last trains the customization again without the Motion Adapter, once per "
                         "customization). The job's result: `contact_sheet_url`, `rows` (each `name`, `video_url`, "
                         "`poster_url`, `measures`: motion, temporal_consistency, fidelity_proxy; on the shapes world "
                         "the judge's `world_*` measures; CLIP-I/CLIP-T where `EVALUATION_CLIP_MODEL` is set), "
                         "`seed`, `prompt`.")
def create_evaluation(body: EvaluationRequest, owner: OwnerDep, settings: SettingsDep, store: StoreDep,
                      celery: CeleryDep, hooks: WebhooksDep, _json: Annotated[None, Depends(require_json)] = None,
                      idempotency_key: IdempotencyKey = None):
    check_webhook(body, settings)
    presets.check_video(settings.preset(), body.num_frames, None, None, body.steps)
    fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    with Idempotency(store, settings, owner, SCOPE, idempotency_key) as claim:
        if claim.held is not None:
            return claim.replay(fingerprint)
        rate_limit(store, settings, owner)
        usable_customization(body.customization_id, owner, store)
        params = body.model_dump()
        if params["seed"] is None:
            params["seed"] = secrets.randbelow(2**32)
        job = JobRecord(id=new_id("job"), kind="evaluate", owner=owner, created_at=now(), params=params,
                        customization_id=body.customization_id)
        enqueue(store, celery, settings, job, webhook=body, hooks=hooks)
        return claim.accept(JobAccepted(job_id=job.id, status="queued"), fingerprint)
