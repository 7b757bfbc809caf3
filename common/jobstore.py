"""Job and customization records in Redis: the source of truth for state, progress and ownership.

Layout (prefix ``sm:``)::

    sm:job:<id>                hash, one JSON-encoded value per `JobRecord` field
    sm:job:<id>:events         stream of the job's events (`common.events`), the newest `max_events`; expires with it
    sm:cus:<id>                hash, one JSON-encoded value per `CustomizationRecord` field
    sm:owner:<o>:jobs          zset of job ids by creation time (newest-first listing)
    sm:owner:<o>:customizations zset of customization ids by creation time
    sm:owner:<o>:queued        zset of the owner's queued job ids (per-key limit)
    sm:queued:<queue>          zset of queued job ids by enqueue time (the queue's depth)
    sm:fair:<queue>:owner:<o>  zset of the owner's queued job ids in that queue by when each may start
    sm:fair:<queue>:owners     zset of owners by the turn they were last served (round-robin between keys)
    sm:fair:<queue>:turn       counter of turns served
    sm:ckpt:<sha256>           set of the customization ids made from that uploaded checkpoint
    sm:idem:<o>:<scope>:<h>    JSON {"job_id", "customization_id", "fingerprint"} of an Idempotency-Key
    sm:running                 zset of running job ids by last heartbeat (epoch seconds; the reaper's index)
    sm:jobs:<kind>:<status>    zset of job ids by when they entered that status; sm:metrics: counters and
                               histograms (both written by the scripts below: `common.job_metrics`)
    sm:drain:<host>:<pid>      epoch seconds by which the jobs of that worker (its main process) must end: it got
                               SIGTERM and shuts down (`worker.shutdown`); expires after the grace

Status changes go through one Lua script (`transition`) so that, e.g., a cancel and a start never both win.
A customize job's customization changes with its job, in the same script (`CUSTOMIZATION_STATUS`): the
named operations (`finish`, `requeue`, `cancel`) are transitions, so nothing writes the mirror by hand.

Fair dispatch: Celery stays the transport, one message per queued job, but a message is a turn, not a job:
the worker that receives one runs `next_fair`'s pick, the oldest startable job of the key served longest
ago, so one key's backlog never holds the others' jobs back by more than one job each.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import redis
from pydantic import BaseModel

from common import events, job_metrics
from common.errors import NotFound, ServiceUnavailable
from common.schemas import TERMINAL, CustomizationRecord, ErrorInfo, JobRecord

PREFIX = "sm:"
# The status a customize job's customization takes when its job takes each status (a generation only uses one).
CUSTOMIZATION_STATUS = {"queued": "queued", "running": "training", "succeeded": "ready", "failed": "failed",
                        "canceled": "canceled"}
CANCELED = ErrorInfo(code="canceled", message="canceled by request")

_TRANSITION = job_metrics.OBSERVE_LUA + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return -1 end
local ok = false
for _, s in ipairs(cjson.decode(ARGV[1])) do if s == cur then ok = true end end
if not ok then return 0 end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[5] then return 0 end
local fields = cjson.decode(ARGV[2])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
if ARGV[10] ~= '' then redis.call('XADD', KEYS[8], 'MAXLEN', ARGV[11], '*', 'event', ARGV[10]) end
if ARGV[9] ~= '' and redis.call('EXISTS', KEYS[7]) == 1 then
  for k, v in pairs(cjson.decode(ARGV[9])) do redis.call('HSET', KEYS[7], k, v) end
end
local new = ARGV[4]
if new ~= '' then
  local was, kind, now = cjson.decode(cur), ARGV[12], clock()
  redis.call('ZREM', ARGV[13] .. kind .. ':' .. was, ARGV[3])
  redis.call('ZADD', ARGV[13] .. kind .. ':' .. new, now, ARGV[3])
  if ARGV[17] == '1' then
    if new == 'running' then
      redis.call('HINCRBY', KEYS[9], 'started|' .. kind, 1)
      local since = tonumber(redis.call('HGET', KEYS[1], 'queued_ts'))
      if since then observe(KEYS[9], 'wait_s|' .. kind, now - since, ARGV[15]) end
      redis.call('HSET', KEYS[1], 'started_ts', now)
    elseif new == 'queued' then
      redis.call('HSET', KEYS[1], 'queued_ts', now)
      if was == 'running' then redis.call('HINCRBY', KEYS[9], 'retries|' .. kind, 1) end
    else
      redis.call('HINCRBY', KEYS[9], 'finished|' .. kind .. '|' .. new, 1)
      local started = tonumber(redis.call('HGET', KEYS[1], 'started_ts'))
      if was == 'running' and started then observe(KEYS[9], 'run_s|' .. kind .. '|' .. new, now - started, ARGV[14]) end
    end
    if ARGV[16] ~= '' then redis.call('HINCRBY', KEYS[9], 'reaped|' .. kind .. '|' .. ARGV[16], 1) end
  end
end
if new == 'queued' then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[3])
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('ZREM', KEYS[10], ARGV[3])
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[3])
  redis.call('ZADD', KEYS[6], 'NX', 0, ARGV[7])
elseif new == 'running' then
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[3])
  redis.call('ZADD', KEYS[10], ARGV[6], ARGV[3])
  redis.call('ZREM', KEYS[5], ARGV[3])
elseif new ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('ZREM', KEYS[10], ARGV[3])
  redis.call('ZREM', KEYS[5], ARGV[3])
  if tonumber(ARGV[8]) > 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[8])
    redis.call('EXPIRE', KEYS[8], ARGV[8])
  end
end
return 1
"""

