"""Putting a running job back in its queue: the reaper's re-queue of a job whose worker went quiet, and a
shutting-down worker's give-back of a job that cannot end within its grace period (`worker.shutdown`)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from common.celery_config import TASK_FOR_KIND, task_headers
from common.jobstore import JobStore
from common.schemas import JobRecord
from common.settings import Settings


def requeue(store: JobStore, celery: Celery, settings: Settings, job: JobRecord, note: str, **fields: Any) -> bool:
    """Re-queue the running job on its attempt `job.attempts` (a compare-and-set: False, nothing sent, when
    that attempt no longer holds it) and send its task again, for any worker of its queue. When the message
    cannot be sent (broker down), the job goes back to running in stage ``lost`` (no worker beats for it, so a
    reaper's later pass re-queues it) and the error is raised."""
    if not store.requeue(job.id, job.attempts, note, **fields):
        return False
    queue = store.job_queue(job.id) or settings.queue_for(job.kind)
    try:
        celery.send_task(TASK_FOR_KIND[job.kind], args=[job.id], queue=queue, task_id=f"{job.id}.retry{job.attempts}",
                        headers=task_headers(job))
    except Exception:
        store.transition(job.id, ["queued"], attempt=job.attempts, note="its re-queue could not be sent",
                         counted=False, status="running", stage="lost")
        raise
    return True
