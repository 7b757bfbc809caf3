"""The worker's Celery app: ``celery -A worker.celery_app worker -Q train,generate -c 1``."""

from celery.signals import setup_logging, worker_init, worker_ready

from common import logs
from common.celery_config import make_celery
from common.settings import get_settings
from worker import metrics, reaper, shutdown, webhooks

settings = get_settings()
app = make_celery(settings, include=["worker.tasks"])
reaper.install(app, settings)
webhooks.install(app, settings)
shutdown.install(app, settings)


@setup_logging.connect(weak=False)
def _logging(**_) -> None:
    """Celery leaves logging to us when this signal has a receiver: the one JSON setup, in the main process and
    each pool process (its own loggers and the tasks' records propagate to it)."""
    logs.setup(settings.log_level, settings.log_format)


@worker_init.connect(weak=False)
def _metrics_dir(**_) -> None:
    metrics.prepare(settings)  # in the main process, before the pool is forked and any metric value is made


@worker_ready.connect(weak=False)
def _serve_metrics(**_) -> None:
    metrics.serve(settings)
