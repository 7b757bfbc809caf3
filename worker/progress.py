"""Engine callbacks bound to a job record: progress (throttled writes), cancel flag, heartbeat."""

from __future__ import annotations

import logging
import threading
import time

import redis

from common.jobstore import JobStore

log = logging.getLogger("stillmoving.worker")

# Share of the job's overall progress (0..1) that each engine stage covers.
STAGE_SPANS = {
    "customize": {"load": (0.0, 0.05), "motion_adapter_images": (0.05, 0.1), "motion_adapter": (0.1, 0.25),
                  "sample_images": (0.25, 0.33), "prior_images": (0.33, 0.35), "own_motion_adapter": (0.35, 0.45), "train": (0.45, 0.9),
                  "motion_check": (0.9, 0.93), "preview": (0.93, 0.98), "done": (0.98, 1.0)},
    "generate": {"load": (0.0, 0.1), "denoise": (0.1, 0.9), "export": (0.9, 1.0)},
}


class JobProgress:
    """``progress(stage, step, total)`` and ``should_cancel()`` for the engine, writing to Redis.

    Writes go through `JobStore.heartbeat` for this job's `attempt`: once the job is no longer ours
    (re-queued by the reaper, canceled, finished elsewhere) writes stop and `should_cancel` says True.
    While Redis is unreachable the job goes on: writes are skipped and a cancel cannot be seen.
    """

    def __init__(self, store: JobStore, job_id: str, kind: str, interval_s: float, attempt: int):
        self.store, self.job_id, self.interval_s, self.attempt = store, job_id, interval_s, attempt
        self.spans = STAGE_SPANS[kind]
        self.value = 0.0
        self.stage: str | None = None
        self.lost = False
        self.unreachable = False
        self._last_write = 0.0

    def _redis_down(self, what: str, exc: Exception) -> None:
        if not self.unreachable:
            log.warning("job %s: %s failed (%s); going on while Redis is unreachable", self.job_id, what,
                        type(exc).__name__)
        self.unreachable = True

    def _write(self, **fields) -> None:
        if self.lost:
            return
        try:
            ours = self.store.heartbeat(self.job_id, self.attempt, **fields)
        except redis.RedisError as exc:
            self._redis_down("heartbeat", exc)
            return
        self.unreachable = False
        if not ours:
            self.lost = True
            log.warning("job %s attempt %d: no longer ours, stopping", self.job_id, self.attempt)

    def progress(self, stage: str, step: int, total: int) -> None:
        low, high = self.spans.get(stage, (self.value, self.value))
        self.value = max(self.value, min(1.0, low + (high - low) * step / max(total, 1)))
        changed = stage != self.stage
        self.stage = stage
        clock = time.monotonic()
        if changed or step >= total or clock - self._last_write >= self.interval_s:
            self._last_write = clock
            self._write(stage=stage, progress=round(self.value, 4), step=step, steps=total)
            log.info("job %s %s %d/%d (%.0f%%)", self.job_id, stage, step, total, 100 * self.value)

    def set_stage(self, stage: str) -> None:
        self.stage = stage
        self._write(stage=stage, step=None, steps=None)

    def should_cancel(self) -> bool:
        if self.lost:
            return True
        try:
            return self.store.cancel_requested(self.job_id)
        except redis.RedisError as exc:
            self._redis_down("cancel check", exc)
            return False


class Heartbeat:
    """A thread that keeps ``heartbeat_at`` fresh while a job runs, even inside one long engine step.

    It dies with the process: a SIGKILLed worker stops beating and the reaper notices.
    """

    def __init__(self, progress: JobProgress, interval_s: float):
        self.progress, self.interval_s = progress, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{progress.job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s) and not self.progress.lost:
            try:
                self.progress._write()  # Redis unreachable: skipped there, the next beat tries again
            except Exception:
                log.exception("heartbeat of job %s failed", self.progress.job_id)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
