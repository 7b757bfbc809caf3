"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.deps import StorageDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis and storage are reachable (503 otherwise)")
async def readyz(store: StoreDep, storage: StorageDep) -> dict:
    await run_in_threadpool(store.ping)
    await run_in_threadpool(storage.ping)
    return {"status": "ready", "checks": {"redis": "ok", "storage": "ok"}}
