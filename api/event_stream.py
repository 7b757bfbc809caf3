"""``GET /jobs/{id}/events``: a job's events (`common.events`) as Server-Sent Events until the job ends.

Read with short non-blocking reads of the job's stream on an async Redis client, every `events_poll_s`: a
client holds no thread and no Redis connection between two reads, and its disconnect cancels the reader
(Starlette watches for it). Each read takes the new entries and the job's status in one MULTI, so a job seen
ended has its final event in the same read. Stream entries go out with their stream id as the SSE ``id:``
(resumed after with ``Last-Event-ID``); the queue position, which moves with other jobs, goes out as id-less
``queue`` events when it changes, and a comment keeps an idle stream open through proxies.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator

import redis.asyncio
from fastapi.sse import ServerSentEvent

from common import events
from common.jobstore import JobStore
from common.schemas import TERMINAL, JobRecord
from common.settings import Settings

BATCH = 100  # entries per read


class EventStream:
    """The API process's reader of job event streams (one async Redis client, created in `lifespan`)."""

    def __init__(self, settings: Settings):
        self.poll_s, self.keepalive_s = settings.events_poll_s, settings.events_keepalive_s
        self.redis = redis.asyncio.Redis.from_url(settings.redis_url, decode_responses=True,
                                                  socket_connect_timeout=5, socket_timeout=10)

    async def close(self) -> None:
        await self.redis.aclose()

    async def follow(self, job: JobRecord, after: str | None = None) -> AsyncIterator[ServerSentEvent]:
        """The job's events after the stream id `after` (all when None), then new ones as they come, until
        its final status (or its record is gone)."""
        key, job_key = JobStore.events_key(job.id), JobStore.job_key(job.id)
        queue = await self.redis.hget(job_key, "queue")
        index = JobStore.queue_index_key(json.loads(queue), job.owner) if queue else None
        last, position, sent = after, None, time.monotonic()
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xrange(key, "-" if last is None else f"({last}", "+", count=BATCH)
                pipe.hget(job_key, "status")
                pipe.zrank(index or "-", job.id)
                entries, status, rank = await pipe.execute()
            for entry_id, fields in entries:
                event, last = events.decode(entry_id, fields), entry_id
                yield ServerSentEvent(id=entry_id, event=event["type"], data=event)
                if events.is_terminal(event):
                    return
            if status is None:  # expired or deleted
                return
            if len(entries) == BATCH:  # more to read at once
                continue
            status = json.loads(status)
            if status in TERMINAL:  # ended, its final event not in the stream (trimmed away, or older than it)
                yield ServerSentEvent(event="status", data={"type": "status", "status": status})
                return
            if entries:
                sent = time.monotonic()
            now_position = rank + 1 if status == "queued" and rank is not None else None
            if now_position != position:
                position, sent = now_position, time.monotonic()
                yield ServerSentEvent(event="queue", data={"type": "queue", "queue_position": position})
            elif time.monotonic() - sent >= self.keepalive_s:
                sent = time.monotonic()
                yield ServerSentEvent(comment="keep-alive")
            await asyncio.sleep(self.poll_s)
