"""Records → responses for the routes: the views themselves live in `common.views` (the worker's webhook
deliveries send the same job body)."""

from __future__ import annotations

from common.jobstore import JobStore
from common.schemas import JobEvent
from common.views import customization_view, job_view

__all__ = ["customization_view", "job_view", "log_view"]


def log_view(store: JobStore, job_id: str) -> list[JobEvent]:
    return [JobEvent.model_validate(event) for event in store.job_log(job_id)]
