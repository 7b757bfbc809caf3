"""The two tasks. Job id in; everything else comes from the job record. The engine (torch) is imported
lazily inside the pool process, never in the worker's parent."""

from __future__ import annotations

from common.celery_config import CUSTOMIZE_TASK, GENERATE_TASK
from worker.celery_app import app, settings


@app.task(name=CUSTOMIZE_TASK, bind=True, soft_time_limit=settings.train_soft_time_limit_s,
          time_limit=settings.train_time_limit_s)
def customize(self, job_id: str) -> None:
    from worker.runner import get_runner

    get_runner().run_customize(job_id)


@app.task(name=GENERATE_TASK, bind=True, soft_time_limit=settings.generate_soft_time_limit_s,
          time_limit=settings.generate_time_limit_s)
def generate(self, job_id: str) -> None:
    from worker.runner import WaitForCustomization, get_runner

    try:
        get_runner().run_generate(job_id)
    except WaitForCustomization:
        # The customization is still training: look again later, without holding the worker.
        raise self.retry(countdown=settings.wait_poll_s, max_retries=None) from None
