"""Deleting a finished job or an unused customization: the records go in one Lua script of the job store that
checks, in the same instant, that nothing still needs them; then their objects go from storage.

A job: its record and listing entry, refused while it is queued or running; then ``videos/<id>/``.

A customization: refused while its training job, or a generation that uses it, is queued or running. A
generation being enqueued meanwhile cannot slip between the check and the delete: `JobStore.create_job` checks
in its own script that the customization still exists, so it is either seen here (the deletion is refused) or
finds it gone (404). Deleted with it: its listing entry, its reference on the uploaded checkpoint
(``sm:ckpt:<sha>``: the collector deletes the checkpoint object once no customization of any key references it)
and its training job's record; then ``customizations/<id>/`` (artifact, images, resume states).

Objects are deleted after their records: a deletion that fails midway (storage down) leaves only objects no
record names, which the collector (`worker/collector.py`) sweeps.
"""

from __future__ import annotations

import json
import logging

from common import job_metrics
from common import storage as keys
from common.errors import Conflict, NotFound, ServiceUnavailable
from common.jobstore import RUNNING_KEY, JobStore
from common.schemas import CustomizationRecord, JobRecord
from common.storage import STORAGE_ERRORS, Storage
from common.webhooks import WebhookStore

log = logging.getLogger("stillmoving.deletion")

# KEYS: the job, the owner's job listing, its event log, its webhook state and attempts. ARGV: owner (JSON), job id,
# the status indexes' prefix (`common.job_metrics`: a deleted job leaves its status's count).
_DELETE_JOB = """
local owner, status, kind = unpack(redis.call('HMGET', KEYS[1], 'owner', 'status', 'kind'))
if owner ~= ARGV[1] then return 'missing' end
if status == '"queued"' or status == '"running"' then return cjson.decode(status) end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', ARGV[3] .. cjson.decode(kind) .. ':' .. cjson.decode(status), ARGV[2])
return 'deleted'
"""

# KEYS: the customization, the owner's customization listing, the owner's queued jobs, the running jobs, its
# training job, the owner's job listing, the checkpoint's references, the training job's event log.
# ARGV: owner (JSON), customization id, the same as JSON, its training job's id, the job key prefix, the status
# indexes' prefix.
# Returns {outcome, the job that holds it}. A generation uses a customization of its own key, so the owner's
# queued jobs and the running ones are every job that could.
_DELETE_CUSTOMIZATION = """
local owner, status = unpack(redis.call('HMGET', KEYS[1], 'owner', 'status'))
if owner ~= ARGV[1] then return {'missing', ''} end
if status == '"queued"' or status == '"training"' then return {cjson.decode(status), ARGV[4]} end
for _, index in ipairs({KEYS[3], KEYS[4]}) do
  for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local s, c = unpack(redis.call('HMGET', ARGV[5] .. id, 'status', 'customization_id'))
    if c == ARGV[3] and (s == '"queued"' or s == '"running"') then return {cjson.decode(s), id} end
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('SREM', KEYS[7], ARGV[2])
local trained, job_status = unpack(redis.call('HMGET', KEYS[5], 'customization_id', 'status'))
if trained == ARGV[3] then
  redis.call('ZREM', ARGV[6] .. 'customize:' .. cjson.decode(job_status), ARGV[4])
  redis.call('DEL', KEYS[5], KEYS[8])
  redis.call('ZREM', KEYS[6], ARGV[4])
end
return {'deleted', ''}
"""


def delete_job(store: JobStore, storage: Storage, job: JobRecord) -> None:
    """Delete a finished job's record, then its video; `NotFound` when it is already gone, `Conflict` while it
    is queued or running (cancel it first)."""
    outcome = store.redis.register_script(_DELETE_JOB)(
        keys=[store.job_key(job.id), store.owner_key(job.owner, "jobs"), store.events_key(job.id),
              WebhookStore.state_key(job.id), WebhookStore.attempts_key(job.id)],
        args=[json.dumps(job.owner), job.id, job_metrics.STATUS_PREFIX])
    if outcome == "missing":
        raise NotFound(f"no job {job.id!r}", field="job_id")
    if outcome != "deleted":
        raise Conflict(f"job {job.id!r} is {outcome}; cancel it first", code="job_active", field="job_id")
    delete_objects(storage, keys.video_prefix(job.id))


def delete_customization(store: JobStore, storage: Storage, customization: CustomizationRecord) -> None:
    """Delete a customization nothing uses (see the module docstring), then its objects; `NotFound` when it is
    already gone, `Conflict` naming the job that uses it."""
    cid, owner = customization.id, customization.owner
    outcome, holder = store.redis.register_script(_DELETE_CUSTOMIZATION)(
        keys=[store.customization_key(cid), store.owner_key(owner, "customizations"),
              store.owner_key(owner, "queued"), RUNNING_KEY, store.job_key(customization.job_id),
              store.owner_key(owner, "jobs"), store.checkpoint_refs_key(customization.checkpoint_sha256),
              store.events_key(customization.job_id)],
        args=[json.dumps(owner), cid, json.dumps(cid), customization.job_id, store.job_key(""),
              job_metrics.STATUS_PREFIX])
    if outcome == "missing":
        raise NotFound(f"no customization {cid!r}", field="customization_id")
    if outcome != "deleted":
        what = "its training job" if holder == customization.job_id else "a generation"
        raise Conflict(f"customization {cid!r} is in use: {what} {holder!r} is {outcome}; cancel it or wait "
                       "for it to end", code="customization_in_use", field="customization_id")
    delete_objects(storage, keys.customization_prefix(cid))


def delete_objects(storage: Storage, prefix: str) -> None:
    """Best effort: what storage keeps now (it is down), no record names any more, and the collector sweeps."""
    try:
        storage.delete_many(storage.list_keys(prefix))
    except (*STORAGE_ERRORS, ServiceUnavailable) as exc:
        log.warning("could not delete %s now (%s); the collector will", prefix, type(exc).__name__)