# Liveness of a running job: only the attempt that holds the job may write (a worker that lost it learns so).
_HEARTBEAT = """
if redis.call('HGET', KEYS[1], 'status') ~= '"running"' then return 0 end
if redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return 0 end
for k, v in pairs(cjson.decode(ARGV[2])) do redis.call('HSET', KEYS[1], k, v) end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
if ARGV[5] ~= '' then redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[6], '*', 'event', ARGV[5]) end
return 1
"""

# Create a queued job unless the owner already has `limit` queued jobs (atomic: no over-admission), or unless the
# customization a generation uses is gone (-1: a deletion took it; see common/deletion.py), or one of the records
# it needs (KEYS[13...]: its uploaded files) is (-2 for KEYS[13], -3 for KEYS[14], ...; see common/files.py).
_CREATE = job_metrics.OBSERVE_LUA + """
if ARGV[8] ~= '' and redis.call('EXISTS', KEYS[10]) == 0 then return -1 end
for i = 13, #KEYS do if redis.call('EXISTS', KEYS[i]) == 0 then return 11 - i end end
if tonumber(ARGV[1]) > 0 and redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[1]) then return 0 end
for k, v in pairs(cjson.decode(ARGV[4])) do redis.call('HSET', KEYS[1], k, v) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[7], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[8], 'NX', 0, ARGV[7])
if ARGV[5] ~= '' then
  for k, v in pairs(cjson.decode(ARGV[6])) do redis.call('HSET', KEYS[5], k, v) end
  redis.call('ZADD', KEYS[6], ARGV[2], ARGV[5])
  redis.call('SADD', KEYS[9], ARGV[5])
end
redis.call('XADD', KEYS[11], 'MAXLEN', ARGV[10], '*', 'event', ARGV[9])
local now = clock()
redis.call('HSET', KEYS[1], 'queued_ts', now)
redis.call('ZADD', ARGV[12] .. ARGV[11] .. ':queued', now, ARGV[3])
redis.call('HINCRBY', KEYS[12], 'created|' .. ARGV[11], 1)
return 1
"""

