"""Uploaded input files (``POST /files``: reference videos and images) in the job store and in storage.

Layout: ``sm:file:<id>`` a hash, one JSON value per `FileRecord` field, and ``sm:owner:<o>:files`` the owner's
file ids by creation time; the object is ``files/<id>/source``. A record is written after its object and
deleted before it, so storage never holds an object a record names that is gone; an object left without a
record (the API died, or storage was down at the deletion) is swept by the collector. Records never expire
(as customizations): ``DELETE /files/{id}`` removes one.

A file is not deleted while a queued or running generation reads it (its job record's ``inputs`` name the
object), checked in the same Lua script that deletes; and `JobStore.create_job` checks in its own script that
the files a generation needs still exist (`needs`), so a generation racing a deletion either makes it 409 or
gets 404, as for customizations (`common.deletion`).
"""

from __future__ import annotations

import json

from common import storage as keys
from common.deletion import delete_objects
from common.errors import Conflict, NotFound
from common.jobstore import PREFIX, RUNNING_KEY, JobStore, decode_fields, encode_fields
from common.schemas import FileRecord
from common.storage import Storage

# KEYS: the file, the owner's file listing, the owner's queued jobs, the running jobs. ARGV: owner (JSON), file
# id, its object's key, the job key prefix. Returns {outcome, the job that reads it}. A generation reads files of
# its own key, so the owner's queued jobs and the running ones are every job that could.
_DELETE_FILE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {'missing', ''} end
for _, index in ipairs({KEYS[3], KEYS[4]}) do
  for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local s, inputs = unpack(redis.call('HMGET', ARGV[4] .. id, 'status', 'inputs'))
    if (s == '"queued"' or s == '"running"') and inputs and inputs ~= 'null' then
      for _, source in pairs(cjson.decode(inputs)) do
        if source.key == ARGV[3] then return {cjson.decode(s), id} end
      end
    end
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return {'deleted', ''}
"""


def file_key(file_id: str) -> str:
    return f"{PREFIX}file:{file_id}"


def _listing(owner: str) -> str:
    return JobStore.owner_key(owner, "files")


def create_file(store: JobStore, record: FileRecord) -> None:
    pipe = store.redis.pipeline(transaction=True)
    pipe.hset(file_key(record.id), mapping=encode_fields(record))
    pipe.zadd(_listing(record.owner), {record.id: record.created_at.timestamp()})
    pipe.execute()


def list_files(store: JobStore, owner: str, limit: int,
               cursor: tuple[float, str] | None) -> tuple[list[FileRecord], tuple | None]:
    """A page of the owner's files, newest first (`JobStore.page`)."""
    ids, next_cursor = store.page(_listing(owner), limit, cursor)
    raws = store.hgetall_many([file_key(i) for i in ids])
    return [FileRecord.model_validate(decode_fields(raw)) for raw in raws if raw], next_cursor


def get_file(store: JobStore, file_id: str, owner: str, field: str = "file_id") -> FileRecord:
    """The caller's file; `NotFound` (naming `field`) for an unknown one or another key's (indistinguishable)."""
    raw = store.redis.hgetall(file_key(file_id))
    record = FileRecord.model_validate(decode_fields(raw)) if raw else None
    if record is None or record.owner != owner:
        raise NotFound(f"no file {file_id!r}", field=field)
    return record


def delete_file(store: JobStore, storage: Storage, record: FileRecord) -> None:
    """Its record (atomically, if still the owner's and no queued or running generation reads it), then its
    object (best effort: the collector sweeps); `NotFound` when it is already gone, `Conflict` naming the job."""
    outcome, holder = store.redis.register_script(_DELETE_FILE)(
        keys=[file_key(record.id), _listing(record.owner), store.owner_key(record.owner, "queued"), RUNNING_KEY],
        args=[json.dumps(record.owner), record.id, record.key, store.job_key("")])
    if outcome == "missing":
        raise NotFound(f"no file {record.id!r}", field="file_id")
    if outcome != "deleted":
        raise Conflict(f"file {record.id!r} is in use: generation {holder!r} is {outcome} and reads it; cancel it "
                       "or wait for it to end", code="file_in_use", field="file_id")
    delete_objects(storage, keys.file_prefix(record.id))
