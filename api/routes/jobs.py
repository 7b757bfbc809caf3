"""``/jobs``: state, progress and results of the caller's jobs; cancellation and deletion."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from api.deps import OwnedJob, OwnerDep, StorageDep, StoreDep
from api.routes.customizations import Limit, parse_cursor
from api.views import job_view, log_view
from common.deletion import delete_job
from common.errors import Conflict, NotFound
from common.jobstore import encode_cursor
from common.schemas import JobList, JobView

router = APIRouter(tags=["jobs"])


@router.get("/jobs", response_model=JobList, summary="The caller's jobs, newest first")
def list_jobs(owner: OwnerDep, store: StoreDep, storage: StorageDep, limit: Limit = 20, cursor: str | None = None):
    jobs, next_cursor = store.list_jobs(owner, limit, parse_cursor(cursor))
    return JobList(items=[job_view(j, store, storage) for j in jobs],
                   next_cursor=encode_cursor(next_cursor))


@router.get("/jobs/{job_id}", response_model=JobView, summary="A job: status, stage, progress, result")
def get_job(job: OwnedJob, store: StoreDep, storage: StorageDep, logs: bool = False):
    view = job_view(job, store, storage)
    if logs:  # the same as GET /jobs/{id}/logs
        view.logs = log_view(store, job.id)
    return view


@router.post("/jobs/{job_id}/cancel", response_model=JobView, summary="Cancel a queued or running job",
             description="A queued job is canceled at once (200). A running job is asked to stop and stops "
                         "between two steps (202; poll the job). A finished job gives 409.")
def cancel_job(job: OwnedJob, store: StoreDep, storage: StorageDep):
    canceled = store.cancel(job.id)
    if canceled is None:  # its record expired (retention) between the lookup and the cancel
        raise NotFound(f"no job {job.id!r}", field="job_id")
    job = canceled
    if job.status in ("succeeded", "failed"):
        raise Conflict(f"job {job.id!r} already {job.status}", code="job_finished", field="job_id")
    view = job_view(job, store, storage)
    return view if job.status == "canceled" else JSONResponse(view.model_dump(mode="json"), status_code=202)


@router.delete("/jobs/{job_id}", status_code=204, response_class=Response, summary="Delete a finished job",
               description="A finished job's record and its stored video (204). A queued or running job gives 409: "
                           "cancel it first. A customize job's record only: its customization stays until deleted.")
def delete_finished_job(job: OwnedJob, store: StoreDep, storage: StorageDep):
    delete_job(store, storage, job)
    return Response(status_code=204)
