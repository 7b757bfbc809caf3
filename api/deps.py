"""Dependencies: settings and clients from the app state, bearer-key auth, the caller's records by path id,
as `Annotated` aliases.

Those that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in the thread pool, a hop
per dependency per request (most of the per-request CPU of a cheap endpoint). The `Owned...` ones read the
job store, so they are plain ``def``.
"""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Request

from api.auth import UNAUTHORIZED, owner_for
from api.event_stream import EventStream
from common.errors import NotFound, Unauthorized
from common.files import get_file
from common.jobstore import JobStore
from common.schemas import CustomizationRecord, FileRecord, JobRecord
from common.settings import Settings
from common.storage import Storage
from common.webhooks import WebhookStore


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_storage(request: Request) -> Storage:
    return request.app.state.storage


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


async def get_events(request: Request) -> EventStream:
    return request.app.state.events


async def get_webhooks(request: Request) -> WebhookStore:
    return request.app.state.webhooks


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
StorageDep = Annotated[Storage, Depends(get_storage)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
EventsDep = Annotated[EventStream, Depends(get_events)]
WebhooksDep = Annotated[WebhookStore, Depends(get_webhooks)]


async def authenticate(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> str:
    """The caller's tenant id (`api.guard` refused a bad key before the body; this names it for the route)."""
    owner = owner_for(authorization, settings.api_keys)
    if owner is None:
        raise Unauthorized(UNAUTHORIZED)
    return owner


OwnerDep = Annotated[str, Depends(authenticate)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


def owned_job(job_id: str, owner: OwnerDep, store: StoreDep) -> JobRecord:
    """The job `job_id` of the caller's key; 404 for an unknown job or another key's (indistinguishable)."""
    job = store.get_job(job_id, owner=owner)
    if job is None:
        raise NotFound(f"no job {job_id!r}", field="job_id")
    return job


def owned_customization(customization_id: str, owner: OwnerDep, store: StoreDep) -> CustomizationRecord:
    """The customization `customization_id` of the caller's key; 404 otherwise (also for a body's id)."""
    record = store.get_customization(customization_id, owner=owner)
    if record is None:
        raise NotFound(f"no customization {customization_id!r}", field="customization_id")
    return record


def owned_file(file_id: str, owner: OwnerDep, store: StoreDep) -> FileRecord:
    """The uploaded file `file_id` of the caller's key; 404 otherwise."""
    return get_file(store, file_id, owner)


OwnedJob = Annotated[JobRecord, Depends(owned_job)]
OwnedCustomization = Annotated[CustomizationRecord, Depends(owned_customization)]
OwnedFile = Annotated[FileRecord, Depends(owned_file)]
