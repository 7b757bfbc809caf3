"""The job metrics kept in Redis, and their reading at scrape time (`read`).

Every count is written by the job store's own scripts, in the same atomic step as the change it counts (a job
created, started, re-queued, ended; a reaper's action; a webhook attempt recorded), so it is exact, and the same
whichever API process is scraped or how many run: none keeps a count of its own. Keys:

- ``sm:metrics``: hash of counters ``created|<kind>``, ``started|<kind>`` (runs), ``finished|<kind>|<status>``,
  ``retries|<kind>`` (a running job re-queued), ``reaped|<kind>|<action>``, ``webhook|<event>|<outcome>``, and
  histograms, one field per bucket (``|<i>``, 1-based, not cumulative) plus ``|sum``: ``run_s|<kind>|<status>``
  (a run's start to its end, by how it ended) and ``wait_s|<kind>`` (the job entering the queue, at its creation
  or a re-queue, to a run's start). Times are Redis's own clock (``TIME``): API and worker clocks never mix.
- ``sm:jobs:<kind>:<status>``: zset of the job ids in that status, scored by when they entered it; the status
  change and the move are one script, and a deleted job leaves it in its deletion's script. A finished record
  expires `retention_s` after it ended, which is its score here plus that: `read` drops those first, so the
  count is the records there are.

Job records written before these indexes existed are not in them (a deployment that upgrades starts from zero).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, get_args

from common.schemas import TERMINAL, JobKind

if TYPE_CHECKING:
    from common.jobstore import JobStore

METRICS_KEY = "sm:metrics"  # under the job store's prefix
STATUS_PREFIX = "sm:jobs:"  # + "<kind>:<status>"
KINDS: tuple[str, ...] = get_args(JobKind)
STATUSES = ("queued", "running", *TERMINAL)
# Histogram bounds in seconds: a video takes seconds to minutes, a customization minutes to hours.
RUN_BOUNDS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
WAIT_BOUNDS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RUN_BOUNDS_JSON, WAIT_BOUNDS_JSON = json.dumps(RUN_BOUNDS), json.dumps(WAIT_BOUNDS)

# Lua shared by the job store's scripts: `observe(hash, name, value, bounds)` adds one observation to a histogram.
OBSERVE_LUA = """
local function observe(hash, name, value, bounds_json)
  local bounds = cjson.decode(bounds_json)
  local i = #bounds + 1
  for j, b in ipairs(bounds) do if value <= b then i = j break end end
  redis.call('HINCRBY', hash, name .. '|' .. i, 1)
  redis.call('HINCRBYFLOAT', hash, name .. '|sum', value)
end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""


def status_key(kind: str, status: str) -> str:
    return f"{STATUS_PREFIX}{kind}:{status}"


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int]  # per bucket, the last one past the highest bound (not cumulative)
    total: float = 0.0

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus' buckets: (upper bound, observations at or below it), ending with +Inf."""
        out, running = [], 0
        for bound, count in zip([*(repr(float(b)) for b in self.bounds), "+Inf"], self.counts):
            running += count
            out.append((bound, running))
        return out


@dataclass
class Snapshot:
    """What Redis says at one instant (`read`)."""

    jobs: dict[tuple[str, str], int]  # (kind, status) -> records
    counters: dict[str, int]  # the hash's counter fields, by name
    run_s: dict[tuple[str, str], Histogram]  # (kind, status)
    wait_s: dict[str, Histogram]  # kind
    queued: dict[str, int]  # queue -> queued jobs (the job store's queue, startable or not)
    messages: dict[str, int]  # queue -> Celery messages waiting in the broker list of that name
    tenants: dict[tuple[str, str], int] = field(default_factory=dict)  # (queue, owner) -> its queued jobs there
    webhooks_pending: int = 0

    def counter(self, *parts: str) -> int:
        return self.counters.get("|".join(parts), 0)


def _histogram(raw: dict[str, str], name: str, bounds: tuple[float, ...]) -> Histogram:
    counts = [int(raw.get(f"{name}|{i}", 0)) for i in range(1, len(bounds) + 2)]
    return Histogram(bounds, counts, float(raw.get(f"{name}|sum", 0.0)))


def read(store: JobStore, queues: Iterable[str], owners: Iterable[str], due_key: str) -> Snapshot:
    """One consistent reading (a MULTI/EXEC) of the job metrics, the queues and the `owners`' queued jobs in
    each, after dropping from the status indexes the finished jobs whose records have expired."""
    queues, owners, retention_s = list(queues), list(owners), store.retention_s
    seconds, micros = store.redis.time()
    expired_before = seconds + micros / 1e6 - retention_s
    pipe = store.redis.pipeline(transaction=True)
    pairs = [(kind, status) for kind in KINDS for status in STATUSES]
    for kind, status in pairs:
        if status in TERMINAL and retention_s > 0:
            pipe.zremrangebyscore(status_key(kind, status), "-inf", f"({expired_before!r}")
        pipe.zcard(status_key(kind, status))
    pipe.hgetall(METRICS_KEY)
    for queue in queues:
        pipe.zcard(store.queued_key(queue))
        pipe.llen(queue)  # Celery's Redis transport: a queue is the list of that name
        for owner in owners:
            pipe.zcard(store.queue_index_key(queue, owner))
    pipe.zcard(due_key)
    replies = iter(pipe.execute())
    jobs = {}
    for kind, status in pairs:
        if status in TERMINAL and retention_s > 0:
            next(replies)
        jobs[(kind, status)] = int(next(replies))
    raw: dict[str, str] = next(replies)
    queued, messages, tenants = {}, {}, {}
    for queue in queues:
        queued[queue], messages[queue] = int(next(replies)), int(next(replies))
        for owner in owners:
            tenants[(queue, owner)] = int(next(replies))
    counters = {k: int(v) for k, v in raw.items() if "_s|" not in k}
    return Snapshot(
        jobs=jobs, counters=counters, queued=queued, messages=messages, tenants=tenants,
        run_s={(k, s): _histogram(raw, f"run_s|{k}|{s}", RUN_BOUNDS) for k in KINDS for s in TERMINAL},
        wait_s={k: _histogram(raw, f"wait_s|{k}", WAIT_BOUNDS) for k in KINDS}, webhooks_pending=int(next(replies)))