# The next job to start in a queue: the oldest startable job (score <= now) of the owner served longest ago
# (new owners first); that owner's turn is then the latest. Owners with nothing queued leave the rotation.
_NEXT_FAIR = """
for _, owner in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local jobs = ARGV[2] .. owner
  if redis.call('ZCARD', jobs) == 0 then
    redis.call('ZREM', KEYS[1], owner)
  else
    local first = redis.call('ZRANGEBYSCORE', jobs, '-inf', ARGV[1], 'LIMIT', 0, 1)
    if #first > 0 then
      redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[2]), owner)
      return first[1]
    end
  end
end
return false
"""
# A token bucket per key: `burst` tokens, refilled at `rate` a second; returns 0 (taken) or seconds to wait.
_TAKE_TOKEN = """
local rate, burst, clock = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or clock
tokens = math.min(burst, tokens + math.max(0, clock - at) * rate)
if tokens < 1 then return tostring((1 - tokens) / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'at', tostring(clock))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return '0'
"""
# An event of a job that exists (a late write never makes a stream that would outlive its record).
_ADD_EVENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'event', ARGV[1])
return 1
"""
RUNNING_KEY = PREFIX + "running"


def encode_cursor(cursor: tuple[float, str] | None) -> str | None:
    """A listing's next-page cursor: the last item's creation time and id (the id breaks ties)."""
    return None if cursor is None else f"{cursor[0]!r}~{cursor[1]}"


def decode_cursor(text: str | None) -> tuple[float, str] | None:
    """The inverse of `encode_cursor`; ValueError for anything it did not make."""
    if text is None:
        return None
    score, sep, member = text.partition("~")
    value = float(score)
    if not sep or not member or not math.isfinite(value):  # "nan" parses, and Redis rejects it as a bound
        raise ValueError(text)
    return value, member


def now() -> datetime:
    return datetime.now(timezone.utc)


def encode_fields(record: BaseModel | dict) -> dict[str, str]:
    """A record as a Redis hash: one JSON value per field (what every record of the store is; `decode_fields`)."""
    data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
    return {k: json.dumps(v, default=_json_default) for k, v in data.items()}


def _json_default(value: Any):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _mirror(job_fields: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """What a customize job's change writes to its customization: none without a status change; else the status
    that follows the job's (`CUSTOMIZATION_STATUS`), and on an end the job's end time and error."""
    status = job_fields.get("status")
    if status is None:
        return {}
    ended: dict[str, Any] = {k: job_fields[k] for k in ("finished_at", "error") if k in job_fields} if status in TERMINAL else {}
    return {"status": CUSTOMIZATION_STATUS[status], **ended, **extra}


def decode_fields(raw: dict[str, str]) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in raw.items()}


class JobStore:
    """Typed access to the records; every Redis connection error surfaces as `ServiceUnavailable`."""

    def __init__(self, redis_url: str, retention_s: int = 0, max_events: int = 1000):
        self.retention_s = retention_s  # a finished job's record expires after this (0 = kept)
        self.max_events = max_events  # a job's event stream keeps its newest this many
        self.clock = time.time  # the rate limiter's clock; a test sets it to make refills exact
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True, socket_connect_timeout=5,
                                          socket_timeout=10, health_check_interval=30)
        self._transition = self.redis.register_script(_TRANSITION)
        self._heartbeat = self.redis.register_script(_HEARTBEAT)
        self._create = self.redis.register_script(_CREATE)
        self._next_fair = self.redis.register_script(_NEXT_FAIR)
        self._take_token = self.redis.register_script(_TAKE_TOKEN)
        self._add_event = self.redis.register_script(_ADD_EVENT)

    @classmethod
    def from_settings(cls, settings) -> "JobStore":
        """The store a service process uses: the settings' Redis, record retention and event bound."""
        return cls(settings.redis_url, settings.job_retention_s, settings.job_max_events)

    def ping(self) -> None:
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise ServiceUnavailable(f"redis unreachable: {type(exc).__name__}") from exc

    # ---- jobs -------------------------------------------------------------------------------------
    @staticmethod
    def job_key(job_id: str) -> str:
        return f"{PREFIX}job:{job_id}"

    @classmethod
    def events_key(cls, job_id: str) -> str:
        return cls.job_key(job_id) + ":events"

    @staticmethod
    def owner_key(owner: str, what: str) -> str:
        return f"{PREFIX}owner:{owner}:{what}"

    @staticmethod
    def queued_key(queue: str) -> str:
        return f"{PREFIX}queued:{queue}"

    @staticmethod
    def running_key(queue: str) -> str:
        """The running jobs of `queue` (a sorted set): with the queue's waiting messages, what its workers are
        scaled on (deploy/kubernetes: a scale-down must not take a worker while its job runs)."""
        return f"{PREFIX}running:{queue}"

    @staticmethod
    def _fair_key(queue: str, owner: str | None = None) -> str:
        """The owner's queued jobs in `queue`; with no owner, the rotation of owners."""
        return f"{PREFIX}fair:{queue}:" + ("owners" if owner is None else f"owner:{owner}")

    @classmethod
    def queue_index_key(cls, queue: str, owner: str) -> str:
        """The index whose rank is a queued job's position: its owner's queued jobs of its queue."""
        return cls._fair_key(queue, owner)

    def take_token(self, owner: str, rate: float, burst: int) -> float:
        """Spend one of the owner's job-creation tokens: 0.0 when taken, else seconds until one is there."""
        return float(self._take_token(keys=[self.owner_key(owner, "rate")], args=[rate, burst, repr(self.clock())]))

    def create_job(self, job: JobRecord, queue: str, customization: CustomizationRecord | None = None,
                   limit: int = 0, needs: Sequence[tuple[str, str]] = ()) -> bool:
        """Store a queued job (and its customization) and index it, atomically; False (nothing written)
        when `limit` > 0 and the owner already has `limit` queued jobs. `NotFound` (nothing written) when the
        customization a generation uses no longer exists, or a record of `needs` (record key, the request's
        field that named it) does not."""
        cus_key = self.customization_key(customization.id) if customization else self.customization_key("-")
        uses = job.customization_id if customization is None else None  # a generation's customization
        created_event = events.status_event({"status": job.status})
        assert created_event is not None  # a status change always has its event
        created = self._create(
            keys=[self.job_key(job.id), self.owner_key(job.owner, "jobs"), self.queued_key(queue),
                  self.owner_key(job.owner, "queued"), cus_key, self.owner_key(job.owner, "customizations"),
                  self._fair_key(queue, job.owner), self._fair_key(queue),
                  self.checkpoint_refs_key(customization.checkpoint_sha256 if customization else "-"),
                  self.customization_key(uses or "-"), self.events_key(job.id), job_metrics.METRICS_KEY,
                  *(key for key, _ in needs)],
            args=[limit, repr(time.time()), job.id, json.dumps({**encode_fields(job), "queue": json.dumps(queue)}),
                  customization.id if customization else "",
                  json.dumps(encode_fields(customization)) if customization else "{}", job.owner, "1" if uses else "",
                  events.encode(created_event), self.max_events, job.kind, job_metrics.STATUS_PREFIX])
        if created == -1:
            raise NotFound(f"no customization {uses!r}", field="customization_id")
        if created < -1:
            field = needs[-created - 2][1]
            raise NotFound(f"{field}: it no longer exists (deleted while this job was being created)", field=field)
        return created == 1

    def get_job(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        """The job; None when there is none (or, with `owner`, when it is another key's)."""
        job = self._job_from(self.redis.hgetall(self.job_key(job_id)))
        return job if job is not None and owner in (None, job.owner) else None

    @staticmethod
    def _job_from(raw: dict[str, str]) -> JobRecord | None:
        if not raw:
            return None
        data = decode_fields(raw)
        data.pop("queue", None)
        return JobRecord.model_validate(data)

    def hgetall_many(self, keys: list[str]) -> list[dict[str, str]]:
        """HGETALL of each key in one round trip (a pipeline, not a transaction)."""
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return pipe.execute()

    def exist(self, keys: list[str]) -> list[bool]:
        """Whether each record key exists, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        return [bool(n) for n in pipe.execute()]

    def job_queue(self, job_id: str) -> str | None:
        raw = self.redis.hget(self.job_key(job_id), "queue")
        return json.loads(raw) if raw else None

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set fields of an existing job (progress, stage, heartbeat...); no status change here."""
        if fields and self.redis.exists(self.job_key(job_id)):
            self.redis.hset(self.job_key(job_id), mapping=encode_fields(fields))

    def transition(self, job_id: str, allowed_from: Iterable[str], attempt: int | None = None,
                   customization: dict | None = None, note: str | None = None, reaped: str | None = None,
                   counted: bool = True, **fields: Any) -> bool:
        """Atomically apply `fields` (incl. ``status``) if the job's status is in `allowed_from` (and, when
        `attempt` is given, the job is still on that attempt). Keeps the queue, running and status indexes in
        step, a customize job's customization (its status follows the job's, with `customization`'s fields), the
        job's events (a status change or a cancel request is one, `note` says why) and the job metrics
        (`common.job_metrics`; `reaped`: the reaper's action, counted too; `counted=False`: an undo, not counted)."""
        record = self.redis.hgetall(self.job_key(job_id))
        if not record:
            return False
        owner, queue = json.loads(record["owner"]), json.loads(record.get("queue", '"none"'))
        trains = json.loads(record.get("customization_id", "null")) if record["kind"] == '"customize"' else None
        mirror = _mirror(fields, customization or {}) if trains else {}
        result = self._transition(
            keys=[self.job_key(job_id), self.queued_key(queue), self.owner_key(owner, "queued"), RUNNING_KEY,
                  self._fair_key(queue, owner), self._fair_key(queue), self.customization_key(trains or "-"),
                  self.events_key(job_id), job_metrics.METRICS_KEY, self.running_key(queue)],
            args=[json.dumps([json.dumps(s) for s in allowed_from]), json.dumps(encode_fields(fields)), job_id,
                  fields.get("status", ""), "" if attempt is None else json.dumps(attempt), repr(time.time()), owner,
                  self.retention_s, json.dumps(encode_fields(mirror)) if mirror else "",
                  events.encode(event) if (event := events.status_event(fields, note)) else "", self.max_events,
                  json.loads(record["kind"]), job_metrics.STATUS_PREFIX, job_metrics.RUN_BOUNDS_JSON,
                  job_metrics.WAIT_BOUNDS_JSON, reaped or "", "1" if counted else ""])
        return result == 1

    def finish(self, job_id: str, status: str, allowed_from: Iterable[str] = ("running",), attempt: int | None = None,
               error: ErrorInfo | None = None, result: dict | None = None, customization: dict | None = None,
               reaped: str | None = None, **fields: Any) -> bool:
        """End a job as `status` (succeeded, failed or canceled) if it is in `allowed_from` (on `attempt`), and a
        customize job's customization with it: ready (with `customization`'s fields: its manifest), failed or
        canceled, with the job's error and end time. False (nothing written) when the job is not there."""
        fields.update(status=status, finished_at=now(), error=error)
        if status == "succeeded":
            fields.update(progress=1.0, stage="done", result=result)
        return self.transition(job_id, allowed_from, attempt, customization, reaped=reaped, **fields)

    def requeue(self, job_id: str, attempt: int, note: str | None = None, reaped: str | None = None,
                **fields: Any) -> bool:
        """Put a running job (still on `attempt`) back in its queue, its customization back to queued."""
        return self.transition(job_id, ["running"], attempt, note=note, reaped=reaped, status="queued",
                               stage="requeued", worker=None, **fields)

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job at once (and its customization); ask a running one to stop between two steps.
        Returns the job as it is then: canceled, still running with ``cancel_requested``, or already ended."""
        if not self.finish(job_id, "canceled", ["queued"], error=CANCELED, cancel_requested=True):
            self.request_cancel(job_id)
        return self.get_job(job_id)

    def heartbeat(self, job_id: str, attempt: int, event: dict | None = None, **fields: Any) -> bool:
        """Mark attempt `attempt` of a running job alive (and set `fields`, add `event`); False if the job is no
        longer running on that attempt (canceled, finished, or re-queued after a missed heartbeat)."""
        clock = time.time()
        result = self._heartbeat(keys=[self.job_key(job_id), RUNNING_KEY, self.events_key(job_id)],
                                 args=[json.dumps(attempt), json.dumps(encode_fields({"heartbeat_at": now(), **fields})),
                                       repr(clock), job_id, events.encode(event) if event else "", self.max_events])
        return result == 1

    def add_event(self, job_id: str, event: dict) -> bool:
        """Add `event` (`common.events`) to the job's stream; False (nothing written) once the job is gone."""
        return self._add_event(keys=[self.job_key(job_id), self.events_key(job_id)],
                               args=[events.encode(event), self.max_events]) == 1

    def job_events(self, job_id: str, after: str | None = None, count: int | None = None) -> list[dict]:
        """The job's events, oldest first, after the stream id `after` (all when None), `count` at most."""
        start = "-" if after is None else f"({after}"
        return [events.decode(i, f) for i, f in self.redis.xrange(self.events_key(job_id), start, "+", count=count)]

    def job_log(self, job_id: str) -> list[dict]:
        """The job's log: its events but progress ones (at most `max_events`)."""
        return [e for e in self.job_events(job_id) if e["type"] in events.LOG_TYPES]

    def running(self) -> list[tuple[str, float]]:
        """(job id, last heartbeat epoch) of every running job, oldest heartbeat first."""
        return [(job_id, score) for job_id, score in self.redis.zrange(RUNNING_KEY, 0, -1, withscores=True)]

    def forget_running(self, job_id: str) -> None:
        self.redis.zrem(RUNNING_KEY, job_id)

    @staticmethod
    def drain_key(worker: str) -> str:
        return f"{PREFIX}drain:{worker}"

    def request_drain(self, worker: str, deadline: float, ttl_s: int) -> None:
        """Tell the jobs of `worker` (a worker's main process, ``<host>:<pid>``) that it is shutting down and
        that each must have ended (finished or been given back) by `deadline` (epoch seconds)."""
        self.redis.set(self.drain_key(worker), repr(deadline), ex=ttl_s)

    def drain_deadline(self, worker: str) -> float | None:
        """The deadline `request_drain` set for `worker`; None while it is not shutting down."""
        raw = self.redis.get(self.drain_key(worker))
        return float(raw) if raw else None

    def request_cancel(self, job_id: str) -> bool:
        """Flag a queued or running job to stop (its worker checks between steps); False once it ended."""
        return self.transition(job_id, ["queued", "running"], cancel_requested=True)

    def cancel_requested(self, job_id: str) -> bool:
        raw = self.redis.hget(self.job_key(job_id), "cancel_requested")
        return bool(raw and json.loads(raw))

    def next_fair(self, queue: str) -> str | None:
        """The job a worker with a free turn in `queue` should start (see the module docstring)."""
        return self._next_fair(keys=[self._fair_key(queue), f"{PREFIX}fair:{queue}:turn"],
                               args=[repr(time.time()), self._fair_key(queue, "")]) or None

    def is_queued(self, job_id: str) -> bool:
        return self.redis.hget(self.job_key(job_id), "status") == '"queued"'

    def queued_depth(self, queue: str) -> int:
        """Queued jobs of `queue`, startable or not."""
        return self.redis.zcard(self.queued_key(queue))

    def _fair_key_of(self, job_id: str) -> str | None:
        """The fair-queue index its job belongs to (its owner's, in its queue); None for an unknown job."""
        owner, queue = self.redis.hmget(self.job_key(job_id), ["owner", "queue"])
        return self._fair_key(json.loads(queue), json.loads(owner)) if owner and queue else None

    def defer(self, job_id: str, seconds: float) -> None:
        """Keep a queued job out of `next_fair`'s picks for `seconds` (it waits for its customization)."""
        if (index := self._fair_key_of(job_id)) is not None:
            self.redis.zadd(index, {job_id: time.time() + seconds}, xx=True)

    def queue_position(self, job_id: str) -> int | None:
        """1-based position among the owner's own queued jobs of that queue (1 = its next), None when not
        queued. Other keys' backlogs are not shown: with fair dispatch they delay a job by one job each."""
        index = self._fair_key_of(job_id)
        rank = self.redis.zrank(index, job_id) if index is not None else None
        return None if rank is None else rank + 1

    def queued_count(self, owner: str) -> int:
        return self.redis.zcard(self.owner_key(owner, "queued"))

    def list_jobs(self, owner: str, limit: int, cursor: tuple[float, str] | None) -> tuple[list[JobRecord], tuple | None]:
        listing = self.owner_key(owner, "jobs")
        ids, next_cursor = self.page(listing, limit, cursor)
        jobs = [self._job_from(raw) for raw in self.hgetall_many([self.job_key(i) for i in ids])]
        expired = [job_id for job_id, job in zip(ids, jobs) if job is None]
        if expired:  # records past their retention leave the listing too
            self.redis.zrem(listing, *expired)
        return [job for job in jobs if job is not None], next_cursor

    def page(self, key: str, limit: int, cursor: tuple[float, str] | None) -> tuple[list[str], tuple | None]:
        """Newest first from just after `cursor` (score, member): members of equal score (created in the same
        instant) come in descending member order, so the member breaks the tie and none is skipped."""
        if cursor is None:
            rows = self.redis.zrevrangebyscore(key, "+inf", "-inf", start=0, num=limit + 1, withscores=True)
        else:
            score, member = cursor
            seen = sum(1 for m in self.redis.zrangebyscore(key, score, score) if m >= member)
            rows = self.redis.zrevrangebyscore(key, repr(score), "-inf", start=seen, num=limit + 1, withscores=True)
        next_cursor = (rows[limit - 1][1], rows[limit - 1][0]) if len(rows) > limit else None
        return [member for member, _ in rows[:limit]], next_cursor

    # ---- customizations ---------------------------------------------------------------------------
    @staticmethod
    def customization_key(customization_id: str) -> str:
        return f"{PREFIX}cus:{customization_id}"

    def get_customization(self, customization_id: str, owner: str | None = None) -> CustomizationRecord | None:
        """The customization; None when there is none (or, with `owner`, when it is another key's)."""
        raw = self.redis.hgetall(self.customization_key(customization_id))
        record = CustomizationRecord.model_validate(decode_fields(raw)) if raw else None
        return record if record is not None and owner in (None, record.owner) else None

    def list_customizations(self, owner: str, limit: int, cursor: tuple[float, str] | None):
        ids, next_cursor = self.page(self.owner_key(owner, "customizations"), limit, cursor)
        raws = self.hgetall_many([self.customization_key(i) for i in ids])
        return [CustomizationRecord.model_validate(decode_fields(raw)) for raw in raws if raw], next_cursor

    @staticmethod
    def checkpoint_refs_key(sha256: str) -> str:
        return f"{PREFIX}ckpt:{sha256}"

    def checkpoint_users(self, sha256: str) -> list[CustomizationRecord]:
        """The customizations made from an uploaded checkpoint (what keeps its object alive)."""
        ids = sorted(self.redis.smembers(self.checkpoint_refs_key(sha256)))
        raws = self.hgetall_many([self.customization_key(i) for i in ids])
        return [CustomizationRecord.model_validate(decode_fields(raw)) for raw in raws if raw]

    def forget_checkpoint(self, sha256: str) -> None:
        self.redis.delete(self.checkpoint_refs_key(sha256))

    # ---- idempotency keys -------------------------------------------------------------------------
    @staticmethod
    def _idem_key(owner: str, scope: str, key: str) -> str:
        return f"{PREFIX}idem:{owner}:{scope}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"

    def idempotency_reserve(self, owner: str, scope: str, key: str, ttl_s: int) -> dict | None:
        """Claim an Idempotency-Key for `ttl_s` (a lease: `idempotency_bind` then keeps the result for the full
        retention); return None if claimed now, else what it holds (``{}`` while pending)."""
        name = self._idem_key(owner, scope, key)
        if self.redis.set(name, json.dumps({}), nx=True, ex=ttl_s):
            return None
        raw = self.redis.get(name)
        return json.loads(raw) if raw else {}

    def idempotency_extend(self, owner: str, scope: str, key: str, lease_s: int) -> None:
        """Keep a pending reservation alive for another `lease_s` (its request is still streaming)."""
        name = self._idem_key(owner, scope, key)
        if self.redis.get(name) == json.dumps({}):
            self.redis.expire(name, lease_s)

    def idempotency_bind(self, owner: str, scope: str, key: str, value: dict, ttl_s: int) -> None:
        self.redis.set(self._idem_key(owner, scope, key), json.dumps(value), ex=ttl_s)

    def idempotency_release(self, owner: str, scope: str, key: str) -> None:
        self.redis.delete(self._idem_key(owner, scope, key))
