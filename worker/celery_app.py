"""The worker's Celery app: ``celery -A worker.celery_app worker -Q train,generate -c 1``."""

from common.celery_config import make_celery
from common.settings import get_settings
from worker import reaper, shutdown, webhooks

settings = get_settings()
app = make_celery(settings, include=["worker.tasks"])
reaper.install(app, settings)
webhooks.install(app, settings)
shutdown.install(app, settings)
