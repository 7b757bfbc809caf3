"""What a pool process records around its work, outside the engine (which imports only torch, diffusers, peft):
a span and a log context per task (the turn) and per job run, a span per engine stage (opened and closed from
the progress reporter's stage changes), step counts and stage times (`worker.metrics`).

A task's parent is the trace context in its message's headers; a run's is the task's when the turn runs the job
it was sent for (the usual case: one trace, request → enqueue → task → run → stages), else the context its job
record keeps (the fair pick chose another key's job), linked to the turn.
"""

from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from common import logs, tracing
from common.celery_config import REQUEST_ID_HEADER
from common.schemas import ErrorInfo, JobRecord
from worker import metrics

MEMORY_EVERY_S = 1.0  # least time between two updates of the memory gauges while a job reports progress
_run: contextvars.ContextVar["JobRun | None"] = contextvars.ContextVar("stillmoving_job_run", default=None)


@contextmanager
def task_scope(name: str, task_id: str | None, headers: Mapping[str, Any] | None) -> Iterator[None]:
    """A Celery task's span (a consumer of its message, child of the enqueue or re-queue that sent it) and log
    context (the sender's request id)."""
    headers = headers or {}
    with logs.context(request_id=headers.get(REQUEST_ID_HEADER)), \
            tracing.span(f"task {name}", trace.SpanKind.CONSUMER, {"messaging.message.id": task_id},
                         tracing.parent(headers)):
        yield


class JobRun:
    """One run of a job: its span, the current stage's span, and what the metrics count of it."""

    def __init__(self, job: JobRecord, span: trace.Span):
        self.kind, self.span = job.kind, span
        self.context = trace.set_span_in_context(span)
        self.stage: str | None = None
        self._stage_span: trace.Span | None = None
        self._stage_start = 0.0
        self._step = 0
        self._memory_at = 0.0

    def enter(self, stage: str) -> None:
        """The run entered `stage`: the last stage's span ends (its time counted), a span for this one starts."""
        self.close_stage()
        self.stage, self._step, self._stage_start = stage, 0, time.monotonic()
        self._stage_span = tracing.tracer().start_span(f"stage {stage}", context=self.context,
                                                       attributes={"stillmoving.stage": stage})

    def step(self, stage: str, step: int, total: int) -> None:
        """A progress report: the steps since the last one count, and now and then the memory."""
        if stage != self.stage:
            self.enter(stage)
        if step > self._step:
            metrics.STEPS.labels(self.kind, stage).inc(step - self._step)
            self._step = step
        if self._stage_span is not None:
            self._stage_span.set_attribute("stillmoving.steps", total)
        clock = time.monotonic()
        if clock - self._memory_at >= MEMORY_EVERY_S:
            self._memory_at = clock
            metrics.record_memory()

    def close_stage(self) -> None:
        if self.stage is not None and self._stage_span is not None:
            metrics.STAGE_SECONDS.labels(self.kind, self.stage).observe(time.monotonic() - self._stage_start)
            self._stage_span.end()
        self.stage, self._stage_span = None, None

    def ended(self, status: str, error: ErrorInfo | None) -> None:
        """The run recorded the job's end: the span says how."""
        self.span.set_attribute("stillmoving.job_status", status)
        if error is not None:
            self.span.set_attribute("stillmoving.error_code", error.code)
            if status == "failed":
                self.span.set_status(Status(StatusCode.ERROR, error.code))


@contextmanager
def job_scope(job: JobRecord, same_turn: bool) -> Iterator[JobRun]:
    """Around one job's run in a pool process: its log context (job id, owner, the creating request's id), its
    span (see the module docstring for its parent) and the `JobRun` the progress reporter reports stages to."""
    turn = trace.get_current_span().get_span_context()
    parent = None if same_turn else tracing.parent(job.trace)
    links = None if same_turn else tracing.link_to(turn)
    with logs.context(job_id=job.id, owner=job.owner, request_id=job.request_id), \
            tracing.span(f"job {job.kind}", trace.SpanKind.INTERNAL,
                         {"stillmoving.job_id": job.id, "stillmoving.kind": job.kind,
                          "stillmoving.attempt": job.attempts + 1}, parent, links) as span:
        run = JobRun(job, span)
        token = _run.set(run)
        metrics.RUNNING.labels(job.kind).inc()
        try:
            yield run
        finally:
            metrics.RUNNING.labels(job.kind).dec()
            run.close_stage()
            metrics.record_memory()
            _run.reset(token)


def current_run() -> JobRun | None:
    """The job run of the code inside `job_scope` (None outside one)."""
    return _run.get()
