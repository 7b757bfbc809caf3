"""``/jobs/{id}/logs`` and ``/jobs/{id}/events``: a job's log and its live status, both from its event stream."""

from __future__ import annotations

from typing import Annotated, Any, AsyncIterable

from fastapi import APIRouter, Header
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.deps import EventsDep, OwnedJob, StoreDep
from api.errors import ERROR_STATUSES
from api.views import log_view
from common.events import STREAM_ID
from common.schemas import JobLog

router = APIRouter(tags=["jobs"])
# the stream's errors are the JSON envelope, not events (FastAPI documents a route's errors in its media type)
JSON_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}
    for code in ERROR_STATUSES}
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", pattern=STREAM_ID.pattern,
                                           description="the id of the last event seen: resume after it")]


@router.get("/jobs/{job_id}/logs", response_model=JobLog, summary="A job's log",
            description="Status changes (with the worker and attempt), stage changes, the training loss every "
                        "`log_loss_every` steps, retries and warnings, oldest first; the newest "
                        "`job_max_events` events of the job are kept.")
def job_logs(job: OwnedJob, store: StoreDep):
    return JobLog(items=log_view(store, job.id))


@router.get("/jobs/{job_id}/events", response_class=EventSourceResponse, summary="A job's live status (SSE)",
            responses=JSON_ERRORS,
            description="Server-Sent Events until the job ends: `status`, `stage`, `progress` (with `eta_s`) and "
                        "`log` events, each with its `id:`, from the job's first (or after `Last-Event-ID`); "
                        "`queue` events (no id) when its queue position changes; a comment when idle.")
async def job_events(job: OwnedJob, events: EventsDep, last_event_id: LastEventId = None) -> AsyncIterable[ServerSentEvent]:
    async for event in events.follow(job, last_event_id):
        yield event
