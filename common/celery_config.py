"""The Celery application config shared by the API (which only sends tasks, by name) and the worker."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from common.schemas import JobRecord
from common.settings import Settings

CUSTOMIZE_TASK = "stillmoving.customize"
GENERATE_TASK = "stillmoving.generate"
# A task message is a turn of its queue (the worker runs the queue's fair pick, whatever its kind): an evaluation
# renders videos, so it is a turn of the generate queue, under the generate task's time limits.
TASK_FOR_KIND = {"customize": CUSTOMIZE_TASK, "generate": GENERATE_TASK, "evaluate": GENERATE_TASK}
REQUEST_ID_HEADER = "request_id"  # a task message's header: the X-Request-ID of the request behind it


def task_headers(job: JobRecord) -> dict[str, str]:
    """The headers of a task message for `job` (its enqueue, a reaper's re-queue): the request id and the W3C
    trace context its record keeps, so the worker's logs and spans join the request's."""
    return {**(job.trace or {}), **({REQUEST_ID_HEADER: job.request_id} if job.request_id else {})}


def make_celery(settings: Settings, include: list[str] | None = None) -> Celery:
    """A Celery app on the Redis broker: JSON only, late acks, prefetch 1, no result backend."""
    app = Celery("stillmoving", broker=settings.redis_url, include=include or [])
    longest = max(settings.train_time_limit_s, settings.generate_time_limit_s)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # Redis restarted or briefly away: reconnect for as long as it takes (the default gives up after 100
        # tries), and let running tasks go on meanwhile: their job records, not the broker, say what is done,
        # and a redelivered message for a finished job is a no-op.
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # A message unacked for longer than this is redelivered: keep it above the hard time limit.
        broker_transport_options={"visibility_timeout": longest + 600},
        task_queues=[Queue(settings.train_queue), Queue(settings.generate_queue)],
        task_default_queue=settings.generate_queue,
        task_routes={CUSTOMIZE_TASK: {"queue": settings.train_queue},
                     GENERATE_TASK: {"queue": settings.generate_queue}},
        task_annotations={
            CUSTOMIZE_TASK: {"soft_time_limit": settings.train_soft_time_limit_s,
                             "time_limit": settings.train_time_limit_s},
            GENERATE_TASK: {"soft_time_limit": settings.generate_soft_time_limit_s,
                            "time_limit": settings.generate_time_limit_s},
        },
    )
    return app
