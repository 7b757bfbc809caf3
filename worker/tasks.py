"""The two tasks. Job id in; everything else comes from the job record. The engine (torch) is imported
inside the pool process as it starts, never in the worker's parent."""

from __future__ import annotations

from celery.signals import worker_process_init, worker_process_shutdown

from common import tracing
from common.celery_config import CUSTOMIZE_TASK, GENERATE_TASK
from worker import metrics
from worker.celery_app import app, settings
from worker.telemetry import task_scope


@worker_process_init.connect
def _load_engine(**_) -> None:
    """Import the engine before the first task: its import (seconds on a loaded machine) then never counts
    against a task's soft time limit, which fired there, before the runner held the job, and left it queued.
    Tracing starts here too: each pool process exports its own spans."""
    tracing.setup(settings, "stillmoving-worker")
    _library_logs_to_root()
    import worker.runner  # noqa: F401

    metrics.record_memory()


def _library_logs_to_root() -> None:
    """transformers and diffusers give their loggers a plain-text stderr handler of their own, cut off from the
    root (their import already logs): theirs off, their records through the one JSON handler (`common.logs`)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (transformers_logging, diffusers_logging):
        library.disable_default_handler()
        library.enable_propagation()


@worker_process_shutdown.connect
def _exiting(**_) -> None:
    metrics.process_exiting()
    tracing.shutdown()


@app.task(name=CUSTOMIZE_TASK, bind=True, soft_time_limit=settings.train_soft_time_limit_s,
          time_limit=settings.train_time_limit_s)
def customize(self, job_id: str) -> None:
    from worker.runner import get_runner

    with task_scope(CUSTOMIZE_TASK, self.request.id, self.request.headers):
        get_runner().run_customize(job_id)


@app.task(name=GENERATE_TASK, bind=True, soft_time_limit=settings.generate_soft_time_limit_s,
          time_limit=settings.generate_time_limit_s)
def generate(self, job_id: str) -> None:
    from worker.runner import WaitForCustomization, get_runner

    try:
        with task_scope(GENERATE_TASK, self.request.id, self.request.headers):
            get_runner().run_generate(job_id)
    except WaitForCustomization:
        # The customization is still training: look again later, without holding the worker.
        raise self.retry(countdown=settings.wait_poll_s, max_retries=None) from None
