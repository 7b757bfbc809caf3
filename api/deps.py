"""Dependencies: settings and clients from the app state, bearer-key auth, as `Annotated` aliases.

All are ``async def``: none does I/O, and FastAPI runs a plain ``def`` dependency in the thread pool,
a hop per dependency per request (most of the per-request CPU of a cheap endpoint).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Request

from common.errors import Unauthorized
from common.jobstore import JobStore
from common.settings import Settings
from common.storage import Storage


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_storage(request: Request) -> Storage:
    return request.app.state.storage


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
StorageDep = Annotated[Storage, Depends(get_storage)]
CeleryDep = Annotated[Celery, Depends(get_celery)]


def owner_of(key: str) -> str:
    """The tenant id of an API key: a hash, so the key itself is never stored or logged."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


async def authenticate(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> str:
    """Check ``Authorization: Bearer <key>`` against every configured key in constant time."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    matched = False
    for key in settings.api_keys:  # no early exit: time does not depend on which key matched
        matched |= hmac.compare_digest(token.encode(), key.encode())
    if scheme.lower() != "bearer" or not token or not matched:
        raise Unauthorized("missing or invalid API key (expected 'Authorization: Bearer <key>')")
    return owner_of(token)


OwnerDep = Annotated[str, Depends(authenticate)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]
