"""Idempotency-Key on the POSTs that create jobs or files: a retry with the same key gets the first request's answer.

One `Idempotency` per request, as a ``with`` block around the work (``async with`` in an async route: its
Redis calls then run in the thread pool). Entering reserves the key for a lease; when an earlier request
holds it, `held` says what it left (``{}`` while it is still processing) and `replay` answers from that.
An error inside the block releases the key, so the retry runs anew; `accept` binds the key to the job
(for the full retention) and gives the 202. ``POST /files`` binds its file with `bind` and answers a retry
from `bound` (`api.routes.files`).
"""

from __future__ import annotations

from typing import Callable

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.enqueue import accepted
from common.errors import Conflict
from common.jobstore import JobStore
from common.schemas import JobAccepted
from common.settings import Settings


class Idempotency:
    def __init__(self, store: JobStore, settings: Settings, owner: str, scope: str, key: str | None):
        self.store, self.settings, self.owner, self.scope = store, settings, owner, scope
        self.key = key or ""  # "" = the request has none
        self.held: dict | None = None  # what an earlier request with this key left; None when this one holds it
        self._reserved = False  # this request holds the key and has not bound it yet

    def __enter__(self) -> "Idempotency":
        if self.key:
            self.held = self.store.idempotency_reserve(self.owner, self.scope, self.key,
                                                       self.settings.idempotency_lease_s)
            self._reserved = self.held is None
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None and self._reserved:
            self.store.idempotency_release(self.owner, self.scope, self.key)

    async def __aenter__(self) -> "Idempotency":
        return await run_in_threadpool(self.__enter__)

    async def __aexit__(self, *exc_info) -> None:
        await run_in_threadpool(self.__exit__, *exc_info)

    @property
    def keep_alive(self) -> Callable[[], None] | None:
        """For a request that streams a body: renews the lease (None when no key is held)."""
        if not self._reserved:
            return None
        return lambda: self.store.idempotency_extend(self.owner, self.scope, self.key, self.settings.idempotency_lease_s)

    @property
    def pending(self) -> bool:
        """An earlier request holds the key and has not bound it yet (a retry gets 409 at once)."""
        return self.held is not None and not (self.held.get("job_id") or self.held.get("file_id"))

    def bound(self, fingerprint: str | None) -> dict:
        """What the key is bound to, for a retry: 409 while it is pending, or when the retry's `fingerprint`
        (None: not compared) differs from the first request's."""
        held = self.held or {}
        if self.pending:
            raise Conflict("a request with this Idempotency-Key is still being processed",
                           code="idempotency_in_progress")
        if fingerprint is not None and held.get("fingerprint") not in (None, fingerprint):
            raise Conflict("this Idempotency-Key was used with a different request body",
                           code="idempotency_key_reused", field="Idempotency-Key")
        return held

    def replay(self, fingerprint: str | None) -> JSONResponse:
        """The answer to a retry (see `bound`): the job the key is bound to."""
        held = self.bound(fingerprint)
        job = self.store.get_job(held["job_id"], owner=self.owner)
        return accepted(JobAccepted(job_id=held["job_id"], status=job.status if job is not None else "queued",
                                    customization_id=held.get("customization_id")))

    def bind(self, value: dict) -> None:
        """Bind the key (when this request holds it) to what it made, for the full retention."""
        if self._reserved:
            self._reserved = False  # from here on a failure keeps the key (its lease runs out)
            self.store.idempotency_bind(self.owner, self.scope, self.key, value, self.settings.idempotency_ttl_s)

    def accept(self, body: JobAccepted, fingerprint: str) -> JSONResponse:
        """Bind the key (when held) to the job just queued, then answer 202."""
        value = {"job_id": body.job_id, "fingerprint": fingerprint}
        if body.customization_id:
            value["customization_id"] = body.customization_id
        self.bind(value)
        return accepted(body)
