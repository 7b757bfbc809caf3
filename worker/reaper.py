"""The reaper: re-queues running jobs whose worker stopped beating, fails jobs past their hard time limit,
and every `gc_interval_s` runs the storage collector (`worker.collector`).

A daemon thread in every worker's main process (started on Celery's ``worker_ready``). Running jobs are
indexed in Redis by their last heartbeat; each change here is a compare-and-set on the job's status and
attempt number, so any number of reapers (one per worker) can run side by side, and a worker that was
presumed dead but is not learns at its next heartbeat that the job is no longer its own and stops.
"""

from __future__ import annotations

import logging
import time

from celery import Celery
from celery.signals import worker_ready

from common.jobstore import CANCELED, JobStore
from common.schemas import ErrorInfo, JobRecord
from common.settings import Settings
from common.storage import Storage
from worker.background import Background
from worker.collector import collect
from worker.requeue import requeue

log = logging.getLogger("stillmoving.reaper")


class Reaper(Background):
    name = "reaper"

    def __init__(self, store: JobStore, celery: Celery, settings: Settings, storage: Storage | None = None):
        super().__init__(settings.reaper_interval_s)
        self.store, self.celery, self.settings, self.storage = store, celery, settings, storage
        self._last_collect = 0.0

    def reap_once(self) -> dict[str, str]:
        """One pass over the running jobs; returns ``{job_id: "requeued" | "canceled" | "timeout" | "worker_lost"}``."""
        actions = {}
        clock = time.time()
        for job_id, beat in self.store.running():
            job = self.store.get_job(job_id)
            if job is None or job.status != "running":
                self.store.forget_running(job_id)
                continue
            _, hard_limit = self.settings.time_limits(job.kind)
            started = job.started_at.timestamp() if job.started_at else beat
            silent = clock - beat > self.settings.heartbeat_timeout_s
            overdue = clock - started - hard_limit
            # Celery kills a task at its hard limit; the job then falls silent and is failed here, not retried.
            # A job still beating a heartbeat timeout past its limit is failed too (its lease ends, it stops).
            if overdue > 0 and (silent or overdue > self.settings.heartbeat_timeout_s):
                action = self._fail(job, "timeout", f"the job ran past its time limit of {hard_limit} s")
            elif silent and job.cancel_requested:  # its worker died after the cancel: it ends canceled, not re-run
                action = self._cancel(job)
            elif silent:
                lost = job.attempts - job.given_back  # an attempt given back at its worker's shutdown is no loss
                if lost >= self.settings.max_attempts:
                    action = self._fail(job, "worker_lost",
                                        f"the worker running this job stopped responding (no heartbeat for "
                                        f"{self.settings.heartbeat_timeout_s:g} s) on each of {lost} "
                                        f"attempts; giving up")
                else:
                    action = self._requeue(job)
            else:
                continue
            if action:
                actions[job_id] = action
        return actions

    def _fail(self, job: JobRecord, code: str, message: str) -> str | None:
        if not self.store.finish(job.id, "failed", attempt=job.attempts, error=ErrorInfo(code=code, message=message),
                                 reaped=code):
            return None
        log.warning("job %s failed (%s): %s", job.id, code, message)
        return code

    def _cancel(self, job: JobRecord) -> str | None:
        if not self.store.finish(job.id, "canceled", attempt=job.attempts, error=CANCELED, reaped="canceled"):
            return None
        log.warning("job %s: canceled; its worker went quiet before it stopped", job.id)
        return "canceled"

    def _requeue(self, job: JobRecord) -> str | None:
        held = (job.heartbeat_at - job.started_at).total_seconds() if job.heartbeat_at and job.started_at else 0.0
        note = f"no heartbeat from attempt {job.attempts}'s worker {job.worker} for {self.settings.heartbeat_timeout_s:g} s"
        if not requeue(self.store, self.celery, self.settings, job, note, reaped="requeued",
                       device_s=round(job.device_s + max(held, 0.0), 3)):
            return None
        log.warning("job %s: no heartbeat since attempt %d's worker went quiet; re-queued", job.id, job.attempts)
        return "requeued"

    def run_pass(self) -> None:
        self.reap_once()
        if self.storage is not None and time.time() - self._last_collect > self.settings.gc_interval_s:
            self._last_collect = time.time()
            collect(self.store, self.storage, self.settings.gc_grace_s)


def install(app: Celery, settings: Settings) -> None:
    """Start a reaper in the worker's main process once the worker is ready."""

    @worker_ready.connect(weak=False)
    def _start_reaper(**_):
        Reaper(JobStore.from_settings(settings), app, settings, Storage(settings)).start()
        log.info("reaper started (every %gs, heartbeat timeout %gs, %d attempts)", settings.reaper_interval_s,
                 settings.heartbeat_timeout_s, settings.max_attempts)
