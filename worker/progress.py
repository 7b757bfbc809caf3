"""Engine callbacks bound to a job record: progress (throttled writes, with `eta_s` and the job's events),
training loss lines, cancel flag, suspend check (the worker shuts down), heartbeat, and the timings of the job's
`metrics`."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from datetime import datetime

import redis

from common import events
from common.jobstore import JobStore, now
from worker import telemetry

log = logging.getLogger("stillmoving.worker")

# Share of the job's overall progress (0..1) that each engine stage covers.
STAGE_SPANS = {
    "customize": {"load": (0.0, 0.05), "motion_adapter_images": (0.05, 0.1), "motion_adapter": (0.1, 0.25),
                  "sample_images": (0.25, 0.33), "prior_images": (0.33, 0.35), "own_motion_adapter": (0.35, 0.45), "train": (0.45, 0.9),
                  "motion_check": (0.9, 0.93), "preview": (0.93, 0.98), "done": (0.98, 1.0)},
    "generate": {"load": (0.0, 0.1), "denoise": (0.1, 0.9), "export": (0.9, 1.0)},
    # the ablation's training (`engine.evaluation`; skipped once stored), then one span per row
    "evaluate": {"ablation_load": (0.0, 0.03), "ablation_sample_images": (0.03, 0.15), "ablation_train": (0.15, 0.55),
                 "ablation_done": (0.55, 0.56), "render_base": (0.56, 0.66), "render_naive": (0.66, 0.76),
                 "render_still-moving": (0.76, 0.86), "render_still-moving-no-motion-adapter": (0.86, 0.96)},
}
# Stages whose progress survives a give-back (the engine saves a suspended training's resume state): a job in
# one is given back at once when its worker shuts down; in any other it finishes if its estimate fits.
RESUMABLE_STAGES = {"customize": ("train",), "generate": ()}


class JobProgress:
    """``progress(stage, step, total)``, ``loss(...)`` and ``should_cancel()`` for the engine, writing to Redis.

    Writes go through `JobStore.heartbeat` for this job's `attempt`: once the job is no longer ours
    (re-queued by the reaper, canceled, finished elsewhere) writes stop and `should_cancel` says True.
    While Redis is unreachable the job goes on: writes are skipped and a cancel cannot be seen.

    `should_suspend` watches the drain deadline of the worker's main process `drain_of` (``<host>:<pid>``,
    written when it gets SIGTERM: `worker.shutdown`): from then on it says True (stop, to be given back) unless
    the job's `eta_s` fits before that deadline less `reserve_s`, outside a `RESUMABLE_STAGES` stage.

    `eta_s` is the current stage's remaining steps at the step rate measured in it, plus the progress left
    after the stage at the rate this attempt has made progress so far.
    """

    def __init__(self, store: JobStore, job_id: str, kind: str, interval_s: float, attempt: int,
                 loss_every: int = 10, started_at: datetime | None = None, drain_of: str | None = None,
                 reserve_s: float = 0.0):
        self.store, self.job_id, self.interval_s, self.attempt = store, job_id, interval_s, attempt
        self.loss_every = loss_every
        self.kind, self.drain_of, self.reserve_s = kind, drain_of, reserve_s
        self.deadline: float | None = None  # the drain deadline, once seen
        self.eta_s: float | None = None  # the last estimate `progress` made
        self._finishing = False  # said in the log that it finishes within the grace
        self.spans = STAGE_SPANS[kind]
        self.value = 0.0
        self.stage: str | None = None
        self.lost = False
        self.unreachable = False
        self._down_since = 0.0
        self._last_write = 0.0
        self.started_at = started_at or now()
        self._start = time.monotonic()
        self._stage_start = self._start
        self._stage_mark: tuple[float, int] | None = None  # (clock, step) of the stage's first report
        self._event_value = -1.0  # progress at the last progress event
        self.stage_s: dict[str, float] = {}  # seconds spent in each stage so far
        self.run = telemetry.current_run()  # the run's stage spans and step counts (None outside a job's run)

    def _stage_times(self, clock: float) -> dict[str, float]:
        """Seconds in each stage so far, the current one's until `clock` included."""
        times = dict(self.stage_s)
        if self.stage is not None:
            times[self.stage] = times.get(self.stage, 0.0) + clock - self._stage_start
        return times

    def _enter(self, stage: str) -> dict:
        """Close the current stage's time; the event that the job entered `stage`."""
        clock = time.monotonic()
        self.stage_s = self._stage_times(clock)
        self.stage, self._stage_start, self._stage_mark = stage, clock, None
        if self.run is not None:
            self.run.enter(stage)
        return events.stage_event(stage)

    def eta(self, stage: str, step: int, total: int) -> float | None:
        """Seconds left (None until a rate is measured)."""
        clock = time.monotonic()
        if self._stage_mark is None:
            self._stage_mark = (clock, step)
        mark_clock, mark_step = self._stage_mark
        rate = (self.value / (clock - self._start)) if clock > self._start and self.value > 0 else 0.0
        if step > mark_step and clock > mark_clock:
            left = (total - step) * (clock - mark_clock) / (step - mark_step)
            after = 1.0 - self.spans.get(stage, (self.value, self.value))[1]
            return round(left + (after / rate if rate else 0.0), 1)
        return round((1.0 - self.value) / rate, 1) if rate else None

    def _redis_down(self, what: str, exc: Exception) -> None:
        if not self.unreachable:
            log.warning("job %s: %s failed (%s); going on while Redis is unreachable", self.job_id, what,
                        type(exc).__name__)
            self._down_since = time.monotonic()
        self.unreachable = True

    def _write(self, event: dict | None = None, **fields) -> None:
        if self.lost:
            return
        try:
            ours = self.store.heartbeat(self.job_id, self.attempt, event, **fields)
        except redis.RedisError as exc:
            self._redis_down("heartbeat", exc)
            return
        if self.unreachable:
            self.unreachable = False
            self.log(f"Redis was unreachable for {time.monotonic() - self._down_since:.0f} s: progress and "
                     f"heartbeats of that time were not recorded", "warning")
        if not ours:
            self.lost = True
            log.warning("job %s attempt %d: no longer ours, stopping", self.job_id, self.attempt)
            self.log(f"attempt {self.attempt} no longer holds the job (its lease ended); it stops", "warning")

    def progress(self, stage: str, step: int, total: int) -> None:
        low, high = self.spans.get(stage, (self.value, self.value))
        self.value = max(self.value, min(1.0, low + (high - low) * step / max(total, 1)))
        event = self._enter(stage) if stage != self.stage else None
        if self.run is not None:
            self.run.step(stage, step, total)
        eta = self.eta_s = self.eta(stage, step, total)
        clock = time.monotonic()
        if event or step >= total or clock - self._last_write >= self.interval_s:
            self._last_write = clock
            state = {"stage": stage, "progress": round(self.value, 4), "step": step, "steps": total, "eta_s": eta}
            if event is None and (step >= total or self.value - self._event_value >= events.PROGRESS_EVENT_STEP):
                event = {"type": "progress"}
            if event is not None:
                event.update(state)
                self._event_value = self.value
            self._write(event, **state)
            log.info("job %s %s %d/%d (%.0f%%)", self.job_id, stage, step, total, 100 * self.value)

    def set_stage(self, stage: str) -> None:
        event = self._enter(stage)
        self._write({**event, "progress": round(self.value, 4)}, stage=stage, step=None, steps=None)

    def loss(self, stage: str, step: int, total: int, value: float) -> None:
        """A log line with the training loss every `loss_every` steps and at the last one."""
        if step % self.loss_every == 0 or step >= total:
            self.log(f"{stage} step {step}/{total}: loss {value:.4g}", stage=stage, step=step, steps=total,
                     loss=round(value, 6))

    def log(self, message: str, level: str = "info", **fields) -> None:
        """A line in the job's log (skipped while Redis is unreachable)."""
        try:
            self.store.add_event(self.job_id, events.log_event(message, level, **fields))
        except redis.RedisError as exc:
            self._redis_down("log", exc)

    def metrics(self, created_at: datetime, device_s: float = 0.0) -> dict:
        """Timings of the job, this attempt's: queue time (to this start), run time, seconds per stage, and
        device seconds (this attempt's run plus `device_s` of earlier ones)."""
        clock = time.monotonic()
        run_s = clock - self._start
        return {"queue_s": round((self.started_at - created_at).total_seconds(), 3), "run_s": round(run_s, 3),
                "stages": {k: round(v, 3) for k, v in self._stage_times(clock).items()},
                "device_s": round(device_s + run_s, 3)}

    def should_cancel(self) -> bool:
        if self.lost:
            return True
        try:
            return self.store.cancel_requested(self.job_id)
        except redis.RedisError as exc:
            self._redis_down("cancel check", exc)
            return False

    def should_suspend(self) -> bool:
        """True once this job's worker is shutting down, unless the job can finish in time (see the class)."""
        if self.deadline is None and self.drain_of is not None:
            try:
                self.deadline = self.store.drain_deadline(self.drain_of)
            except redis.RedisError as exc:
                self._redis_down("drain check", exc)
        if self.deadline is None:
            return False
        left = self.deadline - self.reserve_s - time.time()
        if self.stage in RESUMABLE_STAGES[self.kind] or self.eta_s is None or self.eta_s > left:
            return True
        if not self._finishing:
            self._finishing = True
            self.log(f"the worker is shutting down: the rest of this job (about {self.eta_s:.1f} s) fits in the "
                     f"{left:.1f} s left, so it finishes here")
        return False


class Heartbeat:
    """A thread that keeps ``heartbeat_at`` fresh while a job runs, even inside one long engine step.

    It dies with the process: a SIGKILLed worker stops beating and the reaper notices.
    """

    def __init__(self, progress: JobProgress, interval_s: float):
        self.progress, self.interval_s = progress, interval_s
        self._stop = threading.Event()
        # in a copy of the job's context: its log records carry the job's ids
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,),
                                        name=f"heartbeat-{progress.job_id}", daemon=True)

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
